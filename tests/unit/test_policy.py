"""The agent's decisions as pure functions: scripted values in, one decision out."""

from __future__ import annotations

import signal

import pytest

from elaunch.policy import (
    Action,
    SignalPolicy,
    decide,
    group_state,
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
