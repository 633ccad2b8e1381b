"""`--dry-run`: the resolved settings and every local worker's plan, rendered as text. Pure.

The plans come from `ranks.worker_plans`, the function the agent starts workers from, so what
is printed is what runs (a test checks it). Values only known at rendezvous are shown as
placeholders: this node is assumed to take its `--node-rank` (else 0) in a round of MIN nodes.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping

from elaunch.config import LaunchConfig
from elaunch.ranks import worker_plans
from elaunch.rendezvous.api import NodeInfo, RendezvousInfo
from elaunch.spec import WorkerPlan

RUN_DIR = "<run dir>"


def assumed_round(config: LaunchConfig, host: str) -> RendezvousInfo:
    """The round this node would most likely get: its preferred place among MIN nodes."""
    rdzv = config.rdzv
    n = rdzv.min_nodes
    group_rank = min(rdzv.node_rank or 0, n - 1)
    nodes = tuple(
        NodeInfo(
            host=host if i == group_rank else f"<node {i}>", role=config.role, local_world_size=config.nproc_per_node
        )
        for i in range(n)
    )
    if rdzv.backend == "static" and rdzv.endpoint is not None:
        addr, port = rdzv.endpoint.host, rdzv.endpoint.port
    else:
        addr, port = rdzv.master_addr, rdzv.master_port
    return RendezvousInfo(
        run_id=rdzv.run_id, round=0, group_rank=group_rank, nodes=nodes, master_addr=addr, master_port=port
    )


def planned_workers(config: LaunchConfig, env: Mapping[str, str], host: str) -> list[WorkerPlan]:
    """Every local worker's plan in the assumed round (first attempt)."""
    return worker_plans(
        config.worker_spec(env),
        assumed_round(config, host),
        restart_count=0,
        error_file=lambda lr: f"{RUN_DIR}/attempt_0/{lr}/error.json",
    )


def placeholders(config: LaunchConfig) -> dict[str, str]:
    """Worker variables whose value is chosen only at run time."""
    if config.rdzv.backend in ("c10d", "etcd", "etcd-v2"):
        return {"MASTER_ADDR": "<rank 0's node>", "MASTER_PORT": "<chosen at rendezvous>"}
    if config.rdzv.backend == "local" and config.rdzv.master_port == 0:
        return {"MASTER_PORT": "<free port>"}
    return {}


def render_plan(config: LaunchConfig, env: Mapping[str, str], host: str) -> str:
    """The dry run's text: settings with where each came from, then each worker's argv and added env."""
    src = config.sources
    rdzv = config.rdzv
    nodes = f"{rdzv.min_nodes}" if rdzv.min_nodes == rdzv.max_nodes else f"{rdzv.min_nodes}:{rdzv.max_nodes}"
    info = assumed_round(config, host)
    rows = [
        ("nnodes", nodes, src.get("nnodes", "default")),
        ("nproc_per_node", str(config.nproc_per_node), src.get("nproc_per_node", "default")),
        ("rdzv_backend", "local (one node)" if rdzv.single_node else rdzv.backend, src.get("rdzv_backend", "default")),
        ("run_id", "<random per run>" if rdzv.standalone else rdzv.run_id, src.get("rdzv_id", "default")),
        ("max_restarts", str(config.max_restarts), src.get("max_restarts", "default")),
        ("shutdown_timeout", f"{config.shutdown_timeout:g}s", src.get("shutdown_timeout", "default")),
        ("master", f"{info.master_addr}:{info.master_port or '<free port>'}", src.get("master_port", "default")),
    ]
    if not rdzv.single_node:
        # Where the nodes meet and this node's place (both filled from the step under SLURM).
        rows.insert(3, ("node_rank", str(rdzv.node_rank or 0), src.get("node_rank", "default")))
        if rdzv.endpoint is not None:
            rows.insert(3, ("rdzv_endpoint", str(rdzv.endpoint), src.get("rdzv_endpoint", "default")))
        if rdzv.backend != "static":
            rows[-1] = ("master", "<rank 0's node>:<free port>", "chosen at rendezvous")
    if config.watch.health_port is not None:
        port = config.watch.health_port or "<free port>"
        rows.append(("health endpoint", f"{config.watch.health_addr}:{port}", src.get("health_port", "default")))
    lines = ["elaunch dry run: nothing is started"]
    lines += [f"  warning: {text}" for text in config.warnings]
    lines += [f"  {name:<17} {value:<28} ({where})" for name, value, where in rows]
    later = placeholders(config)
    for p in planned_workers(config, env, host):
        added = {k: later.get(k, v) for k, v in p.env.items() if env.get(k) != v}
        r = p.ranks
        lines.append(
            f"worker local_rank={r.local_rank} rank={r.global_rank} role_rank={r.role_rank} world_size={r.world_size}"
        )
        lines.append(f"  argv: {' '.join(shlex.quote(a) for a in p.argv)}")
        if p.binding is not None:
            lines.append(f"  cpus: {p.binding.describe()} via {' '.join(p.binding.prefix)}")
        lines += [f"  env:  {k}={added[k]}" for k in sorted(added)]
    return "\n".join(lines) + "\n"
