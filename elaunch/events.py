"""Typed events and the bus that fans them out: the agent emits, sinks render or record.

Every change the user or a machine may care about is one small immutable record with a
wall-clock timestamp. Worker output travels as chunks of complete lines, not one event per
line, so that a million lines cost a few thousand events.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from typing import Protocol

from elaunch.spec import RunResult, WorkerState
from elaunch.values import Value, event_class, field


def _now() -> float:
    return time.time()


event = event_class
"""An event class: immutable, keyword-only, defined without compiling anything (see values.py)."""


@event
class Event(Value):
    """Base of all events: when it happened (wall clock). Compared by identity: events are facts, not values."""

    ts: float = field(default_factory=_now)

    __eq__ = object.__eq__
    __hash__ = object.__hash__


@event
class RunStarted(Event):
    """The agent starts a run on this node."""

    run_id: str
    host: str
    role: str
    nproc_per_node: int
    min_nodes: int
    max_nodes: int
    max_restarts: int


@event
class RendezvousStarted(Event):
    """A rendezvous round begins (`attempt` counts rounds on this node)."""

    attempt: int


@event
class RendezvousDone(Event):
    """A round completed: this node's place in the group and the rank-0 endpoint."""

    round: int
    group_rank: int
    group_world_size: int
    world_size: int
    master_addr: str
    master_port: int
    hosts: tuple[str, ...]
    duration: float


@event
class WorkerStarted(Event):
    """A worker process was started."""

    local_rank: int
    global_rank: int
    role_rank: int
    pid: int
    restart: int
    argv: tuple[str, ...]


@event
class WorkerStateChanged(Event):
    """A worker moved between WorkerStates; exit code/signal are set when it ended."""

    local_rank: int
    global_rank: int
    pid: int
    old: WorkerState
    new: WorkerState
    restart: int
    exitcode: int | None = None
    signal: int | None = None
    stopped_by_agent: bool = False


@event
class GroupStateChanged(Event):
    """The local worker group moved between WorkerStates."""

    old: WorkerState
    new: WorkerState
    restart: int


@event
class WorkerOutput(Event):
    """Complete lines (each ending in b"\\n") a worker wrote on `stream` 1 (stdout) or 2 (stderr)."""

    local_rank: int
    global_rank: int
    stream: int
    data: bytes


@event
class WorkerProgress(Event):
    """The latest state of a `\\r`-updated line (a progress bar) that has no newline yet; for a worker
    drawing with cursor movements (nested tqdm bars, rich), the rows it still redraws, one per
    line (see terminal.py). b"" when the bars were cleared."""

    local_rank: int
    global_rank: int
    stream: int
    text: bytes


@event
class WorkerPartialLine(Event):
    """A line the worker started and left unfinished (a prompt such as `name? ` or `(Pdb) `): `text` is
    the whole line so far, without a newline. Published once it has been idle for a moment, then at
    each change until the line ends; the line's bytes come again, whole, in the next WorkerOutput."""

    local_rank: int
    global_rank: int
    stream: int
    text: bytes


@event
class WorkerBytes(Event):
    """Bytes exactly as read from a worker's `stream`, in any chunking: what the per-rank log files
    hold (WorkerOutput is the rendered text for the console)."""

    local_rank: int
    global_rank: int
    stream: int
    data: bytes


@event
class HangDetected(Event):
    """A worker showed no progress past its limit (or its torch FileTimer expired): it is a failure
    of kind `hang`. `stacks` are (global rank, pid, Python stack) of every local worker, taken
    before anything was killed (py-spy; a line saying how to get them when it is missing)."""

    local_rank: int
    global_rank: int
    host: str
    pid: int
    silent_s: float
    reason: str
    last_line: str | None
    stacks: tuple[tuple[int, int, str], ...] = ()


@event
class Downtime(Event):
    """One part of the time a failure cost (issue #11), in seconds, for `attempt` (rendezvous rounds
    on this node, from 0). `phase`: `detect` (the failure, or a hang's detection, to the decision),
    `stop` (the decision to every worker gone), `rendezvous`, `spawn` (to every worker started),
    `first_progress` (every worker started to the first progress of any)."""

    attempt: int
    phase: str
    seconds: float


@event
class RestartDecided(Event):
    """The agent restarts the group; `membership` restarts do not use up the failure budget."""

    reason: str
    membership: bool
    restarts_used: int
    restarts_left: int
    membership_restarts: int


@event
class MembershipChanged(Event):
    """Nodes are waiting to join, were lost, or the job was closed by a node; this node stands by
    as a spare (`spare`), or spares stand by (`spares`: their hosts)."""

    waiting: int
    lost: tuple[str, ...]
    closed: bool
    reason: str | None
    spare: bool = False
    spares: tuple[str, ...] = ()


@event
class SignalReceived(Event):
    """elaunch caught a signal and decided what to do with it."""

    signal: int
    action: str
    """'forward' (job keeps running), 'shutdown' or 'kill' (second signal)."""


@event
class Message(Event):
    """A note from the agent that fits no other event (warnings, hints)."""

    level: str
    text: str


@event
class HealthChecked(Event):
    """This node's health check before a round (`--health-check`): passed, or it does not join."""

    ok: bool
    check: str
    detail: str
    last_lines: tuple[str, ...] = ()
    duration: float = 0.0


@event
class RunFinished(Event):
    """The run ended; `remote_failures` are root causes published by other nodes."""

    result: RunResult
    remote_failures: tuple[str, ...] = ()


@event
class ProgressReported(Event):
    """The workers' progress, at most every `--progress-interval` while some worker reports any.

    Parallel tuples, one entry per worker with progress, by global rank: `steps`, `totals`
    (None: unknown), `rates` (smoothed steps/s, None: not known yet), `etas` (seconds, None:
    unknown); `stragglers` are the global ranks marked as such. `median_rate` is over them all.
    """

    ranks: tuple[int, ...]
    steps: tuple[int, ...]
    totals: tuple[int | None, ...]
    rates: tuple[float | None, ...]
    etas: tuple[float | None, ...]
    stragglers: tuple[int, ...] = ()
    median_rate: float | None = None


@event
class StragglerChanged(Event):
    """A worker became a straggler (its steps/s below the median's by `--straggler-factor` for
    `--straggler-window` seconds), or stopped being one. Rates in steps/s."""

    local_rank: int
    global_rank: int
    straggler: bool
    rate: float | None
    median_rate: float | None


class Sink(Protocol):
    """A subscriber: renders or records events. `flush` is called when the agent goes idle."""

    def handle(self, event: Event) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class Bus:
    """Delivers every event to every sink, in order, on the agent's thread.

    A sink may publish while it handles an event (the progress watcher does): that event is
    delivered after the current one has reached every sink, so every sink sees one order.
    """

    def __init__(self, sinks: Iterable[Sink] = ()) -> None:
        self._sinks: list[Sink] = list(sinks)
        self._queue: list[Event] = []
        self._delivering = False
        self._posted: deque[Event] = deque()

    def subscribe(self, sink: Sink) -> None:
        self._sinks.append(sink)

    def publish(self, event: Event) -> None:
        if self._delivering:
            self._queue.append(event)
            return
        self._delivering = True
        try:
            for sink in self._sinks:
                sink.handle(event)
            while self._queue:
                queued = self._queue.pop(0)
                for sink in self._sinks:
                    sink.handle(queued)
        finally:
            self._delivering = False
            self._queue.clear()

    def post(self, event: Event) -> None:
        """From another thread: `event` is published by the agent's thread at its next `flush`
        (wake the agent to make that soon). deque.append is atomic: no lock."""
        self._posted.append(event)

    def flush(self) -> None:
        while self._posted:
            self.publish(self._posted.popleft())
        for sink in self._sinks:
            sink.flush()

    def close(self) -> None:
        for sink in self._sinks:
            sink.close()


class Recorder:
    """A sink that keeps every event: for tests and for the Python API."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def handle(self, event: Event) -> None:
        self.events.append(event)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def of(self, kind: type[Event]) -> list[Event]:
        return [e for e in self.events if isinstance(e, kind)]
