"""The rendezvous protocol every backend implements, and the values it returns.

A backend answers three questions for the agent: who is in this round and in which order
(`next_rendezvous`), has membership changed since (`membership`, with a wake-up callback so
the agent need not poll), and have all nodes finished (`exit_barrier`). Rank assignment over
the returned `NodeInfo` tuple is pure (see `elaunch.ranks`), so backends never compute ranks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from elaunch.values import Value, field, value

if TYPE_CHECKING:
    from elaunch.rendezvous.store import Store

BackendName = Literal["local", "static", "c10d", "etcd", "etcd-v2"]
"""`local` is the one-node rendezvous (`--standalone`, or any backend with `--nnodes 1`)."""


@value
class Endpoint(Value):
    """`host:port` of a rendezvous store or server; IPv6 hosts without brackets."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@value
class RendezvousSettings(Value):
    """torchrun's --rdzv-conf timings, in seconds (defaults are torch's dynamic handler's).

    Validated once, by `elaunch.config` (finite, > 0); backends take them as they are.
    """

    join_timeout: float = 600.0
    last_call_timeout: float = 30.0
    close_timeout: float = 30.0
    heartbeat_timeout: float = 5.0
    keep_alive_interval: float = 5.0
    keep_alive_max_attempt: int = 3
    read_timeout: float = 60.0

    @property
    def beat_period(self) -> float:
        """Seconds between heartbeats (and between checks in bounded waits).

        A node is lost after `keep_alive_max_attempt` missed beats, and that must fit in
        `heartbeat_timeout`, so the period is the shorter of keep_alive_interval and
        heartbeat_timeout / keep_alive_max_attempt (5/3 s with the defaults).
        """
        return min(self.keep_alive_interval, self.heartbeat_timeout / max(1, self.keep_alive_max_attempt))


@value
class EtcdOptions(Value):
    """How to reach etcd and where the keys go, from --rdzv-conf (parsed and checked by `elaunch.config`)."""

    protocol: Literal["http", "https"] = "http"
    ca_cert: str | None = None
    """CA bundle that signed etcd's server certificate (else the system's)."""
    cert: str | None = None
    """Client certificate (PEM); may also hold the key."""
    key: str | None = None
    prefix: str = ""
    """Put before every key (`/team/elaunch/<run_id>/...`); empty or `/a/b` without a trailing slash."""


@value
class RendezvousConfig(Value):
    """Where and how this node meets the others: built and validated by `elaunch.config`,
    turned into a backend by `elaunch.rendezvous.create_rendezvous`. Every value is final: a
    backend never re-reads --rdzv-conf or raises ConfigError."""

    backend: BackendName
    run_id: str
    min_nodes: int = 1
    max_nodes: int = 1
    endpoint: Endpoint | None = None
    """c10d/etcd: the store or server; static: rank 0's MASTER_ADDR:MASTER_PORT (the agent store)."""
    node_rank: int | None = None
    """static: this node's fixed rank (always set); c10d/etcd: a preferred group rank, or None."""
    master_addr: str = "127.0.0.1"
    """local: MASTER_ADDR of the workers."""
    master_port: int = 0
    """local: MASTER_PORT of the workers; 0 picks a free port each round."""
    local_addr: str | None = None
    """This node's address as other nodes reach it (`--local-addr`), else its host name."""
    settings: RendezvousSettings = field(default_factory=RendezvousSettings)
    is_host: bool | None = None
    """c10d: host the TCPStore here (True), never (False), or when the endpoint is local (None)."""
    use_libuv: bool = True
    etcd: EtcdOptions | None = None
    """etcd/etcd-v2 only."""
    standby: int = 0
    """`--standby K`: spare nodes expected beyond MAX; with K > 0 survivors keep their group ranks."""
    standalone: bool = False
    """The run id was made up for this run (`--standalone` or torchrun's one-node quirk)."""

    @property
    def single_node(self) -> bool:
        return self.max_nodes == 1


@value
class NodeInfo(Value):
    """What a node tells the others when it joins a round."""

    host: str
    """Name or address other nodes (and workers) use to reach this node."""
    role: str
    local_world_size: int
    master_port: int = 0
    """A free port on this node, used as MASTER_PORT if this node becomes group rank 0.
    0: the rendezvous picks a free port on this node (`ports.free_port`) each round."""
    node_rank: int | None = None
    """Preferred group rank (`--node-rank`); honoured when it is free."""


@value
class RendezvousInfo(Value):
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


@value
class Membership(Value):
    """What changed since the last round, as seen by this node."""

    waiting: int = 0
    """Nodes that asked to join and wait for the next round."""
    lost: tuple[str, ...] = ()
    """Hosts of the current round whose heartbeats stopped."""
    closed: bool = False
    """The job was closed by some node: every node should stop and exit."""
    reason: str | None = None
    restart: str | None = None
    """A node asked for a restart round (same group, workers restarted everywhere): who and why."""
    spare: bool = False
    """This node stands by as a spare: the running round is full (`--standby`)."""
    spares: tuple[str, ...] = ()
    """Hosts standing by as spares, as the running nodes see them."""


@runtime_checkable
class Rendezvous(Protocol):
    """A rendezvous backend. Methods may block; all raise `RendezvousError` subclasses."""

    @property
    def run_id(self) -> str: ...

    @property
    def min_nodes(self) -> int: ...

    @property
    def max_nodes(self) -> int: ...

    @property
    def store(self) -> Store | None:
        """The backend's store (torch's `WorkerGroup.store`), or None when there is none (`local`)."""
        ...

    @property
    def lost_within(self) -> float | None:
        """Seconds after a node is lost by which every other node's `membership()` shows it, or
        None when this backend never finds lost nodes (one node)."""
        ...

    def next_rendezvous(self, me: NodeInfo) -> RendezvousInfo:
        """Join the next round and block until it is complete.

        `me.master_port == 0` asks the backend to pick a free port on this node for it.
        """
        ...

    def request_restart(self, reason: str) -> bool:
        """This node's workers failed: ask every node to restart its workers in a restart round
        (the same group, no join or last call) when membership is unchanged. True when the next
        `next_rendezvous` call is such a round; False: it is a full round (nothing was asked)."""
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

    def leave(self, reason: str) -> bool:
        """This node stops (a signal): leave the job if the others can go on without it (elastic,
        at least MIN left), which they see at once as a lost node; else close it (`set_closed`).
        Returns True when the job goes on without this node."""
        ...

    def exit_barrier(self, timeout: float) -> None:
        """Block until every node of the current round has finished, or `timeout` passes."""
        ...

    def serving_others(self) -> str | None:
        """Why this node must stay after its exit barrier timed out (it hosts the store, and
        nodes of the round have not finished), or None: it may go."""
        ...

    def keep_serving(self) -> None:
        """Block while `serving_others` holds and a node that has not finished still beats."""
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
