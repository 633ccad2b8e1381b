"""Catching the workers' descendants that leave their process group: a child subreaper and a cgroup.

A worker's child that calls `setsid()` (a daemonising library, `nohup setsid ...`) leaves the
worker's process group, so signalling the group does not reach it. Two kernel features bring it
back:

* `PR_SET_CHILD_SUBREAPER` on the agent (`become_subreaper`): when such a process's parent dies,
  it is re-parented to the agent instead of init, so at the end of each generation the agent finds
  it among its own children (`adopted`) and stops it. Found by the run's marker in the process's
  environment (`TORCHELASTIC_ERROR_FILE=<run dir>/`), so that other children of a program that
  calls `elaunch.launch` are never touched.
* A cgroup v2 per agent (`WorkerCgroup`), where one can be made (a writable cgroup2 mount: root,
  or a delegated subtree): each worker is moved into it as it starts and everything it forks stays
  in it, `setsid()` or not; `cgroup.kill` (Linux 5.14+) ends them all at once. The reaper does the
  same when the agent is SIGKILLed (it is told the cgroup's path). When the reaper dies too (a
  scheduler SIGKILLs every process of a step at once), the empty cgroup is left; the next agent
  made under the same cgroup removes those of agents that are gone (`stale_cgroups`).

Limits (docs/architecture.md, "No orphans"): without a cgroup, a descendant that escapes with
`setsid()` *and* clears its environment is not found when the agent is SIGKILLed; a worker's
child forked in the few microseconds between the worker's start and its move into the cgroup
stays outside it (it is still in the worker's process group).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper(on: bool = True) -> bool:
    """Make this process a child subreaper (orphaned descendants are re-parented to it), or stop
    being one (`on=False`: a program that called `elaunch.launch` gets its usual behaviour back).
    False where refused."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def children(pid: int | None = None) -> list[int]:
    """The direct children of `pid` (this process by default), from /proc (every thread's list)."""
    pid = os.getpid() if pid is None else pid
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found += [int(x) for x in f.read().split()]
        except OSError:
            continue
    return found


def has_marker(pid: int, marker: bytes) -> bool:
    """True if an entry of `pid`'s environment starts with `marker` (e.g. b"NAME=prefix")."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read()
    except OSError:
        return False
    return b"\0" + marker in b"\0" + env


def stop_adopted(marker: bytes, keep: set[int], rounds: int = 8) -> list[int]:
    """SIGKILL this process's children that carry `marker` (descendants of the workers re-parented
    here) and their process groups, then reap them; repeated while killing one brings up more
    (its own children, re-parented in turn). `keep`: pids not to touch (workers, the reaper)."""
    killed: list[int] = []
    for _ in range(rounds):
        found = [p for p in children() if p not in keep and p not in killed and has_marker(p, marker)]
        if not found:
            break
        for pid in found:
            with contextlib.suppress(OSError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for pid in found:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, 0)  # SIGKILLed: returns at once
        killed += found
    return killed


def cgroup2_mount() -> str | None:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or .../unified on hybrid systems)."""
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    return left.split()[4]
    except OSError:
        pass
    return None


def own_cgroup() -> str | None:
    """This process's cgroup v2 path (`0::/path` in /proc/self/cgroup), or None."""
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].strip()
    except OSError:
        pass
    return None


CGROUP_PREFIX = "elaunch-"


def stale_cgroups(names: list[str], alive: Callable[[int], bool]) -> list[str]:
    """Of the entries `names` of a cgroup directory, the `elaunch-<pid>` ones whose agent `pid` is
    no longer `alive`: left behind when the agent and its reaper were both SIGKILLed (e.g. a
    scheduler killing every process of a job step at once)."""
    out = []
    for name in names:
        pid = name[len(CGROUP_PREFIX) :]
        if name.startswith(CGROUP_PREFIX) and pid.isdigit() and not alive(int(pid)):
            out.append(name)
    return out


def _pid_alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


class WorkerCgroup:
    """A cgroup v2 made for one agent's workers: `add` each worker, `kill` them all, `remove` it."""

    def __init__(self, path: str) -> None:
        self.path = path

    @classmethod
    def create(cls) -> WorkerCgroup | None:
        """A new cgroup next to this process's own (as a sibling would be refused with controllers
        enabled: a child of it), or None where none can be made or `cgroup.kill` is missing."""
        mount, own = cgroup2_mount(), own_cgroup()
        if mount is None or own is None:
            return None
        base = os.path.join(mount, own.lstrip("/"))
        with contextlib.suppress(OSError):
            for name in stale_cgroups(os.listdir(base), _pid_alive):
                with contextlib.suppress(OSError):  # not empty (EBUSY): something still runs there
                    os.rmdir(os.path.join(base, name))
        path = os.path.join(base, f"{CGROUP_PREFIX}{os.getpid()}")
        try:
            os.mkdir(path)
        except OSError:
            return None
        if not os.path.exists(os.path.join(path, "cgroup.kill")):
            with contextlib.suppress(OSError):
                os.rmdir(path)
            return None
        return cls(path)

    def add(self, pid: int) -> bool:
        """Move process `pid` (a worker just started) into the cgroup; False if refused."""
        try:
            with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
                f.write(str(pid))
            return True
        except OSError:
            return False

    def pids(self) -> list[int]:
        try:
            with open(os.path.join(self.path, "cgroup.procs")) as f:
                return [int(x) for x in f.read().split()]
        except OSError:
            return []

    def kill(self) -> None:
        """SIGKILL every process in the cgroup (`cgroup.kill`)."""
        with contextlib.suppress(OSError), open(os.path.join(self.path, "cgroup.kill"), "w") as f:
            f.write("1")

    def remove(self, timeout: float = 5.0) -> None:
        """Kill what is left, wait (bounded) until the cgroup is empty, and remove it."""
        self.kill()
        deadline = time.monotonic() + timeout
        while True:
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:
                if time.monotonic() >= deadline:
                    return
                time.sleep(0.01)
