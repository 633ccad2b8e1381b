"""The rendezvous protocol every backend implements, and the values it returns.

A backend answers three questions for the agent: who is in this round and in which order
(`next_rendezvous`), has membership changed since (`membership`, with a wake-up callback so
the agent need not poll), and have all nodes finished (`exit_barrier`). Rank assignment over
the returned `NodeInfo` tuple is pure (see `elaunch.ranks`), so backends never compute ranks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class NodeInfo:
    """What a node tells the others when it joins a round."""

    host: str
    """Name or address other nodes (and workers) use to reach this node."""
    role: str
    local_world_size: int
    master_port: int = 0
    """A free port on this node, used as MASTER_PORT if this node becomes group rank 0."""
    node_rank: int | None = None
    """Preferred group rank (`--node-rank`); honoured when it is free."""


@dataclass(frozen=True)
class RendezvousInfo:
    """The outcome of one round: every node, in group-rank order, and this node's place."""

    run_id: str
    round: int
    group_rank: int
    nodes: tuple[NodeInfo, ...]
    master_addr: str
    master_port: int
    use_agent_store: bool = False
    """True when workers are told to use a store the agent hosts (TORCHELASTIC_USE_AGENT_STORE)."""

    @property
    def group_world_size(self) -> int:
        return len(self.nodes)


@dataclass(frozen=True)
class Membership:
    """What changed since the last round, as seen by this node."""

    waiting: int = 0
    """Nodes that asked to join and wait for the next round."""
    lost: tuple[str, ...] = ()
    """Hosts of the current round whose heartbeats stopped."""
    closed: bool = False
    """The job was closed by some node: every node should stop and exit."""
    reason: str | None = None


@runtime_checkable
class Rendezvous(Protocol):
    """A rendezvous backend. Methods may block; all raise `RendezvousError` subclasses."""

    @property
    def run_id(self) -> str: ...

    @property
    def min_nodes(self) -> int: ...

    @property
    def max_nodes(self) -> int: ...

    def next_rendezvous(self, me: NodeInfo) -> RendezvousInfo:
        """Join the next round and block until it is complete."""
        ...

    def membership(self) -> Membership:
        """Cheap, non-blocking view of membership changes since the last completed round."""
        ...

    def set_wakeup(self, wake: Callable[[], None]) -> None:
        """Register a thread-safe callback to call when `membership()` may have changed."""
        ...

    def set_closed(self, reason: str) -> None:
        """Close the job for every node (this node gives up, failed, or was stopped)."""
        ...

    def exit_barrier(self, timeout: float) -> None:
        """Block until every node of the current round has finished, or `timeout` passes."""
        ...

    def publish_failure(self, summary: str) -> None:
        """Record this node's failure so other nodes can report the cross-node root cause."""
        ...

    def failures(self) -> list[str]:
        """Failure summaries published by nodes of this job (any order)."""
        ...

    def shutdown(self) -> None:
        """Stop background threads and release connections; idempotent."""
        ...
