"""Sink assembly from OutputConfig, and the per-rank log files reading the attempt from the view."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from elaunch import events as ev
from elaunch.config import OutputConfig, StdSpec
from elaunch.console import PlainConsole
from elaunch.errors import ConfigError
from elaunch.logfiles import LogFiles
from elaunch.records import EventsFile, SummaryFile
from elaunch.rundir import RunDir
from elaunch.runview import RunTracker
from elaunch.sinks import build_log_files, build_sinks, live_wanted
from tests.unit.history import fail_then_succeed

pytestmark = pytest.mark.timeout(10)


@pytest.mark.parametrize(
    ("live", "env", "tty", "wanted"),
    [
        (None, {}, True, True),
        (None, {}, False, False),
        (False, {}, True, False),
        (None, {"NO_COLOR": "1"}, True, False),
        (None, {"NO_COLOR": ""}, True, True),
        (None, {"TERM": "dumb"}, True, False),
        (True, {"TERM": "xterm"}, True, True),
    ],
)
def test_live_view_only_on_a_terminal_that_wants_it(
    live: bool | None, env: dict[str, str], tty: bool, wanted: bool
) -> None:
    assert live_wanted(OutputConfig(live=live), env, tty) is wanted


def _build(output: OutputConfig, terminal: bool = False, env: dict[str, str] | None = None) -> list[ev.Sink]:
    return build_sinks(output, host="vm", role="r", multi_node=False, out=io.BytesIO(), err=io.BytesIO(),
                       terminal=terminal, env=env or {}, views=RunTracker())  # fmt: skip


def test_plain_console_and_records(tmp_path: Path) -> None:
    sinks = _build(OutputConfig(events_file=str(tmp_path / "e.jsonl"), summary_file=str(tmp_path / "s.json")))
    try:
        assert [type(s) for s in sinks] == [PlainConsole, EventsFile, SummaryFile]
        console = sinks[0]
        assert isinstance(console, PlainConsole) and not console.opts.color and console.opts.host == "vm"
    finally:
        for s in sinks:
            s.close()


def test_an_events_file_that_cannot_be_opened_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "e.jsonl"
    with pytest.raises(ConfigError, match=rf"^--events-file {path}: No such file or directory$"):
        _build(OutputConfig(events_file=str(path)))


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_the_live_view_unless_asked_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdout", _Tty())
    from elaunch.liveview import LiveConsole

    (live,) = _build(OutputConfig(), terminal=True)
    try:
        assert isinstance(live, LiveConsole) and live.plain.opts.color
    finally:
        live.close()
    (plain,) = _build(OutputConfig(), terminal=True, env={"NO_COLOR": "1"})
    assert isinstance(plain, PlainConsole) and not plain.opts.color
    # Streams given by a caller of launch() are never a terminal's.
    (given,) = _build(OutputConfig(), terminal=False)
    assert isinstance(given, PlainConsole)


def test_log_files_follow_the_attempts_of_the_view(tmp_path: Path) -> None:
    run_dir = RunDir(str(tmp_path / "logs"), "r1")
    tracker = RunTracker()
    assert build_log_files(OutputConfig(), run_dir, tracker) is None
    output = OutputConfig(redirects=StdSpec(default=3), tee=StdSpec(per_rank={0: 1}), duplicate_filters={1: ("step",)})
    files = build_log_files(output, run_dir, tracker)
    assert isinstance(files, LogFiles)
    bus = ev.Bus([tracker, files])
    for e in fail_then_succeed():
        bus.publish(e)
    bus.close()
    base = Path(run_dir.path)
    assert (base / "attempt_0/0/stdout.log").read_bytes() == b"step 1\nstep 2\n"
    assert (base / "attempt_0/1/stderr.log").read_bytes().endswith(b"ValueError: boom\n")
    assert (base / "attempt_0/filtered_stdout.log").read_bytes() == b"[0] step 1\n[0] step 2\n"
    assert (base / "attempt_1/1/stdout.log").read_bytes() == b"hello\n"
    assert (base / "attempt_1/0/stdout.log").read_bytes() == b""
