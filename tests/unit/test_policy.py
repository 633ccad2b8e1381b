"""The agent's decisions as pure functions: scripted values in, one decision out."""

from __future__ import annotations

import signal

import pytest

from elaunch.failures import cause_text, failure_detail, node_lost_failure
from elaunch.kinds import Kind
from elaunch.policy import (
    Action,
    SignalPolicy,
    decide,
    group_state,
    may_follow,
    reform_reason,
    stopped_by_agent,
    worker_exit_state,
)
from elaunch.rendezvous.api import Membership
from elaunch.spec import WorkerFailure, WorkerState, root_cause

H, F, S, ST = WorkerState.HEALTHY, WorkerState.FAILED, WorkerState.SUCCEEDED, WorkerState.STOPPED


def failure(rank: int, ts: float, by_agent: bool = False) -> WorkerFailure:
    return WorkerFailure(rank, rank, "default", "h", 100 + rank, 1, None, ts, stopped_by_agent=by_agent)


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("states", "expected"),
    [([H, H], H), ([S, H], H), ([S, S], S), ([S, F], F), ([ST, F], F), ([], H)],
)
def test_group_state(states: list[WorkerState], expected: WorkerState) -> None:
    assert group_state(states) == expected


@pytest.mark.timeout(10)
def test_root_cause_is_the_first_failure_not_caused_by_the_agent() -> None:
    echoes = [failure(0, 5.0, by_agent=True), failure(3, 2.0), failure(1, 2.0), failure(2, 1.5, by_agent=True)]
    cause = root_cause(echoes)
    assert cause is not None and cause.global_rank == 1  # same time: the lower rank
    assert root_cause([failure(0, 1.0, by_agent=True)]) is None


@pytest.mark.timeout(10)
def test_a_history_of_wakeups() -> None:
    # One generation seen through successive wake-ups, as the agent's loop sees it.
    quiet = Membership()
    assert decide([H, H], [], quiet, 1).action == Action.WAIT
    assert decide([S, H], [], quiet, 1).action == Action.WAIT
    d = decide([S, F], [failure(1, 3.0)], quiet, 1)
    assert d.action == Action.RESTART and d.cause is not None and d.cause.global_rank == 1
    assert decide([S, F], [failure(1, 3.0)], quiet, 0).action == Action.FAIL
    assert decide([S, S], [], quiet, 0).action == Action.SUCCEED


def echo(rank: int, ts: float) -> WorkerFailure:
    """A worker whose collective lost its peer (gloo: Connection reset by peer)."""
    return WorkerFailure(rank, rank, "default", "h", 100 + rank, 1, None, ts, kind=Kind.LOST_PEER)


@pytest.mark.timeout(10)
def test_an_echo_waits_for_a_lost_node_that_may_explain_it() -> None:
    quiet, lost = Membership(), Membership(lost=("host2 (group rank 1)",))
    # While a lost node may still be found, a failure made only of echoes waits, whatever the budget.
    assert decide([F, H], [echo(0, 1.0)], quiet, 3, lost_may_follow=True).action == Action.WAIT
    assert decide([F, H], [echo(0, 1.0)], quiet, 0, lost_may_follow=True).action == Action.WAIT
    # The lost node found: re-form (no restart used, even with none left), the echo named as such.
    for left in (3, 0):
        d = decide([F, H], [echo(0, 1.0)], lost, left, lost_may_follow=True)
        assert d.action == Action.REFORM and d.cause == echo(0, 1.0) and d.membership == lost
    # Found after the wait ended: still the explanation.
    assert decide([F, F], [echo(0, 1.0), echo(1, 1.2)], lost, 0).action == Action.REFORM
    # The wait over and nothing found: the echo is all there is.
    assert decide([F, H], [echo(0, 1.0)], quiet, 3).action == Action.RESTART
    assert decide([F, H], [echo(0, 1.0)], quiet, 0).action == Action.FAIL
    # A real cause does not wait, lost node or not: it uses the budget as before.
    assert decide([F, F], [echo(0, 1.0), failure(1, 1.1)], quiet, 3, lost_may_follow=True).action == Action.RESTART
    assert decide([F, F], [echo(0, 1.0), failure(1, 1.1)], lost, 3).action == Action.RESTART
    # Another node asked for a restart round (its failure is the cause) or closed the job: act now.
    restart = Membership(restart="host3: rank 4 (pid 9) exited with code 1")
    assert decide([F, H], [echo(0, 1.0)], restart, 3, lost_may_follow=True).action == Action.RESTART
    closed = Membership(closed=True, reason="host3 failed")
    assert decide([F, H], [echo(0, 1.0)], closed, 0, lost_may_follow=True).action == Action.FAIL


@pytest.mark.timeout(10)
def test_how_long_a_lost_node_may_follow() -> None:
    assert may_follow(100.0, 100.0, 9.3) and may_follow(100.0, 109.2, 9.3)
    assert not may_follow(100.0, 109.3, 9.3)
    assert not may_follow(None, 100.0, 9.3)  # no echo
    assert not may_follow(100.0, 100.0, None)  # a backend that finds no lost node


@pytest.mark.timeout(10)
def test_a_lost_node_as_a_root_cause() -> None:
    lost = node_lost_failure("host2 (group rank 1)", 5.0, "default", 0)
    # It outranks the echoes it explains even when they came first, and yields to a real cause.
    assert root_cause([echo(0, 1.0), lost]) == lost
    assert root_cause([echo(0, 1.0), lost, failure(3, 9.0)]) == failure(3, 9.0)
    assert cause_text(lost) == "node host2 (group rank 1) was lost"
    detail = failure_detail(lost)
    assert detail[0] == "root cause: node host2 (group rank 1) was lost"
    assert "  kind: node_lost, restartable" in detail
    assert lost.shell_code == 1


@pytest.mark.timeout(10)
def test_precedence() -> None:
    waiting, closed = Membership(waiting=2), Membership(closed=True, reason="host2 failed")
    # A shutdown signal wins over everything, success wins over membership, failure over a closed job.
    assert decide([S, S], [], closed, 3, [signal.SIGTERM, signal.SIGINT]).signal == signal.SIGTERM
    assert decide([S, S], [], waiting, 3).action == Action.SUCCEED
    assert decide([F, H], [failure(0, 1.0)], closed, 0).action == Action.FAIL
    assert decide([H, H], [], closed, 3).action == Action.CLOSED
    d = decide([H, H], [], waiting, 0)
    assert d.action == Action.REFORM and d.membership == waiting  # no restart budget needed
    assert decide([H], [], Membership(lost=("host3",)), 0).action == Action.REFORM


@pytest.mark.timeout(10)
def test_reform_reason() -> None:
    assert reform_reason(Membership(waiting=2)) == "2 node(s) waiting to join"
    assert reform_reason(Membership(lost=("host3", "host4"))) == "lost node(s): host3, host4"
    both = Membership(waiting=1, lost=("host2 (group rank 2)",))
    assert reform_reason(both) == "lost node(s): host2 (group rank 2); 1 node(s) waiting to join"


@pytest.mark.timeout(10)
def test_worker_exit_state() -> None:
    assert worker_exit_state(ok=True, stopped_by_agent=True) == S
    assert worker_exit_state(ok=False, stopped_by_agent=True) == ST
    assert worker_exit_state(ok=False, stopped_by_agent=False) == F


@pytest.mark.timeout(10)
def test_signal_policy_first_second_third() -> None:
    p = SignalPolicy(shutdown=frozenset({signal.SIGTERM, signal.SIGINT}), forward=frozenset({signal.SIGUSR1}))
    assert p.action(signal.SIGUSR1, 0) == "forward"
    assert [p.action(signal.SIGINT, n) for n in range(4)] == ["shutdown", "kill", "ignored", "ignored"]
    assert p.action(signal.SIGUSR1, 5) == "forward"


@pytest.mark.timeout(10)
def test_stopped_by_agent() -> None:
    assert not stopped_by_agent(False, signal.SIGTERM, None)  # not stopping: its own end
    assert stopped_by_agent(True, signal.SIGTERM, signal.SIGTERM) and stopped_by_agent(
        True, signal.SIGKILL, signal.SIGINT
    )
    assert stopped_by_agent(True, None, signal.SIGTERM)  # exited with a code: a handler of the stop signal
    assert not stopped_by_agent(True, signal.SIGSEGV, signal.SIGTERM)  # crashed on its own meanwhile
