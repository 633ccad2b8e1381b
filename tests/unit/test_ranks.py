"""Rank assignment and the worker environment of contract 2."""

from __future__ import annotations

from elaunch.ranks import assign_ranks, worker_env
from elaunch.rendezvous.api import NodeInfo, RendezvousInfo


def _info(group_rank: int, nodes: list[tuple[str, int]]) -> RendezvousInfo:
    return RendezvousInfo(
        run_id="job",
        round=0,
        group_rank=group_rank,
        nodes=tuple(NodeInfo(host=f"h{i}", role=role, local_world_size=n) for i, (role, n) in enumerate(nodes)),
        master_addr="h0",
        master_port=1234,
    )


def test_ranks_are_running_sums_and_nodes_may_differ() -> None:
    info = _info(1, [("trainer", 2), ("trainer", 3), ("trainer", 1)])
    ranks = assign_ranks(info)
    assert [r.global_rank for r in ranks] == [2, 3, 4]
    assert {r.world_size for r in ranks} == {6}
    assert [r.local_rank for r in ranks] == [0, 1, 2]


def test_role_ranks_count_only_same_role() -> None:
    info = _info(2, [("trainer", 2), ("reader", 4), ("trainer", 2)])
    ranks = assign_ranks(info)
    assert [r.global_rank for r in ranks] == [6, 7]
    assert [r.role_rank for r in ranks] == [2, 3]
    assert {r.role_world_size for r in ranks} == {4}


def test_worker_env_contract() -> None:
    info = _info(0, [("default", 2)])
    r = assign_ranks(info)[1]
    env = worker_env(
        {"PATH": "/bin"},
        r,
        info,
        role="default",
        local_world_size=2,
        restart_count=1,
        max_restarts=3,
        error_file="/x/error.json",
        python=True,
    )
    expected = {
        "RANK": "1",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "2",
        "LOCAL_WORLD_SIZE": "2",
        "GROUP_RANK": "0",
        "GROUP_WORLD_SIZE": "1",
        "ROLE_RANK": "1",
        "ROLE_NAME": "default",
        "ROLE_WORLD_SIZE": "2",
        "MASTER_ADDR": "h0",
        "MASTER_PORT": "1234",
        "TORCHELASTIC_RESTART_COUNT": "1",
        "TORCHELASTIC_MAX_RESTARTS": "3",
        "TORCHELASTIC_RUN_ID": "job",
        "TORCHELASTIC_USE_AGENT_STORE": "False",
        "TORCHELASTIC_ERROR_FILE": "/x/error.json",
        "ELAUNCH_HEARTBEAT_FILE": "/x/heartbeat",
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "PATH": "/bin",
    }
    assert env == expected


def test_user_settings_win() -> None:
    info = _info(0, [("default", 4)])
    r = assign_ranks(info)[0]
    base = {"OMP_NUM_THREADS": "8", "PYTHONUNBUFFERED": "0", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "3"}
    env = worker_env(
        base, r, info, role="default", local_world_size=4, restart_count=0, max_restarts=0, error_file="e", python=True
    )
    assert env["OMP_NUM_THREADS"] == "8"
    assert env["PYTHONUNBUFFERED"] == "0"
    assert env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "3"


def test_one_worker_gets_no_omp_and_programs_no_unbuffered() -> None:
    info = _info(0, [("default", 1)])
    r = assign_ranks(info)[0]
    env = worker_env(
        {}, r, info, role="d", local_world_size=1, restart_count=0, max_restarts=0, error_file="e", python=False
    )
    assert "OMP_NUM_THREADS" not in env
    assert "PYTHONUNBUFFERED" not in env


def test_virtual_local_rank() -> None:
    info = _info(0, [("default", 2)])
    r = assign_ranks(info)[1]
    env = worker_env(
        {"CUDA_VISIBLE_DEVICES": "4,5"},
        r,
        info,
        role="d",
        local_world_size=2,
        restart_count=0,
        max_restarts=0,
        error_file="e",
        python=True,
        virtual_local_rank=True,
    )
    assert env["LOCAL_RANK"] == "0"
    assert env["CUDA_VISIBLE_DEVICES"] == "5"
