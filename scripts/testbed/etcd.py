"""A real etcd (Debian etcd-server 3.4) on free loopback ports, for rendezvous tests.

Started by the test, stopped by PID, data in a temp dir named after the owning
PID (``elt-etcd-<pid>-*``) so a killed run's leftovers can be found and removed.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import tempfile
import urllib.request
from typing import Any, Self

from . import Managed, TestbedError, WaitTimeout, free_port, wait_until
from .netns import Cluster
from .procs import remove_orphaned_dirs, stop_popen

__all__ = ["EtcdServer", "available", "cleanup_stale"]

TMP_PREFIX = "elt-etcd-"


@functools.cache
def available() -> tuple[bool, str]:
    """Whether an etcd binary is installed (for pytest.skip)."""
    if shutil.which("etcd") is None:
        return False, "'etcd' not found (run scripts/testbed/install.sh: etcd-server)"
    return True, "ok"


class EtcdServer(Managed):
    """One-member etcd cluster on 127.0.0.1 (and 10.250.S.254 if given a host-linked cluster).

    ``endpoint`` is ``127.0.0.1:PORT``; ``client_url`` its http URL; with a cluster,
    ``cluster_endpoint``/``cluster_url`` are what fake hosts use (``host0:PORT``).
    """

    def __init__(
        self,
        cluster: Cluster | None = None,
        start_timeout: float = 20.0,
        attempts: int = 3,
    ) -> None:
        if cluster is not None and not cluster.host_link:
            raise ValueError("etcd can serve fake hosts only through a cluster's host link")
        self.cluster = cluster
        self.start_timeout = start_timeout
        self.attempts = attempts
        self.port = 0
        self.peer_port = 0
        self.tmpdir: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._closed = False

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:PORT`` for clients in the root namespace."""
        return f"127.0.0.1:{self.port}"

    @property
    def client_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{self.endpoint}"

    @property
    def cluster_endpoint(self) -> str:
        """``10.250.S.254:PORT``: how fake hosts reach this server over the host link."""
        if self.cluster is None:
            raise TestbedError("etcd was not started with a cluster")
        return f"{self.cluster.host_addr}:{self.port}"

    @property
    def cluster_url(self) -> str:
        """``http://10.250.S.254:PORT``."""
        return f"http://{self.cluster_endpoint}"

    @property
    def log_path(self) -> str:
        """etcd's stdout/stderr log (inside the temp dir, gone after close)."""
        return os.path.join(self.tmpdir or "", "etcd.log")

    def log_tail(self, n: int = 20) -> str:
        """Last ``n`` lines of the log, for error messages."""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def start(self) -> Self:
        """Start etcd and wait until /health says true; retry on a port race; undo on failure."""
        try:
            self.tmpdir = tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-")
            last: Exception | None = None
            for _ in range(self.attempts):
                try:
                    self._start_once()
                    return self
                except TestbedError as exc:
                    last = exc
                    self._stop_proc()
            raise TestbedError(f"etcd did not start in {self.attempts} attempts: {last}")
        except BaseException:
            self.close()
            raise

    def _start_once(self) -> None:
        assert self.tmpdir is not None
        self.port, self.peer_port = free_port(), free_port()
        client = [f"http://127.0.0.1:{self.port}"]
        if self.cluster is not None:
            client.append(f"http://{self.cluster.host_addr}:{self.port}")
        peer = f"http://127.0.0.1:{self.peer_port}"
        data = os.path.join(self.tmpdir, "data")
        shutil.rmtree(data, ignore_errors=True)
        argv = [
            "etcd", "--name", "t", "--data-dir", data,
            "--listen-client-urls", ",".join(client),
            "--advertise-client-urls", ",".join(client),
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"t={peer}", "--initial-cluster-state", "new",
            "--log-outputs", "stderr",
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until(
                self._healthy,
                self.start_timeout,
                f"etcd on {self.client_url} to be healthy",
                max_interval=0.5,
            )
        except WaitTimeout as exc:
            raise TestbedError(f"{exc}; log tail:\n{self.log_tail()}") from exc

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise TestbedError(f"etcd exited with {self.proc.returncode}; log:\n{self.log_tail()}")
        return self.health()

    def health(self, timeout: float = 1.0) -> bool:
        """True if GET /health answers ``{"health": "true"}``."""
        try:
            with urllib.request.urlopen(f"{self.client_url}/health", timeout=timeout) as r:
                body: Any = json.loads(r.read())
        except (OSError, ValueError):
            return False
        return isinstance(body, dict) and body.get("health") == "true"

    def _stop_proc(self) -> None:
        if self.proc is not None:
            stop_popen(self.proc, grace=5.0)
            self.proc = None

    def close(self) -> None:
        """Stop etcd by PID (TERM, then KILL) and remove its temp dir. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop_proc()
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    @property
    def pid(self) -> int | None:
        """PID of the running etcd, if any."""
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None


def revision(url: str) -> int:
    """etcd's current revision at client URL `url` (a range request on a key nobody writes), read
    with plain HTTP: a write of any key moves it, a lease keep-alive does not."""
    req = urllib.request.Request(f"{url}/v3/kv/range", data=json.dumps({"key": "AA=="}).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=5) as r:
        return int(json.loads(r.read())["header"]["revision"])


def lease_renewals(url: str) -> int:
    """Lease keep-alives etcd has served (its `etcd_debugging_lease_renewed_total` metric);
    `TestbedError` when the server has no such metric."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("etcd_debugging_lease_renewed_total "):
                return int(float(line.split()[1]))
    raise TestbedError("etcd has no etcd_debugging_lease_renewed_total metric")


def cleanup_stale() -> list[str]:
    """Kill etcds and remove temp dirs left by dead test processes; return the dirs removed."""
    return remove_orphaned_dirs(TMP_PREFIX)
