"""The run as one immutable value folded from the event stream: the state every sink reads.

`advance(view, event)` is a pure reducer; `RunTracker` is the sink that keeps the current
`RunView` (one reference, swapped per event, so another thread may read it at any time without
a lock). Sinks never track attempts, restarts or workers themselves: they read the tracker's
view, which already includes the event they are handling (subscribe the tracker first).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from elaunch import events as ev
from elaunch.progress import PARSE_PERIOD, Progress, ProgressRules, advance_progress, read_progress
from elaunch.rendezvous.api import Membership
from elaunch.spec import RunResult, WorkerState
from elaunch.values import Value, field, replace, value


@value
class RunInfo(Value):
    """What `RunStarted` said about the run; `started_at` is wall-clock seconds."""

    run_id: str
    host: str
    role: str
    nproc_per_node: int
    min_nodes: int
    max_nodes: int
    max_restarts: int
    started_at: float


@value
class RoundView(Value):
    """One completed rendezvous round as this node saw it; `duration` in seconds."""

    round: int
    group_rank: int
    group_world_size: int
    world_size: int
    master_addr: str
    master_port: int
    hosts: tuple[str, ...]
    duration: float


@value
class WorkerRow(Value):
    """One worker of one attempt; timestamps are wall-clock seconds, None until they happen.

    `attempt` counts rendezvous rounds on this node (the `attempt_<k>` directory); `restart` is
    the failure restarts used when it started. `exitcode`/`signal`/`stopped_by_agent` are set
    when it reaches a terminal state. `progress` is its pending `\\r`-redrawn line (or the rows of
    bars it redraws, one per line), or ""; `progress_stream` the stream it is drawn on (output on
    the other stream, such as `tqdm.write` lines on stdout under bars on stderr, leaves it).
    `steps` is its step, total and rate read from its output (progress.py), `straggler` whether
    it is marked slow (`StragglerChanged`).
    """

    local_rank: int
    global_rank: int
    role_rank: int
    pid: int
    attempt: int
    restart: int
    state: WorkerState
    started: float
    ended: float | None = None
    last_output: float | None = None
    progress: str = ""
    progress_stream: int = 0
    exitcode: int | None = None
    signal: int | None = None
    stopped_by_agent: bool = False
    steps: Progress | None = None
    straggler: bool = False


@value
class Finished(Value):
    """How the run ended (`RunFinished`); `ts` is wall-clock seconds."""

    result: RunResult
    remote_failures: tuple[str, ...]
    ts: float


@value
class RunView(Value):
    """Everything known about the run on this node, after some prefix of its events.

    `workers` are the current attempt's, ordered by local rank; `past_workers` those of earlier
    attempts, in the order they ended. `rounds` are the completed rendezvous rounds, oldest first.
    """

    run: RunInfo | None = None
    attempt: int = 0
    rendezvous_pending: bool = False
    """A round began (`RendezvousStarted`) and is not done yet."""
    restart_count: int = 0
    """Restarts after failures so far (not membership restarts)."""
    restarts_left: int = 0
    membership_restarts: int = 0
    rounds: tuple[RoundView, ...] = ()
    group_state: WorkerState = WorkerState.INIT
    membership: Membership = field(default_factory=Membership)
    stood_by: bool = False
    """This node stood by as a spare at some point (`--standby`)."""
    health_checks: int = 0
    """Health checks run before rounds (`--health-check`)."""
    health_failed: ev.HealthChecked | None = None
    """The check that failed (this node then left the job), else None."""
    workers: tuple[WorkerRow, ...] = ()
    past_workers: tuple[WorkerRow, ...] = ()
    finished: Finished | None = None
    downtime: tuple[tuple[int, str, float], ...] = ()
    """(attempt, phase, seconds) as the agent measured them (`Downtime` events), in order."""
    progress_rules: ProgressRules = field(default_factory=ProgressRules)
    """How progress is read from output and judged (from the options; never changed by events)."""

    @property
    def last_round(self) -> RoundView | None:
        return self.rounds[-1] if self.rounds else None

    @property
    def round(self) -> int:
        """The latest completed rendezvous round, 0 before the first."""
        r = self.last_round
        return r.round if r is not None else 0

    @property
    def group_rank(self) -> int:
        r = self.last_round
        return r.group_rank if r is not None else 0

    @property
    def group_world_size(self) -> int:
        r = self.last_round
        return r.group_world_size if r is not None else 0

    @property
    def world_size(self) -> int:
        """Workers in the whole job (every node), 0 before the first round."""
        r = self.last_round
        return r.world_size if r is not None else 0

    @property
    def master(self) -> tuple[str, int] | None:
        """(address, port) of global rank 0's node, once a round is done."""
        r = self.last_round
        return (r.master_addr, r.master_port) if r is not None else None

    @property
    def max_restarts(self) -> int:
        return self.run.max_restarts if self.run is not None else 0

    def worker(self, local_rank: int) -> WorkerRow | None:
        """The current attempt's worker with this local rank, or None."""
        rows = self.workers
        if 0 <= local_rank < len(rows) and rows[local_rank].local_rank == local_rank:
            return rows[local_rank]  # the usual layout: row i is local rank i
        for row in rows:
            if row.local_rank == local_rank:
                return row
        return None

    def progress_of(self, row: WorkerRow) -> Progress | None:
        """`row.steps` with its pending bar read in, if a redraw came since the last reading
        (the reducer reads a bar at most every PARSE_PERIOD seconds). Pure: the view is unchanged."""
        p = row.steps
        if p is None or not row.progress or row.last_output is None or row.last_output <= p.read_at:
            return p
        reading = read_progress(row.progress.encode(errors="replace"), self.progress_rules.pattern)
        return p if reading is None else advance_progress(p, reading, row.last_output)

    @property
    def all_workers(self) -> tuple[WorkerRow, ...]:
        """Every worker of every attempt, earlier attempts first."""
        return self.past_workers + self.workers


def _with_row(view: RunView, row: WorkerRow) -> RunView:
    """`view` with `row` put in place of the current worker of the same local rank (or added)."""
    rows = view.workers
    i = row.local_rank
    if not (0 <= i < len(rows) and rows[i].local_rank == i):
        i = next((k for k, old in enumerate(rows) if old.local_rank == row.local_rank), -1)
    if i >= 0:
        return replace(view, workers=(*rows[:i], row, *rows[i + 1 :]))
    return replace(view, workers=tuple(sorted((*rows, row), key=lambda r: r.local_rank)))


def _run_started(v: RunView, e: ev.RunStarted) -> RunView:
    run = RunInfo(
        run_id=e.run_id,
        host=e.host,
        role=e.role,
        nproc_per_node=e.nproc_per_node,
        min_nodes=e.min_nodes,
        max_nodes=e.max_nodes,
        max_restarts=e.max_restarts,
        started_at=e.ts,
    )
    return replace(v, run=run, restarts_left=e.max_restarts)


def _rendezvous_started(v: RunView, e: ev.RendezvousStarted) -> RunView:
    return replace(v, attempt=e.attempt, rendezvous_pending=True)


def _rendezvous_done(v: RunView, e: ev.RendezvousDone) -> RunView:
    # A round begins an attempt; one reported without its RendezvousStarted begins the next.
    attempt = v.attempt + 1 if not v.rendezvous_pending and v.rounds else v.attempt
    done = RoundView(
        round=e.round,
        group_rank=e.group_rank,
        group_world_size=e.group_world_size,
        world_size=e.world_size,
        master_addr=e.master_addr,
        master_port=e.master_port,
        hosts=e.hosts,
        duration=e.duration,
    )
    return replace(
        v,
        attempt=attempt,
        rendezvous_pending=False,
        rounds=(*v.rounds, done),
        workers=(),
        past_workers=v.past_workers + v.workers,
    )


def _worker_started(v: RunView, e: ev.WorkerStarted) -> RunView:
    row = WorkerRow(
        local_rank=e.local_rank,
        global_rank=e.global_rank,
        role_rank=e.role_rank,
        pid=e.pid,
        attempt=v.attempt,
        restart=e.restart,
        state=WorkerState.INIT,
        started=e.ts,
    )
    return replace(_with_row(v, row), restart_count=e.restart)


def _worker_state(v: RunView, e: ev.WorkerStateChanged) -> RunView:
    row = v.worker(e.local_rank)
    if row is None:
        return v
    if e.new.terminal:
        row = replace(row, state=e.new, ended=e.ts, exitcode=e.exitcode, signal=e.signal,
                      stopped_by_agent=e.stopped_by_agent)  # fmt: skip
    else:
        row = replace(row, state=e.new)
    return _with_row(v, row)


def _group_state(v: RunView, e: ev.GroupStateChanged) -> RunView:
    return replace(v, group_state=e.new)


def _steps(v: RunView, row: WorkerRow, data: bytes, ts: float) -> Progress | None:
    reading = read_progress(data, v.progress_rules.pattern)
    return row.steps if reading is None else advance_progress(row.steps, reading, ts)


def _output(v: RunView, e: ev.WorkerOutput) -> RunView:
    row = v.worker(e.local_rank)
    if row is None:
        return v
    steps = _steps(v, row, e.data, e.ts)
    if row.progress and e.stream != row.progress_stream:
        return _with_row(v, replace(row, last_output=e.ts, steps=steps))
    return _with_row(v, replace(row, last_output=e.ts, progress="", steps=steps))


def _progress(v: RunView, e: ev.WorkerProgress) -> RunView:
    row = v.worker(e.local_rank)
    if row is None:
        return v
    text = e.text.decode(errors="replace").strip()
    steps = row.steps
    if steps is None or e.ts - steps.read_at >= PARSE_PERIOD:  # else read when the view is (progress_of)
        steps = _steps(v, row, e.text, e.ts)
    return _with_row(v, replace(row, last_output=e.ts, progress=text, progress_stream=e.stream, steps=steps))


def _straggler(v: RunView, e: ev.StragglerChanged) -> RunView:
    row = v.worker(e.local_rank)
    if row is None or row.global_rank != e.global_rank:
        return v
    return _with_row(v, replace(row, straggler=e.straggler))


def _restart(v: RunView, e: ev.RestartDecided) -> RunView:
    return replace(
        v, restart_count=e.restarts_used, restarts_left=e.restarts_left, membership_restarts=e.membership_restarts
    )


def _membership(v: RunView, e: ev.MembershipChanged) -> RunView:
    m = Membership(waiting=e.waiting, lost=e.lost, closed=e.closed, reason=e.reason, spare=e.spare, spares=e.spares)
    return replace(v, membership=m, stood_by=v.stood_by or e.spare)


def _health(v: RunView, e: ev.HealthChecked) -> RunView:
    return replace(v, health_checks=v.health_checks + 1, health_failed=None if e.ok else e)


def _downtime(v: RunView, e: ev.Downtime) -> RunView:
    return replace(v, downtime=(*v.downtime, (e.attempt, e.phase, e.seconds)))


def _finished(v: RunView, e: ev.RunFinished) -> RunView:
    return replace(v, finished=Finished(result=e.result, remote_failures=e.remote_failures, ts=e.ts))


_STEPS: dict[type[ev.Event], Callable[[RunView, Any], RunView]] = {
    ev.RunStarted: _run_started,
    ev.RendezvousStarted: _rendezvous_started,
    ev.RendezvousDone: _rendezvous_done,
    ev.WorkerStarted: _worker_started,
    ev.WorkerStateChanged: _worker_state,
    ev.GroupStateChanged: _group_state,
    ev.WorkerOutput: _output,
    ev.WorkerProgress: _progress,
    ev.StragglerChanged: _straggler,
    ev.RestartDecided: _restart,
    ev.MembershipChanged: _membership,
    ev.HealthChecked: _health,
    ev.RunFinished: _finished,
    ev.Downtime: _downtime,
}


_RESOLVED: dict[type, Callable[[RunView, Any], RunView] | None] = {}
"""Event type -> its reducer step (a subclass of a known event: its base's), or None (changes
nothing); filled as types are seen, so an event's step is one lookup."""


def _step_of(kind: type) -> Callable[[RunView, Any], RunView] | None:
    try:
        return _RESOLVED[kind]
    except KeyError:
        step = next((_STEPS[cls] for cls in kind.__mro__ if cls in _STEPS), None)
        _RESOLVED[kind] = step
        return step


def advance(view: RunView, event: ev.Event) -> RunView:
    """The view after `event`; `view` itself is never changed. Events that change nothing
    (messages, signals) return `view` as it is."""
    step = _step_of(type(event))
    return view if step is None else step(view, event)


def fold(events: Iterable[ev.Event], view: RunView | None = None) -> RunView:
    """`advance` over `events`, from `view` (default: the empty view)."""
    v = view if view is not None else RunView()
    for e in events:
        v = advance(v, e)
    return v


class ViewSource(Protocol):
    """Whatever holds the current view (a `RunTracker`): what a view-reading sink is given."""

    @property
    def view(self) -> RunView: ...


FOLD_PERIOD = 0.1
"""Seconds of event time a worker's latest bar redraw (`WorkerProgress`) may wait before the
tracker folds it into the view it keeps: a bar redrawn 50 times a second by each of 8 workers
is folded 10 times a second, not 400 (each fold builds a new view). A read of `view` folds what
waits, so no reader sees a stale bar."""


class RunTracker:
    """The sink that keeps the current `RunView`; subscribe it before every sink that reads it.

    It keeps one pair (view, bar redraws not folded in yet: the latest `WorkerProgress` per local
    rank), swapped in one assignment, so any thread may read it and always gets a whole, immutable
    view: `view` is `advance` of every event handled, in order (a redraw replaced by a later one of
    the same worker is skipped: its row shows the later one). Redraws wait at most FOLD_PERIOD
    seconds of event time, and are folded in before any other event that changes the view.
    """

    def __init__(self, view: RunView | None = None) -> None:
        self._state: tuple[RunView, dict[int, ev.WorkerProgress]] = (view if view is not None else RunView(), {})
        self._folded_at = float("-inf")

    @property
    def view(self) -> RunView:
        view, waiting = self._state
        return fold(waiting.values(), view) if waiting else view

    def handle(self, event: ev.Event) -> None:
        view, waiting = self._state
        if type(event) is ev.WorkerProgress:
            waiting = {**waiting, event.local_rank: event}  # a new dict: a reader may hold the old one
            if event.ts - self._folded_at < FOLD_PERIOD:
                self._state = (view, waiting)
                return
            self._folded_at = event.ts
            self._state = (fold(waiting.values(), view), {})
            return
        step = _step_of(type(event))
        if step is None:
            return  # changes nothing (worker bytes, messages, signals)
        if waiting:
            view = fold(waiting.values(), view)
        self._state = (step(view, event), {})

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
