"""The plain console: prefixed worker lines, timestamped agent lines, and the final report.

Used whenever stdout is not a terminal (SLURM .out files, pipes, make), with NO_COLOR,
TERM=dumb or --no-live; the live view (liveview.py) reuses its texts. Worker stdout goes to our
stdout and worker stderr to our stderr, each write being whole lines; the agent's own lines go
to stderr. What to say is decided by pure functions of an event and the run's view
(`describe`, `worker_prefix`, `report`); `PlainConsole` only writes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from string import Template
from typing import BinaryIO

from elaunch import events as ev
from elaunch.config import StdSpec
from elaunch.failures import clock_text, failure_detail, failure_text
from elaunch.logs import prefix_lines
from elaunch.runview import RunView, ViewSource
from elaunch.signals import signal_name
from elaunch.spec import RunResult, WorkerState
from elaunch.values import Value, field, value

PROGRESS_INTERVAL = 10.0
"""Plain mode shows a progress bar's state at most this often per worker."""

COLORS = (36, 33, 35, 32, 34, 91, 96, 93, 95, 92, 94, 31)
"""SGR foreground codes of rank prefixes: rank r gets COLORS[r % len(COLORS)]."""


@value
class ConsoleOptions(Value):
    """How the console shows worker lines: prefix, colour, filters, redirects (from OutputConfig)."""

    prefix_template: str | None = None
    multi_node: bool = False
    color: bool = False
    local_ranks_filter: frozenset[int] | None = None
    ranks_filter: frozenset[int] | None = None
    redirects: StdSpec = field(default_factory=StdSpec)
    tee: StdSpec = field(default_factory=StdSpec)
    progress_interval: float = PROGRESS_INTERVAL
    host: str = ""
    """This node's name, for `[HOST:RANK] ` and `${host}`."""
    role: str = "default"


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


def worker_prefix(opts: ConsoleOptions, view: RunView, local_rank: int, global_rank: int) -> str:
    """The text before each line of a worker: `[RANK] ` padded to the widest rank of the job,
    `[HOST:RANK] ` on several nodes, or the `--log-line-prefix` template; coloured if asked."""
    if opts.prefix_template is not None:
        row = view.worker(local_rank)
        text = Template(opts.prefix_template).safe_substitute(
            role_name=opts.role,
            rank=global_rank,
            local_rank=local_rank,
            host=opts.host,
            group_rank=view.group_rank,
            restart=row.restart if row is not None else view.restart_count,
        )
    else:
        width = len(str(max(view.world_size - 1, 0)))
        label = f"{global_rank:>{width}}"
        text = f"[{opts.host}:{label}] " if opts.multi_node else f"[{label}] "
    if opts.color and text:
        return f"\x1b[{COLORS[global_rank % len(COLORS)]}m{text}\x1b[0m"
    return text


class Prefixes:
    """`worker_prefix` as bytes, remembered per worker and round (it is asked for every chunk)."""

    def __init__(self, opts: ConsoleOptions) -> None:
        self.opts = opts
        self._memo: dict[tuple[int, int, int, int, int], bytes] = {}

    def get(self, view: RunView, local_rank: int, global_rank: int) -> bytes:
        row = view.worker(local_rank)
        restart = row.restart if row is not None else view.restart_count
        key = (local_rank, global_rank, view.group_rank, view.world_size, restart)
        p = self._memo.get(key)
        if p is None:
            if len(self._memo) > 4096:
                self._memo.clear()
            p = self._memo[key] = worker_prefix(self.opts, view, local_rank, global_rank).encode(errors="replace")
        return p


def shown(opts: ConsoleOptions, local_rank: int, global_rank: int, stream: int) -> bool:
    """On the console unless filtered out or redirected to a file without --tee."""
    if opts.local_ranks_filter is not None and local_rank not in opts.local_ranks_filter:
        return False
    if opts.ranks_filter is not None and global_rank not in opts.ranks_filter:
        return False
    redirected = opts.redirects.for_rank(local_rank) & stream
    teed = opts.tee.for_rank(local_rank) & stream
    return not redirected or bool(teed)


class PlainConsole:
    """A sink writing line-oriented text: no escape codes unless colour was asked for.

    Reads the run's state from `views` (the tracker, subscribed before this sink); keeps only
    what writing needs: which streams broke, and when each progress bar was last shown.
    """

    def __init__(
        self,
        out: BinaryIO,
        err: BinaryIO,
        opts: ConsoleOptions,
        views: ViewSource,
        *,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self._out = out
        self._err = err
        self.opts = opts
        self.views = views
        self.prefixes = Prefixes(opts)
        self._now = now
        self._last: BinaryIO | None = None
        self._dead: set[int] = set()
        self._progress_at: dict[int, float] = {}
        self._dirty = False
        self._shown: dict[tuple[int, int], bytes] = {}
        """(local rank, stream) -> the part of its unfinished line already shown (a prompt)."""
        self._open: tuple[int, int] | None = None
        """The worker stream whose unfinished line is the last thing written (the cursor is after it)."""

    # -- writing --------------------------------------------------------------------------
    def _write(self, f: BinaryIO, data: bytes, *, cont: bool = False) -> None:
        """Write `data` to `f`; an unfinished line shown last is ended first unless `cont` continues it."""
        if self._open is not None and not cont:
            key, self._open = self._open, None
            self._write(self._out if key[1] == 1 else self._err, b"\n", cont=True)
        if id(f) in self._dead:
            return
        last = self._last
        if last is not None and last is not f and id(last) not in self._dead:
            try:  # keep the order of lines across the two streams
                last.flush()
            except (BrokenPipeError, ValueError, OSError):
                self._dead.add(id(last))  # that stream is gone, not this one
        try:
            self._last = f
            f.write(data)
            self._dirty = True
        except (BrokenPipeError, ValueError, OSError):
            self._dead.add(id(f))

    def note(self, text: str, ts: float | None = None) -> None:
        """An agent line on stderr: `[elaunch 12:00:01.234] text`."""
        stamp = clock_text(ts if ts is not None else time.time())
        head = f"[elaunch {stamp}] "
        if self.opts.color:
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
            if shown(self.opts, e.local_rank, e.global_rank, e.stream):
                prefix = self.prefixes.get(self.views.view, e.local_rank, e.global_rank)
                f = self._out if e.stream == 1 else self._err
                before = self._shown.pop((e.local_rank, e.stream), None)
                if before is not None and e.data.startswith(before):
                    self._complete(f, (e.local_rank, e.stream), e.data[len(before) :], prefix)
                else:
                    self._write(f, prefix_lines(e.data, prefix))
            self._progress_at.pop(e.local_rank * 4 + e.stream, None)
        elif isinstance(e, ev.WorkerBytes):
            pass  # the raw bytes are for the files; the console writes the decoded lines
        elif isinstance(e, ev.WorkerPartialLine):
            self._partial(e)
        elif isinstance(e, ev.WorkerProgress):
            self._progress(e)
        elif isinstance(e, ev.RunFinished):
            # The report is a block: a stamped first line, then the lines as they are.
            head, *rest = report(e.result, e.remote_failures).split("\n")
            self.note(head, e.ts)
            if rest:
                self._write(self._err, ("\n".join(rest) + "\n").encode(errors="replace"))
        else:
            text = describe(e, self.views.view)
            if text:
                self.note(text, e.ts)

    def _complete(self, f: BinaryIO, key: tuple[int, int], rest: bytes, prefix: bytes) -> None:
        """The end of a line whose start was shown (a prompt), without repeating the start: right
        after it when nothing came between, else on a line of its own."""
        nl = rest.find(b"\n") + 1
        first, others = rest[:nl], rest[nl:]
        if self._open == key:
            self._open = None
            self._write(f, first + prefix_lines(others, prefix) if others else first, cont=True)
        elif first != b"\n" or others:
            self._write(f, prefix_lines(rest if first != b"\n" else others, prefix))

    def _partial(self, e: ev.WorkerPartialLine) -> None:
        """Show an unfinished line that waits (a prompt): what is new of it, the cursor left after it."""
        if not shown(self.opts, e.local_rank, e.global_rank, e.stream):
            return
        key = (e.local_rank, e.stream)
        f = self._out if e.stream == 1 else self._err
        before = self._shown.get(key, b"")
        new = e.text[len(before) :] if e.text.startswith(before) else e.text
        prefix = self.prefixes.get(self.views.view, e.local_rank, e.global_rank)
        if self._open == key and new is not e.text:
            self._write(f, new, cont=True)
        else:
            self._write(f, prefix + new)
        self._shown[key] = e.text
        self._open = key

    def _progress(self, e: ev.WorkerProgress) -> None:
        if not e.text or not shown(self.opts, e.local_rank, e.global_rank, e.stream):
            return
        key = e.local_rank * 4 + e.stream
        now = self._now()
        last = self._progress_at.get(key)
        if last is not None and now - last < self.opts.progress_interval:
            return
        self._progress_at[key] = now
        prefix = self.prefixes.get(self.views.view, e.local_rank, e.global_rank)
        self._write(self._out if e.stream == 1 else self._err, prefix_lines(e.text.rstrip(b"\n") + b"\n", prefix))


_SIGNAL_TEXT = {
    "forward": "{} received: passed on to the workers, job keeps running",
    "shutdown": "{} received: stopping the workers (press Ctrl-C again to kill them at once)",
    "kill": "{} received again: killing the workers now",
    "ignored": "{} received: already shutting down",
}


def describe(e: ev.Event, view: RunView) -> str | None:
    """The agent line for an event, or None for events shown otherwise (or not at all).

    `view` is the run's view with `e` already folded in (the tracker's, when a sink handles
    `e`). Pure: nothing is changed.
    """
    if isinstance(e, ev.RunStarted):
        nodes = f"{e.min_nodes}" if e.min_nodes == e.max_nodes else f"{e.min_nodes}:{e.max_nodes}"
        return (
            f"run {e.run_id} on {e.host}: {e.nproc_per_node} worker(s) per node, {nodes} node(s), "
            f"max restarts {e.max_restarts}"
        )
    if isinstance(e, ev.HealthChecked):
        if e.ok:
            return f"health check passed ({e.check}, {e.duration:.2f}s)"
        lines = [f"health check FAILED ({e.check}): {e.detail}; this node does not join the round"]
        return "\n".join([*lines, *(f"  | {x}" for x in e.last_lines)])
    if isinstance(e, ev.RendezvousDone):
        if e.group_world_size > 1 or e.round > 0:
            return (
                f"rendezvous round {e.round}: node {e.group_rank} of {e.group_world_size}, world size "
                f"{e.world_size}, master {e.master_addr}:{e.master_port} ({e.duration:.2f}s)"
            )
        return None
    if isinstance(e, ev.GroupStateChanged):
        if e.new == WorkerState.HEALTHY and view.workers:
            ranks = rank_ranges([w.global_rank for w in view.workers])
            pids = ",".join(str(w.pid) for w in view.workers)
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
    if isinstance(e, ev.HangDetected):
        return hang_text(e)
    if isinstance(e, ev.MembershipChanged):
        parts = []
        if e.waiting:
            parts.append(f"{e.waiting} node(s) waiting to join")
        if e.lost:
            parts.append(f"lost {', '.join(e.lost)}")
        if e.closed:
            parts.append(f"job closed: {e.reason}")
        # A node that becomes a spare was told so by the rendezvous, with the running hosts
        # (`rounds.standby_notice`); the live view shows it in the job line.
        if e.spares:
            parts.append(f"spare(s) standing by: {', '.join(e.spares)}")
        return "membership: " + "; ".join(parts) if parts else None
    if isinstance(e, ev.SignalReceived):
        text = _SIGNAL_TEXT.get(e.action)
        return text.format(signal_name(e.signal)) if text is not None else None
    if isinstance(e, ev.Message):
        return e.text if e.level == "info" else f"{e.level}: {e.text}"
    if isinstance(e, ev.ProgressReported | ev.StragglerChanged):
        from elaunch.progresswatch import report_text, straggler_text

        return report_text(e) if isinstance(e, ev.ProgressReported) else straggler_text(e)
    return None


def hang_text(e: ev.HangDetected) -> str:
    """The hang report: who, how long, the last line, then every local worker's Python stack."""
    lines = [f"rank {e.global_rank} (pid {e.pid}) on {e.host} is hung: {e.reason}"]
    lines.append(f"  last line: {e.last_line}" if e.last_line is not None else "  last line: (it printed nothing)")
    for rank, pid, stack in e.stacks:
        lines.append(f"  stack of rank {rank} (pid {pid}):")
        lines += ["    " + x for x in stack.splitlines()]
    return "\n".join(lines)


def report(result: RunResult, remote: tuple[str, ...] = ()) -> str:
    """The end-of-run summary: one screen, the root cause first, its traceback once.

    Lines joined by newlines, none at the end; the first line is the verdict.
    """
    lines: list[str] = []
    if result.state == WorkerState.SUCCEEDED:
        lines.append(f"job SUCCEEDED: {len(result.return_values)} worker(s) exited 0")
        if remote:  # e.g. a node that failed its health check and left: the job went on without it
            lines.append("  reported by other nodes:")
            for text in remote:
                lines += ["    " + x for x in text.splitlines()]
        return "\n".join(lines)
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
                        f"rank {f.global_rank} ({f.kind.value}: {f.exception or f.signal_name or f'exit code {f.exitcode}'})"
                        for f in sorted(failed, key=lambda f: f.timestamp)
                    )
                )
            if stopped:
                lines.append(f"  stopped by elaunch: rank(s) {rank_ranges([f.global_rank for f in stopped])}")
    remote = tuple(t for t in remote if cause is None or t != failure_text(cause))  # named above already
    if remote:
        lines.append("  failures reported by other nodes:")
        for text in remote:
            lines += ["    " + x for x in text.splitlines()]
    return "\n".join(lines)
