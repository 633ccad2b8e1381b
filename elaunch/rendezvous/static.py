"""`--rdzv-backend static` with several nodes: fixed node ranks, no elasticity, torch's
worker-facing behaviour (the agent of node 0 hosts a TCPStore at MASTER_ADDR:MASTER_PORT and
workers use it: TORCHELASTIC_USE_AGENT_STORE=True).

Unlike torch's static handler, the nodes still meet once per round through that store: every
node learns every other node's NodeInfo (nodes may run different numbers of workers), duplicate
or out-of-range `--node-rank`s fail with a clear message instead of a hang, a restarting node
makes the others restart too, lost nodes are noticed, and the exit barrier works.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

from elaunch.errors import ConfigError
from elaunch.rendezvous.api import Membership, NodeInfo, RendezvousInfo
from elaunch.rendezvous.dynamic import DynamicRendezvous, RendezvousSettings, default_node_id
from elaunch.rendezvous.store import Store, connect_store


class StaticRendezvous:
    """A round of exactly `nnodes` nodes ordered by their fixed `node_rank`.

    It is the dynamic protocol with MIN = MAX = nnodes and strict ranks; what it returns
    points the workers at the agent's store (`master_addr:master_port`, `use_agent_store`).
    """

    def __init__(
        self,
        store: Store,
        run_id: str,
        nnodes: int,
        node_rank: int,
        master_addr: str,
        master_port: int,
        conf: Mapping[str, object] | None = None,
        node_id: str | None = None,
        *,
        owns_store: bool = True,
    ) -> None:
        if not 0 <= node_rank < nnodes:
            raise ConfigError(f"--node-rank must be in 0..{nnodes - 1} with --nnodes {nnodes}, got {node_rank}")
        self._rank = node_rank
        self._addr = master_addr
        self._port = master_port
        self._dyn = DynamicRendezvous(
            store,
            run_id,
            nnodes,
            nnodes,
            conf,
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
    def node_rank(self) -> int:
        return self._rank

    def next_rendezvous(self, me: NodeInfo) -> RendezvousInfo:
        info = self._dyn.next_rendezvous(replace(me, node_rank=self._rank))
        return replace(info, master_addr=self._addr, master_port=self._port, use_agent_store=True)

    def membership(self) -> Membership:
        return self._dyn.membership()

    def set_wakeup(self, wake: Callable[[], None]) -> None:
        self._dyn.set_wakeup(wake)

    def set_closed(self, reason: str) -> None:
        self._dyn.set_closed(reason)

    def exit_barrier(self, timeout: float) -> None:
        self._dyn.exit_barrier(timeout)

    def publish_failure(self, summary: str) -> None:
        self._dyn.publish_failure(summary)

    def failures(self) -> list[str]:
        return self._dyn.failures()

    def shutdown(self) -> None:
        self._dyn.shutdown()


def create_static_rendezvous(
    master_addr: str,
    master_port: int,
    run_id: str,
    nnodes: int,
    node_rank: int,
    conf: Mapping[str, object] | None = None,
    local_addr: str | None = None,
    *,
    node_id: str | None = None,
) -> StaticRendezvous:
    """Node 0 hosts the TCPStore at `master_addr:master_port`; the others connect to it.

    `conf` may carry torch's static `timeout` (seconds; default join_timeout, 600) which bounds
    how long a node waits for the store and for the others.
    """
    conf = dict(conf or {})
    timings = {k: v for k, v in conf.items() if k in RendezvousSettings.__dataclass_fields__}
    if "timeout" in conf:
        try:
            timings.setdefault("join_timeout", float(conf["timeout"]))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ConfigError(f"--rdzv-conf timeout: expected seconds, got {conf['timeout']!r}") from None
    settings = RendezvousSettings.from_conf(timings)
    if not 0 <= node_rank < nnodes:
        raise ConfigError(f"--node-rank must be in 0..{nnodes - 1} with --nnodes {nnodes}, got {node_rank}")
    store = connect_store(
        master_addr,
        master_port,
        is_host=node_rank == 0,
        connect_timeout=settings.join_timeout,
        timeout=settings.read_timeout,
        use_libuv=bool(conf.get("use_libuv", True)),
    )
    try:
        return StaticRendezvous(
            store,
            run_id,
            nnodes,
            node_rank,
            master_addr,
            master_port,
            timings,
            node_id or default_node_id(local_addr),
        )
    except BaseException:
        store.close()
        raise
