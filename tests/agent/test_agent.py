"""The agent's state machine driven by scripted fakes: no process, no store, no clock waits."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from elaunch import events as ev
from elaunch.agent import Agent, SignalPolicy
from elaunch.errors import StoreError
from elaunch.hangs import Supervision
from elaunch.kinds import Kind
from elaunch.rendezvous.api import Membership, NodeInfo, RendezvousInfo
from elaunch.rendezvous.local import LocalRendezvous
from elaunch.rundir import RunDir
from elaunch.spec import RunResult, WorkerPlan, WorkerSpec, WorkerState
from elaunch.tails import Explanation
from elaunch.values import replace
from elaunch.watchdog import Watchdog
from elaunch.workers import Exit, Wakeup

Step = Callable[["FakeProcesses"], Wakeup]


class FakeProcesses:
    """Plays a script of wake-ups; workers 'die' on a stop signal unless told to ignore it."""

    def __init__(self, script: list[Step], ignore_term: set[int] | None = None) -> None:
        self.script = list(script)
        self.ignore_term = ignore_term or set()
        self.generations: list[list[WorkerPlan]] = []
        self.sent: list[tuple[int, bool]] = []
        self._exits: dict[int, Exit] = {}
        self._pending: list[Exit] = []
        self._pid = 100
        self._t = 0.0
        self._woken = threading.Event()
        self._between = True  # no generation runs: waits are the agent's rendezvous or exit barrier

    def start(self, plans: list[WorkerPlan]) -> dict[int, int]:
        self.generations.append(list(plans))
        self._between = False
        self._exits.clear()
        self.plans = {p.local_rank: p for p in plans}
        self.pids = {}
        for p in plans:
            self._pid += 1
            self.pids[p.local_rank] = self._pid
        return dict(self.pids)

    def exit(self, local_rank: int, code: int | None = None, sig: int | None = None, *, now: bool = True) -> Exit:
        self._t += 1
        ex = Exit(local_rank, self.plans[local_rank].global_rank, self.pids[local_rank], code, sig, self._t)
        if now:
            self._exits[local_rank] = ex
        return ex

    def wait(self, timeout: float | None) -> Wakeup:
        if self._between:  # the agent waits for a rendezvous call in its thread: it wakes us when done
            assert self._woken.wait(10), "the rendezvous thread never woke the agent"
            self._woken.clear()
            return Wakeup(woken=True)
        if self._pending:
            out, self._pending = self._pending, []
            for ex in out:
                self._exits[ex.local_rank] = ex
            return Wakeup(exits=out)
        if not self.script or timeout == 0:  # a zero timeout only polls: what already happened
            if timeout is not None:
                return Wakeup()
            raise AssertionError("agent waits but the script is over")
        return self.script.pop(0)(self)

    def wake(self) -> None:
        self._woken.set()

    def send(self, sig: int, local_ranks: list[int] | None = None, *, group: bool = True) -> None:
        self.sent.append((sig, group))
        if sig == signal.SIGUSR1:
            return
        pending = {ex.local_rank for ex in self._pending}
        for lr in self.running():
            if lr not in pending and (sig == signal.SIGKILL or lr not in self.ignore_term):
                self._pending.append(self.exit(lr, sig=sig, now=False))

    def running(self) -> list[int]:
        return [lr for lr in self.plans if lr not in self._exits]

    def release(self, timeout: float = 5.0) -> list[Exit]:
        out = [self.exit(lr, sig=signal.SIGKILL) for lr in self.running()]
        self._pending.clear()
        self._between = True
        return out


def exits(*codes: tuple[int, int]) -> Step:
    return lambda f: Wakeup(exits=[f.exit(lr, code=c) for lr, c in codes])


def signals(*sigs: int) -> Step:
    return lambda f: Wakeup(signals=list(sigs))


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        self.t += 0.5
        return self.t


def make_agent(
    procs: FakeProcesses,
    tmp_path: Path,
    nproc: int = 2,
    max_restarts: int = 0,
    rdzv: object | None = None,
    shutdown_timeout: float = 30.0,
    **agent_kw: object,
) -> tuple[Agent, ev.Recorder]:
    spec = WorkerSpec(
        role="default",
        local_world_size=nproc,
        entrypoint="/bin/true",
        max_restarts=max_restarts,
        shutdown_timeout=shutdown_timeout,
    )
    rec = ev.Recorder()
    bus = ev.Bus([rec])
    agent = Agent(
        spec,
        rdzv or LocalRendezvous(run_id="t"),  # type: ignore[arg-type]
        procs,
        bus,
        host="h",
        error_files=RunDir(str(tmp_path / "logs"), "t"),
        signals=SignalPolicy(shutdown=frozenset({signal.SIGTERM, signal.SIGINT}), forward=frozenset({signal.SIGUSR1})),
        clock=FakeClock(),
        **agent_kw,  # type: ignore[arg-type]
    )
    return agent, rec


def test_all_succeed(tmp_path: Path) -> None:
    procs = FakeProcesses([exits((0, 0)), exits((1, 0))])
    agent, _rec = make_agent(procs, tmp_path)
    result = agent.run()
    assert result.state == WorkerState.SUCCEEDED
    assert result.exit_code == 0
    assert result.return_values == {0: 0, 1: 0}
    assert len(procs.generations) == 1
    assert agent.group.store is None  # one node: no store


def test_group_has_the_rendezvous_store(tmp_path: Path) -> None:
    class StoreRdzv(LocalRendezvous):
        store = object()

    procs = FakeProcesses([exits((0, 0)), exits((1, 0))])
    agent, _rec = make_agent(procs, tmp_path, rdzv=StoreRdzv(run_id="s"))
    assert agent.run().state == WorkerState.SUCCEEDED
    assert agent.group.store is StoreRdzv.store


def test_failure_without_restarts_returns_workers_code_and_stops_others(tmp_path: Path) -> None:
    procs = FakeProcesses([exits((1, 7))])
    agent, _rec = make_agent(procs, tmp_path)
    result = agent.run()
    assert result.state == WorkerState.FAILED
    assert result.exit_code == 7
    assert result.root_cause is not None and result.root_cause.global_rank == 1
    assert result.failures[0].stopped_by_agent
    assert (signal.SIGTERM, True) in procs.sent


def test_restart_budget_is_used_then_failure(tmp_path: Path) -> None:
    procs = FakeProcesses([exits((0, 1)), exits((0, 1)), exits((0, 3))])
    agent, rec = make_agent(procs, tmp_path, max_restarts=2)
    result = agent.run()
    assert len(procs.generations) == 3
    assert result.exit_code == 3
    restarts = [e for e in rec.events if isinstance(e, ev.RestartDecided)]
    assert [(r.restarts_used, r.restarts_left) for r in restarts] == [(1, 1), (2, 0)]
    counts = [p.env["TORCHELASTIC_RESTART_COUNT"] for gen in procs.generations for p in gen if p.local_rank == 0]
    assert counts == ["0", "1", "2"]


def test_restart_then_success(tmp_path: Path) -> None:
    procs = FakeProcesses([exits((1, 1)), exits((0, 0), (1, 0))])
    agent, _ = make_agent(procs, tmp_path, max_restarts=1)
    assert agent.run().exit_code == 0


def test_signal_death_maps_to_128_plus_n(tmp_path: Path) -> None:
    procs = FakeProcesses([lambda f: Wakeup(exits=[f.exit(0, sig=signal.SIGSEGV)])])
    agent, _ = make_agent(procs, tmp_path)
    assert agent.run().exit_code == 128 + signal.SIGSEGV


def test_shutdown_signal_forwards_and_exits_128_plus_n(tmp_path: Path) -> None:
    procs = FakeProcesses([signals(signal.SIGTERM)])
    agent, _rec = make_agent(procs, tmp_path)
    result = agent.run()
    assert result.interrupted_by == signal.SIGTERM
    assert result.exit_code == 143
    assert procs.sent[0] == (signal.SIGTERM, True)
    assert result.root_cause is None
    assert all(f.stopped_by_agent for f in result.failures.values())


def test_second_interrupt_kills_at_once(tmp_path: Path) -> None:
    procs = FakeProcesses([signals(signal.SIGINT), signals(signal.SIGINT), signals(signal.SIGINT)], ignore_term={0, 1})
    agent, rec = make_agent(procs, tmp_path)
    result = agent.run()
    assert result.exit_code == 130
    assert [s for s, _ in procs.sent] == [signal.SIGINT, signal.SIGKILL]
    actions = [e.action for e in rec.events if isinstance(e, ev.SignalReceived)]
    assert actions == ["shutdown", "kill"]


def test_usr1_is_forwarded_and_job_continues(tmp_path: Path) -> None:
    procs = FakeProcesses([signals(signal.SIGUSR1), exits((0, 0), (1, 0))])
    agent, _rec = make_agent(procs, tmp_path)
    assert agent.run().exit_code == 0
    assert (signal.SIGUSR1, False) in procs.sent


def test_stuck_worker_gets_sigkill_after_grace(tmp_path: Path) -> None:
    # Worker 0 ignores SIGTERM: after the (fake) grace period it must be SIGKILLed.
    procs = FakeProcesses([exits((1, 1))], ignore_term={0})
    agent, rec = make_agent(procs, tmp_path, shutdown_timeout=2.0)
    result = agent.run()
    assert result.exit_code == 1
    assert result.failures[0].signal == signal.SIGKILL
    assert any(isinstance(e, ev.Message) and "SIGKILL" in e.text for e in rec.events)


class MembershipRdzv(LocalRendezvous):
    """A local rendezvous whose membership reports one waiting node once."""

    def __init__(self) -> None:
        super().__init__(run_id="m")
        self.views = [Membership(waiting=1), Membership()]

    @property
    def max_nodes(self) -> int:
        return 2

    def next_rendezvous(self, me: NodeInfo) -> RendezvousInfo:
        info = super().next_rendezvous(me)
        return info

    def membership(self) -> Membership:
        return self.views.pop(0) if self.views else Membership()


def test_waiting_node_restarts_without_using_budget(tmp_path: Path) -> None:
    procs = FakeProcesses([lambda f: Wakeup(woken=True), exits((0, 0), (1, 0))])
    agent, rec = make_agent(procs, tmp_path, rdzv=MembershipRdzv())
    result = agent.run()
    assert result.exit_code == 0
    assert len(procs.generations) == 2
    (restart,) = [e for e in rec.events if isinstance(e, ev.RestartDecided)]
    assert restart.membership and restart.restarts_used == 0
    # The restart count is job-wide (the round), so a re-formed group resumes like a restarted one.
    assert procs.generations[1][0].env["TORCHELASTIC_RESTART_COUNT"] == "1"


class ClosedRdzv(MembershipRdzv):
    def __init__(self) -> None:
        super().__init__()
        self.views = [Membership(closed=True, reason="host2 failed")]


def test_closed_by_other_node_stops_workers(tmp_path: Path) -> None:
    procs = FakeProcesses([lambda f: Wakeup(woken=True)])
    agent, _ = make_agent(procs, tmp_path, rdzv=ClosedRdzv())
    result = agent.run()
    assert result.state == WorkerState.FAILED
    assert result.message is not None and "host2 failed" in result.message
    assert result.exit_code == 1


def test_states_published_in_order(tmp_path: Path) -> None:
    procs = FakeProcesses([exits((0, 0), (1, 0))])
    agent, rec = make_agent(procs, tmp_path)
    agent.run()
    groups = [(e.old, e.new) for e in rec.events if isinstance(e, ev.GroupStateChanged)]
    assert groups == [
        (WorkerState.INIT, WorkerState.HEALTHY),
        (WorkerState.HEALTHY, WorkerState.SUCCEEDED),
    ]
    assert isinstance(rec.events[-1], ev.RunFinished)


@pytest.mark.parametrize(
    ("result", "code"),
    [
        (RunResult(state=WorkerState.SUCCEEDED), 0),
        (RunResult(state=WorkerState.FAILED), 1),
        (RunResult(state=WorkerState.STOPPED, interrupted_by=signal.SIGINT), 130),
    ],
)
def test_exit_codes(result: RunResult, code: int) -> None:
    assert result.exit_code == code


class CloseRdzv(LocalRendezvous):
    """Two nodes as seen from one: the first close wins (as in the store), or closing fails."""

    def __init__(self, closed_by_other: str | None = None, store_gone: bool = False) -> None:
        super().__init__(run_id="c")
        self.other = closed_by_other
        self.store_gone = store_gone
        self._failures = ["host9: rank 3 (pid 9) exited with code 1"]

    @property
    def max_nodes(self) -> int:
        return 2

    def set_closed(self, reason: str) -> None:
        if self.store_gone:
            raise StoreError("rendezvous store at host1:29400: compare_set failed: connection reset")
        if self._closed is None:
            self._closed = self.other or reason


def test_failed_node_says_who_closed_the_job_first(tmp_path: Path) -> None:
    procs = FakeProcesses([exits((0, 1))])
    agent, rec = make_agent(procs, tmp_path, rdzv=CloseRdzv(closed_by_other="host2 was stopped by SIGTERM"))
    result = agent.run()
    assert result.exit_code == 1
    assert result.message == "the job was closed: host2 was stopped by SIGTERM"
    (finished,) = [e for e in rec.events if isinstance(e, ev.RunFinished)]
    assert finished.remote_failures == ("host9: rank 3 (pid 9) exited with code 1",)  # not our own failure


def test_failed_node_says_when_the_others_could_not_be_told(tmp_path: Path) -> None:
    procs = FakeProcesses([exits((0, 1))])
    agent, _ = make_agent(procs, tmp_path, rdzv=CloseRdzv(store_gone=True))
    result = agent.run()
    assert result.exit_code == 1
    assert result.message is not None
    assert result.message.startswith("could not close the job for the other nodes: rendezvous store at host1:29400")


def test_a_worker_that_fails_on_its_own_while_the_group_is_stopped_is_a_failure(tmp_path: Path) -> None:
    # Rank 1 fails; while the group is being stopped, rank 0 (which ignores SIGTERM) segfaults:
    # that is its own failure, not "stopped by elaunch".
    procs = FakeProcesses([exits((1, 1)), lambda f: Wakeup(exits=[f.exit(0, sig=signal.SIGSEGV)])], ignore_term={0})
    agent, _ = make_agent(procs, tmp_path)
    result = agent.run()
    assert not result.failures[0].stopped_by_agent and result.failures[0].signal == signal.SIGSEGV
    assert result.root_cause is not None and result.root_cause.global_rank == 1


def test_exits_that_happened_before_the_stop_are_the_workers_own(tmp_path: Path) -> None:
    def both_fail(f: FakeProcesses) -> Wakeup:
        first = f.exit(1, code=1)
        f._pending.append(f.exit(0, code=2, now=False))  # a moment later, seen only at the next poll
        return Wakeup(exits=[first])

    procs = FakeProcesses([both_fail])
    agent, _ = make_agent(procs, tmp_path)
    result = agent.run()
    assert not result.failures[0].stopped_by_agent and result.failures[0].exitcode == 2
    assert result.root_cause is not None and result.root_cause.global_rank == 1


def test_the_same_failure_before_any_progress_is_not_restarted_again(tmp_path: Path) -> None:
    procs = FakeProcesses([exits((0, 1)), exits((0, 1)), exits((0, 1))])
    watch = Watchdog(Supervision())  # no output reaches it: no progress
    agent, rec = make_agent(procs, tmp_path, max_restarts=5, supervision=Supervision(), watch=watch)
    result = agent.run()
    assert len(procs.generations) == 2 and result.exit_code == 93
    assert len(rec.of(ev.RestartDecided)) == 1
    assert result.message == "the same exit code 1 before any progress on attempts 1 and 2; not restarting"
    assert result.root_cause is not None and not result.root_cause.restartable


def test_a_startup_error_is_not_restarted(tmp_path: Path) -> None:
    tb = "Traceback (most recent call last):\n  File \"t.py\", line 1\nModuleNotFoundError: No module named 'x'"

    def fail(f: FakeProcesses) -> Wakeup:
        ex = f.exit(1, code=1)
        return Wakeup(exits=[replace(ex, why=Explanation(traceback=tb))])

    procs = FakeProcesses([fail])
    agent, _ = make_agent(procs, tmp_path, max_restarts=3, supervision=Supervision(no_requeue_code=42))
    result = agent.run()
    assert len(procs.generations) == 1 and result.exit_code == 42
    cause = result.root_cause
    assert cause is not None and (cause.kind, cause.exception) == (Kind.STARTUP, "ModuleNotFoundError")


def test_a_lost_peer_on_a_single_node_does_not_wait_for_other_nodes(tmp_path: Path) -> None:
    tb = 'Traceback (most recent call last):\n  File "t.py", line 1\nRuntimeError: Connection closed by peer [::1]:5'

    def fail(f: FakeProcesses) -> Wakeup:
        return Wakeup(exits=[replace(f.exit(0, code=1), why=Explanation(traceback=tb))])

    procs = FakeProcesses([fail])  # a wait between generations would fail the test (nobody wakes it)
    agent, _ = make_agent(procs, tmp_path)
    cause = agent.run().root_cause
    assert cause is not None and cause.kind == Kind.LOST_PEER and cause.exception == "RuntimeError"
