"""`--rdzv-backend static` with several nodes: fixed node ranks, no elasticity, torch's
worker-facing behaviour (the agent of node 0 hosts a TCPStore at MASTER_ADDR:MASTER_PORT and
workers use it: TORCHELASTIC_USE_AGENT_STORE=True).

Unlike torch's static handler, the nodes still meet once per round through that store: every
node learns every other node's NodeInfo (nodes may run different numbers of workers), duplicate
or out-of-range `--node-rank`s fail with a clear message instead of a hang, a restarting node
makes the others restart too, lost nodes are noticed, and the exit barrier works.
"""

from __future__ import annotations

from collections.abc import Callable

from elaunch.rendezvous.api import Membership, NodeInfo, RendezvousInfo, RendezvousSettings
from elaunch.rendezvous.dynamic import DynamicRendezvous
from elaunch.rendezvous.store import Store
from elaunch.values import replace


class StaticRendezvous:
    """A round of exactly `nnodes` nodes ordered by their fixed `node_rank`.

    It is the dynamic protocol with MIN = MAX = nnodes and strict ranks; what it returns
    points the workers at the agent's store (`master_addr:master_port`, `use_agent_store`).
    `node_rank` must be in 0..nnodes-1 (validated by `elaunch.config`; else `ValueError`).
    """

    def __init__(
        self,
        store: Store,
        run_id: str,
        nnodes: int,
        node_rank: int,
        master_addr: str,
        master_port: int,
        settings: RendezvousSettings | None = None,
        node_id: str | None = None,
        *,
        owns_store: bool = True,
    ) -> None:
        if not 0 <= node_rank < nnodes:
            raise ValueError(f"StaticRendezvous: node_rank must be in 0..{nnodes - 1}, got {node_rank}")
        self._rank = node_rank
        self._addr = master_addr
        self._port = master_port
        self._dyn = DynamicRendezvous(
            store,
            run_id,
            nnodes,
            nnodes,
            settings,
            node_id,
            master_priority=0,
            strict_node_ranks=True,
            owns_store=owns_store,
        )

    @property
    def run_id(self) -> str:
        return self._dyn.run_id

    @property
    def min_nodes(self) -> int:
        return self._dyn.min_nodes

    @property
    def max_nodes(self) -> int:
        return self._dyn.max_nodes

    @property
    def store(self) -> Store:
        return self._dyn.store

    @property
    def lost_within(self) -> float:
        return self._dyn.lost_within

    @property
    def node_rank(self) -> int:
        return self._rank

    def next_rendezvous(self, me: NodeInfo) -> RendezvousInfo:
        """Join the next round as `node_rank`; MASTER_ADDR:MASTER_PORT are the agent store's, so a
        `me.master_port` of 0 needs no free port (the record carries the store's port)."""
        me = replace(me, node_rank=self._rank, master_port=me.master_port or self._port)
        info = self._dyn.next_rendezvous(me)
        return replace(info, master_addr=self._addr, master_port=self._port, use_agent_store=True)

    def request_restart(self, reason: str) -> bool:
        return self._dyn.request_restart(reason)

    def membership(self) -> Membership:
        return self._dyn.membership()

    def set_wakeup(self, wake: Callable[[], None]) -> None:
        self._dyn.set_wakeup(wake)

    def set_closed(self, reason: str) -> None:
        self._dyn.set_closed(reason)

    def leave(self, reason: str) -> bool:
        """A fixed set of nodes (MIN = MAX): leaving ends the job."""
        return self._dyn.leave(reason)

    def exit_barrier(self, timeout: float) -> None:
        self._dyn.exit_barrier(timeout)

    def serving_others(self) -> str | None:
        return self._dyn.serving_others()

    def keep_serving(self) -> None:
        self._dyn.keep_serving()

    def publish_failure(self, summary: str) -> None:
        self._dyn.publish_failure(summary)

    def failures(self) -> list[str]:
        return self._dyn.failures()

    def shutdown(self) -> None:
        self._dyn.shutdown()


__all__ = ["StaticRendezvous"]
