"""Pipe bytes -> whole lines: nothing lost, cut or duplicated; progress bars collapsed."""

from __future__ import annotations

import random

from elaunch.logs import COMPACT_AT, MAX_LINE, LineBuffer, collapse_cr, last_segment, prefix_lines
from elaunch.tails import extract_traceback


def test_lines_survive_any_chunking() -> None:
    rng = random.Random(1)
    text = b"".join(b"line %d " % i + b"x" * rng.randrange(0, 200) + b"\n" for i in range(2000))
    buf = LineBuffer()
    out = []
    i = 0
    while i < len(text):
        n = rng.randrange(1, 700)
        lines, _ = buf.feed(text[i : i + n])
        assert lines == b"" or lines.endswith(b"\n")
        out.append(lines)
        i += n
    out.append(buf.flush())
    assert b"".join(out) == text


def test_last_line_without_newline_is_flushed() -> None:
    buf = LineBuffer()
    assert buf.feed(b"a\nb") == (b"a\n", None)
    assert buf.flush() == b"b\n"
    assert buf.flush() == b""


def test_invalid_utf8_passes_through() -> None:
    buf = LineBuffer()
    lines, _ = buf.feed(b"\xff\xfe bad\n")
    assert lines == b"\xff\xfe bad\n"


def test_long_line_is_passed_on_in_pieces() -> None:
    buf = LineBuffer()
    lines, _ = buf.feed(b"x" * (MAX_LINE + 10))
    assert lines == b"x" * (MAX_LINE + 10) + b"\n"


def test_progress_is_reported_and_collapsed() -> None:
    buf = LineBuffer()
    lines, progress = buf.feed(b"\r 10%|#  |\r 20%|## |")
    assert lines == b""
    assert progress == b" 20%|## |"
    lines, progress = buf.feed(b"\r100%|###|\n")
    assert lines == b"100%|###|\n"
    assert progress is None


def test_collapse_crlf() -> None:
    assert collapse_cr(b"a\r\nb\r\n") == b"a\nb\n"


def test_prefix_lines() -> None:
    assert prefix_lines(b"a\nb\n", b"[0] ") == b"[0] a\n[0] b\n"
    assert prefix_lines(b"a\n", b"") == b"a\n"


def test_extract_traceback() -> None:
    lines = [
        "noise",
        "Traceback (most recent call last):",
        '  File "t.py", line 3, in <module>',
        "    main()",
        "RuntimeError: bad",
        "more noise",
    ]
    tb = extract_traceback(lines)
    assert tb is not None
    assert tb.splitlines()[0] == "Traceback (most recent call last):"
    assert tb.splitlines()[-1] == "RuntimeError: bad"
    assert extract_traceback(["no traceback here"]) is None


def test_traceback_of_a_ddp_worker_with_rank_prefixes() -> None:
    # torch.distributed's excepthook prefixes every line with "[rankN]: " once a process group exists.
    from elaunch.tails import OutputTail

    tail = OutputTail()
    text = (
        b"[W socket.cpp:207] warning\n"
        b"[rank2]: Traceback (most recent call last):\n"
        b'[rank2]:   File "w.py", line 3, in <module>\n'
        b"[rank2]:     main()\n"
        b"[rank2]: ValueError: boom on host3\n"
    )
    tail.feed(2, text)
    assert tail.traceback() == (
        'Traceback (most recent call last):\n  File "w.py", line 3, in <module>\n    main()\nValueError: boom on host3'
    )


def test_a_bar_redrawn_for_hours_keeps_a_small_buffer_and_its_last_state() -> None:
    buf = LineBuffer()
    for i in range(100_000):  # ~35 minutes of a bar redrawn 50 times a second, written in two pieces
        assert buf.feed(b"\r %d/100000 [00:01<00:02, " % i) == (b"", b" %d/100000 [00:01<00:02, " % i)
        assert buf.feed(b"50.0it/s]") == (b"", b" %d/100000 [00:01<00:02, 50.0it/s]" % i)
    assert len(buf._partial) < 2 * COMPACT_AT
    assert buf.feed(b"\r\rdone\n") == (b"done\n", None)
    buf.feed(b"Epoch 1 \r" + b"x" * COMPACT_AT + b"\r  ")
    assert buf.feed(b"\n") == (b"x" * COMPACT_AT + b"\n", None)  # blank redraws do not hide the last bar


def test_last_segment_is_what_the_redraws_leave_shown() -> None:
    assert last_segment(b"\r 10%\r 20%") == b" 20%"
    assert last_segment(b"\r 10%\r 20%\r") == b" 20%"  # a redraw begun: the last one drawn
    assert last_segment(b"a\r \r\t\r") == b"a"
    assert last_segment(b"\r\r") == b"" and last_segment(b"") == b""
    assert last_segment(b"plain") == b"plain"
