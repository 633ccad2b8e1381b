"""The plain console: prefixed worker lines, timestamped agent lines, and the final report.

Used whenever stdout is not a terminal (SLURM .out files, pipes, make), with NO_COLOR,
TERM=dumb or --no-live; the live view (livelview.py) reuses its formatting. Worker stdout goes
to our stdout and worker stderr to our stderr, each write being whole lines; the agent's own
lines go to stderr.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from string import Template
from typing import BinaryIO

from elaunch import events as ev
from elaunch.config import StdSpec
from elaunch.logs import prefix_lines
from elaunch.signals import signal_name
from elaunch.spec import RunResult, WorkerFailure, WorkerState

PROGRESS_INTERVAL = 10.0
"""Plain mode shows a progress bar's state at most this often per worker."""

COLORS = (36, 33, 35, 32, 34, 91, 96, 93, 95, 92, 94, 31)


@dataclass(frozen=True)
class ConsoleOptions:
    prefix_template: str | None = None
    multi_node: bool = False
    color: bool = False
    local_ranks_filter: frozenset[int] | None = None
    ranks_filter: frozenset[int] | None = None
    redirects: StdSpec = field(default_factory=StdSpec)
    tee: StdSpec = field(default_factory=StdSpec)
    progress_interval: float = PROGRESS_INTERVAL


def clock_text(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int(ts * 1000) % 1000:03d}"


def rank_ranges(ranks: list[int]) -> str:
    """[0,1,2,5] -> '0-2,5'."""
    out: list[str] = []
    rs = sorted(ranks)
    i = 0
    while i < len(rs):
        j = i
        while j + 1 < len(rs) and rs[j + 1] == rs[j] + 1:
            j += 1
        out.append(str(rs[i]) if i == j else f"{rs[i]}-{rs[j]}")
        i = j + 1
    return ",".join(out)


class Formatter:
    """Prefixes for worker lines and the text of agent lines; shared by plain and live views."""

    def __init__(self, opts: ConsoleOptions, host: str, role: str) -> None:
        self.opts = opts
        self.host = host
        self.role = role
        self.group_rank = 0
        self.restart = 0
        self.world_size = 1
        self._prefix: dict[int, bytes] = {}

    def reset(self, world_size: int, group_rank: int, restart: int) -> None:
        self.world_size, self.group_rank, self.restart = world_size, group_rank, restart
        self._prefix.clear()

    def prefix(self, local_rank: int, global_rank: int) -> bytes:
        p = self._prefix.get(local_rank)
        if p is None:
            p = self._make_prefix(local_rank, global_rank).encode(errors="replace")
            self._prefix[local_rank] = p
        return p

    def _make_prefix(self, local_rank: int, global_rank: int) -> str:
        if self.opts.prefix_template is not None:
            text = Template(self.opts.prefix_template).safe_substitute(
                role_name=self.role,
                rank=global_rank,
                local_rank=local_rank,
                host=self.host,
                group_rank=self.group_rank,
                restart=self.restart,
            )
        else:
            width = len(str(max(self.world_size - 1, 0)))
            label = f"{global_rank:>{width}}"
            text = f"[{self.host}:{label}] " if self.opts.multi_node else f"[{label}] "
        if self.opts.color:
            return f"\x1b[{COLORS[global_rank % len(COLORS)]}m{text}\x1b[0m"
        return text

    def shown(self, local_rank: int, global_rank: int, stream: int) -> bool:
        """On the console unless filtered out or redirected to a file without --tee."""
        o = self.opts
        if o.local_ranks_filter is not None and local_rank not in o.local_ranks_filter:
            return False
        if o.ranks_filter is not None and global_rank not in o.ranks_filter:
            return False
        redirected = o.redirects.for_rank(local_rank) & stream
        teed = o.tee.for_rank(local_rank) & stream
        return not redirected or bool(teed)


class PlainConsole:
    """A sink writing line-oriented text: no escape codes unless colour was asked for."""

    def __init__(
        self,
        out: BinaryIO,
        err: BinaryIO,
        fmt: Formatter,
        *,
        verbose: bool = True,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self._out = out
        self._err = err
        self.fmt = fmt
        self._verbose = verbose
        self._now = now
        self._last: BinaryIO | None = None
        self._dead: set[int] = set()
        self._progress_at: dict[int, float] = {}
        self._started: list[ev.WorkerStarted] = []
        self._dirty = False

    # -- writing --------------------------------------------------------------------------
    def _write(self, f: BinaryIO, data: bytes) -> None:
        if id(f) in self._dead:
            return
        try:
            if self._last is not None and self._last is not f:
                self._last.flush()
            self._last = f
            f.write(data)
            self._dirty = True
        except (BrokenPipeError, ValueError, OSError):
            self._dead.add(id(f))

    def note(self, text: str, ts: float | None = None) -> None:
        """An agent line on stderr: `[elaunch 12:00:01.234] text`."""
        stamp = clock_text(ts if ts is not None else time.time())
        head = f"[elaunch {stamp}] "
        if self.fmt.opts.color:
            head = f"\x1b[1;34m{head}\x1b[0m"
        lines = text.rstrip("\n").split("\n")
        self._write(self._err, "".join(head + line + "\n" for line in lines).encode(errors="replace"))

    def flush(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        for f in (self._out, self._err):
            if id(f) not in self._dead:
                try:
                    f.flush()
                except (BrokenPipeError, ValueError, OSError):
                    self._dead.add(id(f))

    def close(self) -> None:
        self.flush()

    # -- events ---------------------------------------------------------------------------
    def handle(self, e: ev.Event) -> None:
        if isinstance(e, ev.WorkerOutput):
            if self.fmt.shown(e.local_rank, e.global_rank, e.stream):
                data = prefix_lines(e.data, self.fmt.prefix(e.local_rank, e.global_rank))
                self._write(self._out if e.stream == 1 else self._err, data)
            self._progress_at.pop(e.local_rank * 4 + e.stream, None)
        elif isinstance(e, ev.WorkerProgress):
            self._progress(e)
        elif isinstance(e, ev.RunFinished):
            # The report is a block: a stamped first line, then the lines as they are.
            head, *rest = report(e.result, e.remote_failures).split("\n")
            self.note(head, e.ts)
            if rest:
                self._write(self._err, ("\n".join(rest) + "\n").encode(errors="replace"))
        else:
            text = describe(e, self)
            if text:
                self.note(text, e.ts)

    def _progress(self, e: ev.WorkerProgress) -> None:
        if not self.fmt.shown(e.local_rank, e.global_rank, e.stream):
            return
        key = e.local_rank * 4 + e.stream
        now = self._now()
        last = self._progress_at.get(key)
        if last is not None and now - last < self.fmt.opts.progress_interval:
            return
        self._progress_at[key] = now
        data = prefix_lines(e.text.rstrip(b"\n") + b"\n", self.fmt.prefix(e.local_rank, e.global_rank))
        self._write(self._out if e.stream == 1 else self._err, data)


def describe(e: ev.Event, con: PlainConsole) -> str | None:
    """The agent line for an event, or None for events shown otherwise (or not at all)."""
    fmt = con.fmt
    if isinstance(e, ev.RunStarted):
        nodes = f"{e.min_nodes}" if e.min_nodes == e.max_nodes else f"{e.min_nodes}:{e.max_nodes}"
        return (
            f"run {e.run_id} on {e.host}: {e.nproc_per_node} worker(s) per node, {nodes} node(s), "
            f"max restarts {e.max_restarts}"
        )
    if isinstance(e, ev.RendezvousDone):
        fmt.reset(e.world_size, e.group_rank, fmt.restart)
        if e.group_world_size > 1 or e.round > 0:
            return (
                f"rendezvous round {e.round}: node {e.group_rank} of {e.group_world_size}, world size "
                f"{e.world_size}, master {e.master_addr}:{e.master_port} ({e.duration:.2f}s)"
            )
        return None
    if isinstance(e, ev.WorkerStarted):
        fmt.restart = e.restart
        con._started.append(e)
        return None
    if isinstance(e, ev.GroupStateChanged):
        if e.new == WorkerState.HEALTHY and con._started:
            started, con._started = con._started, []
            ranks = rank_ranges([s.global_rank for s in started])
            pids = ",".join(str(s.pid) for s in started)
            return f"rank(s) {ranks} INIT -> HEALTHY (pid {pids})" + (f", restart {e.restart}" if e.restart else "")
        if e.new in (WorkerState.SUCCEEDED, WorkerState.FAILED, WorkerState.STOPPED, WorkerState.UNHEALTHY):
            return f"worker group {e.old.value} -> {e.new.value}"
        return None
    if isinstance(e, ev.WorkerStateChanged):
        if e.new == WorkerState.HEALTHY:
            return None
        how = ""
        if e.signal is not None:
            how = f": killed by {signal_name(e.signal)}"
        elif e.exitcode is not None:
            how = f": exit code {e.exitcode}"
        by = " (stopped by elaunch)" if e.stopped_by_agent and e.new == WorkerState.STOPPED else ""
        return f"rank {e.global_rank} (pid {e.pid}) {e.old.value} -> {e.new.value}{how}{by}"
    if isinstance(e, ev.RestartDecided):
        if e.membership:
            return f"restarting the group: {e.reason} (membership change #{e.membership_restarts}, no restart used)"
        return f"restarting the group: {e.reason} (restart {e.restarts_used} of {e.restarts_used + e.restarts_left}, {e.restarts_left} left)"
    if isinstance(e, ev.MembershipChanged):
        parts = []
        if e.waiting:
            parts.append(f"{e.waiting} node(s) waiting to join")
        if e.lost:
            parts.append(f"lost {', '.join(e.lost)}")
        if e.closed:
            parts.append(f"job closed: {e.reason}")
        return "membership: " + "; ".join(parts) if parts else None
    if isinstance(e, ev.SignalReceived):
        name = signal_name(e.signal)
        return {
            "forward": f"{name} received: passed on to the workers, job keeps running",
            "shutdown": f"{name} received: stopping the workers (press Ctrl-C again to kill them at once)",
            "kill": f"{name} received again: killing the workers now",
            "ignored": f"{name} received: already shutting down",
        }.get(e.action)
    if isinstance(e, ev.Message):
        return e.text if e.level == "info" else f"{e.level}: {e.text}"
    return None


def failure_detail(f: WorkerFailure, indent: str = "  ") -> list[str]:
    if f.signal is not None:
        how = f"was killed by {f.signal_name}"
        if f.signal == 9:
            how += " (the kernel's OOM killer is a common cause: check `dmesg`)"
    else:
        how = f"exited with code {f.exitcode}"
    lines = [f"root cause: rank {f.global_rank} (local rank {f.local_rank}) on {f.host}, pid {f.pid}, {how}"]
    lines.append(f"{indent}at {clock_text(f.timestamp)}, restart {f.restart}")
    if f.error_message:
        lines.append(f"{indent}error: {f.error_message}")
    if f.traceback:
        lines.append(f"{indent}traceback:")
        lines += [indent * 2 + x for x in f.traceback.splitlines()]
    elif f.last_lines:
        lines.append(f"{indent}last lines:")
        lines += [indent * 2 + x for x in f.last_lines]
    return lines


def report(result: RunResult, remote: tuple[str, ...] = ()) -> str:
    """The end-of-run summary: one screen, the root cause first, its traceback once."""
    if result.state == WorkerState.SUCCEEDED:
        return f"job SUCCEEDED: {len(result.return_values)} worker(s) exited 0"
    lines: list[str] = []
    if result.interrupted_by is not None:
        lines.append(f"job STOPPED by {signal_name(result.interrupted_by)}: exit code {result.exit_code}")
    else:
        lines.append(f"job FAILED: exit code {result.exit_code}")
    if result.message:
        lines.append(f"  {result.message}")
    cause = result.root_cause
    if cause is not None:
        lines += ["  " + x for x in failure_detail(cause)]
        others = [f for f in result.failures.values() if f is not cause]
        if others:
            failed = [f for f in others if not f.stopped_by_agent]
            stopped = [f for f in others if f.stopped_by_agent]
            if failed:
                lines.append(
                    "  also failed after it: "
                    + ", ".join(
                        f"rank {f.global_rank} ({f.signal_name or f'exit code {f.exitcode}'})"
                        for f in sorted(failed, key=lambda f: f.timestamp)
                    )
                )
            if stopped:
                lines.append(f"  stopped by elaunch: rank(s) {rank_ranges([f.global_rank for f in stopped])}")
    if remote:
        lines.append("  failures reported by other nodes:")
        for text in remote:
            lines += ["    " + x for x in text.splitlines()]
    return "\n".join(lines)
