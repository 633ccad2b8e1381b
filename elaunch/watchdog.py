"""The hang watch at the edge: feeds each attempt's `hangs.ProgressClock` and says who is hung.

A sink on the bus (worker output lines are signs of life, `--progress-pattern` matches are
progress), heartbeat files (`ELAUNCH_HEARTBEAT_FILE`, one per worker, read by `stat` when a
deadline comes), torch's FileTimer pipe (served without torch: the FIFO is read in the agent's
selector through `LocalProcesses.add_reader`), the process state in `/proc` (stopped by SIGSTOP,
uninterruptible sleep), the cgroup's OOM-kill count, and py-spy for the Python stack of every
local worker before anything is killed (`elaunch[debug]`; without it the report says how).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Callable, Mapping

from elaunch import events as ev
from elaunch.errors import ElaunchError
from elaunch.hangs import Overdue, ProgressClock, Supervision, timer_request
from elaunch.spec import WorkerPlan
from elaunch.values import Value, replace, value

HEARTBEAT_ENV = "ELAUNCH_HEARTBEAT_FILE"
TIMER_ENABLE_ENV = "TORCHELASTIC_ENABLE_FILE_TIMER"
TIMER_FILE_ENV = "TORCHELASTIC_TIMER_FILE"
STACK_TIMEOUT = 15.0
"""Longest wait for py-spy's stacks (all workers at once) before the hung group is stopped."""
NO_PY_SPY = "Python stacks: py-spy is not installed (pip install 'elaunch[debug]', or run `py-spy dump --pid PID`)"
PROCESS_STATES = {"T": "stopped (SIGSTOP)", "t": "stopped by a debugger", "D": "in uninterruptible sleep (D)"}


@value
class Hang(Value):
    """A hung worker: who, for how long without progress, why we say so, where it stood."""

    local_rank: int
    silent: float
    """Seconds since its last progress (or since it started)."""
    reason: str
    last_line: str | None = None
    process_state: str | None = None


class Watchdog:
    """Per attempt: `prepare` the plans, `started`, then `timeout`/`check` around each wait."""

    def __init__(
        self,
        supervision: Supervision,
        add_reader: Callable[[int, Callable[[], None]], None] | None = None,
        wake: Callable[[], None] | None = None,
        fifo_dir: str | None = None,
        timer_file: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`add_reader(fd, callback)`: the selector of the agent's wait (the FileTimer pipe is read
        there) and `wake` (makes that wait return, to take a new timer's deadline into account);
        `fifo_dir`: where the pipe is made unless `timer_file` (the agent's TORCHELASTIC_TIMER_FILE) names it."""
        self.settings = supervision
        self._now = clock
        self._pattern = re.compile(supervision.progress_pattern.encode()) if supervision.progress_pattern else None
        self._clock: ProgressClock | None = None
        self._pids: dict[int, int] = {}
        self._heartbeats: dict[int, tuple[str, int | None]] = {}
        self._last_line: dict[int, bytes] = {}
        self._timers: dict[tuple[int, str], tuple[int, float]] = {}
        self._fifo: str | None = None
        self._fifo_fds: list[int] = []
        self._partial = b""
        self._wake = wake
        if supervision.file_timer and add_reader is not None:
            self._serve_timer_pipe(add_reader, timer_file or os.path.join(fifo_dir or "/tmp", "timer.fifo"))

    # -- the FileTimer pipe -------------------------------------------------------------------
    def _serve_timer_pipe(self, add_reader: Callable[[int, Callable[[], None]], None], path: str) -> None:
        """Make the FIFO (a stale one at `path` is replaced; any other file there is an error)."""
        try:
            if os.path.exists(path) and stat.S_ISFIFO(os.stat(path).st_mode):
                os.unlink(path)
            os.mkfifo(path, 0o600)
            rd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            wr = os.open(path, os.O_WRONLY | os.O_NONBLOCK)  # held open: no EOF when the last client closes
        except OSError as e:
            raise ElaunchError(
                f"TORCHELASTIC_TIMER_FILE {path}: cannot make the FileTimer pipe: {e.strerror or e}"
            ) from None
        self._fifo, self._fifo_fds = path, [rd, wr]
        add_reader(rd, self._read_timer_pipe)

    def _read_timer_pipe(self) -> None:
        try:
            data = os.read(self._fifo_fds[0], 1 << 16)
        except BlockingIOError:
            return
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            req = timer_request(line)
            if req is None:
                continue
            pid, scope, expires = req
            lr = self._local_rank_of(pid)
            if lr is None:
                continue
            if self._clock is not None and self._clock.alive(lr, self._now(), strict=True) and self._wake:
                self._wake()
            if expires < 0:
                self._timers.pop((pid, scope), None)
            else:
                self._timers[(pid, scope)] = (lr, expires)
                if self._wake is not None:
                    self._wake()

    def _local_rank_of(self, pid: int) -> int | None:
        """The worker `pid` is, or belongs to (each worker leads its own process group)."""
        for lr, wpid in self._pids.items():
            if wpid == pid:
                return lr
        try:
            pgid = os.getpgid(pid)
        except OSError:
            return None
        for lr, wpid in self._pids.items():
            if wpid == pgid:
                return lr
        return None

    # -- per attempt ----------------------------------------------------------------------------
    def prepare(self, plans: list[WorkerPlan]) -> list[WorkerPlan]:
        """Notes each worker's `ELAUNCH_HEARTBEAT_FILE` (ranks.worker_env puts it next to its error
        file); when the FileTimer pipe is served, the plans with `TORCHELASTIC_TIMER_FILE` added."""
        self._heartbeats = {p.local_rank: (p.env[HEARTBEAT_ENV], None) for p in plans if HEARTBEAT_ENV in p.env}
        if self._fifo is None:
            return plans
        return [replace(p, env={**p.env, TIMER_FILE_ENV: self._fifo}) for p in plans]

    def started(self, pids: Mapping[int, int]) -> None:
        """A new attempt's workers run (local rank -> pid): a fresh clock, no timers."""
        self._pids = dict(pids)
        self._clock = ProgressClock(self._now(), pids)
        self._timers.clear()
        self._last_line.clear()

    @property
    def first_progress(self) -> float | None:
        """Monotonic time of this attempt's first progress, or None."""
        return self._clock.first_at if self._clock is not None else None

    def progressed(self) -> bool:
        """Did this attempt make progress (the restart rule's sense: see hangs.py)?"""
        self._read_heartbeats()
        return self._clock is not None and self._clock.progressed

    def timeout(self, running: list[int]) -> float | None:
        """Seconds until the next hang deadline of the `running` local ranks, or None (block)."""
        if self._clock is None:
            return None
        s = self.settings
        at = self._clock.next_deadline(s.hang_timeout, s.startup_limit, running)
        waits = [] if at is None else [at - self._now()]
        if self._timers:
            waits.append(min(exp for _, exp in self._timers.values()) - time.time())
        return max(0.0, min(waits)) if waits else None

    def check(self, running: list[int]) -> list[Hang]:
        """The `running` workers that are hung now (none when the watch is off)."""
        s = self.settings
        if self._clock is None or (s.startup_limit is None and not self._timers):
            return []  # nothing watched: no stat of the heartbeat files on every wake-up
        self._read_heartbeats()
        now, wall = self._now(), time.time()
        hangs: dict[int, Hang] = {}
        for (_pid, scope), (lr, expires) in sorted(self._timers.items(), key=lambda kv: kv[1][1]):
            if expires <= wall and lr in running and lr not in hangs:
                since = self._clock.last.get(lr) or self._clock.started
                hangs[lr] = self._hang(
                    lr, now - since, f"torch FileTimer scope {scope!r} expired {wall - expires:.1f}s ago"
                )
        for o in self._clock.overdue(now, s.hang_timeout, s.startup_limit, running):
            if o.local_rank not in hangs:
                hangs[o.local_rank] = self._hang(o.local_rank, o.silent, _overdue_reason(o))
        return [hangs[lr] for lr in sorted(hangs)]

    def _hang(self, lr: int, silent: float, reason: str) -> Hang:
        line = self._last_line.get(lr)
        return Hang(
            local_rank=lr,
            silent=silent,
            reason=reason,
            last_line=line.decode(errors="replace") if line is not None else None,
            process_state=process_state(self._pids.get(lr, 0)),
        )

    def _read_heartbeats(self) -> None:
        if self._clock is None:
            return
        for lr, (path, seen) in self._heartbeats.items():
            try:
                mtime = os.stat(path).st_mtime_ns
            except OSError:
                continue
            if mtime != seen:
                self._heartbeats[lr] = (path, mtime)
                self._clock.alive(lr, self._now(), strict=True)

    # -- the sink ---------------------------------------------------------------------------------
    def handle(self, e: ev.Event) -> None:
        if not isinstance(e, ev.WorkerOutput) or self._clock is None:
            return
        lr = e.local_rank
        first = False
        if self._pattern is not None:
            if self._pattern.search(e.data):
                first = self._clock.alive(lr, self._now(), strict=True)
        else:
            first = self._clock.alive(lr, self._now(), strict=e.stream == 1)
        if first and self._wake is not None:
            self._wake()  # its deadline moved earlier (start-up limit -> hang limit): wait again
        end = e.data.rstrip(b"\n").rsplit(b"\n", 1)[-1]
        self._last_line[lr] = end[-400:]

    def flush(self) -> None:
        pass

    def close(self) -> None:
        for fd in self._fifo_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fifo_fds = []
        if self._fifo is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._fifo)
            self._fifo = None


def _overdue_reason(o: Overdue) -> str:
    if o.starting:
        return f"no progress since it started {o.silent:.1f}s ago (--startup-timeout {o.limit:g}s)"
    return f"no progress for {o.silent:.1f}s (--hang-timeout {o.limit:g}s)"


def process_state(pid: int) -> str | None:
    """`stopped (SIGSTOP)` / `in uninterruptible sleep (D)` from /proc/PID/stat, else None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    state = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3].decode(errors="replace")
    return PROCESS_STATES.get(state)


def python_stacks(pids: Mapping[int, int], timeout: float = STACK_TIMEOUT) -> dict[int, str]:
    """local rank -> the Python stack of that worker (`py-spy dump`), all at once and bounded; a
    line saying why not when py-spy is missing or fails (not Python, no permission...)."""
    exe = shutil.which("py-spy")
    if exe is None:
        return dict.fromkeys(pids, NO_PY_SPY)
    procs: dict[int, subprocess.Popen[bytes]] = {}
    for lr, pid in pids.items():
        with contextlib.suppress(OSError):
            procs[lr] = subprocess.Popen(
                [exe, "dump", "--nonblocking", "--pid", str(pid)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
    deadline = time.monotonic() + timeout
    out: dict[int, str] = {}
    for lr, p in procs.items():
        try:
            text, _ = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
            body = text.decode(errors="replace").rstrip()
            out[lr] = (
                body
                if p.returncode == 0
                else f"py-spy could not read the stack: {body.splitlines()[-1] if body else p.returncode}"
            )
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            out[lr] = f"py-spy gave no stack within {timeout:g}s"
    for lr in pids:
        out.setdefault(lr, "py-spy could not be started")
    return out


def cgroup_oom_kills() -> int | None:
    """The `oom_kill` count of this process's cgroup (v2 `memory.events`), or None where unreadable."""
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as f:
            path = next((line.split(":", 2)[2].strip() for line in f if line.startswith("0::")), None)
        if path is None:
            return None
        with open(f"/sys/fs/cgroup{path}/memory.events", encoding="utf-8") as f:
            for line in f:
                name, _, n = line.partition(" ")
                if name == "oom_kill":
                    return int(n)
    except (OSError, ValueError):
        return None
    return None
