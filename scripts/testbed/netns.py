"""Fake hosts as network namespaces on one bridge (see /work/shared/testbed.md).

A ``Cluster`` of N hosts gives each host ``hostI`` its own network namespace with
``eth0`` = 10.250.S.I/24 on a bridge that lives in a namespace of its own, so
nothing can leave the machine.  An optional host link puts 10.250.S.254
(``host0``) in the root namespace, so servers the test runs itself are reachable.
Processes run on a host via nsenter + unshare rather than ``ip netns exec``
because the latter remounts /sys and hides cgroups from slurmd.
"""

from __future__ import annotations

import fcntl
import fnmatch
import functools
import glob
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any, Self

from . import Managed, TestbedError
from .procs import alive, descendants, kill_pids, kill_tree

__all__ = ["Cluster", "available", "cleanup_stale", "list_namespaces", "nft_available"]

NETNS_DIR = "/run/netns"
ETC_NETNS = "/etc/netns"
HOST_LINK_INDEX = 254
# Prefix "elt<owner pid hex>x<3 hex>": <= 13 chars, so "<prefix>h0" fits IFNAMSIZ (15).
_PREFIX_RE = re.compile(r"^elt([0-9a-f]+)x[0-9a-f]{3}$")
_LIVE: set[str] = set()  # prefixes of clusters open in this process

# Runs after nsenter/unshare: private /etc/hosts and hostname, then the command.
# Values travel as positional args, so nothing is ever spliced into shell code.
_WRAP_SCRIPT = 'mount --bind "$1" /etc/hosts && hostname "$2" || exit 127; shift 2; exec "$@"'
_FAULT_TABLE = "elt_fault"
_LOCK_FILE = "/run/elt-testbed/subnet.lock"


def _run(argv: Sequence[str], timeout: float = 15.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a set-up command, raising TestbedError with its stderr on failure."""
    try:
        res = subprocess.run(
            list(argv),
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TestbedError(f"{' '.join(argv)}: {exc}") from exc
    if check and res.returncode != 0:
        raise TestbedError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


@functools.cache
def available() -> tuple[bool, str]:
    """Whether network namespaces can be made here, and if not why (for pytest.skip)."""
    if os.geteuid() != 0:
        return False, "network namespaces need root"
    for tool in ("ip", "nsenter", "unshare", "mount", "hostname"):
        if shutil.which(tool) is None:
            return False, f"{tool!r} not found (run scripts/testbed/install.sh)"
    probe = f"eltprobe{os.getpid():x}"
    try:
        _run(["ip", "netns", "add", probe])
    except TestbedError as exc:
        return False, f"cannot create a network namespace: {exc}"
    try:
        _run(
            [
                "nsenter",
                f"--net={NETNS_DIR}/{probe}",
                "unshare",
                "--mount",
                "--uts",
                "--",
                "true",
            ]
        )
    except TestbedError as exc:
        return False, f"cannot enter a namespace with nsenter/unshare: {exc}"
    finally:
        _run(["ip", "netns", "del", probe], check=False)
    return True, "ok"


@functools.cache
def nft_available() -> tuple[bool, str]:
    """Whether nftables can be used for blackhole/packet-loss faults."""
    if shutil.which("nft") is None:
        return False, "'nft' not found (apt-get install nftables)"
    return True, "ok"


def list_namespaces() -> list[str]:
    """Names of all named network namespaces (``ip netns list``)."""
    res = _run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in res.stdout.splitlines() if line.strip()]


def _ns_pids(ns: str) -> list[int]:
    res = _run(["ip", "netns", "pids", ns], check=False)
    return [int(w) for w in res.stdout.split() if w.isdigit()]


def _remove_prefix(prefix: str, namespaces: Sequence[str]) -> None:
    """Kill what runs in ``namespaces`` and delete them with all files and links of ``prefix``."""
    for _ in range(5):  # bounded: a process may fork while we kill
        pids = {p for ns in namespaces for p in _ns_pids(ns)}
        if not pids:
            break
        kill_tree(pids, timeout=5.0)
    # The root-side host link first: it would otherwise vanish only asynchronously.
    _run(["ip", "link", "del", f"{prefix}h0"], check=False)
    for ns in namespaces:
        _run(["ip", "netns", "del", ns], check=False)
    for path in glob.glob(os.path.join(ETC_NETNS, f"{glob.escape(prefix)}-*")):
        shutil.rmtree(path, ignore_errors=True)


def _tool(name: str) -> str:
    """Absolute path of ``name``, so a caller's env without PATH still works."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin") or name


def _subnet_busy(subnet: int) -> str:
    """Root-namespace addresses/routes inside 10.250.S.0/24 ('' if none)."""
    net = f"10.250.{subnet}.0/24"
    busy = _run(["ip", "-4", "-o", "addr", "show", "to", net], check=False).stdout
    busy += _run(["ip", "-4", "route", "show", "root", net], check=False).stdout
    return busy.strip()


def cleanup_stale(prefix_glob: str = "elt*", force: bool = False) -> list[str]:
    """Remove clusters left by a killed run; return the prefixes removed.

    A cluster is stale when the PID encoded in its prefix is no longer alive
    (or always, with ``force``); clusters open in this process are kept.
    """
    prefixes: dict[str, list[str]] = {}
    for ns in list_namespaces():
        prefixes.setdefault(ns.rsplit("-", 1)[0], []).append(ns)
    for path in glob.glob(os.path.join(ETC_NETNS, "*-*")):
        prefixes.setdefault(os.path.basename(path).rsplit("-", 1)[0], [])
    res = _run(["ip", "-o", "link", "show"], check=False)
    for link in re.finditer(r"^\d+: ([^:@\s]+)h0[@:]", res.stdout, re.MULTILINE):
        prefixes.setdefault(link.group(1), [])
    removed: list[str] = []
    for prefix, namespaces in sorted(prefixes.items()):
        m = _PREFIX_RE.match(prefix)
        if m is None or not fnmatch.fnmatchcase(prefix, prefix_glob) or prefix in _LIVE:
            continue
        if not force and alive(int(m.group(1), 16)):
            continue
        _remove_prefix(prefix, namespaces)
        removed.append(prefix)
    return removed


class Cluster(Managed):
    """N fake hosts ``host1..hostN`` (namespaces ``<prefix>-hI``) on one bridge.

    Use as a context manager; ``close()`` kills every process left in the
    namespaces and everything this cluster started, and removes all it made.
    """

    def __init__(
        self,
        n: int,
        *,
        host_link: bool = False,
        subnet: int | None = None,
        prefix: str | None = None,
    ) -> None:
        if not 1 <= n <= 250:
            raise ValueError("a cluster has 1..250 hosts")
        if subnet is not None and not 0 <= subnet <= 255:
            raise ValueError("subnet is the third octet of 10.250.S.0/24")
        self.n = n
        self.host_link = host_link
        self._want_subnet = subnet
        # Without a host link every address is private to our namespaces, so 0 always works;
        # with one, start() picks the first /24 not yet routed in the root namespace.
        self.subnet = 0 if subnet is None else subnet
        self.prefix = prefix or f"elt{os.getpid():x}x{secrets.token_hex(2)[:3]}"
        if not _PREFIX_RE.match(self.prefix):
            raise ValueError(f"prefix must look like elt<pidhex>x<3 hex>: {self.prefix!r}")
        self._namespaces: list[str] = []
        self._procs: list[subprocess.Popen[Any]] = []
        self._started = False
        self._closed = False

    # -- naming ---------------------------------------------------------------
    @property
    def bridge_ns(self) -> str:
        """Namespace that holds the bridge ``br0`` and the bridge ends of all veths."""
        return f"{self.prefix}-br"

    def ns(self, i: int) -> str:
        """Namespace name of host ``i`` (1..n)."""
        self._check_host(i)
        return f"{self.prefix}-h{i}"

    def hostname(self, i: int) -> str:
        """Host name of host ``i``; ``host0`` is the root namespace's host link."""
        return f"host{i}"

    def addr(self, i: int) -> str:
        """IPv4 address of host ``i``; ``addr(0)`` is the host link (10.250.S.254)."""
        return f"10.250.{self.subnet}.{HOST_LINK_INDEX if i == 0 else i}"

    @property
    def host_addr(self) -> str:
        """Address of the root namespace on the bridge (requires ``host_link``)."""
        return self.addr(0)

    @property
    def hostnames(self) -> list[str]:
        """``[host1, ..., hostN]``."""
        return [self.hostname(i) for i in range(1, self.n + 1)]

    def hosts_file(self, i: int) -> str:
        """The /etc/hosts bind-mounted for processes of host ``i`` (0 = root link)."""
        return os.path.join(ETC_NETNS, f"{self.prefix}-h{i}", "hosts")

    def _check_host(self, i: int) -> None:
        if not 1 <= i <= self.n:
            raise ValueError(f"host index {i} not in 1..{self.n}")

    # -- lifecycle ------------------------------------------------------------
    def _add_ns(self, ns: str) -> None:
        self._namespaces.append(ns)  # before creating: close() must try to delete it
        _run(["ip", "netns", "add", ns])
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])

    def start(self) -> Self:
        """Create namespaces, bridge, veths and hosts files; on any error undo all."""
        if self._started:
            return self
        self._started = True
        _LIVE.add(self.prefix)
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    def _setup(self) -> None:
        if not self.host_link:
            self._build()
            return
        # Host links share the root namespace's routing table: pick and claim a /24 under a
        # lock so that clusters of parallel test processes never get the same one.
        os.makedirs(os.path.dirname(_LOCK_FILE), exist_ok=True)
        with open(_LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self._want_subnet is None:
                free = next((s for s in range(256) if not _subnet_busy(s)), None)
                if free is None:
                    raise TestbedError("no free 10.250.S.0/24 subnet for a host link")
                self.subnet = free
            elif busy := _subnet_busy(self.subnet):
                raise TestbedError(
                    f"10.250.{self.subnet}.0/24 is already in use in the root namespace"
                    f" (another cluster with a host link?): {busy}"
                )
            self._build()

    def _build(self) -> None:
        br = self.bridge_ns
        self._add_ns(br)
        _run(["ip", "-n", br, "link", "add", "br0", "type", "bridge"])
        _run(["ip", "-n", br, "link", "set", "br0", "up"])
        hosts = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        hosts += [f"{self.addr(i)}\t{self.hostname(i)}" for i in range(self.n + 1)]
        for i in range(self.n + 1):
            os.makedirs(os.path.dirname(self.hosts_file(i)), exist_ok=True)
            with open(self.hosts_file(i), "w", encoding="ascii") as f:
                f.write("\n".join(hosts) + "\n")
        for i in range(1, self.n + 1):
            ns = self.ns(i)
            self._add_ns(ns)
            _run(["ip", "-n", br, "link", "add", f"h{i}", "type", "veth",
                  "peer", "name", "eth0", "netns", ns])  # fmt: skip
            _run(["ip", "-n", br, "link", "set", f"h{i}", "master", "br0", "up"])
            _run(["ip", "-n", ns, "addr", "add", f"{self.addr(i)}/24", "dev", "eth0"])
            _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        if self.host_link:
            root_if = f"{self.prefix}h0"
            _run(["ip", "link", "add", root_if, "type", "veth",
                  "peer", "name", "h0", "netns", br])  # fmt: skip
            _run(["ip", "-n", br, "link", "set", "h0", "master", "br0", "up"])
            _run(["ip", "addr", "add", f"{self.addr(0)}/24", "dev", root_if])
            _run(["ip", "link", "set", root_if, "up"])

    def close(self) -> None:
        """Kill leftover processes by PID, delete namespaces, links and files. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for _ in range(5):  # bounded: processes may fork while being killed
            pids = {p.pid for p in self._procs if p.poll() is None}
            pids |= {p for ns in self._namespaces for p in _ns_pids(ns)}
            pids |= set(descendants(pids))
            if not pids:
                break
            kill_pids(pids, timeout=5.0)
        for proc in self._procs:
            try:
                proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                pass
        _remove_prefix(self.prefix, self._namespaces)
        _LIVE.discard(self.prefix)

    # -- running things on hosts ---------------------------------------------
    def wrap(self, i: int, argv: Sequence[str]) -> list[str]:
        """The argv that runs ``argv`` on host ``i`` (0 = root namespace as ``host0``)."""
        if not self._started or self._closed:
            raise TestbedError("cluster is not running")
        if i != 0:
            self._check_host(i)
        inner = [_tool("unshare"), "--mount", "--uts", "--", "sh", "-c", _WRAP_SCRIPT, "sh",
                 self.hosts_file(i), self.hostname(i), *argv]  # fmt: skip
        if i == 0:
            return inner
        return [_tool("nsenter"), f"--net={NETNS_DIR}/{self.ns(i)}", "--", *inner]

    def popen(self, i: int, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` on host ``i``; its PID is the command's own (exec chain, no fork)."""
        popen_kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc: subprocess.Popen[Any] = subprocess.Popen(self.wrap(i, argv), **popen_kwargs)
        self._procs.append(proc)
        return proc

    def run(
        self,
        i: int,
        argv: Sequence[str],
        timeout: float = 30.0,
        check: bool = False,
        **popen_kwargs: Any,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` on host ``i`` to completion, capturing text output; kill it on timeout."""
        popen_kwargs.setdefault("stdout", subprocess.PIPE)
        popen_kwargs.setdefault("stderr", subprocess.PIPE)
        proc = self.popen(i, argv, text=True, **popen_kwargs)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree([proc.pid], timeout=5.0)
            proc.communicate(timeout=5.0)
            raise
        res = subprocess.CompletedProcess(list(argv), proc.returncode, out, err)
        if check:
            res.check_returncode()
        return res

    def pids(self, i: int) -> list[int]:
        """PIDs of all processes in host ``i``'s network namespace."""
        return _ns_pids(self.ns(i))

    # -- faults (all reversible) ----------------------------------------------
    def link_down(self, i: int) -> None:
        """Cut host ``i`` at the bridge: packets vanish, connects time out, sockets stall."""
        _run(["ip", "-n", self.bridge_ns, "link", "set", f"h{i}", "down"])

    def link_up(self, i: int) -> None:
        """Undo ``link_down``."""
        self._check_host(i)
        _run(["ip", "-n", self.bridge_ns, "link", "set", f"h{i}", "up"])

    def eth_down(self, i: int) -> None:
        """Take host ``i``'s eth0 down: its connects fail at once (network unreachable)."""
        _run(["ip", "-n", self.ns(i), "link", "set", "eth0", "down"])

    def eth_up(self, i: int) -> None:
        """Undo ``eth_down`` (the connected route comes back with the link)."""
        _run(["ip", "-n", self.ns(i), "link", "set", "eth0", "up"])

    def _nft(self, i: int, script: str) -> None:
        ok, why = nft_available()
        if not ok:
            raise TestbedError(why)
        argv = ["nsenter", f"--net={NETNS_DIR}/{self.ns(i)}", "--", "nft", "-f", "-"]
        try:
            res = subprocess.run(argv, check=False, input=script, capture_output=True, text=True, timeout=15)
        except subprocess.TimeoutExpired as exc:
            raise TestbedError(f"nft timed out on host {i}") from exc
        if res.returncode != 0:
            raise TestbedError(f"nft on host {i} failed: {res.stderr.strip()}")

    def packet_loss(self, i: int, percent: int) -> None:
        """Drop ``percent``% of host ``i``'s non-loopback packets (both ways), via nftables."""
        if not 0 <= percent <= 100:
            raise ValueError("percent must be 0..100")
        rule = "drop" if percent >= 100 else f"numgen random mod 100 < {percent} drop"
        t = _FAULT_TABLE
        self._nft(
            i,
            f"add table inet {t}\ndelete table inet {t}\n"
            f"table inet {t} {{\n"
            f"  chain in {{ type filter hook input priority -100; policy accept;"
            f' iif "lo" accept; {rule}; }}\n'
            f"  chain out {{ type filter hook output priority -100; policy accept;"
            f' oif "lo" accept; {rule}; }}\n'
            f"}}\n",
        )

    def blackhole(self, i: int) -> None:
        """Drop all of host ``i``'s traffic with the link up (nftables)."""
        self.packet_loss(i, 100)

    def unblackhole(self, i: int) -> None:
        """Remove the blackhole/packet-loss rules of host ``i``."""
        t = _FAULT_TABLE
        self._nft(i, f"add table inet {t}\ndelete table inet {t}\n")

    def bandwidth(self, i: int, rate: str) -> None:
        """Limit host ``i``'s egress to ``rate`` (tc syntax, e.g. ``1mbit``) with tbf."""
        _run(["tc", "-n", self.ns(i), "qdisc", "replace", "dev", "eth0", "root",
              "tbf", "rate", rate, "burst", "32kbit", "latency", "400ms"])  # fmt: skip

    def clear_bandwidth(self, i: int) -> None:
        """Remove the ``bandwidth`` limit of host ``i``."""
        _run(["tc", "-n", self.ns(i), "qdisc", "del", "dev", "eth0", "root"], check=False)

    @property
    def closed(self) -> bool:
        """True once ``close()`` ran."""
        return self._closed

    def __repr__(self) -> str:
        state = "closed" if self._closed else "up" if self._started else "new"
        return f"Cluster({self.prefix}, n={self.n}, host_link={self.host_link}, {state})"
