"""The run's view folded from scripted event histories: one truth for every sink."""

from __future__ import annotations

import pytest

from elaunch import events as ev
from elaunch.rendezvous.api import Membership
from elaunch.runview import RunTracker, RunView, WorkerRow, advance, fold
from elaunch.spec import WorkerState
from tests.unit.history import T0, attempt, fail_then_succeed, run_started, until

pytestmark = pytest.mark.timeout(10)
S = WorkerState


def test_empty_view() -> None:
    v = RunView()
    assert (v.run, v.attempt, v.round, v.world_size, v.master, v.max_restarts) == (None, 0, 0, 0, None, 0)
    assert v.workers == () and v.finished is None and v.worker(0) is None


def test_a_failed_attempt_and_its_restart() -> None:
    history = fail_then_succeed()
    v = fold(until(history, ev.GroupStateChanged, 3))  # rank 1 failed, rank 0 stopped, group back to INIT
    assert (v.attempt, v.restart_count, v.restarts_left, v.group_state) == (0, 1, 0, S.INIT)
    assert v.worker(1) == WorkerRow(local_rank=1, global_rank=1, role_rank=1, pid=101, attempt=0, restart=0,
                                    state=S.FAILED, started=T0 + 0.625, ended=T0 + 1.5, last_output=T0 + 1.25,
                                    exitcode=1)  # fmt: skip
    stopped = v.worker(0)
    assert stopped is not None
    assert (stopped.state, stopped.signal, stopped.stopped_by_agent, stopped.ended) == (S.STOPPED, 15, True, T0 + 1.875)

    v = fold(history)
    assert v.run is not None and (v.run.run_id, v.run.host, v.run.role, v.run.started_at) == ("r1", "vm", "trainer", T0)
    assert (v.attempt, v.round, v.world_size, v.group_rank, v.group_world_size) == (1, 1, 2, 0, 1)
    assert v.master == ("127.0.0.1", 29500)
    assert (v.restart_count, v.restarts_left, v.membership_restarts, v.group_state) == (1, 0, 0, S.SUCCEEDED)
    assert [(w.attempt, w.pid, w.state) for w in v.all_workers] == [
        (0, 100, S.STOPPED), (0, 101, S.FAILED), (1, 102, S.SUCCEEDED), (1, 103, S.SUCCEEDED),
    ]  # fmt: skip
    assert [w.restart for w in v.workers] == [1, 1]
    assert [r.round for r in v.rounds] == [0, 1]
    assert v.finished is not None and v.finished.result.state == S.SUCCEEDED and v.finished.ts == T0 + 3.75


def test_progress_is_pending_until_the_next_line() -> None:
    history = fail_then_succeed()
    v = fold(until(history, ev.WorkerProgress))
    row = v.worker(0)
    assert row is not None and (row.progress, row.last_output) == ("40%|####  |", T0 + 1.125)
    v = advance(v, ev.WorkerOutput(ts=T0 + 1.1875, local_rank=0, global_rank=0, stream=2, data=b"100%\n"))
    row = v.worker(0)
    assert row is not None and (row.progress, row.last_output) == ("", T0 + 1.1875)


def test_lines_on_the_other_stream_leave_the_bars() -> None:
    v = fold(until(fail_then_succeed(), ev.WorkerProgress))  # rank 0 draws on stderr
    v = advance(v, ev.WorkerOutput(ts=T0 + 1.2, local_rank=0, global_rank=0, stream=1, data=b"tqdm.write\n"))
    row = v.worker(0)
    assert row is not None and (row.progress, row.progress_stream) == ("40%|####  |", 2)
    v = advance(v, ev.WorkerProgress(ts=T0 + 1.3, local_rank=0, global_rank=0, stream=2, text=b""))
    row = v.worker(0)
    assert row is not None and row.progress == ""  # the bars were erased


def test_advance_never_changes_the_view_it_is_given() -> None:
    history = fail_then_succeed()
    views = [RunView()]
    for e in history:
        views.append(advance(views[-1], e))
    # Fold again from scratch: every intermediate view is still what it was when made.
    again = [RunView()]
    for e in history:
        again.append(advance(again[-1], e))
    assert views == again
    assert views[1].workers == () and views[-1].workers != ()


def test_events_that_change_nothing_return_the_same_view() -> None:
    v = fold(attempt(T0, 1, round_=0, restart=0, first_pid=7))
    for e in (ev.Message(level="info", text="hi"), ev.SignalReceived(signal=10, action="forward")):
        assert advance(v, e) is v
    # Worker events for a local rank the attempt does not have change nothing either.
    ghost = ev.WorkerOutput(local_rank=5, global_rank=5, stream=1, data=b"x\n")
    assert advance(v, ghost) is v


def test_membership_and_membership_restarts() -> None:
    v = fold([run_started(nodes=(1, 3)), *attempt(T0, 1, round_=0, restart=0, first_pid=1)])
    v = advance(v, ev.MembershipChanged(waiting=1, lost=("b",), closed=False, reason=None))
    assert v.membership == Membership(waiting=1, lost=("b",))
    v = advance(v, ev.RestartDecided(reason="1 node(s) waiting to join", membership=True, restarts_used=0,
                                     restarts_left=1, membership_restarts=1))  # fmt: skip
    assert (v.restart_count, v.restarts_left, v.membership_restarts) == (0, 1, 1)


def test_a_round_without_its_start_event_begins_the_next_attempt() -> None:
    done = ev.RendezvousDone(round=0, group_rank=0, group_world_size=1, world_size=1, master_addr="h",
                             master_port=1, hosts=("h",), duration=0)  # fmt: skip
    start = ev.WorkerStarted(local_rank=0, global_rank=0, role_rank=0, pid=1, restart=0, argv=())
    v = fold([done, start, done, start])
    assert [w.attempt for w in v.all_workers] == [0, 1]


def test_the_tracker_swaps_whole_views() -> None:
    tracker = RunTracker()
    history = fail_then_succeed()
    before = tracker.view
    for e in history[:5]:
        tracker.handle(e)
    held = tracker.view  # what a reader (the live view's thread) holds
    for e in history[5:]:
        tracker.handle(e)
    assert before == RunView()
    assert held == fold(history[:5]) and held.finished is None
    assert tracker.view == fold(history)


def _bars(ts: float, rank: int, n: int) -> ev.WorkerProgress:
    text = f"rank {rank}:  {n}%|#   | {n}/100 [00:0{n // 50}<00:01, 50.00it/s]".encode()
    return ev.WorkerProgress(ts=ts, local_rank=rank, global_rank=rank, stream=2, text=text)


def test_the_tracker_shows_every_bar_redraw_at_once_though_it_folds_them_later() -> None:
    """Redraws wait outside the kept view for up to FOLD_PERIOD; every read still sees the last one,
    and lines, state changes and the next attempt come after them, in order."""
    history: list[ev.Event] = [run_started(), *attempt(T0, 2, round_=1, restart=0, first_pid=100)]
    t = T0 + 1
    for n in range(1, 100):  # two workers redrawing at 50 Hz, a line now and then
        t += 0.01
        history.append(_bars(t, n % 2, n))
        if n % 37 == 0:
            history.append(ev.WorkerOutput(ts=t, local_rank=n % 2, global_rank=n % 2, stream=2, data=b"epoch\n"))
    history.append(ev.WorkerStateChanged(ts=t + 0.01, local_rank=1, global_rank=1, pid=101,
                                         old=WorkerState.HEALTHY, new=WorkerState.SUCCEEDED, exitcode=0, restart=0))  # fmt: skip
    history.append(_bars(t + 0.02, 0, 100))
    history += attempt(t + 0.03, 2, round_=2, restart=1, first_pid=200)
    tracker = RunTracker()
    for i, e in enumerate(history):
        tracker.handle(e)
        seen, exact = tracker.view, fold(history[: i + 1])
        assert [(w.pid, w.state, w.progress, w.last_output, w.progress_stream) for w in seen.all_workers] == [
            (w.pid, w.state, w.progress, w.last_output, w.progress_stream) for w in exact.all_workers
        ], f"after event {i}: {e!r}"
        assert [(p.step, p.total) if (p := seen.progress_of(w)) else None for w in seen.workers] == [
            (p.step, p.total) if (p := exact.progress_of(w)) else None for w in exact.workers
        ]
    assert [w.progress[:13] for w in tracker.view.past_workers] == ["rank 0:  100%", "rank 1:  99%|"]
