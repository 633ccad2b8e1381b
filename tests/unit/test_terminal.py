"""Worker streams read as a terminal shows them: plain lines, prompts, nested tqdm bars, rich's live area."""

from __future__ import annotations

import io
import random
import sys

import pytest

from elaunch import events as ev
from elaunch.console import ConsoleOptions, PlainConsole
from elaunch.runview import RunTracker
from elaunch.terminal import PARTIAL_IDLE, REACH_TTL, StreamDecoder

from .history import attempt, run_started

pytest.importorskip("pyte")


def decode(raw: bytes, step: int, seed: int = 0) -> tuple[bytes, list[bytes]]:
    """All lines `raw` makes when read in pieces of about `step` bytes, and every bars text seen."""
    rng = random.Random(seed)
    d = StreamDecoder()
    out: list[bytes] = []
    bars: list[bytes] = []
    i, t = 0, 0.0
    while i < len(raw):
        n = max(1, rng.randrange(1, 2 * step))
        t += 0.001
        got = d.feed(raw[i : i + n], t)
        out.append(got[0])
        if got[1]:
            bars.append(got[1])
        i += n
    out.append(d.flush())
    return b"".join(out), bars


def test_plain_output_is_the_fast_path_and_keeps_bytes() -> None:
    d = StreamDecoder()
    got = d.feed(b"a\n\xff\xfe bad \x1b[31mred\x1b[0m\npart", 0.0)
    assert got[0] == b"a\n\xff\xfe bad \x1b[31mred\x1b[0m\n"  # colours are not cursor control
    assert not d.emulated
    assert d.pending() == b"part"
    assert d.flush() == b"part\n"


def test_a_waiting_line_is_passed_on_after_a_moment_then_at_each_change() -> None:
    d = StreamDecoder()
    assert d.feed(b"name? ", 10.0)[2] is None
    due = d.due()
    assert due == pytest.approx(10.0 + PARTIAL_IDLE)
    assert d.tick(10.0 + PARTIAL_IDLE / 2)[2] is None
    assert d.tick(due)[2] == b"name? "
    assert d.due() is None  # shown: nothing more to wait for
    assert d.feed(b"al", due + 0.01)[2] == b"name? al"  # echoed typing shows at once
    got = d.feed(b"ice\nhello\n", due + 0.02)
    assert got[0] == b"name? alice\nhello\n" and got[2] is None
    assert d.due() is None


def test_a_bar_is_not_a_prompt() -> None:
    d = StreamDecoder()
    got = d.feed(b"\r 10%|#", 0.0)
    assert got[1] == b" 10%|#" and d.due() is None


def _tqdm_nested() -> bytes:
    tqdm = pytest.importorskip("tqdm").tqdm
    f = io.StringIO()
    for e in tqdm(range(3), file=f, desc="epoch", position=0, ascii=True, mininterval=0):
        for _ in tqdm(range(4), file=f, desc="batch", position=1, leave=False, ascii=True, mininterval=0):
            pass
        tqdm.write(f"epoch {e} done", file=f)
    return f.getvalue().encode()


@pytest.mark.parametrize("step", [1, 7, 64, 1 << 20])
def test_nested_tqdm_bars_become_plain_lines_in_any_chunking(step: int) -> None:
    raw = _tqdm_nested()
    assert b"\x1b[A" in raw
    lines, bars = decode(raw, step)
    assert b"\x1b" not in lines and b"\r" not in lines
    text = lines.decode().splitlines()
    assert [x for x in text if "done" in x] == ["epoch 0 done", "epoch 1 done", "epoch 2 done"]
    assert text[-1].startswith("epoch: 100%|##########| 3/3")  # the bar's final state, once
    assert sum("3/3" in x for x in text) == 1
    assert not any("batch" in x for x in text[1:])  # the inner bar (leave=False) is never a line
    if step < len(raw):  # meanwhile the bars were seen, both at once
        assert any(b"epoch" in b and b"batch" in b for b in bars)


def _rich_progress() -> bytes:
    rich_console = pytest.importorskip("rich.console")
    rich_progress = pytest.importorskip("rich.progress")
    f = io.StringIO()
    con = rich_console.Console(file=f, force_terminal=True, width=80, color_system=None)
    with rich_progress.Progress(console=con, auto_refresh=False) as p:
        a = p.add_task("epoch", total=3)
        b = p.add_task("batch", total=4)
        for i in range(3):
            for _ in range(4):
                p.advance(b)
                p.refresh()
            p.console.print(f"epoch {i} done")
            p.advance(a)
            p.reset(b)
            p.refresh()
    return f.getvalue().encode()


@pytest.mark.parametrize("step", [5, 50, 500, 1 << 20])
def test_rich_live_progress_becomes_its_log_lines_and_final_bars(step: int) -> None:
    raw = _rich_progress()
    assert b"\x1b[1A" in raw or b"\x1b[A" in raw
    lines, bars = decode(raw, step)
    text = lines.decode().splitlines()
    assert b"\x1b" not in lines
    assert [x for x in text if "done" in x] == ["epoch 0 done", "epoch 1 done", "epoch 2 done"]
    assert text[-2].startswith("epoch") and "100%" in text[-2]
    assert text[-1].startswith("batch")
    # Its first redraws may come before elaunch knows the area's height: a stale frame or two, no more.
    assert len(text) <= 3 + 2 + 2, text
    if step < 1000:
        assert any(b.startswith(b"epoch") and b"\nbatch" in b for b in bars)


def test_rows_that_stop_being_redrawn_become_lines() -> None:
    d = StreamDecoder()
    assert d.feed(b"\x1b[1A\r 50%", 0.0)[1] == b" 50%"  # a program that moves the cursor up
    got = d.feed(b"\r100%\n", 0.1)  # its bar ends
    assert got[0] == b""  # within reach: it could still move back up to it
    assert d.due() == pytest.approx(0.0 + REACH_TTL)
    assert d.tick(REACH_TTL - 0.1)[0] == b""
    assert d.tick(REACH_TTL + 0.1)[0] == b"100%\n"


def _console() -> tuple[PlainConsole, ev.Bus, io.BytesIO]:
    out = io.BytesIO()
    tracker = RunTracker()
    console = PlainConsole(out, io.BytesIO(), ConsoleOptions(), tracker)
    bus = ev.Bus([tracker, console])
    for e in [run_started(nproc=2), *attempt(0.0, 2, round_=0, restart=0, first_pid=100, world=2)]:
        bus.publish(e)
    return console, bus, out


def test_plain_console_shows_a_prompt_and_completes_it_without_repeating() -> None:
    _, bus, out = _console()
    bus.publish(ev.WorkerPartialLine(local_rank=0, global_rank=0, stream=1, text=b"name? "))
    assert out.getvalue() == b"[0] name? "
    bus.publish(ev.WorkerOutput(local_rank=0, global_rank=0, stream=1, data=b"name? hello alice\nbye\n"))
    assert out.getvalue() == b"[0] name? hello alice\n[0] bye\n"


def test_another_ranks_line_does_not_cut_a_prompt_and_the_rest_is_not_repeated() -> None:
    _, bus, out = _console()
    bus.publish(ev.WorkerPartialLine(local_rank=0, global_rank=0, stream=1, text=b"name? "))
    bus.publish(ev.WorkerOutput(local_rank=1, global_rank=1, stream=1, data=b"tick\n"))
    bus.publish(ev.WorkerPartialLine(local_rank=0, global_rank=0, stream=1, text=b"name? more "))
    bus.publish(ev.WorkerOutput(local_rank=0, global_rank=0, stream=1, data=b"name? more bob\n"))
    assert out.getvalue() == b"[0] name? \n[1] tick\n[0] more bob\n"


def test_without_pyte_a_drawing_stream_passes_on_as_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyte", None)  # import pyte -> ImportError
    d = StreamDecoder()
    lines, _, _ = d.feed(b"a\n\r 10%\x1b[A\nb\n", 0.0)
    assert d.missing_emulator and not d.emulated
    assert lines == b"a\n 10%\x1b[A\nb\n"  # as before the emulator existed
    assert d.feed(b"c\x1b[Ad\n", 0.1)[0] == b"c\x1b[Ad\n"


def test_an_erase_alone_does_not_hold_lines_back() -> None:
    # readline erasing after a backspace in pdb: the lines above the prompt are finished, the
    # prompt is a prompt (not a bar).
    d = StreamDecoder()
    assert d.feed(b"> f.py(3)\n(Pdb) p xx\b\x1b[K", 0.0)[0] == b"> f.py(3)\n"
    assert d.emulated
    lines, _, _ = d.feed(b"\n41\n(Pdb) ", 0.1)
    assert lines == b"(Pdb) p x\n41\n"
    assert d.pending() == b"(Pdb)"
    assert d.tick(0.1 + PARTIAL_IDLE)[2] == b"(Pdb)"


@pytest.mark.parametrize("step", [3, 100, 3000])
def test_lines_written_under_live_bars_are_kept_once_in_order(step: int) -> None:
    tqdm = pytest.importorskip("tqdm").tqdm
    f = io.StringIO()
    outer = tqdm(total=300, file=f, desc="outer", position=0, ascii=True, mininterval=0)
    inner = tqdm(total=300, file=f, desc="inner", position=1, ascii=True, mininterval=0)
    for i in range(300):
        tqdm.write(f"line {i:03d} " + "y" * (i % 50), file=f)
        outer.update()
        inner.update()
    inner.close()
    outer.close()
    lines, _ = decode(f.getvalue().encode(), step, seed=step)
    text = lines.decode().splitlines()
    got = [x for x in text if x.startswith("line ")]
    assert got == [
        (f"line {i:03d} " + "y" * (i % 50)).rstrip() for i in range(300)
    ]  # (a screen has no trailing blanks)
    assert len(text) - len(got) <= 3, [x for x in text if not x.startswith("line ")]  # the two final bars (+1 stale)
