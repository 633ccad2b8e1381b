"""Typed events and the bus that fans them out: the agent emits, sinks render or record.

Every change the user or a machine may care about is one small frozen dataclass with a
wall-clock timestamp. Worker output travels as chunks of complete lines, not one event per
line, so that a million lines cost a few thousand events.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from elaunch.spec import RunResult, WorkerState


def _now() -> float:
    return time.time()


@dataclass(frozen=True, kw_only=True)
class Event:
    ts: float = field(default_factory=_now)


@dataclass(frozen=True, kw_only=True)
class RunStarted(Event):
    run_id: str
    host: str
    role: str
    nproc_per_node: int
    min_nodes: int
    max_nodes: int
    max_restarts: int


@dataclass(frozen=True, kw_only=True)
class RendezvousStarted(Event):
    attempt: int


@dataclass(frozen=True, kw_only=True)
class RendezvousDone(Event):
    round: int
    group_rank: int
    group_world_size: int
    world_size: int
    master_addr: str
    master_port: int
    hosts: tuple[str, ...]
    duration: float


@dataclass(frozen=True, kw_only=True)
class WorkerStarted(Event):
    local_rank: int
    global_rank: int
    role_rank: int
    pid: int
    restart: int
    argv: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
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


@dataclass(frozen=True, kw_only=True)
class GroupStateChanged(Event):
    old: WorkerState
    new: WorkerState
    restart: int


@dataclass(frozen=True, kw_only=True)
class WorkerOutput(Event):
    """Complete lines (each ending in b"\\n") a worker wrote on `stream` 1 (stdout) or 2 (stderr)."""

    local_rank: int
    global_rank: int
    stream: int
    data: bytes


@dataclass(frozen=True, kw_only=True)
class WorkerProgress(Event):
    """The latest state of a `\\r`-updated line (a progress bar) that has no newline yet."""

    local_rank: int
    global_rank: int
    stream: int
    text: bytes


@dataclass(frozen=True, kw_only=True)
class RestartDecided(Event):
    """The agent restarts the group; `membership` restarts do not use up the failure budget."""

    reason: str
    membership: bool
    restarts_used: int
    restarts_left: int
    membership_restarts: int


@dataclass(frozen=True, kw_only=True)
class MembershipChanged(Event):
    waiting: int
    lost: tuple[str, ...]
    closed: bool
    reason: str | None


@dataclass(frozen=True, kw_only=True)
class SignalReceived(Event):
    signal: int
    action: str
    """'forward' (job keeps running), 'shutdown' or 'kill' (second signal)."""


@dataclass(frozen=True, kw_only=True)
class Message(Event):
    """A note from the agent that fits no other event (warnings, hints)."""

    level: str
    text: str


@dataclass(frozen=True, kw_only=True)
class RunFinished(Event):
    result: RunResult
    remote_failures: tuple[str, ...] = ()


class Sink(Protocol):
    """A subscriber: renders or records events. `flush` is called when the agent goes idle."""

    def handle(self, event: Event) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class Bus:
    """Delivers every event to every sink, in order, on the agent's thread."""

    def __init__(self, sinks: Iterable[Sink] = ()) -> None:
        self._sinks: list[Sink] = list(sinks)

    def subscribe(self, sink: Sink) -> None:
        self._sinks.append(sink)

    def publish(self, event: Event) -> None:
        for sink in self._sinks:
            sink.handle(event)

    def flush(self) -> None:
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
