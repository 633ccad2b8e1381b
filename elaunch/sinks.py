"""Which sinks a run gets, decided in one place from its OutputConfig: console, records, log files."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any, BinaryIO

from elaunch.config import OutputConfig
from elaunch.console import PROGRESS_INTERVAL, ConsoleOptions, PlainConsole
from elaunch.errors import ConfigError
from elaunch.events import Sink
from elaunch.logfiles import LogFiles
from elaunch.outputs import Outputs
from elaunch.rundir import RunDir
from elaunch.runview import ViewSource


def live_wanted(output: OutputConfig, env: Mapping[str, str], tty: bool) -> bool:
    """The live view, and coloured rank prefixes with it: stdout is a terminal (`tty`) and
    neither --no-live, NO_COLOR nor TERM=dumb asks for plain text."""
    if output.live is False or env.get("NO_COLOR") or env.get("TERM") == "dumb":
        return False
    return tty


def _isatty(stream: Any) -> bool:
    return bool(getattr(stream, "isatty", lambda: False)())


def build_sinks(
    output: OutputConfig,
    *,
    host: str,
    role: str,
    multi_node: bool,
    out: BinaryIO,
    err: BinaryIO,
    terminal: bool,
    env: Mapping[str, str],
    views: ViewSource,
    progress_interval: float = PROGRESS_INTERVAL,
    outputs: Outputs | None = None,
) -> list[Sink]:
    """The console (live on a terminal, plain otherwise) and the `--events-file`/`--summary-file`
    records, in the order to subscribe them (after the tracker `views`). `progress_interval`:
    seconds between two prints of a worker's pending progress bar in plain mode.

    `out`/`err`: where worker stdout and stderr (and elaunch's lines) go. `terminal`: they are
    this process's own stdout/stderr, so whether those are terminals matters (False when a
    caller of `launch` passed its own streams: always plain). Raises ConfigError when the
    events file cannot be opened. With `outputs`, every sink and console stream is guarded: one
    that fails is reported and dropped (outputs.py).
    """
    if outputs is not None:
        out, err = outputs.stream(out, "stdout"), outputs.stream(err, "stderr")  # type: ignore[assignment]

    def guard(sink: Sink, name: str, console: bool = False) -> Sink:
        return sink if outputs is None else outputs.sink(sink, name, console=console)

    live = live_wanted(output, env, terminal and _isatty(sys.stdout))
    opts = ConsoleOptions(
        prefix_template=output.log_line_prefix,
        multi_node=multi_node,
        color=live,  # --no-live: plain, without colour
        local_ranks_filter=output.local_ranks_filter,
        ranks_filter=output.ranks_filter,
        redirects=output.redirects,
        tee=output.tee,
        host=host,
        role=role,
        progress_interval=progress_interval,
    )
    plain = PlainConsole(out, err, opts, views)
    sinks: list[Sink] = []
    if live:
        from elaunch.liveview import LiveConsole  # rich is imported only for the live view

        sinks.append(guard(LiveConsole(plain, views, stderr_is_tty=_isatty(sys.stderr)), "the live view", True))
    else:
        sinks.append(guard(plain, "the console", True))
    if output.events_file:
        from elaunch.records import EventsFile

        try:
            sinks.append(guard(EventsFile(output.events_file), f"--events-file {output.events_file}"))
        except OSError as e:
            raise ConfigError(f"--events-file {output.events_file}: {e.strerror or e}") from None
    if output.summary_file:
        from elaunch.records import SummaryFile

        summary = SummaryFile(output.summary_file, views, None if outputs is not None else err)
        sinks.append(guard(summary, f"--summary-file {output.summary_file}"))
    return sinks


def build_log_files(
    output: OutputConfig, run_dir: RunDir, views: ViewSource, outputs: Outputs | None = None
) -> Sink | None:
    """The per-rank log files sink when -r/-t ask for files, else None (subscribe it after the
    tracker); guarded by `outputs` when given (a full disk drops the files, outputs.py)."""
    if not output.files:
        return None
    files = LogFiles(run_dir, output.redirects, output.tee, output.duplicate_filters, views=views)
    return files if outputs is None else outputs.sink(files, f"--log-dir files in {run_dir.path}", files=True)
