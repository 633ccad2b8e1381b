"""A real SLURM (Debian 22.05) whose nodes are the fake hosts of a netns ``Cluster``.

A private munged (own key and socket), ``slurmctld`` in the root namespace as
``host0`` (reached by the nodes over the cluster's host link) and one ``slurmd``
per fake host.  All state lives in one temp dir named ``elt-slurm-<pid>-*``;
every daemon is stopped by PID.  See /work/shared/testbed.md for the facts.
"""

from __future__ import annotations

import functools
import glob
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from typing import IO, Any, Self

from . import Managed, TestbedError, WaitTimeout, free_port, wait_until
from .netns import Cluster
from .procs import descendants, kill_pids, pids_mentioning, remove_orphaned_dirs, stop_popen

__all__ = ["TERMINAL_STATES", "SlurmCluster", "available", "cleanup_stale"]

TMP_PREFIX = "elt-slurm-"
TERMINAL_STATES = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
     "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT"}
)  # fmt: skip
_TOOLS = ("munged", "slurmctld", "slurmd", "slurmstepd", "sbatch", "srun", "squeue",
          "scancel", "sinfo", "scontrol")  # fmt: skip


@functools.cache
def available() -> tuple[bool, str]:
    """Whether munge and SLURM are installed (namespaces are checked by netns.available)."""
    for tool in _TOOLS:
        if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
            return False, f"{tool!r} not found (run scripts/testbed/install.sh)"
    return True, "ok"


def _which(tool: str) -> str:
    return shutil.which(tool) or f"/usr/sbin/{tool}"


def clean_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default os.environ) without SLURM_* variables, so an outer job cannot leak in."""
    env = dict(os.environ if base is None else base)
    for key in list(env):
        if key.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")):
            del env[key]
    env["PATH"] = env.get("PATH", "/usr/bin:/bin") + ":/usr/sbin:/sbin"
    return env


class SlurmCluster(Managed):
    """SLURM cluster ``host[1-N]`` over a host-linked netns ``Cluster``; close() removes it all.

    ``env`` is the environment to pass to every SLURM client call (``SLURM_CONF``).
    ``gpus_per_node`` > 0 adds fake GPUs (gres on mknod'ed devices, AutoDetect=off).
    """

    def __init__(
        self,
        cluster: Cluster,
        *,
        cpus_per_node: int = 4,
        gpus_per_node: int = 0,
        start_timeout: float = 30.0,
        extra_conf: Sequence[str] = (),
    ) -> None:
        if not cluster.host_link:
            raise ValueError("SlurmCluster needs a Cluster with host_link=True (slurmctld is host0)")
        self.cluster = cluster
        self.n = cluster.n
        self.cpus_per_node = cpus_per_node
        self.gpus_per_node = gpus_per_node
        self.start_timeout = start_timeout
        self.extra_conf = list(extra_conf)
        self.tmpdir: str | None = None
        self.ctld_port = 0
        self.env: dict[str, str] = {}
        self.munged: subprocess.Popen[bytes] | None = None
        self.slurmctld: subprocess.Popen[bytes] | None = None
        self.slurmds: list[subprocess.Popen[bytes]] = []
        self._files: list[IO[bytes]] = []
        self._closed = False

    # -- paths ----------------------------------------------------------------
    def path(self, *parts: str) -> str:
        """A path inside this cluster's temp dir."""
        if self.tmpdir is None:
            raise TestbedError("SLURM cluster not started")
        return os.path.join(self.tmpdir, *parts)

    @property
    def conf_path(self) -> str:
        """The slurm.conf (``SLURM_CONF``)."""
        return self.path("etc", "slurm.conf")

    @property
    def munge_socket(self) -> str:
        """The private munged's socket (``AuthInfo=socket=...``)."""
        return self.path("munge", "munge.socket")

    @property
    def nodelist(self) -> str:
        """``host[1-N]``."""
        return f"host[1-{self.n}]" if self.n > 1 else "host1"

    def log_tail(self, name: str, n: int = 20) -> str:
        """Last lines of log ``name`` (``slurmctld.log``, ``slurmd-host1.log``, ``munged.log``)."""
        try:
            with open(self.path("log", name), encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except (OSError, TestbedError):
            return ""

    def _logfile(self, name: str) -> IO[bytes]:
        f = open(self.path("log", name), "wb")  # noqa: SIM115 - closed in close()
        self._files.append(f)
        return f

    # -- lifecycle ------------------------------------------------------------
    def start(self) -> Self:
        """Write config, start munged, slurmctld, slurmds; wait until all nodes are idle."""
        try:
            self.tmpdir = tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-")
            self._write_config()
            self._start_munged()
            self._start_slurmctld()
            self._start_slurmds()
        except BaseException:
            self.close()
            raise
        return self

    def _write_config(self) -> None:
        for sub in ("etc", "munge", "state", "spool", "log", "run", "dev"):
            os.makedirs(self.path(sub), mode=0o700)
        for i in range(1, self.n + 1):
            os.makedirs(self.path("spool", f"host{i}"), mode=0o700)
        key = self.path("etc", "munge.key")
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(1024))
        self.ctld_port = free_port()
        n, net = self.n, f"10.250.{self.cluster.subnet}"
        rng = f"[1-{n}]" if n > 1 else "1"
        gres = f" Gres=gpu:{self.gpus_per_node}" if self.gpus_per_node else ""
        lines = [
            f"ClusterName={self.cluster.prefix}",
            f"SlurmctldHost=host0({self.cluster.host_addr})",
            f"SlurmctldPort={self.ctld_port}",
            "SlurmdPort=6818",  # each slurmd has its own network namespace
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SlurmdParameters=config_overrides",
            "ReturnToService=2",
            "MailProg=/bin/true",
            "JobCompType=jobcomp/none",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "KillWait=2",  # scancel -> SIGKILL after 2 s: teardown stays short
            "SchedulerParameters=batch_sched_delay=0,sched_interval=1",  # start jobs (also requeued ones) at once
            "MinJobAge=300",  # finished jobs stay visible to scontrol for wait_job
            f"StateSaveLocation={self.path('state')}",
            f"SlurmdSpoolDir={self.path('spool', '%n')}",
            f"SlurmctldPidFile={self.path('run', 'slurmctld.pid')}",
            f"SlurmdPidFile={self.path('run', 'slurmd-%n.pid')}",
            f"SlurmctldLogFile={self.path('log', 'slurmctld.log')}",
            f"SlurmdLogFile={self.path('log', 'slurmd-%n.log')}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            *(["GresTypes=gpu"] if self.gpus_per_node else []),
            *self.extra_conf,
            (
                f"NodeName=host{rng} NodeHostname=host{rng} NodeAddr={net}.{rng}"
                f" CPUs={self.cpus_per_node}{gres} State=UNKNOWN"
            ),
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
        ]
        with open(self.conf_path, "w", encoding="ascii") as f:
            f.write("\n".join(lines) + "\n")
        if self.gpus_per_node:
            # gres File= must be a character device; /dev/null's numbers will do.
            for g in range(self.gpus_per_node):
                os.mknod(self.path("dev", f"nvidia{g}"), 0o666 | 0o020000, os.makedev(1, 3))
            last = self.gpus_per_node - 1
            files = self.path("dev", f"nvidia[0-{last}]" if last else "nvidia0")
            with open(self.path("etc", "gres.conf"), "w", encoding="ascii") as f:
                f.write(f"AutoDetect=off\nNodeName=host{rng} Name=gpu File={files}\n")
        self.env = clean_env()
        self.env["SLURM_CONF"] = self.conf_path

    def _start_munged(self) -> None:
        argv = [
            _which("munged"), "-F", "--force", f"--socket={self.munge_socket}",
            f"--key-file={self.path('etc', 'munge.key')}",
            f"--log-file={self.path('log', 'munged.log')}",
            f"--pid-file={self.path('run', 'munged.pid')}",
            f"--seed-file={self.path('run', 'munged.seed')}",
        ]  # fmt: skip
        self.munged = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_daemon(
            self.munged,
            "munged",
            lambda: os.path.exists(self.munge_socket),
            "munged socket",
        )

    def _start_slurmctld(self) -> None:
        # Run as host0 (own hostname and /etc/hosts) so slurmctld sees itself as SlurmctldHost.
        self.slurmctld = self.cluster.popen(
            0,
            [_which("slurmctld"), "-D", "-i", "-f", self.conf_path],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=self._logfile("slurmctld.stderr"),
        )
        self._wait_daemon(self.slurmctld, "slurmctld", self._ctld_up, "slurmctld to answer ping")

    def _ctld_up(self) -> bool:
        res = self.command(["scontrol", "ping"], timeout=10, check=False)
        return res.returncode == 0 and "UP" in res.stdout

    def _start_slurmds(self) -> None:
        for i in range(1, self.n + 1):
            self.slurmds.append(
                self.cluster.popen(
                    i,
                    [_which("slurmd"), "-D", "-N", f"host{i}", "-f", self.conf_path],
                    env=self.env,
                    stdout=subprocess.DEVNULL,
                    stderr=self._logfile(f"slurmd-host{i}.stderr"),
                )
            )
        self._wait_daemon(None, "slurmd", self._all_idle, f"all {self.n} nodes idle in sinfo")

    def _wait_daemon(
        self,
        proc: subprocess.Popen[bytes] | None,
        name: str,
        cond: Any,
        what: str,
    ) -> None:
        procs = [proc] if proc is not None else self.slurmds

        def check() -> bool:
            for p in procs:
                if p.poll() is not None:
                    raise TestbedError(f"{name} exited with {p.returncode}")
            return bool(cond())

        try:
            wait_until(check, self.start_timeout, what, max_interval=0.5)
        except (WaitTimeout, TestbedError) as exc:
            logs = "\n".join(
                f"--- {os.path.basename(p)}\n{self.log_tail(os.path.basename(p))}"
                for p in sorted(glob.glob(self.path("log", "*")))
            )
            raise TestbedError(f"SLURM start failed: {exc}\n{logs}") from exc

    def node_states(self) -> dict[str, str]:
        """``{node: state}`` from sinfo (e.g. ``idle``, ``alloc``, ``down*``)."""
        res = self.command(["sinfo", "-h", "-N", "-o", "%N %T"], timeout=10, check=False)
        out: dict[str, str] = {}
        for line in res.stdout.splitlines():
            parts = line.split()
            if len(parts) == 2:
                out[parts[0]] = parts[1]
        return out

    def _all_idle(self) -> bool:
        states = self.node_states()
        return len(states) == self.n and all(s == "idle" for s in states.values())

    # -- client commands --------------------------------------------------------
    def command(
        self,
        argv: Sequence[str],
        timeout: float = 30.0,
        check: bool = True,
        **kwargs: Any,
    ) -> subprocess.CompletedProcess[str]:
        """Run a SLURM client command in the root namespace with ``env``; text output."""
        kwargs.setdefault("env", self.env)
        try:
            res = subprocess.run(
                list(argv),
                check=False,
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
                **kwargs,
            )
        except subprocess.TimeoutExpired as exc:
            raise TestbedError(f"{' '.join(argv)} timed out after {timeout}s") from exc
        if check and res.returncode != 0:
            raise TestbedError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()}")
        return res

    def sbatch(self, script_path: str, *args: str, cwd: str | None = None) -> int:
        """Submit ``script_path`` with sbatch options ``args``; return the job id."""
        res = self.command(["sbatch", "--parsable", *args, script_path], cwd=cwd)
        m = re.match(r"(\d+)", res.stdout.strip())
        if m is None:
            raise TestbedError(f"sbatch printed no job id: {res.stdout!r} {res.stderr!r}")
        return int(m.group(1))

    def job_state(self, job_id: int) -> str | None:
        """The job's state (``PENDING``, ``RUNNING``, ``COMPLETED``...), None if unknown."""
        res = self.command(["scontrol", "show", "job", "-o", str(job_id)], check=False)
        m = re.search(r"\bJobState=(\S+)", res.stdout)
        return m.group(1) if m else None

    def job_info(self, job_id: int) -> dict[str, str]:
        """``scontrol show job -o`` as a dict (values with spaces are not split correctly)."""
        res = self.command(["scontrol", "show", "job", "-o", str(job_id)], check=False)
        return dict(re.findall(r"(\w+)=(\S*)", res.stdout))

    def wait_job(self, job_id: int, timeout: float = 60.0) -> str:
        """Wait until the job is in a terminal state and return it (e.g. ``COMPLETED``)."""

        def done() -> str | None:
            state = self.job_state(job_id)
            return state if state in TERMINAL_STATES else None

        try:
            return wait_until(done, timeout, f"SLURM job {job_id} to finish", max_interval=0.5)
        except WaitTimeout as exc:
            raise WaitTimeout(f"{exc}; state now {self.job_state(job_id)}") from exc

    def scancel(self, job_id: int, signal: str | None = None, full: bool = False) -> None:
        """Cancel a job, or send it ``signal`` (e.g. ``TERM``; ``full`` includes the batch shell)."""
        argv = ["scancel"]
        if signal is not None:
            argv.append(f"--signal={signal}")
        if full:
            argv.append("--full")
        self.command([*argv, str(job_id)])

    def jobs(self) -> list[int]:
        """Ids of jobs not yet finished."""
        res = self.command(["squeue", "-h", "-o", "%i"], timeout=10, check=False)
        return [int(w) for w in res.stdout.split() if w.isdigit()]

    # -- teardown ---------------------------------------------------------------
    def _stepd_trees(self) -> list[int]:
        """slurmstepd processes in our hosts' namespaces (reparented away from slurmd) + children."""
        found: list[int] = []
        if self.cluster.closed:
            return found
        for i in range(1, self.n + 1):
            for pid in self.cluster.pids(i):
                try:
                    exe = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
                except OSError:
                    continue
                if exe.startswith("slurmstepd"):
                    found.append(pid)
        return found + descendants(found)

    def close(self) -> None:
        """Cancel all jobs, stop the daemons by PID, remove the temp dir. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.slurmctld is not None and self.slurmctld.poll() is None and self.env:
            try:
                ids = self.jobs()
                if ids:
                    self.command(["scancel", *map(str, ids)], timeout=10, check=False)
                    wait_until(lambda: not self.jobs(), 10.0, "cancelled jobs to end", max_interval=0.5)
            except TestbedError:
                pass  # killed below anyway
        steps = self._stepd_trees()
        for proc in self.slurmds:
            stop_popen(proc, grace=3.0)
        kill_pids(steps + self._stepd_trees(), timeout=5.0)
        for daemon in (self.slurmctld, self.munged):
            if daemon is not None:
                stop_popen(daemon, grace=5.0)
        for f in self._files:
            f.close()
        if self.tmpdir is not None:
            kill_pids(pids_mentioning(self.tmpdir + os.sep), timeout=5.0)
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    @property
    def pids(self) -> list[int]:
        """PIDs of the daemons this cluster started that are still running."""
        procs = [self.munged, self.slurmctld, *self.slurmds]
        return [p.pid for p in procs if p is not None and p.poll() is None]


def cleanup_stale() -> list[str]:
    """Kill daemons and remove temp dirs of SLURM clusters whose test process died; return the dirs removed."""
    return remove_orphaned_dirs(TMP_PREFIX)
