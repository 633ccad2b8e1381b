"""Rendezvous: how the agents of a job agree on who is in it and in which order."""

from __future__ import annotations

from elaunch.rendezvous.api import (
    Membership,
    NodeInfo,
    Rendezvous,
    RendezvousConfig,
    RendezvousInfo,
)

__all__ = ["Membership", "NodeInfo", "Rendezvous", "RendezvousConfig", "RendezvousInfo", "create_rendezvous"]


def create_rendezvous(cfg: RendezvousConfig) -> Rendezvous:
    """TEMPORARY (replaced by the rdzv branch): the backend for `cfg`."""
    if cfg.backend == "local":
        from elaunch.rendezvous.local import LocalRendezvous

        return LocalRendezvous(run_id=cfg.run_id, master_addr=cfg.master_addr, master_port=cfg.master_port)
    conf: dict[str, object] = {k: getattr(cfg.settings, k) for k in cfg.settings.__dataclass_fields__}
    if cfg.is_host is not None:
        conf["is_host"] = cfg.is_host
    conf["use_libuv"] = cfg.use_libuv
    assert cfg.endpoint is not None
    if cfg.backend == "static":
        from elaunch.rendezvous.static import create_static_rendezvous

        return create_static_rendezvous(
            cfg.endpoint.host, cfg.endpoint.port, cfg.run_id, cfg.max_nodes, cfg.node_rank or 0, conf, cfg.local_addr
        )
    if cfg.backend == "c10d":
        from elaunch.rendezvous.dynamic import create_c10d_rendezvous

        return create_c10d_rendezvous(
            cfg.endpoint.host, cfg.endpoint.port, cfg.run_id, cfg.min_nodes, cfg.max_nodes, conf, cfg.local_addr
        )
    from elaunch.rendezvous.etcd import create_etcd_rendezvous

    return create_etcd_rendezvous(
        cfg.endpoint.host,
        cfg.endpoint.port,
        cfg.run_id,
        cfg.min_nodes,
        cfg.max_nodes,
        conf,
        cfg.local_addr,
        backend=cfg.backend,
    )
