"""A tiny forked guardian that kills the workers' process groups if the agent dies.

PR_SET_PDEATHSIG kills a worker when the agent dies, but not the worker's own children
(DataLoader workers, shells, servers). The reaper holds the read end of a pipe; when the
agent exits or is SIGKILLed the pipe reaches EOF and the reaper SIGKILLs every process group
it was told about and removes the agent's temporary directories. It is forked before any
thread exists, in its own session so a signal to the agent's group does not take it along.
"""

from __future__ import annotations

import os
import shutil
import signal


class Reaper:
    """The agent-side handle: `watch` process groups and temp dirs, `close` on a clean exit."""

    def __init__(self) -> None:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the forked child
            os.close(w)
            _reaper_main(r)
        os.close(r)
        self._w: int | None = w
        self.pid = pid

    def _send(self, line: str) -> None:
        if self._w is None:
            return
        try:
            os.write(self._w, (line + "\n").encode())
        except OSError:
            pass

    def watch(self, pgid: int) -> None:
        self._send(f"+{pgid}")

    def unwatch(self, pgid: int) -> None:
        self._send(f"-{pgid}")

    def watch_dir(self, path: str) -> None:
        self._send(f"d{path}")

    def watch_cgroup(self, path: str) -> None:
        """The workers' cgroup (cgroup.py): if the agent dies, everything in it is killed
        (`setsid()` escapees included) and it is removed."""
        self._send(f"c{path}")

    def watch_marker(self, marker: str) -> None:
        """Every process whose environment holds `marker` (`NAME=value-prefix`, the run's) is the
        job's: if the agent dies, their process groups are killed too (a worker's descendant that
        left its group with `setsid()` but kept its environment)."""
        self._send(f"m{marker}")

    def spawning(self, marker: str) -> None:
        """Workers whose environment holds `marker` (`NAME=value-prefix`) are being started: should
        the agent die before `spawned()`, the reaper kills their process groups too, found by that
        marker (their pids may not have reached it yet, nor their parent-death signal been set)."""
        self._send(f"s{marker}")

    def spawned(self) -> None:
        """Every worker started since `spawning` has been `watch`ed."""
        self._send("e")

    def close(self) -> None:
        """Clean exit: the agent already stopped its workers; the reaper still kills leftovers."""
        if self._w is None:
            return
        os.close(self._w)
        self._w = None
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


def _groups_with_env(marker: bytes) -> set[int]:  # pragma: no cover - runs in the reaper
    """Process groups of the processes whose environment has an entry starting with `marker`."""
    found: set[int] = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read()
            if b"\0" + marker in b"\0" + env:
                found.add(os.getpgid(int(name)))
        except OSError:
            continue
    return found


def _reaper_main(fd: int) -> None:  # pragma: no cover - runs in the forked child
    code = 0
    try:
        os.setsid()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(sig, signal.SIG_IGN)
        devnull = os.open(os.devnull, os.O_RDWR)
        for std in (0, 1, 2):
            os.dup2(devnull, std)
        os.closerange(3, fd)
        os.closerange(fd + 1, 65536)
        groups: set[int] = set()
        dirs: list[str] = []
        cgroups: list[str] = []
        markers: list[bytes] = []
        spawning: bytes | None = None
        buf = b""
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                line = raw.decode()
                if line.startswith("+"):
                    groups.add(int(line[1:]))
                elif line.startswith("-"):
                    groups.discard(int(line[1:]))
                elif line.startswith("d"):
                    dirs.append(line[1:])
                elif line.startswith("m"):
                    markers.append(raw[1:])
                elif line.startswith("c"):
                    cgroups.append(line[1:])
                elif line.startswith("s"):
                    spawning = raw[1:]
                elif line == "e":
                    spawning = None
        for marker in [*markers, *([spawning] if spawning else [])]:
            groups.update(_groups_with_env(marker))
        for pgid in groups:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except OSError:
                pass
        if cgroups:
            from elaunch.cgroup import WorkerCgroup

            for path in cgroups:
                WorkerCgroup(path).remove()
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
    except BaseException:
        code = 1
    os._exit(code)
