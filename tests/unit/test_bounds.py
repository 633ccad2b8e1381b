"""What the agent keeps of a worker's output is bounded, per line and in total (#10 item 4)."""

from __future__ import annotations

from elaunch.failures import SUMMARY_CHARS, failure_summary
from elaunch.spec import WorkerFailure
from elaunch.tails import LINE_BYTES, TAIL_BYTES, TEXT_CHARS, OutputTail, clip_line, clip_text


def test_clip_line_keeps_head_and_tail_around_a_marker() -> None:
    line = b"H" * 10_000 + b"T" * 10_000
    out = clip_line(line)
    assert out.startswith(b"H" * (LINE_BYTES // 2)) and out.endswith(b"T" * (LINE_BYTES // 2))
    assert b"[... %d bytes cut ...]" % (len(line) - LINE_BYTES) in out
    assert len(out) < LINE_BYTES + 40
    assert clip_line(b"short") == b"short"


def test_clip_text() -> None:
    text = "a" * TEXT_CHARS + "b" * TEXT_CHARS
    out = clip_text(text)
    assert out.startswith("a" * 100) and out.endswith("b" * 100) and "characters cut" in out
    assert len(out) < TEXT_CHARS + 60
    assert clip_text("x") == "x"


def test_a_30_mb_line_before_a_crash_keeps_a_bounded_explanation() -> None:
    tail = OutputTail()
    for _ in range(30):  # as the line buffer hands a long line on: in pieces of 1 MiB
        tail.feed(2, b"E" * (1 << 20) + b"\n")
    tail.feed(
        2, b'Traceback (most recent call last):\n  File "w.py", line 1\nRuntimeError: ' + b"x" * (1 << 20) + b"\n"
    )
    assert tail._err.size <= TAIL_BYTES and tail._all.size <= TAIL_BYTES
    why = tail.explain(None)
    assert why.traceback is not None and why.traceback.startswith("Traceback")
    assert "bytes cut" in why.traceback and len(why.traceback) < LINE_BYTES + 200
    assert sum(len(x) for x in why.last_lines) < 13 * (LINE_BYTES + 40)


def test_many_long_lines_stay_within_the_tail_budget() -> None:
    tail = OutputTail()
    for _ in range(1000):
        tail.feed(1, (b"y" * 3000 + b"\n") * 50)
    assert tail._all.size <= TAIL_BYTES


def test_failure_summary_for_the_store_is_bounded() -> None:
    f = WorkerFailure(
        local_rank=0, global_rank=0, role="default", host="h", pid=1, exitcode=1, signal=None,
        timestamp=0.0, restart=0, error_message=None, traceback="T" * (10 * SUMMARY_CHARS), last_lines=(),
    )  # fmt: skip
    out = failure_summary(f)
    assert out.startswith("h: rank 0") and len(out) < SUMMARY_CHARS + 60


def test_failures_read_from_the_store_are_bounded_whoever_wrote_them() -> None:
    from elaunch.rendezvous.dynamic import REMOTE_FAILURES, DynamicRendezvous
    from elaunch.rendezvous.store import MemoryStore

    rdzv = DynamicRendezvous(MemoryStore(), "job", 2, 2, node_id="n0")
    try:
        for i in range(REMOTE_FAILURES + 3):
            rdzv.publish_failure(f"host{i}: " + "T" * (4 * SUMMARY_CHARS))
        got = rdzv.failures()
        assert len(got) == REMOTE_FAILURES + 1 and got[-1].startswith("... and 3 more")
        assert all(len(x) < SUMMARY_CHARS + 60 for x in got) and got[0].startswith("host0: ")
    finally:
        rdzv.shutdown()
