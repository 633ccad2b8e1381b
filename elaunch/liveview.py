"""The live terminal view (rich): worker output scrolls above a status area that redraws.

One row per worker (rank, pid, state, restarts, uptime, CPU and memory, or its progress bar)
and a job line (run, rendezvous round, world size, restarts left). Agent lines are the same
text as in plain mode, highlighted. Only used on a terminal; everything else gets PlainConsole.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import psutil
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from elaunch import events as ev
from elaunch.console import COLORS, Formatter, PlainConsole, clock_text, describe, report
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


def _rank_style(rank: int) -> str:
    code = COLORS[rank % len(COLORS)]
    base = ANSI_COLORS.get(code if code < 90 else code - 60, "white")
    return f"bright_{base}" if code >= 90 else base


@dataclass
class _Row:
    local_rank: int
    global_rank: int
    pid: int
    state: WorkerState
    restart: int
    started: float
    ended: float | None = None
    progress: str = ""
    proc: psutil.Process | None = None


class LiveConsole:
    """A sink drawing the live view; `plain` formats text and writes streams that are not the terminal."""

    def __init__(self, plain: PlainConsole, stderr_is_tty: bool, console: Console | None = None) -> None:
        self.plain = plain
        self.fmt: Formatter = plain.fmt
        self.console = console or Console(highlight=False, soft_wrap=True)
        self._stderr_tty = stderr_is_tty
        self._rows: dict[int, _Row] = {}
        self._job: dict[str, Any] = {"round": 0, "world": 0, "restarts_left": 0, "max_restarts": 0, "membership": 0}
        self._run_id = ""
        self._live = Live(_Status(self), console=self.console, refresh_per_second=4, transient=False)
        self._live.start()
        self._stopped = False

    # -- events ---------------------------------------------------------------------------
    def handle(self, e: ev.Event) -> None:
        if isinstance(e, ev.WorkerOutput):
            if e.stream == 2 and not self._stderr_tty:
                self.plain.handle(e)
                return
            if self.fmt.shown(e.local_rank, e.global_rank, e.stream):
                self._print_lines(e)
            row = self._rows.get(e.local_rank)
            if row is not None:
                row.progress = ""
            return
        if isinstance(e, ev.WorkerProgress):
            row = self._rows.get(e.local_rank)
            if row is not None:
                row.progress = e.text.decode(errors="replace").strip()
            return
        self._track(e)
        if isinstance(e, ev.RunFinished):
            self._finish(e)
            return
        text = describe(e, self.plain)
        if text:
            self._note(text, e)

    def _print_lines(self, e: ev.WorkerOutput) -> None:
        prefix_text = self.fmt.prefix(e.local_rank, e.global_rank).decode(errors="replace")
        style = _rank_style(e.global_rank)
        out = Text()
        for line in e.data.decode(errors="replace").splitlines():
            out.append(prefix_text, style=style)
            out.append_text(Text.from_ansi(line) if "\x1b" in line else Text(line))
            out.append("\n")
        self.console.print(out, end="")

    def _note(self, text: str, e: ev.Event) -> None:
        style = "bold cyan"
        if isinstance(e, ev.WorkerStateChanged) and e.new == WorkerState.FAILED:
            style = "bold red"
        elif isinstance(e, ev.RestartDecided | ev.SignalReceived):
            style = "bold yellow"
        elif isinstance(e, ev.Message) and e.level != "info":
            style = "yellow"
        head = Text(f"[elaunch {clock_text(e.ts)}] ", style="bold blue")
        for line in text.splitlines():
            self.console.print(head + Text(line, style=style))

    def _track(self, e: ev.Event) -> None:
        if isinstance(e, ev.RunStarted):
            self._run_id = e.run_id
            self._job.update(max_restarts=e.max_restarts, restarts_left=e.max_restarts)
        elif isinstance(e, ev.RendezvousDone):
            self._job.update(round=e.round, world=e.world_size, nodes=e.group_world_size)
            self._rows.clear()
        elif isinstance(e, ev.WorkerStarted):
            try:
                proc: psutil.Process | None = psutil.Process(e.pid)
                proc.cpu_percent(None)  # type: ignore[union-attr]
            except psutil.Error:
                proc = None
            self._rows[e.local_rank] = _Row(
                e.local_rank, e.global_rank, e.pid, WorkerState.INIT, e.restart, e.ts, proc=proc
            )
        elif isinstance(e, ev.WorkerStateChanged):
            row = self._rows.get(e.local_rank)
            if row is not None:
                row.state = e.new
                if e.new.terminal:
                    row.ended = e.ts
        elif isinstance(e, ev.RestartDecided):
            self._job.update(restarts_left=e.restarts_left, membership=e.membership_restarts)

    def _finish(self, e: ev.RunFinished) -> None:
        self.stop()
        style = "bold green" if e.result.state == WorkerState.SUCCEEDED else "bold red"
        lines = report(e.result, e.remote_failures).splitlines()
        self.console.print(Text(f"[elaunch {clock_text(e.ts)}] ", style="bold blue") + Text(lines[0], style=style))
        for line in lines[1:]:
            self.console.print(Text(line))

    # -- status area ------------------------------------------------------------------------
    def status(self) -> Group:
        now = time.time()
        j = self._job
        job = Text.assemble(
            ("elaunch ", "bold blue"),
            f"run {self._run_id}  round {j['round']}  world size {j['world']}  ",
            f"restarts left {j['restarts_left']}/{j['max_restarts']}",
            f"  membership changes {j['membership']}" if j["membership"] else "",
        )
        table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
        for col in ("rank", "pid", "state", "restarts", "uptime", "cpu", "mem", "progress"):
            table.add_column(col, no_wrap=True, overflow="ellipsis", max_width=60 if col == "progress" else None)
        for row in sorted(self._rows.values(), key=lambda r: r.global_rank)[:64]:
            up = (row.ended or now) - row.started
            cpu, mem = "", ""
            if row.proc is not None and row.ended is None:
                try:
                    with row.proc.oneshot():
                        cpu = f"{row.proc.cpu_percent(None):.0f}%"
                        mem = f"{row.proc.memory_info().rss / 2**20:.0f}M"
                except psutil.Error:
                    pass
            table.add_row(
                Text(str(row.global_rank), style=_rank_style(row.global_rank)),
                str(row.pid),
                Text(row.state.value, style=STATE_STYLE.get(row.state, "")),
                str(row.restart),
                f"{up:.1f}s",
                cpu,
                mem,
                row.progress,
            )
        return Group(job, table)

    def flush(self) -> None:
        self.plain.flush()

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._live.stop()

    def close(self) -> None:
        self.stop()
        self.plain.close()


class _Status:
    """Rendered at each refresh, so uptimes and CPU figures are current."""

    def __init__(self, view: LiveConsole) -> None:
        self._view = view

    def __rich__(self) -> Group:
        return self._view.status()
