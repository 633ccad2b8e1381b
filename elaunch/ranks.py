"""Rank assignment across nodes and roles, and each worker's plan (argv, environment). Pure."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from elaunch.config import substitute_local_rank
from elaunch.rendezvous.api import RendezvousInfo
from elaunch.spec import WorkerPlan, WorkerRanks, WorkerSpec

FIXED_ARGV = 1
"""Leading items of the worker command that are not the user's (`${local_rank}` is not replaced there)."""


def assign_ranks(info: RendezvousInfo) -> list[WorkerRanks]:
    """Ranks of this node's workers: running sums over nodes in group-rank order.

    Global ranks count every node's workers; role ranks count only nodes of this node's role.
    Nodes may run different numbers of workers.
    """
    me = info.nodes[info.group_rank]
    world = sum(n.local_world_size for n in info.nodes)
    role_nodes = [n for n in info.nodes if n.role == me.role]
    role_world = sum(n.local_world_size for n in role_nodes)
    base = sum(n.local_world_size for n in info.nodes[: info.group_rank])
    role_base = sum(n.local_world_size for n in info.nodes[: info.group_rank] if n.role == me.role)
    return [
        WorkerRanks(
            local_rank=lr,
            global_rank=base + lr,
            role_rank=role_base + lr,
            world_size=world,
            role_world_size=role_world,
        )
        for lr in range(me.local_world_size)
    ]


def worker_env(
    base: Mapping[str, str],
    ranks: WorkerRanks,
    info: RendezvousInfo,
    *,
    role: str,
    local_world_size: int,
    restart_count: int,
    max_restarts: int,
    error_file: str,
    python: bool,
    virtual_local_rank: bool = False,
) -> dict[str, str]:
    """The environment torchrun gives a worker (contract 2), on top of `base`.

    `restart_count` (`TORCHELASTIC_RESTART_COUNT`) is the job-wide number of restarts of the worker
    group before this round: the rendezvous round's number, equal on every node of a round and
    counting restarts after failures and after membership changes alike. torchrun's counts only this
    agent's own failures (`max_restarts - remaining_restarts`), so after one node's worker fails it
    differs between nodes and a script that resumes "if restarted" resumes on some ranks only.
    """
    env = dict(base)
    env.update(
        {
            "RANK": str(ranks.global_rank),
            "LOCAL_RANK": str(ranks.local_rank),
            "GROUP_RANK": str(info.group_rank),
            "ROLE_RANK": str(ranks.role_rank),
            "ROLE_NAME": role,
            "LOCAL_WORLD_SIZE": str(local_world_size),
            "WORLD_SIZE": str(ranks.world_size),
            "GROUP_WORLD_SIZE": str(info.group_world_size),
            "ROLE_WORLD_SIZE": str(ranks.role_world_size),
            "MASTER_ADDR": info.master_addr,
            "MASTER_PORT": str(info.master_port),
            "TORCHELASTIC_RESTART_COUNT": str(restart_count),
            "TORCHELASTIC_MAX_RESTARTS": str(max_restarts),
            "TORCHELASTIC_RUN_ID": info.run_id,
            "TORCHELASTIC_USE_AGENT_STORE": str(info.use_agent_store),
            "TORCHELASTIC_ERROR_FILE": error_file,
            "TORCH_NCCL_ASYNC_ERROR_HANDLING": base.get("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1"),
        }
    )
    if local_world_size > 1 and "OMP_NUM_THREADS" not in base:
        env["OMP_NUM_THREADS"] = "1"
    if python and "PYTHONUNBUFFERED" not in base:
        env["PYTHONUNBUFFERED"] = "1"
    if virtual_local_rank:
        env["LOCAL_RANK"] = "0"
        visible = base.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:
            gpus = [g.strip() for g in visible.split(",")]
            env["CUDA_VISIBLE_DEVICES"] = gpus[ranks.local_rank] if ranks.local_rank < len(gpus) else ""
        else:
            env["CUDA_VISIBLE_DEVICES"] = str(ranks.local_rank)
    return env


def worker_argv(entry_argv: tuple[str, ...], n_fixed: int, local_rank: int) -> tuple[str, ...]:
    """The worker's argv: `${local_rank}` is replaced in the script's arguments only."""
    return entry_argv[:n_fixed] + substitute_local_rank(entry_argv[n_fixed:], local_rank)


def worker_plans(
    spec: WorkerSpec, info: RendezvousInfo, *, restart_count: int, error_file: Callable[[int], str]
) -> list[WorkerPlan]:
    """Every local worker's plan for one round: the one function behind both a run and --dry-run.

    `error_file(local_rank)` names the worker's TORCHELASTIC_ERROR_FILE. Plans are in local-rank order.
    """
    out = []
    for r in assign_ranks(info):
        path = error_file(r.local_rank)
        out.append(
            WorkerPlan(
                ranks=r,
                argv=worker_argv((spec.entrypoint, *spec.args), FIXED_ARGV, r.local_rank),
                env=worker_env(
                    spec.env,
                    r,
                    info,
                    role=spec.role,
                    local_world_size=spec.local_world_size,
                    restart_count=restart_count,
                    max_restarts=spec.max_restarts,
                    error_file=path,
                    python=spec.python,
                    virtual_local_rank=spec.virtual_local_rank,
                ),
                error_file=path,
                binding=spec.cpu_binding[r.local_rank] if spec.cpu_binding else None,
            )
        )
    return out
