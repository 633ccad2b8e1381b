"""The plain console's text, from scripted event histories folded into the run's view."""

from __future__ import annotations

import io

import pytest

from elaunch import events as ev
from elaunch.config import StdSpec
from elaunch.console import ConsoleOptions, PlainConsole, describe, rank_ranges, report, shown, worker_prefix
from elaunch.kinds import Kind
from elaunch.runview import RunTracker, RunView, fold
from elaunch.spec import RunResult, WorkerFailure, WorkerState
from tests.unit.history import T0, TRACEBACK, attempt, fail_then_succeed, run_started, until

pytestmark = pytest.mark.timeout(10)
S = WorkerState


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def play(history: list[ev.Event], opts: ConsoleOptions | None = None, clock: Clock | None = None) -> tuple[str, str]:
    """(stdout, stderr) of a plain console fed `history` after the tracker, as in launch."""
    out, err = io.BytesIO(), io.BytesIO()
    tracker = RunTracker()
    console = PlainConsole(out, err, opts or ConsoleOptions(host="vm", role="trainer"), tracker, now=clock or Clock())
    bus = ev.Bus([tracker, console])
    for e in history:
        bus.publish(e)
    bus.close()
    return out.getvalue().decode(), err.getvalue().decode()


def test_a_restarted_run_in_plain_text(utc: None) -> None:
    out, err = play(fail_then_succeed())
    assert out == "[0] step 1\n[0] step 2\n[1] hello\n"
    assert err == (
        "[elaunch 00:00:00.000] run r1 on vm: 2 worker(s) per node, 1 node(s), max restarts 1\n"
        "[elaunch 00:00:00.875] rank(s) 0-1 INIT -> HEALTHY (pid 100,101)\n"
        "[0]  40%|####  |\n"
        "[1] Traceback (most recent call last):\n"
        '[1]   File "t.py", line 3, in <module>\n'
        "[1] ValueError: boom\n"
        "[elaunch 00:00:01.500] rank 1 (pid 101) HEALTHY -> FAILED: exit code 1\n"
        "[elaunch 00:00:01.625] worker group HEALTHY -> FAILED\n"
        "[elaunch 00:00:01.750] restarting the group: rank 1 (pid 101) exited with code 1 (restart 1 of 1, 0 left)\n"
        "[elaunch 00:00:01.875] rank 0 (pid 100) HEALTHY -> STOPPED: killed by SIGTERM (stopped by elaunch)\n"
        "[elaunch 00:00:02.562] rendezvous round 1: node 0 of 1, world size 2, master 127.0.0.1:29500 (0.25s)\n"
        "[elaunch 00:00:02.875] rank(s) 0-1 INIT -> HEALTHY (pid 102,103), restart 1\n"
        "[elaunch 00:00:03.250] rank 0 (pid 102) HEALTHY -> SUCCEEDED: exit code 0\n"
        "[elaunch 00:00:03.375] rank 1 (pid 103) HEALTHY -> SUCCEEDED: exit code 0\n"
        "[elaunch 00:00:03.500] worker group HEALTHY -> SUCCEEDED\n"
        "[elaunch 00:00:03.750] job SUCCEEDED: 2 worker(s) exited 0\n"
    )


def test_the_report_block_is_stamped_once(utc: None) -> None:
    failure = WorkerFailure(local_rank=1, global_rank=1, role="trainer", host="vm", pid=101, exitcode=1,
                            signal=None, timestamp=T0 + 1.5, traceback=TRACEBACK)  # fmt: skip
    result = RunResult(state=S.FAILED, failures={1: failure})
    _, err = play([ev.RunFinished(ts=T0 + 2, result=result)])
    assert err.splitlines()[:3] == [
        "[elaunch 00:00:02.000] job FAILED: exit code 1",
        "  root cause: rank 1 (local rank 1) on vm, pid 101, exited with code 1",
        "    at 00:00:01.500, restart 0",
    ]


def test_describe_is_pure() -> None:
    # The agent line of the group becoming HEALTHY names the attempt's workers, read from the view:
    # asking twice gives the same text and changes nothing (it used to consume the console's list).
    history = until(fail_then_succeed(), ev.GroupStateChanged)
    view = fold(history)
    before = fold(history)
    texts = {describe(history[-1], view) for _ in range(2)}
    assert texts == {"rank(s) 0-1 INIT -> HEALTHY (pid 100,101)"}
    assert view == before


def _restart(membership: bool) -> ev.RestartDecided:
    return ev.RestartDecided(reason="why", membership=membership, restarts_used=2, restarts_left=1,
                             membership_restarts=3)  # fmt: skip


@pytest.mark.parametrize(
    ("event", "text"),
    [
        (run_started(nproc=4, max_restarts=3, nodes=(2, 4)),
         "run r1 on vm: 4 worker(s) per node, 2:4 node(s), max restarts 3"),
        (_restart(False), "restarting the group: why (restart 2 of 3, 1 left)"),
        (_restart(True), "restarting the group: why (membership change #3, no restart used)"),
        (ev.MembershipChanged(waiting=2, lost=(), closed=False, reason=None), "membership: 2 node(s) waiting to join"),
        (ev.MembershipChanged(waiting=0, lost=("a", "b"), closed=True, reason="b gave up"),
         "membership: lost a, b; job closed: b gave up"),
        (ev.MembershipChanged(waiting=0, lost=(), closed=False, reason=None), None),
        (ev.MembershipChanged(waiting=0, lost=(), closed=False, reason=None, spares=("h3",)),
         "membership: spare(s) standing by: h3"),
        # The rendezvous itself tells a new spare, with the running hosts (rounds.standby_notice).
        (ev.MembershipChanged(waiting=0, lost=(), closed=False, reason=None, spare=True), None),
        (ev.SignalReceived(signal=10, action="forward"), "SIGUSR1 received: passed on to the workers, job keeps running"),
        (ev.SignalReceived(signal=2, action="shutdown"),
         "SIGINT received: stopping the workers (press Ctrl-C again to kill them at once)"),
        (ev.SignalReceived(signal=2, action="kill"), "SIGINT received again: killing the workers now"),
        (ev.SignalReceived(signal=15, action="ignored"), "SIGTERM received: already shutting down"),
        (ev.SignalReceived(signal=15, action="unknown"), None),
        (ev.Message(level="info", text="files in /x"), "files in /x"),
        (ev.Message(level="warning", text="careful"), "warning: careful"),
        (ev.WorkerStateChanged(local_rank=0, global_rank=4, pid=9, old=S.HEALTHY, new=S.FAILED, restart=0, signal=9),
         "rank 4 (pid 9) HEALTHY -> FAILED: killed by SIGKILL"),
        (ev.WorkerStateChanged(local_rank=0, global_rank=4, pid=9, old=S.HEALTHY, new=S.STOPPED, restart=0,
                               exitcode=3, stopped_by_agent=True),
         "rank 4 (pid 9) HEALTHY -> STOPPED: exit code 3 (stopped by elaunch)"),
        (ev.WorkerStateChanged(local_rank=0, global_rank=4, pid=9, old=S.INIT, new=S.HEALTHY, restart=0), None),
        (ev.GroupStateChanged(old=S.HEALTHY, new=S.STOPPED, restart=0), "worker group HEALTHY -> STOPPED"),
        (ev.GroupStateChanged(old=S.STOPPED, new=S.INIT, restart=0), None),
        (ev.RendezvousStarted(attempt=0), None),
        (ev.WorkerOutput(local_rank=0, global_rank=0, stream=1, data=b"x\n"), None),
    ],
)  # fmt: skip
def test_agent_lines(event: ev.Event, text: str | None) -> None:
    assert describe(event, RunView()) == text


def test_rendezvous_line_only_when_there_is_something_to_say() -> None:
    first, second = (
        attempt(T0, 1, round_=0, restart=0, first_pid=1)[1],
        attempt(T0, 1, round_=3, restart=0, first_pid=1)[1],
    )
    assert describe(first, RunView()) is None  # one node, first round: nothing new
    assert describe(second, RunView()) == (
        "rendezvous round 3: node 0 of 1, world size 2, master 127.0.0.1:29500 (0.25s)"
    )


def _view(world: int, restart: int = 0) -> RunView:
    return fold([run_started(), *attempt(T0, 2, round_=0, restart=restart, first_pid=1, world=world)])


def test_worker_prefixes() -> None:
    assert worker_prefix(ConsoleOptions(host="vm"), _view(world=12), 1, 3) == "[ 3] "
    assert worker_prefix(ConsoleOptions(host="vm", multi_node=True), _view(world=2), 1, 1) == "[vm:1] "
    template = ConsoleOptions(prefix_template="${role_name}/${host}/${group_rank}/${rank}/${local_rank}/${restart}| ",
                              host="vm", role="trainer")  # fmt: skip
    assert worker_prefix(template, _view(world=2, restart=2), 1, 1) == "trainer/vm/0/1/1/2| "
    assert worker_prefix(ConsoleOptions(color=True), _view(world=2), 1, 1) == "\x1b[33m[1] \x1b[0m"


def test_filters_and_redirects_choose_what_the_console_shows() -> None:
    assert shown(ConsoleOptions(), 0, 0, 1)
    assert not shown(ConsoleOptions(local_ranks_filter=frozenset({1})), 0, 5, 1)
    assert not shown(ConsoleOptions(ranks_filter=frozenset({4})), 0, 5, 1)
    redirected = ConsoleOptions(redirects=StdSpec(default=3))
    assert not shown(redirected, 0, 0, 1) and not shown(redirected, 0, 0, 2)
    teed = ConsoleOptions(redirects=StdSpec(default=3), tee=StdSpec(per_rank={0: 2}))
    assert shown(teed, 0, 0, 2) and not shown(teed, 0, 0, 1) and not shown(teed, 1, 1, 2)


def test_progress_bars_are_rate_limited_in_plain_text() -> None:
    clock = Clock()
    history = attempt(T0, 1, round_=0, restart=0, first_pid=1, world=1)
    bars = [ev.WorkerProgress(local_rank=0, global_rank=0, stream=1, text=b"%d%%" % i) for i in range(4)]
    out, err = io.BytesIO(), io.BytesIO()
    tracker = RunTracker()
    bus = ev.Bus([tracker, PlainConsole(out, err, ConsoleOptions(progress_interval=10), tracker, now=clock)])
    for e in [*history, bars[0], bars[1]]:
        bus.publish(e)
    clock.t = 10.0
    bus.publish(bars[2])
    bus.publish(ev.WorkerOutput(local_rank=0, global_rank=0, stream=1, data=b"done\n"))
    bus.publish(bars[3])  # a new line's bar is shown at once
    assert out.getvalue() == b"[0] 0%\n[0] 2%\n[0] done\n[0] 3%\n"


def test_a_closed_stream_is_given_up_not_raised() -> None:
    out, err = io.BytesIO(), io.BytesIO()
    tracker = RunTracker()
    console = PlainConsole(out, err, ConsoleOptions(), tracker)
    out.close()
    console.handle(ev.WorkerOutput(local_rank=0, global_rank=0, stream=1, data=b"lost\n"))
    console.handle(ev.Message(level="info", text="still here"))
    console.flush()
    assert err.getvalue().endswith(b"] still here\n")


def test_rank_ranges() -> None:
    assert rank_ranges([5, 0, 2, 1]) == "0-2,5"
    assert rank_ranges([]) == ""


def _failure(rank: int, ts: float, **kw: object) -> WorkerFailure:
    base: dict[str, object] = dict(local_rank=rank, global_rank=rank, role="trainer", host="vm", pid=100 + rank,
                                   exitcode=1, signal=None, timestamp=ts)  # fmt: skip
    return WorkerFailure(**{**base, **kw})  # type: ignore[arg-type]


def test_report_of_a_failed_run(utc: None) -> None:
    result = RunResult(
        state=S.FAILED,
        failures={
            0: _failure(0, T0 + 2, exitcode=None, signal=15, stopped_by_agent=True),
            1: _failure(1, T0 + 1, restart=1, error_message="bad input", traceback=TRACEBACK),
            2: _failure(2, T0 + 3, exitcode=None, signal=11),
            3: _failure(3, T0 + 1.5, exitcode=7),
        },
        message="could not close the job for the other nodes: gone",
    )
    assert report(result, ("b: rank 9 (pid 5) exited with code 2\nValueError: x",)) == (
        "job FAILED: exit code 1\n"
        "  could not close the job for the other nodes: gone\n"
        "  root cause: rank 1 (local rank 1) on vm, pid 101, exited with code 1\n"
        "    at 00:00:01.000, restart 1\n"
        "    kind: exit_code, restartable\n"
        "    error: bad input\n"
        "    traceback:\n"
        "      Traceback (most recent call last):\n"
        '        File "t.py", line 3, in <module>\n'
        "      ValueError: boom\n"
        "  also failed after it: rank 3 (exit_code: exit code 7), rank 2 (exit_code: SIGSEGV)\n"
        "  stopped by elaunch: rank(s) 0\n"
        "  failures reported by other nodes:\n"
        "    b: rank 9 (pid 5) exited with code 2\n"
        "    ValueError: x"
    )


def test_report_of_a_killed_worker_and_of_a_stopped_run(utc: None) -> None:
    killed = RunResult(
        state=S.FAILED, failures={0: _failure(0, T0, exitcode=None, signal=9, last_lines=("a", "b"), kind=Kind.SIGNAL)}
    )
    assert report(killed).splitlines() == [
        "job FAILED: exit code 137",
        "  root cause: rank 0 (local rank 0) on vm, pid 100, was killed by SIGKILL (the kernel's OOM killer is a "
        "common cause: check `dmesg`)",
        "    at 00:00:00.000, restart 0",
        "    kind: signal, restartable",
        "    last lines:",
        "      a",
        "      b",
    ]
    stopped = RunResult(state=S.STOPPED, interrupted_by=2, message="vm was stopped by SIGINT")
    assert report(stopped) == "job STOPPED by SIGINT: exit code 130\n  vm was stopped by SIGINT"
    assert report(RunResult(state=S.SUCCEEDED, return_values={0: 0, 1: 0})) == "job SUCCEEDED: 2 worker(s) exited 0"
