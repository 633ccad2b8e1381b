"""One factory for every backend: a validated `RendezvousConfig` in, a `Rendezvous` out.

Backend modules are imported here only when their backend is used, so `local` imports no store
code (nor torch), c10d and static import torch only when the TCPStore is built, and etcd3gw is
imported only for `etcd`/`etcd-v2`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from elaunch.rendezvous.api import Endpoint, EtcdOptions, Rendezvous, RendezvousConfig

if TYPE_CHECKING:
    from elaunch.rendezvous.etcd import EtcdStore
    from elaunch.rendezvous.store import Store

S = TypeVar("S", bound="Store")
R = TypeVar("R")


def create_rendezvous(cfg: RendezvousConfig, *, node_id: str | None = None) -> Rendezvous:
    """The backend `cfg.backend` names, connected and ready for `next_rendezvous`.

    `local`: `LocalRendezvous(cfg.run_id, cfg.master_addr, cfg.master_port)`; nothing to connect.
    `static`: node `cfg.node_rank` of `cfg.max_nodes`; node 0 hosts the TCPStore at
    `cfg.endpoint` (rank 0's MASTER_ADDR:MASTER_PORT), the others connect to it.
    `c10d`: hosts the TCPStore at `cfg.endpoint` (`cfg.is_host`, None: when the endpoint names
    this machine) or connects to it. `etcd`, `etcd-v2`: the same protocol on etcd at `cfg.endpoint`.
    Reaching the store waits up to `cfg.settings.join_timeout` (`StoreError` after it);
    `node_id` (default: host, pid and a random suffix) names this node in the store.
    `cfg` is taken as validated by `elaunch.config`; a multi-node backend without an endpoint
    (or static without a node rank) is a programming error: `ValueError`. A store connected
    here is closed again if building the rendezvous fails.
    """
    if cfg.backend == "local":
        from elaunch.rendezvous.local import LocalRendezvous

        return LocalRendezvous(cfg.run_id, cfg.master_addr, cfg.master_port)
    if cfg.endpoint is None:
        raise ValueError(f"RendezvousConfig: backend {cfg.backend} needs an endpoint")
    from elaunch.rendezvous.dynamic import default_node_id

    nid = node_id or default_node_id(cfg.local_addr)
    if cfg.backend == "static":
        return _static(cfg, cfg.endpoint, nid)
    if cfg.backend == "c10d":
        return _c10d(cfg, cfg.endpoint, nid)
    if cfg.backend in ("etcd", "etcd-v2"):
        return _etcd(cfg, cfg.endpoint, nid)
    raise ValueError(f"RendezvousConfig: unknown backend {cfg.backend!r}")


def _built(store: S, build: Callable[[S], R]) -> R:
    """`build(store)`; the store is closed if that fails (a hosted server must not linger)."""
    try:
        return build(store)
    except BaseException:
        store.close()
        raise


def _static(cfg: RendezvousConfig, ep: Endpoint, node_id: str) -> Rendezvous:
    from elaunch.rendezvous.static import StaticRendezvous
    from elaunch.rendezvous.store import connect_store

    if cfg.node_rank is None:
        raise ValueError("RendezvousConfig: the static backend needs node_rank")
    rank = cfg.node_rank
    s = cfg.settings
    store = connect_store(
        ep.host,
        ep.port,
        is_host=rank == 0,
        connect_timeout=s.join_timeout,
        timeout=s.read_timeout,
        use_libuv=cfg.use_libuv,
    )
    return _built(store, lambda st: StaticRendezvous(st, cfg.run_id, cfg.max_nodes, rank, ep.host, ep.port, s, node_id))


def _c10d(cfg: RendezvousConfig, ep: Endpoint, node_id: str) -> Rendezvous:
    """The node hosting the store becomes group rank 0 unless a `--node-rank` preference says otherwise."""
    from elaunch.rendezvous.dynamic import DynamicRendezvous
    from elaunch.rendezvous.store import connect_store, is_local_address

    s = cfg.settings
    store = connect_store(
        ep.host,
        ep.port,
        is_host=cfg.is_host,
        connect_timeout=s.join_timeout,
        timeout=s.read_timeout,
        use_libuv=cfg.use_libuv,
    )
    priority = 2 if store.is_host else (1 if is_local_address(ep.host) else 0)
    return _built(
        store,
        lambda st: DynamicRendezvous(
            st, cfg.run_id, cfg.min_nodes, cfg.max_nodes, s, node_id, master_priority=priority, standby=cfg.standby
        ),
    )


def _etcd(cfg: RendezvousConfig, ep: Endpoint, node_id: str) -> Rendezvous:
    """No node hosts anything: every node has master priority 0 (rank 0 is the first to join
    unless a `--node-rank` preference says otherwise). The job's keys carry one etcd lease
    (`lease.LeasedRendezvous`): they vanish with the job; each node's heartbeat is a keep-alive of
    a lease of its own (`lease.LeaseLiveness`), not a write. A run id still closed in etcd (its
    lease not yet expired) is refused (`RendezvousClosedError` with the `etcdctl` line that clears it)."""
    from elaunch.rendezvous.etcd import connect_etcd, refuse_closed_run
    from elaunch.rendezvous.lease import LeasedRendezvous

    s = cfg.settings
    store = connect_etcd(
        ep.host,
        ep.port,
        options=cfg.etcd or EtcdOptions(),
        connect_timeout=s.join_timeout,
        timeout=s.read_timeout,
    )

    def build(st: EtcdStore) -> Rendezvous:
        refuse_closed_run(st, cfg.run_id)
        return LeasedRendezvous(st, cfg.run_id, cfg.min_nodes, cfg.max_nodes, s, node_id, standby=cfg.standby)

    return _built(store, build)


__all__ = ["create_rendezvous"]
