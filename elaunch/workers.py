"""Start, watch, signal and stop local worker processes. The only module that forks workers.

Each worker runs in its own session/process group (so signals reach its children, and a
terminal's Ctrl-C reaches only the agent), with PR_SET_PDEATHSIG=SIGKILL set before exec so it
cannot outlive the agent; the `Reaper` covers the workers' own children. Exits are noticed
through pidfds and output through the same selector: `wait` blocks until something happens.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import selectors
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping

from elaunch.cgroup import WorkerCgroup, become_subreaper, stop_adopted
from elaunch.errors import WorkerStartError
from elaunch.events import Bus, Message, WorkerBytes, WorkerOutput, WorkerPartialLine, WorkerProgress
from elaunch.reaper import Reaper
from elaunch.signals import SelfPipe, SignalTrap, kill_group
from elaunch.spec import WorkerPlan
from elaunch.tails import Explanation, OutputTail
from elaunch.terminal import Decoded, PtyPlan, StreamDecoder, open_pty
from elaunch.values import Record, Value, field, record, replace, value

NO_EMULATOR = (
    "a worker draws with cursor movements (nested tqdm bars, rich): its output is shown with its escape "
    "codes; install pyte (pip install 'pyte>=0.8.2,<0.9', a dependency of elaunch) to see what it draws"
)
F_SETPIPE_SZ = 1031
PIPE_DRAIN = 1.0
"""Seconds `release` reads the pipes of a stopped generation at most, once its processes are killed."""
PR_SET_PDEATHSIG = 1
READ_SIZE = 1 << 16
"""Bytes asked for by one `os.read` of a worker stream. `os.read(fd, n)` allocates n bytes before
it reads: asking for 1 MiB to get a 70-byte bar redraw cost ~16 us a read (~8x the read itself),
a large part of the agent's CPU under workers redrawing bars at 50 Hz. A read that fills it is
followed by more, up to READ_MAX bytes in one chunk (one event) under a flood."""
READ_MAX = 1 << 20


@value
class Exit(Value):
    """A worker's end: `exitcode` when it exited, `signal` when a signal killed it; `ts` is wall-clock
    seconds (ordered: a later exit never has an earlier ts). `why` is read here, at the edge."""

    local_rank: int
    global_rank: int
    pid: int
    exitcode: int | None
    signal: int | None
    ts: float
    why: Explanation = field(default_factory=Explanation)

    @property
    def ok(self) -> bool:
        return self.exitcode == 0


@record
class Wakeup(Record):
    """What ended a `wait`: exits, caught signals, an explicit wake, or nothing (timeout)."""

    exits: list[Exit] = field(default_factory=list)
    signals: list[int] = field(default_factory=list)
    woken: bool = False


@record
class _Proc(Record):
    plan: WorkerPlan
    popen: subprocess.Popen[bytes]
    pidfd: int | None
    fds: dict[int, int]
    bufs: dict[int, StreamDecoder]
    ptys: set[int] = field(default_factory=set)
    """Streams read from a pty master (closed here) rather than a pipe (closed with the Popen)."""
    tail: OutputTail = field(default_factory=OutputTail)
    exit: Exit | None = None


def _child_setup_factory() -> Callable[[], None]:
    """The pre-exec hook where setpriv is missing: die with the agent, and close the race where the
    agent is already gone. A Python pre-exec hook makes each spawn a full fork running Python in the
    child: about 2.5 ms a worker on this machine, against 0.5 ms for setpriv's vfork and exec."""
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def setup() -> None:
        prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), 9)

    return setup


def setpriv_prefix() -> tuple[str, ...] | None:
    """`setpriv --pdeathsig KILL --` (util-linux 2.33+: the parent-death signal set between fork and
    exec without Python in the child), or None where it is missing or too old (then `_child_setup_factory`).

    The race it leaves (the agent dies between the fork and setpriv's prctl) is closed by the reaper:
    see `Reaper.spawning`.
    """
    path = shutil.which("setpriv")
    if path is None:
        return None
    try:
        ok = (
            subprocess.run([path, "--pdeathsig", "KILL", "--", "true"], capture_output=True, timeout=10).returncode == 0
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (path, "--pdeathsig", "KILL", "--") if ok else None


def check_executable(argv0: str, env: Mapping[str, str]) -> str | None:
    """Why `argv0` cannot be executed (as the kernel would refuse it), or None.

    With setpriv in front, a failed exec happens in the child and would look like a worker that
    exited 127; this keeps it a start failure ("cannot start ..."), as with a direct exec.
    """
    path = argv0 if "/" in argv0 else shutil.which(argv0, path=env.get("PATH", os.defpath))
    if path is None or not os.path.exists(path):
        return "No such file or directory"
    if os.path.isdir(path) or not os.access(path, os.X_OK):
        return "Permission denied"
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError as e:
        return e.strerror or str(e)
    if head.startswith(b"#!"):
        interpreter = head[2:].split(b"\n", 1)[0].strip().split(maxsplit=1)
        if not interpreter:
            return "Exec format error"
        name = os.fsdecode(interpreter[0])
        if not os.path.exists(name):
            return f"No such file or directory (interpreter {name})"
        if not os.access(name, os.X_OK):
            return f"Permission denied (interpreter {name})"
    return None


def read_chunk(fd: int) -> bytes:
    """What a non-blocking `fd` has now, up to READ_MAX bytes (b"" at EOF), in reads of READ_SIZE.
    Raises what the first read raises (BlockingIOError: nothing there; OSError EIO: a pty's end);
    what a later read would raise is left for the next call."""
    data = os.read(fd, READ_SIZE)
    if len(data) < READ_SIZE:
        return data
    parts = [data]
    size = len(data)
    while size < READ_MAX:
        try:
            more = os.read(fd, READ_SIZE)
        except OSError:
            break
        if not more:
            break
        parts.append(more)
        size += len(more)
        if len(more) < READ_SIZE:
            break
    return b"".join(parts)


class LocalProcesses:
    """One generation of workers at a time; `wait` is the agent's only blocking call."""

    def __init__(
        self,
        bus: Bus,
        trap: SignalTrap | None = None,
        reaper: Reaper | None = None,
        poll_interval: float = 0.1,
        ptys: PtyPlan | None = None,
    ) -> None:
        """`poll_interval` (--monitor-interval): how often exits are polled where pidfds are missing.
        `ptys`: which worker streams write to a pty instead of a pipe (elaunch's own output is a
        terminal; see terminal.py)."""
        self._bus = bus
        self._poll = poll_interval
        self._trap = trap
        self._reaper = reaper
        self._sel = selectors.DefaultSelector()
        self._wake = SelfPipe()
        self._sel.register(self._wake.fileno(), selectors.EVENT_READ, ("wake",))
        if trap is not None:
            self._sel.register(trap.fileno(), selectors.EVENT_READ, ("signal",))
        self._procs: dict[int, _Proc] = {}
        self._setpriv = setpriv_prefix()
        self._child_setup = None if self._setpriv else _child_setup_factory()
        self._last_ts = 0.0
        self._use_pidfd = hasattr(os, "pidfd_open")
        self._spawn_thread = threading.get_ident()
        self._ptys = ptys
        self._warned_emulator = False
        self._timed: set[tuple[int, int]] = set()
        """(local rank, stream) whose decoder waits for time to pass (a prompt, bars going stale)."""
        # Descendants that leave their worker's process group with setsid() (cgroup.py).
        self._subreaper = become_subreaper()
        self._cgroup = WorkerCgroup.create()
        self._marker: bytes | None = None
        if self._cgroup is not None and reaper is not None:
            reaper.watch_cgroup(self._cgroup.path)

    # -- starting -------------------------------------------------------------------------
    def start(self, plans: Iterable[WorkerPlan]) -> dict[int, int]:
        """Start a new generation; the previous one must have been `release`d. Returns pids."""
        if self._procs:
            raise RuntimeError("previous workers not released")
        if threading.get_ident() != self._spawn_thread:
            raise RuntimeError("workers must be started from the thread that outlives them")
        pids: dict[int, int] = {}
        plans = list(plans)
        if plans and plans[0].error_file:
            # The run's marker (its dir) in every worker's environment, inherited by their children.
            run_dir = os.path.dirname(os.path.dirname(os.path.dirname(plans[0].error_file)))
            if self._marker is None and self._reaper is not None and self._cgroup is None:
                self._reaper.watch_marker(f"TORCHELASTIC_ERROR_FILE={run_dir}/")
            self._marker = f"TORCHELASTIC_ERROR_FILE={run_dir}/".encode()
        if self._reaper is not None and plans and plans[0].error_file:
            # Marks the workers of this generation for the reaper until their pids are known.
            self._reaper.spawning(f"TORCHELASTIC_ERROR_FILE={os.path.dirname(os.path.dirname(plans[0].error_file))}/")
        for plan in plans:
            ptys: dict[int, tuple[int, int]] = {}
            try:
                if self._setpriv is not None:
                    why = check_executable(plan.argv[0], plan.env)
                    if why is not None:
                        raise OSError(why)
                for stream in (1, 2):
                    if self._ptys is not None and self._ptys.wants(plan.local_rank, stream):
                        ptys[stream] = open_pty(self._ptys.columns, self._ptys.lines)
                popen = subprocess.Popen(
                    [*(self._setpriv or ()), *(plan.binding.prefix if plan.binding else ()), *plan.argv],
                    env=dict(plan.env),
                    stdout=ptys[1][1] if 1 in ptys else subprocess.PIPE,
                    stderr=ptys[2][1] if 2 in ptys else subprocess.PIPE,
                    start_new_session=True,
                    preexec_fn=self._child_setup,
                    close_fds=True,
                )
            except OSError as e:
                for master, slave in ptys.values():
                    os.close(master)
                    os.close(slave)
                self.kill_all()
                self.release()
                raise WorkerStartError(f"cannot start {plan.argv[0]!r}: {e.strerror or e}") from None
            for _, slave in ptys.values():
                os.close(slave)  # the worker has it: EOF (EIO) on the master once it and its children end
            if self._cgroup is not None:
                self._cgroup.add(popen.pid)
            if self._reaper is not None:
                self._reaper.watch(popen.pid)
            pidfd = None
            if self._use_pidfd:
                try:
                    pidfd = os.pidfd_open(popen.pid)
                except OSError:
                    self._use_pidfd = False
            proc = _Proc(plan, popen, pidfd, {}, {})
            for stream, f in ((1, popen.stdout), (2, popen.stderr)):
                if stream in ptys:
                    fd = ptys[stream][0]
                    proc.ptys.add(stream)
                else:
                    assert f is not None
                    fd = f.fileno()
                    with contextlib.suppress(OSError):
                        fcntl.fcntl(fd, F_SETPIPE_SZ, 1 << 20)
                os.set_blocking(fd, False)
                proc.fds[stream] = fd
                proc.bufs[stream] = StreamDecoder()
                self._sel.register(fd, selectors.EVENT_READ, ("out", plan.local_rank, stream))
            if pidfd is not None:
                self._sel.register(pidfd, selectors.EVENT_READ, ("exit", plan.local_rank))
            self._procs[plan.local_rank] = proc
            pids[plan.local_rank] = popen.pid
        if self._reaper is not None:
            self._reaper.spawned()
        return pids

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        """Call `callback` (on the agent's thread, inside `wait`) whenever `fd` is readable."""
        self._sel.register(fd, selectors.EVENT_READ, ("reader", callback))

    # -- watching -------------------------------------------------------------------------
    def running(self) -> list[int]:
        """Local ranks whose process has not been seen to exit."""
        return [lr for lr, p in self._procs.items() if p.exit is None]

    def wake(self) -> None:
        """Make a blocked `wait` return; safe from any thread."""
        self._wake.poke()

    def wait(self, timeout: float | None) -> Wakeup:
        """Block until a worker exits, a signal is caught, `wake` is called, or `timeout` passes.

        Output read meanwhile is published on the bus as it arrives.
        """
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        result = Wakeup()
        self._bus.flush()  # what the agent published since the last wait is seen before we block
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._use_pidfd:
                remaining = self._poll if remaining is None else min(remaining, self._poll)
            due = self._next_due()
            if due is not None:
                until_due = max(0.0, due - time.monotonic())
                remaining = until_due if remaining is None else min(remaining, until_due)
            ready = self._sel.select(remaining)
            # Under a flood of output keep reading while data is ready and flush once when idle:
            # a flush per tiny read (unbuffered workers write each line in two calls) is costly.
            for _ in range(64):
                for key, _ in ready:
                    self._dispatch(key.data, result)
                if result.exits or result.signals or result.woken or not ready:
                    break
                ready = self._sel.select(0)
            if not self._use_pidfd:
                for lr, p in list(self._procs.items()):
                    if p.exit is None and p.popen.poll() is not None:
                        self._reap(lr, result)
            if self._timed:
                self._tick()
            self._bus.flush()
            if result.exits or result.signals or result.woken:
                return result
            if deadline is not None and time.monotonic() >= deadline:
                return result

    def _dispatch(self, tag: tuple[object, ...], result: Wakeup) -> None:
        kind = tag[0]
        if kind == "out":
            self._read(tag[1], tag[2])  # type: ignore[arg-type]
        elif kind == "exit":
            self._reap(tag[1], result)  # type: ignore[arg-type]
        elif kind == "wake":
            self._wake.drain()
            result.woken = True
        elif kind == "reader":
            tag[1]()  # type: ignore[operator]
        elif kind == "signal" and self._trap is not None:
            result.signals.extend(self._trap.drain())

    def _read(self, local_rank: int, stream: int) -> bool:
        """One read from a worker's pipe; False when nothing more is there now (or ever)."""
        proc = self._procs.get(local_rank)
        if proc is None or stream not in proc.fds:
            return False
        try:
            data = read_chunk(proc.fds[stream])
        except BlockingIOError:
            return False
        except OSError as e:
            if e.errno != errno.EIO:
                raise
            data = b""
        if not data:
            self._close_stream(proc, stream)
            return False
        gr = proc.plan.global_rank
        self._bus.publish(WorkerBytes(local_rank=local_rank, global_rank=gr, stream=stream, data=data))
        buf = proc.bufs[stream]
        self._publish(proc, stream, buf.feed(data, time.monotonic()))
        if buf.missing_emulator and not self._warned_emulator:
            self._warned_emulator = True
            self._bus.publish(Message(level="warning", text=NO_EMULATOR))
        if buf.due() is not None:
            self._timed.add((local_rank, stream))
        return True

    def _publish(self, proc: _Proc, stream: int, d: Decoded) -> None:
        lines, bars, partial = d
        lr, gr = proc.plan.local_rank, proc.plan.global_rank
        if lines:
            proc.tail.feed(stream, lines)
            self._bus.publish(WorkerOutput(local_rank=lr, global_rank=gr, stream=stream, data=lines))
        if bars is not None:
            self._bus.publish(WorkerProgress(local_rank=lr, global_rank=gr, stream=stream, text=bars))
        if partial is not None:
            self._bus.publish(WorkerPartialLine(local_rank=lr, global_rank=gr, stream=stream, text=partial))

    def _next_due(self) -> float | None:
        """The earliest time a stream's decoder has something to do without new bytes."""
        due = None
        for lr, stream in list(self._timed):
            proc = self._procs.get(lr)
            t = proc.bufs[stream].due() if proc is not None and stream in proc.fds else None
            if t is None:
                self._timed.discard((lr, stream))
            elif due is None or t < due:
                due = t
        return due

    def _tick(self) -> None:
        now = time.monotonic()
        for lr, stream in list(self._timed):
            proc = self._procs.get(lr)
            if proc is None or stream not in proc.fds:
                self._timed.discard((lr, stream))
                continue
            buf = proc.bufs[stream]
            t = buf.due()
            if t is not None and t <= now:
                self._publish(proc, stream, buf.tick(now))

    def _close_stream(self, proc: _Proc, stream: int) -> None:
        fd = proc.fds.pop(stream)
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(fd)
        rest = proc.bufs[stream].flush()
        if rest:
            proc.tail.feed(stream, rest)
            self._bus.publish(
                WorkerOutput(
                    local_rank=proc.plan.local_rank, global_rank=proc.plan.global_rank, stream=stream, data=rest
                )
            )
        if stream in proc.ptys:
            os.close(fd)
            return
        f = proc.popen.stdout if stream == 1 else proc.popen.stderr
        if f is not None:
            f.close()

    def _drain(self, proc: _Proc) -> None:
        """Read what a finished worker left in its pipes, so output comes before its exit."""
        for stream in (1, 2):
            for _ in range(1024):  # bounded: a child of the worker may still be writing
                if not self._read(proc.plan.local_rank, stream):
                    break

    def _reap(self, local_rank: int, result: Wakeup, explain: bool = True) -> None:
        """Record a finished worker's exit; `explain=False` when the caller explains it later (release)."""
        proc = self._procs.get(local_rank)
        if proc is None or proc.exit is not None:
            return
        rc = proc.popen.poll()
        if rc is None:
            return
        if proc.pidfd is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(proc.pidfd)
            os.close(proc.pidfd)
            proc.pidfd = None
        # epoll reports ready pidfds in the order they became ready: keep that order in time.
        ts = max(time.time(), self._last_ts + 1e-6)
        self._last_ts = ts
        self._drain(proc)
        ex = Exit(
            local_rank=local_rank,
            global_rank=proc.plan.global_rank,
            pid=proc.popen.pid,
            exitcode=rc if rc >= 0 else None,
            signal=-rc if rc < 0 else None,
            ts=ts,
            why=proc.tail.explain(proc.plan.error_file) if explain else Explanation(),
        )
        proc.exit = ex
        result.exits.append(ex)

    # -- signalling and stopping -----------------------------------------------------------
    def send(self, sig: int, local_ranks: Iterable[int] | None = None, *, group: bool = True) -> None:
        """Signal workers: their whole process group, or only the worker process itself."""
        ranks = list(self._procs) if local_ranks is None else list(local_ranks)
        for lr in ranks:
            proc = self._procs.get(lr)
            if proc is None:
                continue
            if group:
                kill_group(proc.popen.pid, sig)
            elif proc.exit is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.popen.pid, sig)

    def kill_all(self) -> None:
        """SIGKILL every process group of this generation, finished workers' included."""
        self.send(9)

    def release(self, timeout: float = 5.0) -> list[Exit]:
        """Kill whatever is left, reap, read the pipes to the end (bounded) and forget the generation.

        Descendants that left their worker's process group are killed too: through the cgroup
        where there is one, else those re-parented to this (subreaper) process (cgroup.py)."""
        self.kill_all()
        if self._cgroup is not None:
            self._cgroup.kill()
        result = Wakeup()
        deadline = time.monotonic() + timeout
        for lr, proc in self._procs.items():
            if proc.exit is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.popen.wait(max(0.0, deadline - time.monotonic()))
                self._reap(lr, result, explain=False)  # explained below, once the pipes are read
        self._stop_adopted()
        # Pipes may be held by children the kill just ended: read them to EOF, bounded (what is
        # left in a pipe is there at once; a writer still alive is one the kills could not find).
        deadline = min(deadline, time.monotonic() + PIPE_DRAIN)
        while any(p.fds for p in self._procs.values()) and time.monotonic() < deadline:
            for key, _ in self._sel.select(max(0.0, deadline - time.monotonic())):
                if key.data[0] == "out":
                    self._read(key.data[1], key.data[2])
        for proc in self._procs.values():
            for stream in list(proc.fds):
                self._close_stream(proc, stream)
        # What was read since those workers were reaped belongs to their explanation too.
        exits = [self._explained(ex) for ex in result.exits]
        for proc in self._procs.values():
            if proc.pidfd is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self._sel.unregister(proc.pidfd)
                os.close(proc.pidfd)
            if self._reaper is not None:
                self._reaper.unwatch(proc.popen.pid)
        self._bus.flush()
        self._procs.clear()
        self._timed.clear()
        return exits

    def _stop_adopted(self) -> None:
        """Kill and reap the workers' descendants re-parented to this process (it is a subreaper)."""
        if not self._subreaper or self._marker is None:
            return
        keep = {p.popen.pid for p in self._procs.values() if p.exit is None}
        if self._reaper is not None:
            keep.add(self._reaper.pid)
        stop_adopted(self._marker, keep)

    def _explained(self, ex: Exit) -> Exit:
        proc = self._procs[ex.local_rank]
        return replace(ex, why=proc.tail.explain(proc.plan.error_file))

    def close(self) -> None:
        self.release()
        if self._cgroup is not None:
            self._cgroup.remove()
        if self._subreaper:
            become_subreaper(False)
        self._sel.close()
        self._wake.close()
