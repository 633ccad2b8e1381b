"""Outputs that fail: reported once, dropped, and the job stopped only when nothing carries the output."""

from __future__ import annotations

import io

import pytest

from elaunch import events as ev
from elaunch.outputs import STOP_SIGNAL, GuardedStream, Outputs, output_lost, why


class Broken:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
        self.calls = 0

    def handle(self, e: ev.Event) -> None:
        self.calls += 1
        raise self.exc

    def flush(self) -> None:
        raise self.exc

    def close(self) -> None:
        raise self.exc


def _outputs(files: bool) -> tuple[Outputs, list[ev.Event], list[int]]:
    published: list[ev.Event] = []
    stops: list[int] = []
    return Outputs(published.append, stops.append, files=files), published, stops


def test_output_lost_rule() -> None:
    assert output_lost(console_lost=True, files_alive=False)
    assert not output_lost(console_lost=True, files_alive=True)
    assert not output_lost(console_lost=False, files_alive=False)


def test_a_failing_file_sink_is_reported_once_and_dropped() -> None:
    outputs, published, stops = _outputs(files=False)
    inner = Broken(OSError(28, "No space left on device"))
    sink = outputs.sink(inner, "--events-file e.jsonl")
    for _ in range(3):
        sink.handle(ev.Message(level="info", text="x"))
        sink.flush()
    sink.close()
    assert inner.calls == 1 and sink.dead
    assert [m.text for m in published if isinstance(m, ev.Message)] == [
        "output lost: --events-file e.jsonl: No space left on device; dropped, the other outputs go on"
    ]
    assert stops == [] and outputs.lost == ("--events-file e.jsonl",)


def test_console_stream_broken_without_files_stops_once() -> None:
    outputs, published, stops = _outputs(files=False)
    out = outputs.stream(Broken(BrokenPipeError(32, "Broken pipe")), "stdout")  # type: ignore[arg-type]
    err = outputs.stream(Broken(BrokenPipeError(32, "Broken pipe")), "stderr")  # type: ignore[arg-type]
    for s in (out, err, out):
        with pytest.raises(BrokenPipeError):  # re-raised: the console stops writing there
            s.flush()
    assert stops == [STOP_SIGNAL]
    texts = [m.text for m in published if isinstance(m, ev.Message)]
    assert len(texts) == 2 and "stopping the job (exit code 141)" in texts[0] and "stderr" in texts[1]


def test_console_broken_with_files_goes_on_until_the_files_fail_too() -> None:
    outputs, published, stops = _outputs(files=True)
    out = outputs.stream(Broken(BrokenPipeError(32, "Broken pipe")), "stdout")  # type: ignore[arg-type]
    with pytest.raises(BrokenPipeError):
        out.flush()
    assert stops == []
    assert "the log files keep the workers' output" in published[-1].text  # type: ignore[attr-defined]
    files = outputs.sink(Broken(OSError(28, "No space left on device")), "--log-dir files", files=True)
    files.handle(ev.Message(level="info", text="x"))
    assert stops == [STOP_SIGNAL]


def test_a_working_stream_passes_through() -> None:
    outputs, published, _ = _outputs(files=False)
    buf = io.BytesIO()
    s = GuardedStream(buf, "stdout", outputs)
    s.write(b"abc")
    s.flush()
    assert buf.getvalue() == b"abc" and published == [] and not s.isatty()


def test_why() -> None:
    assert why(BrokenPipeError(32, "Broken pipe")) == "broken pipe"
    assert why(ValueError("I/O operation on closed file.")) == "I/O operation on closed file."
