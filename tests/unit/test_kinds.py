"""The failure-kind table, the root-cause order, the restart rules and the progress clock: pure."""

from __future__ import annotations

import json

import pytest

from elaunch.failures import failure_summary, failure_text, remote_failure
from elaunch.hangs import ProgressClock, Supervision, timer_request
from elaunch.kinds import Kind, classify, exception_of, restartable
from elaunch.retry import backoff_delay, refusal, signature
from elaunch.spec import RunResult, WorkerFailure, WorkerState, root_cause

pytestmark = pytest.mark.timeout(10)


def tb(last: str) -> str:
    return f'Traceback (most recent call last):\n  File "t.py", line 1, in <module>\n{last}'


def kind(**kw: object) -> tuple[Kind, str | None]:
    base: dict[str, object] = dict(exitcode=1, signal=None, traceback=None, error_message=None, last_lines=())
    return classify(**{**base, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "want"),
    [
        (dict(traceback=tb("ValueError: bad")), (Kind.EXCEPTION, "ValueError")),
        (dict(traceback=tb("ModuleNotFoundError: No module named 'x'")), (Kind.STARTUP, "ModuleNotFoundError")),
        (dict(traceback=tb("  File 'x'\nSyntaxError: invalid syntax")), (Kind.STARTUP, "SyntaxError")),
        (dict(exitcode=2, last_lines=("python: can't open file '/a.py': [Errno 2] No such file or directory",)),
         (Kind.STARTUP, None)),
        (dict(exitcode=93), (Kind.NO_RESTART, None)),
        (dict(traceback=tb("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB")),
         (Kind.GPU_OOM, "torch.OutOfMemoryError")),
        (dict(traceback=tb("RuntimeError: [pair.cc:553] Connection closed by peer [10.0.0.2]:1234")),
         (Kind.LOST_PEER, "RuntimeError")),
        (dict(traceback=tb("torch.distributed.DistNetworkError: Connection reset by peer")),
         (Kind.LOST_PEER, "torch.distributed.DistNetworkError")),
        (dict(exitcode=None, signal=6, traceback=tb("KeyError: 'k'")), (Kind.EXCEPTION, "KeyError")),
        (dict(exitcode=None, signal=11), (Kind.SIGNAL, None)),
        (dict(exitcode=None, signal=9), (Kind.SIGNAL, None)),
        (dict(exitcode=None, signal=9, oom_killed=True), (Kind.OOM, None)),
        (dict(exitcode=3, last_lines=("done badly",)), (Kind.EXIT, None)),
        (dict(exitcode=None, signal=15, stopped_by_agent=True, traceback=tb("ValueError: x")), (Kind.STOPPED, None)),
        (dict(exitcode=7, no_requeue_code=7), (Kind.NO_RESTART, None)),
    ],
)  # fmt: skip
def test_classify(kw: dict[str, object], want: tuple[Kind, str | None]) -> None:
    assert kind(**kw) == want


def test_exception_of_reads_the_last_line_or_the_error_file() -> None:
    assert exception_of(tb("[rank1]: ValueError: x y")) == ("ValueError", "x y")
    assert exception_of(tb("KeyboardInterrupt")) == ("KeyboardInterrupt", "")
    assert exception_of(None, "RuntimeError: from @record") == ("RuntimeError", "from @record")
    assert exception_of(None) is None
    assert not restartable(Kind.STARTUP) and restartable(Kind.HANG)


def failure(rank: int, ts: float, k: Kind = Kind.EXCEPTION, **kw: object) -> WorkerFailure:
    base: dict[str, object] = dict(local_rank=rank, global_rank=rank, role="r", host=f"h{rank}", pid=100 + rank,
                                   exitcode=1, signal=None, timestamp=ts, kind=k)  # fmt: skip
    return WorkerFailure(**{**base, **kw})  # type: ignore[arg-type]


def test_root_cause_follows_the_kinds_then_time_then_rank() -> None:
    echo = failure(1, 1.0, Kind.LOST_PEER)
    real = failure(5, 2.0, Kind.EXCEPTION)
    hang = failure(3, 1.5, Kind.HANG)
    stopped = failure(0, 0.5, Kind.STOPPED, stopped_by_agent=True)
    assert root_cause([echo, real, hang, stopped]) is real
    assert root_cause([echo, hang]) is hang  # killing a hung rank makes its peers lose their connection
    assert root_cause([echo, failure(2, 1.0, Kind.LOST_PEER)]) is echo  # a tie in time: the lowest rank
    assert root_cause([stopped]) is None
    # A node whose own failure is an echo names the other node's real cause.
    result = RunResult(state=WorkerState.FAILED, failures={1: echo}, remote_causes=(real,))
    assert result.root_cause is real and result.exit_code == 1
    assert RunResult(state=WorkerState.FAILED, failures={1: echo}, no_requeue_code=93).exit_code == 93


def test_published_failures_round_trip() -> None:
    f = failure(3, 12.5, Kind.EXCEPTION, exception="ValueError", traceback=tb("ValueError: x"), last_lines=("a",))
    text, back = remote_failure(failure_summary(f))
    assert text == failure_text(f) and back == f
    assert remote_failure("host9: rank 3 (pid 9) exited with code 1") == (
        "host9: rank 3 (pid 9) exited with code 1",
        None,
    )
    assert remote_failure(json.dumps({"schema": "other"}))[1] is None


def test_refusal_rules() -> None:
    startup = failure(0, 1.0, Kind.STARTUP, exception="ModuleNotFoundError")
    assert refusal(startup, 1, None, False, 93) == (
        "ModuleNotFoundError at start-up on rank 0: a restart cannot fix it; not restarting"
    )
    asked = failure(2, 1.0, Kind.NO_RESTART, exitcode=93)
    assert refusal(asked, 1, None, True, 93) == "rank 2 exited with code 93 (do not restart); not restarting"
    bad = failure(1, 1.0, exception="ValueError", traceback=tb("ValueError: lr=-1"))
    again = failure(0, 9.0, exception="ValueError", traceback=tb("ValueError: lr=-1"))
    assert signature(bad) == signature(again)
    assert refusal(again, 2, signature(bad), False, 93) == (
        "the same ValueError before any progress on attempts 1 and 2; not restarting"
    )
    assert refusal(again, 2, signature(bad), True, 93) is None  # it made progress this time
    assert refusal(again, 2, None, False, 93) is None  # the attempt before made progress
    other = failure(0, 9.0, exception="ValueError", traceback=tb("ValueError: lr=-2"))
    assert refusal(other, 2, signature(bad), False, 93) is None
    echo = failure(
        0, 9.0, Kind.LOST_PEER, exception="RuntimeError", traceback=tb("RuntimeError: Connection closed by peer")
    )
    assert refusal(echo, 2, signature(echo), False, 93) is None  # another node's failure, echoed
    hang = failure(0, 9.0, Kind.HANG, exitcode=None)
    assert refusal(hang, 2, signature(hang), False, 93) is None
    crash = failure(0, 1.0, Kind.SIGNAL, exitcode=None, signal=11)
    assert refusal(crash, 2, signature(crash), False, 93) == (
        "the same SIGSEGV before any progress on attempts 1 and 2; not restarting"
    )


def test_backoff_doubles_up_to_its_cap() -> None:
    assert [backoff_delay(n, 1.0, 5.0) for n in range(0, 6)] == [0.0, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert backoff_delay(3, 0.0, 300.0) == 0.0
    assert backoff_delay(10_000, 1.0, 60.0) == 60.0


def test_progress_clock_deadlines() -> None:
    c = ProgressClock(100.0, [0, 1])
    s = Supervision(hang_timeout=5.0)
    assert s.startup_limit == 600.0 and Supervision(hang_timeout=900.0).startup_limit == 900.0
    assert Supervision().startup_limit is None
    assert c.next_deadline(5.0, 600.0, [0, 1]) == 700.0
    assert c.alive(0, 101.0, strict=False) is True and c.alive(0, 102.0, strict=False) is False
    assert not c.progressed and c.first_at == 101.0
    assert c.next_deadline(5.0, 600.0, [0, 1]) == 107.0
    assert c.overdue(106.9, 5.0, 600.0, [0, 1]) == []
    (o,) = c.overdue(107.0, 5.0, 600.0, [0, 1])
    assert (o.local_rank, o.silent, o.limit, o.starting) == (0, 5.0, 5.0, False)
    (late,) = c.overdue(700.0, None, 600.0, [1])  # only the start-up limit watched
    assert late.starting and late.local_rank == 1
    assert c.overdue(10_000.0, 5.0, 600.0, []) == []  # nothing running, nothing hung
    c.alive(1, 103.0, strict=True)
    assert c.progressed
    assert c.next_deadline(None, None, [0, 1]) is None


def test_timer_requests() -> None:
    line = b'{"version": 1, "pid": 42, "scope_id": "s", "expiration_time": 12.5, "signal": 9}'
    assert timer_request(line) == (42, "s", 12.5)
    assert timer_request(b"not json") is None
    assert timer_request(b'{"pid": 1}') is None
