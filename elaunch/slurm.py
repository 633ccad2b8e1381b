"""SLURM detection: what an `srun` step tells elaunch, and the guards against common mistakes. Pure.

Inside a step (`SLURM_STEP_NODELIST` set) elaunch fills what the user did not give: nnodes from
the step, node rank from `SLURM_NODEID`, rendezvous id from job and step ids, a c10d endpoint on
the step's first host with a port derived from the job id, and `--nproc-per-node` from the GPUs
SLURM gave the node. SLURM's batch shell carries `SLURM_PROCID=0` too, but no step node list: it
is not rank 0 of anything, and a multi-node allocation there means the user forgot `srun`.
"""

from __future__ import annotations

from collections.abc import Mapping

from elaunch.errors import ConfigError
from elaunch.values import Value, value

PORT_BASE = 29500
PORT_SPAN = 20000
"""Rendezvous ports are PORT_BASE + job_id % PORT_SPAN: distinct for concurrent jobs on a host."""


@value
class SlurmStep(Value):
    job_id: str
    step_id: str
    nodes: tuple[str, ...]
    node_id: int
    tasks_on_node: int
    gpus_on_node: int | None

    @property
    def num_nodes(self) -> int:
        return len(self.nodes)

    @property
    def run_id(self) -> str:
        return f"slurm-{self.job_id}.{self.step_id}"

    @property
    def port(self) -> int:
        return rendezvous_port(self.job_id)


def rendezvous_port(job_id: str) -> int:
    digits = "".join(c for c in job_id if c.isdigit()) or "0"
    return PORT_BASE + int(digits) % PORT_SPAN


def expand_nodelist(nodelist: str) -> tuple[str, ...]:
    """SLURM host list syntax (`host[1-3,7],gpu[01-02]-ib`) without calling SLURM."""
    import hostlist  # python-hostlist: only needed under SLURM

    try:
        return tuple(hostlist.expand_hostlist(nodelist))
    except hostlist.BadHostlist as e:
        raise ConfigError(f"SLURM node list {nodelist!r} cannot be read: {e}") from None


def tasks_per_node(value: str) -> list[int]:
    """`2(x3),1` -> [2, 2, 2, 1]."""
    import hostlist

    try:
        return [int(n) for n in hostlist.parse_slurm_tasks_per_node(value)]
    except (ValueError, hostlist.BadHostlist):
        return [1]


def _gpus(env: Mapping[str, str]) -> int | None:
    raw = env.get("SLURM_GPUS_ON_NODE")
    if raw and raw.strip().isdigit():
        return int(raw)
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and (env.get("SLURM_JOB_GPUS") or env.get("SLURM_STEP_GPUS")):
        ids = [x for x in visible.split(",") if x.strip()]
        return len(ids)
    return None


def detect_step(env: Mapping[str, str]) -> SlurmStep | None:
    """The step this process runs in, or None outside a step (incl. the batch shell)."""
    nodelist = env.get("SLURM_STEP_NODELIST")
    if not nodelist or not env.get("SLURM_JOB_ID"):
        return None
    nodes = expand_nodelist(nodelist)
    node_id = int(env.get("SLURM_NODEID", "0") or 0)
    per_node = tasks_per_node(env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE") or "1")
    tasks_here = per_node[node_id] if node_id < len(per_node) else (per_node[-1] if per_node else 1)
    return SlurmStep(
        job_id=env["SLURM_JOB_ID"],
        step_id=env.get("SLURM_STEP_ID", "0"),
        nodes=nodes,
        node_id=node_id,
        tasks_on_node=tasks_here,
        gpus_on_node=_gpus(env),
    )


def batch_shell_nodes(env: Mapping[str, str]) -> int:
    """Nodes of the allocation when running in SLURM's batch shell (not in a step), else 0."""
    if not env.get("SLURM_JOB_ID") or env.get("SLURM_STEP_NODELIST"):
        return 0
    raw = env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or "1"
    return int(raw) if raw.isdigit() else 1


def apply_slurm_defaults(opts: dict[str, object], sources: dict[str, str], env: Mapping[str, str]) -> SlurmStep | None:
    """Fill options the user left at their defaults from the SLURM step; refuse misuse.

    Explicit options and `PET_*` variables win: only values whose source is "default" change,
    and those become source "SLURM".
    """
    if env.get("ELAUNCH_NO_SLURM"):
        return None
    step = detect_step(env)
    if step is None:
        n = batch_shell_nodes(env)
        if n > 1 and sources.get("nnodes") == "default":
            raise ConfigError(
                f"elaunch runs in the batch script of a {n}-node SLURM allocation, outside any step, so it "
                f"would use this node only; start it on every node with: srun --ntasks-per-node=1 elaunch ..."
            )
        return None
    if step.tasks_on_node > 1:
        raise ConfigError(
            f"SLURM started {step.tasks_on_node} elaunch tasks on this node; elaunch starts the workers itself: "
            f"use srun --ntasks-per-node=1 and --nproc-per-node"
        )
    if opts.get("standalone"):
        return step

    def fill(name: str, value: object) -> None:
        if sources.get(name, "default") == "default":
            opts[name] = value
            sources[name] = "SLURM"

    if sources.get("nnodes", "default") != "default":
        lo, _, hi = str(opts["nnodes"]).partition(":")
        try:
            lo_n, hi_n = int(lo), int(hi or lo)
        except ValueError:
            lo_n = hi_n = -1  # let the usual parser report it
        # With an endpoint of their own, nodes of other jobs or steps may join; without one, the
        # rendezvous is on this step's first node and only this step's nodes can come.
        own_endpoint = sources.get("rdzv_endpoint", "default") != "default"
        if lo_n >= 0 and not lo_n <= step.num_nodes <= hi_n and not own_endpoint:
            raise ConfigError(
                f"--nnodes {opts['nnodes']} contradicts the SLURM step, which runs on {step.num_nodes} node(s)"
            )
    fill("nnodes", str(step.num_nodes))
    max_text = str(opts["nnodes"]).split(":")[-1].strip()
    if max_text.isdigit() and int(max_text) > 1:
        fill("rdzv_backend", "c10d")
        if opts.get("rdzv_backend") in ("c10d", "static"):  # an etcd endpoint is the user's to give
            fill("rdzv_endpoint", f"{step.nodes[0]}:{step.port}")
        fill("node_rank", step.node_id)
    fill("rdzv_id", step.run_id)
    if step.gpus_on_node:
        fill("nproc_per_node", str(step.gpus_on_node))
    return step
