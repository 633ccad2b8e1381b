"""The live terminal view (rich): worker output scrolls above a status area that redraws.

One row per worker (rank, pid, state, restarts, uptime, CPU and memory, or its progress bar)
and a job line (run, rendezvous round, world size, restarts left). Agent lines are the same
text as in plain mode, highlighted. Only used on a terminal; everything else gets PlainConsole.

The status area is drawn from the tracker's `RunView` only: rich calls `_Status.__rich__` from
its refresh thread (and from whichever thread prints), and that reads one immutable view; the
text of the table comes from the pure `job_text` and `status_rows`.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping

import psutil
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from elaunch import events as ev
from elaunch.console import COLORS, PlainConsole, describe, report, shown
from elaunch.failures import clock_text
from elaunch.progress import progress_cell
from elaunch.runview import RunView, ViewSource, WorkerRow
from elaunch.spec import WorkerState

STATE_STYLE = {
    WorkerState.INIT: "dim",
    WorkerState.HEALTHY: "green",
    WorkerState.UNHEALTHY: "yellow",
    WorkerState.STOPPED: "yellow",
    WorkerState.SUCCEEDED: "bold green",
    WorkerState.FAILED: "bold red",
    WorkerState.UNKNOWN: "dim",
}
ANSI_COLORS = {31: "red", 32: "green", 33: "yellow", 34: "blue", 35: "magenta", 36: "cyan"}
COLUMNS = ("rank", "pid", "state", "restarts", "uptime", "cpu", "mem", "progress")
MAX_ROWS = 64
"""Rows drawn at most (the lowest global ranks); more would not fit a screen."""


def _rank_style(rank: int) -> str:
    code = COLORS[rank % len(COLORS)]
    base = ANSI_COLORS.get(code if code < 90 else code - 60, "white")
    return f"bright_{base}" if code >= 90 else base


# -- the status area as text (pure) ---------------------------------------------------------
def job_text(view: RunView) -> str:
    """The job line after `elaunch `: run id, round, world size, restarts left (and membership changes)."""
    run_id = view.run.run_id if view.run is not None else ""
    text = (
        f"run {run_id}  round {view.round}  world size {view.world_size}  "
        f"restarts left {view.restarts_left}/{view.max_restarts}"
    )
    if view.membership_restarts:
        text += f"  membership changes {view.membership_restarts}"
    return text


def shown_rows(view: RunView) -> list[WorkerRow]:
    """The current attempt's workers the table shows, by global rank (at most MAX_ROWS)."""
    return sorted(view.workers, key=lambda r: r.global_rank)[:MAX_ROWS]


def status_rows(view: RunView, now: float, usage: Mapping[int, tuple[str, str]]) -> list[tuple[str, ...]]:
    """One tuple of cell texts per shown worker, in COLUMNS order.

    `now` is wall-clock seconds (uptime of a running worker); `usage` maps a pid to its
    (cpu, mem) texts, sampled by the caller; a worker that ended shows none.
    """
    rows: list[tuple[str, ...]] = []
    for w in shown_rows(view):
        up = (w.ended if w.ended is not None else now) - w.started
        cpu, mem = usage.get(w.pid, ("", "")) if w.ended is None else ("", "")
        rows.append((str(w.global_rank), str(w.pid), w.state.value, str(w.restart), f"{up:.1f}s", cpu, mem,
                     progress_text(w, now)))  # fmt: skip
    return rows


def progress_text(w: WorkerRow, now: float) -> str:
    """The progress cell: the pending bar as drawn, else the steps read from output lines
    (`120/5000 3.1 steps/s ETA 26m40s`); `STRAGGLER` first when the worker is marked slow."""
    text = w.progress or progress_cell(w.steps, now if w.ended is None else w.ended)
    return f"STRAGGLER {text}" if w.straggler else text


CPU_INTERVAL = 1.0
"""Seconds of wall time a CPU percentage is measured over, at least. CPU times advance in clock
ticks (10 ms): over the few milliseconds between two redraws one tick read as 500 %."""


def cpu_percent(cpu_seconds: float, wall_seconds: float, ncpu: int) -> float:
    """CPU time over wall time, in percent of one core, at most `ncpu` cores' worth."""
    if wall_seconds <= 0:
        return 0.0
    return max(0.0, min(100.0 * cpu_seconds / wall_seconds, 100.0 * ncpu))


class ProcessUsage:
    """CPU and memory of workers by pid, sampled with psutil; callable from any thread.

    Keeps one `psutil.Process` per pid, dropped once its pid is no longer asked for. The CPU
    percentage is measured over at least `CPU_INTERVAL` seconds (between, the last one is shown).
    A lock serialises the samplers: rich renders the status area from its refresh thread and
    from the thread that prints.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._procs: dict[int, psutil.Process | None] = {}
        self._cpu: dict[int, tuple[float, float, str]] = {}
        """pid -> (when, CPU seconds then, the percentage shown since)."""
        self._clock = clock
        self._ncpu = os.cpu_count() or 1

    def sample(self, pids: Iterable[int]) -> dict[int, tuple[str, str]]:
        """pid -> (`"12%"`, `"130M"`) for each pid that can be read (RSS in MiB)."""
        out: dict[int, tuple[str, str]] = {}
        with self._lock:
            wanted = set(pids)
            for pid in [p for p in self._procs if p not in wanted]:
                del self._procs[pid]
                self._cpu.pop(pid, None)
            for pid in wanted:
                if pid not in self._procs:
                    self._procs[pid] = self._open(pid)
                proc = self._procs[pid]
                if proc is None:
                    continue
                try:
                    with proc.oneshot():
                        times, rss = proc.cpu_times(), proc.memory_info().rss
                except psutil.Error:
                    continue
                out[pid] = (self._cpu_text(pid, times.user + times.system), f"{rss / 2**20:.0f}M")
        return out

    def _cpu_text(self, pid: int, cpu: float) -> str:
        now = self._clock()
        since, cpu_then, shown = self._cpu.get(pid, (now, cpu, "0%"))
        if pid not in self._cpu or now - since >= CPU_INTERVAL:
            if pid in self._cpu:
                shown = f"{cpu_percent(cpu - cpu_then, now - since, self._ncpu):.0f}%"
            self._cpu[pid] = (now, cpu, shown)
        return shown

    @staticmethod
    def _open(pid: int) -> psutil.Process | None:
        try:
            proc = psutil.Process(pid)
        except psutil.Error:
            return None
        return proc


def status(view: RunView, now: float, usage: Mapping[int, tuple[str, str]]) -> Group:
    """The status area for `view`: the job line and the workers' table, styled."""
    job = Text.assemble(("elaunch ", "bold blue"), job_text(view))
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for col in COLUMNS:
        table.add_column(col, no_wrap=True, overflow="ellipsis", max_width=60 if col == "progress" else None)
    for rank, pid, state, *rest in status_rows(view, now, usage):
        table.add_row(
            Text(rank, style=_rank_style(int(rank))),
            pid,
            Text(state, style=STATE_STYLE.get(WorkerState(state), "")),
            *rest,
        )
    return Group(job, table)


class _Status:
    """Rendered at each refresh (from rich's thread), so uptimes and CPU figures are current."""

    def __init__(self, views: ViewSource, usage: ProcessUsage) -> None:
        self._views = views
        self._usage = usage

    def __rich__(self) -> Group:
        view = self._views.view  # one read: an immutable snapshot
        running = [w.pid for w in shown_rows(view) if w.ended is None]
        return status(view, time.time(), self._usage.sample(running))


class LiveConsole:
    """A sink drawing the live view; `plain` writes the streams that are not the terminal.

    Holds no run state: the status area reads `views` (the tracker) when rich redraws it.
    """

    def __init__(
        self, plain: PlainConsole, views: ViewSource, stderr_is_tty: bool, console: Console | None = None
    ) -> None:
        self.plain = plain
        self.views = views
        self.console = console or Console(highlight=False, soft_wrap=True)
        self._stderr_tty = stderr_is_tty
        self._live = Live(_Status(views, ProcessUsage()), console=self.console, refresh_per_second=4, transient=False)
        self._live.start()
        self._stopped = False

    # -- events ---------------------------------------------------------------------------
    def handle(self, e: ev.Event) -> None:
        if isinstance(e, ev.WorkerOutput):
            if e.stream == 2 and not self._stderr_tty:
                self.plain.handle(e)
            elif shown(self.plain.opts, e.local_rank, e.global_rank, e.stream):
                self._print_lines(e)
            return
        if isinstance(e, ev.WorkerProgress | ev.ProgressReported):
            return  # shown in the worker's row, from the view
        if isinstance(e, ev.RunFinished):
            self._finish(e)
            return
        text = describe(e, self.views.view)
        if text:
            self._note(text, e)

    def _print_lines(self, e: ev.WorkerOutput) -> None:
        prefix_text = self.plain.prefixes.get(self.views.view, e.local_rank, e.global_rank).decode(errors="replace")
        style = _rank_style(e.global_rank)
        out = Text()
        for line in e.data.decode(errors="replace").splitlines():
            out.append(prefix_text, style=style)
            out.append_text(Text.from_ansi(line) if "\x1b" in line else Text(line))
            out.append("\n")
        self.console.print(out, end="")

    def _note(self, text: str, e: ev.Event) -> None:
        self.console.print(*note_lines(text, e), sep="\n")

    def _finish(self, e: ev.RunFinished) -> None:
        self.stop()
        style = "bold green" if e.result.state == WorkerState.SUCCEEDED else "bold red"
        lines = report(e.result, e.remote_failures).splitlines()
        self.console.print(Text(f"[elaunch {clock_text(e.ts)}] ", style="bold blue") + Text(lines[0], style=style))
        for line in lines[1:]:
            self.console.print(Text(line))

    def flush(self) -> None:
        self.plain.flush()

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._live.stop()

    def close(self) -> None:
        self.stop()
        self.plain.close()


def note_style(e: ev.Event) -> str:
    """The highlight of an agent line: red for a failed worker, yellow for restarts and signals."""
    if isinstance(e, ev.WorkerStateChanged) and e.new == WorkerState.FAILED:
        return "bold red"
    if isinstance(e, ev.RestartDecided | ev.SignalReceived):
        return "bold yellow"
    if isinstance(e, ev.Message) and e.level != "info":
        return "yellow"
    return "bold cyan"


def note_lines(text: str, e: ev.Event) -> list[Text]:
    """`text` as stamped, highlighted agent lines."""
    head = Text(f"[elaunch {clock_text(e.ts)}] ", style="bold blue")
    style = note_style(e)
    return [head + Text(line, style=style) for line in text.splitlines()]
