"""SLURM detection and guards, from environments like those a real srun step and batch shell see."""

from __future__ import annotations

import pytest

from elaunch.errors import ConfigError
from elaunch.slurm import apply_slurm_defaults, detect_step, rendezvous_port, tasks_per_node

STEP = {
    "SLURM_JOB_ID": "4242",
    "SLURM_STEP_ID": "0",
    "SLURM_JOB_NODELIST": "host[1-2]",
    "SLURM_STEP_NODELIST": "host[1-2]",
    "SLURM_NODEID": "1",
    "SLURM_PROCID": "1",
    "SLURM_NNODES": "2",
    "SLURM_STEP_NUM_NODES": "2",
    "SLURM_TASKS_PER_NODE": "1(x2)",
    "SLURM_STEP_TASKS_PER_NODE": "1(x2)",
}
BATCH = {
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NODELIST": "host[1-2]",
    "SLURM_JOB_NUM_NODES": "2",
    "SLURM_PROCID": "0",
    "SLURM_NODEID": "0",
}


def _defaults() -> tuple[dict[str, object], dict[str, str]]:
    opts: dict[str, object] = {
        "nnodes": "1:1",
        "nproc_per_node": "1",
        "rdzv_backend": "static",
        "rdzv_endpoint": "",
        "rdzv_id": "none",
        "node_rank": None,
        "standalone": False,
    }
    return opts, dict.fromkeys(opts, "default")


def test_step_detection_fills_defaults() -> None:
    opts, sources = _defaults()
    step = apply_slurm_defaults(opts, sources, STEP)
    assert step is not None and step.nodes == ("host1", "host2")
    assert opts["nnodes"] == "2"
    assert opts["rdzv_backend"] == "c10d"
    assert opts["rdzv_endpoint"] == f"host1:{rendezvous_port('4242')}"
    assert opts["node_rank"] == 1
    assert opts["rdzv_id"] == "slurm-4242.0"
    assert sources["nnodes"] == sources["rdzv_endpoint"] == "SLURM"


def test_explicit_options_win() -> None:
    opts, sources = _defaults()
    opts["rdzv_endpoint"], sources["rdzv_endpoint"] = "myhost:1234", "option"
    opts["rdzv_id"], sources["rdzv_id"] = "mine", "environment"
    apply_slurm_defaults(opts, sources, STEP)
    assert opts["rdzv_endpoint"] == "myhost:1234" and opts["rdzv_id"] == "mine"
    assert opts["nnodes"] == "2"


def test_gpus_from_slurm() -> None:
    opts, sources = _defaults()
    apply_slurm_defaults(opts, sources, {**STEP, "SLURM_GPUS_ON_NODE": "4", "CUDA_VISIBLE_DEVICES": "0,1,2,3"})
    assert opts["nproc_per_node"] == "4" and sources["nproc_per_node"] == "SLURM"


def test_batch_shell_is_not_a_step() -> None:
    assert detect_step(BATCH) is None
    opts, sources = _defaults()
    with pytest.raises(ConfigError, match=r"outside any step.*srun"):
        apply_slurm_defaults(opts, sources, BATCH)


def test_batch_shell_of_one_node_allocation_is_fine() -> None:
    opts, sources = _defaults()
    assert apply_slurm_defaults(opts, sources, {**BATCH, "SLURM_JOB_NUM_NODES": "1"}) is None
    assert opts["nnodes"] == "1:1"


def test_two_tasks_per_node_refused() -> None:
    opts, sources = _defaults()
    env = {**STEP, "SLURM_STEP_TASKS_PER_NODE": "2(x2)"}
    with pytest.raises(ConfigError, match="2 elaunch tasks on this node"):
        apply_slurm_defaults(opts, sources, env)


def test_contradicting_nnodes_refused() -> None:
    opts, sources = _defaults()
    opts["nnodes"], sources["nnodes"] = "4", "option"
    with pytest.raises(ConfigError, match="contradicts the SLURM step"):
        apply_slurm_defaults(opts, sources, STEP)
    opts["nnodes"] = "1:4"
    apply_slurm_defaults(opts, sources, STEP)  # elastic range containing 2: fine


def test_single_node_step_stays_local() -> None:
    opts, sources = _defaults()
    env = {**STEP, "SLURM_STEP_NODELIST": "host1", "SLURM_NODEID": "0", "SLURM_STEP_TASKS_PER_NODE": "1"}
    apply_slurm_defaults(opts, sources, env)
    assert opts["nnodes"] == "1" and opts["rdzv_backend"] == "static"


def test_tasks_per_node_and_port() -> None:
    assert tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    assert 29500 <= rendezvous_port("123456") < 49500
    assert rendezvous_port("1") != rendezvous_port("2")


def test_single_node_step_with_more_nnodes_refused() -> None:
    # Without an endpoint of the user's, the rendezvous would wait join_timeout for nodes that never come.
    opts, sources = _defaults()
    env = {**STEP, "SLURM_STEP_NODELIST": "host1", "SLURM_NODEID": "0", "SLURM_STEP_TASKS_PER_NODE": "1"}
    opts["nnodes"], sources["nnodes"] = "2", "option"
    with pytest.raises(ConfigError, match="contradicts the SLURM step, which runs on 1 node"):
        apply_slurm_defaults(opts, sources, env)
    opts["rdzv_endpoint"], sources["rdzv_endpoint"] = "head:29400", "option"
    apply_slurm_defaults(opts, sources, env)  # nodes of other jobs join at the user's endpoint: fine


def test_standalone_still_refuses_two_tasks_per_node() -> None:
    opts, sources = _defaults()
    opts["standalone"], sources["standalone"] = True, "option"
    with pytest.raises(ConfigError, match="2 elaunch tasks on this node"):
        apply_slurm_defaults(opts, sources, {**STEP, "SLURM_STEP_TASKS_PER_NODE": "2(x2)"})


def test_etcd_backend_gets_no_endpoint_from_slurm() -> None:
    # The step's first node runs no etcd: the endpoint stays the user's to give (else a clear error).
    opts, sources = _defaults()
    opts["rdzv_backend"], sources["rdzv_backend"] = "etcd-v2", "option"
    apply_slurm_defaults(opts, sources, STEP)
    assert opts["rdzv_endpoint"] == "" and sources["rdzv_endpoint"] == "default"
    assert opts["nnodes"] == "2" and opts["node_rank"] == 1
