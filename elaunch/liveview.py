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
    if view.membership.spare:
        text += "  SPARE: standing by"
    elif view.membership.spares:
        text += f"  spares {', '.join(view.membership.spares)}"
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


PROGRESS_CELL = 60
"""A progress text wider than this, or of several rows (nested bars, rich's live area), is drawn
under the table at full width, one row per bar, after the rank; narrower ones in the row's cell."""


def status(view: RunView, now: float, usage: Mapping[int, tuple[str, str]]) -> Group:
    """The status area for `view`: the job line, the workers' table and the wide bars, styled.

    The table is laid out here, as plain columns two spaces apart: rich's Table took 12 times as
    long (100 ms for 64 rows on a loaded machine), and the area is drawn at every refresh and print."""
    job = Text.assemble(("elaunch ", "bold blue"), job_text(view))
    rows: list[list[str]] = []
    bars: list[Text] = []
    for row in status_rows(view, now, usage):
        cells = list(row)
        progress = cells[-1]
        if "\n" in progress or len(progress) > PROGRESS_CELL:
            style = _rank_style(int(cells[0]))
            for bar in progress.splitlines():
                bars.append(Text.assemble((f"[{cells[0]}] ", style), bar, no_wrap=True, overflow="ellipsis"))
            cells[-1] = ""
        rows.append(cells)
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(COLUMNS)]
    last = len(COLUMNS) - 1
    header = Text("  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)).rstrip(), style="bold")
    lines = [header]
    for cells in rows:
        row_text = Text(no_wrap=True, overflow="ellipsis")
        for i, (cell, w) in enumerate(zip(cells, widths, strict=True)):
            text = cell if i == last else cell.ljust(w) + "  "
            if i == 0:
                row_text.append(text, style=_rank_style(int(cell)))
            elif i == 2:
                row_text.append(text, style=STATE_STYLE.get(WorkerState(cell), ""))
            else:
                row_text.append(text)
        row_text.rstrip()
        lines.append(row_text)
    return Group(job, *lines, *bars)


class _Status:
    """Rendered at each refresh (from rich's thread), so uptimes and CPU figures are current."""

    def __init__(self, views: ViewSource, usage: ProcessUsage) -> None:
        self._views = views
        self._usage = usage

    def __rich__(self) -> Group:
        view = self._views.view  # one read: an immutable snapshot
        running = [w.pid for w in shown_rows(view) if w.ended is None]
        return status(view, time.time(), self._usage.sample(running))


PRINT_INTERVAL = 0.1
"""Seconds between prints of worker lines above the status area: each print redraws the area, so
lines are gathered and printed together (the cost of redraws does not grow with the output rate)."""


class LiveConsole:
    """A sink drawing the live view; `plain` writes the streams that are not the terminal.

    Holds no run state: the status area reads `views` (the tracker) when rich redraws it. Worker
    and agent lines are printed, in order, at most every PRINT_INTERVAL by a printer thread (the
    final report at once, after them). While a worker waits on an unfinished line (a prompt: `input()`,
    pdb), the status area steps aside: it is erased, the line is shown with the cursor after it, so
    what the user types (echoed by the terminal or by the worker) appears after it, and comes back
    when the line ends.
    """

    def __init__(
        self,
        plain: PlainConsole,
        views: ViewSource,
        stderr_is_tty: bool,
        console: Console | None = None,
        print_interval: float = PRINT_INTERVAL,
    ) -> None:
        self.plain = plain
        self.views = views
        self.console = console or Console(highlight=False, soft_wrap=True)
        self._stderr_tty = stderr_is_tty
        self._status = _Status(views, ProcessUsage())
        self._live = self._new_live()
        self._live.start()
        self._stopped = False
        self._interval = print_interval
        self._lock = threading.Condition(threading.RLock())
        self._pending: list[Text] = []
        self._prompt: tuple[tuple[int, int], bytes, str] | None = None
        """(worker stream, its unfinished line, the prefix) shown with the status area put aside."""
        self._printer = threading.Thread(target=self._print_loop, name="elaunch-live-print", daemon=True)
        self._printer.start()

    # -- events ---------------------------------------------------------------------------
    def handle(self, e: ev.Event) -> None:
        if isinstance(e, ev.WorkerOutput):
            if e.stream == 2 and not self._stderr_tty:
                self.plain.handle(e)
            elif shown(self.plain.opts, e.local_rank, e.global_rank, e.stream):
                self._print_lines(e)
            return
        if isinstance(e, ev.WorkerPartialLine):
            if e.stream == 2 and not self._stderr_tty:
                self.plain.handle(e)
            elif shown(self.plain.opts, e.local_rank, e.global_rank, e.stream):
                self._show_prompt(e)
            return
        if isinstance(e, ev.WorkerProgress | ev.WorkerBytes | ev.ProgressReported):
            return  # progress: shown in the worker's row, from the view
        if isinstance(e, ev.RunFinished):
            self._finish(e)
            return
        text = describe(e, self.views.view)
        if text:
            self._note(text, e)

    def _prefix(self, e: ev.WorkerOutput | ev.WorkerPartialLine) -> str:
        return self.plain.prefixes.get(self.views.view, e.local_rank, e.global_rank).decode(errors="replace")

    def _print_lines(self, e: ev.WorkerOutput) -> None:
        prefix_text = self._prefix(e)
        data = e.data
        with self._lock:
            if self._prompt is not None and self._prompt[0] == (e.local_rank, e.stream):
                _, before, _ = self._prompt
                self._prompt = None
                if data.startswith(before):
                    # The line the user saw start: its end goes after it, then the status area comes back.
                    nl = data.find(b"\n", len(before)) + 1
                    self._raw(data[len(before) : nl])
                    data = data[nl:]
                else:
                    self._raw(b"\r\x1b[2K")
                self._resume()
            if not data:
                return
            style = _rank_style(e.global_rank)
            out = Text()
            for line in data.decode(errors="replace").splitlines():
                out.append(prefix_text, style=style)
                out.append_text(Text.from_ansi(line) if "\x1b" in line else Text(line))
                out.append("\n")
            self._pending.append(out)
            if self._prompt is not None:
                self._drain()  # printed above the prompt, at once: the user is looking
            elif len(self._pending) == 1:
                self._lock.notify()

    def _show_prompt(self, e: ev.WorkerPartialLine) -> None:
        with self._lock:
            self._drain()
            if self._prompt is None:
                self._aside()
            elif self._prompt[0] != (e.local_rank, e.stream):
                self._raw(b"\n")  # another worker's prompt stays as it was; this one goes below
            self._prompt = ((e.local_rank, e.stream), e.text, self._prefix(e))
            self._draw_prompt()

    def _draw_prompt(self) -> None:
        assert self._prompt is not None
        _, text, prefix = self._prompt
        self._raw(b"\r\x1b[2K" + prefix.encode(errors="replace") + text)

    def _aside(self) -> None:
        """Erase the status area and show the cursor: the terminal is the prompt's."""
        if self._stopped:
            return
        self._live.transient = True
        self._live.stop()

    def _resume(self) -> None:
        if self._stopped:
            return
        self._live = self._new_live()  # a new one: the old one would redraw over the lines printed since
        self._live.start(refresh=True)

    def _new_live(self) -> Live:
        return Live(self._status, console=self.console, refresh_per_second=4, transient=False)

    def _raw(self, data: bytes) -> None:
        """Bytes straight to the terminal (the prompt and what continues it, as the worker wrote them)."""
        f = self.console.file
        try:
            f.flush()
            buf = getattr(f, "buffer", None)
            if buf is not None:
                buf.write(data)
                buf.flush()
            else:
                f.write(data.decode(errors="replace"))
                f.flush()
        except (OSError, ValueError):
            pass

    def _drain(self) -> None:
        """Print the gathered worker lines (above the status area, or above a prompt). Holds the lock."""
        if not self._pending:
            return
        out = Text()
        for t in self._pending:
            out.append_text(t)
        self._pending.clear()
        try:
            if self._prompt is not None:
                self._raw(b"\r\x1b[2K")
                self.console.print(out, end="")
                self._draw_prompt()
            else:
                self.console.print(out, end="")
        except (OSError, ValueError):
            pass  # the terminal is gone: these lines are lost to it, the next are tried again

    def _print_loop(self) -> None:
        with self._lock:
            while not self._stopped:
                if not self._pending:
                    self._lock.wait()
                    continue
                self._lock.wait(self._interval)  # more lines gather meanwhile
                self._drain()

    def _note(self, text: str, e: ev.Event) -> None:
        """Agent lines go with the worker lines, in order (64 workers ending are 64 lines, one print)."""
        out = Text()
        for line in note_lines(text, e):
            out.append_text(line)
            out.append("\n")
        with self._lock:
            self._pending.append(out)
            if self._prompt is not None:
                self._drain()
            elif len(self._pending) == 1:
                self._lock.notify()

    def _finish(self, e: ev.RunFinished) -> None:
        with self._lock:
            self._drain()
            if self._prompt is not None:
                self._raw(b"\n")
                self._prompt = None
                self._resume()
        self.stop()
        style = "bold green" if e.result.state == WorkerState.SUCCEEDED else "bold red"
        lines = report(e.result, e.remote_failures).splitlines()
        self.console.print(Text(f"[elaunch {clock_text(e.ts)}] ", style="bold blue") + Text(lines[0], style=style))
        for line in lines[1:]:
            self.console.print(Text(line))

    def flush(self) -> None:
        self.plain.flush()

    def stop(self) -> None:
        with self._lock:
            if not self._stopped:
                self._drain()
                if self._prompt is not None:
                    self._raw(b"\n")
                    self._prompt = None
                    self._resume()
                self._stopped = True
                self._lock.notify_all()
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
