"""--numa-binding's rules (torch's AffinityMode) on recorded topologies: pure, no process."""

from __future__ import annotations

from pathlib import Path

import pytest

from elaunch.errors import ConfigError
from elaunch.numa import (
    CpuBinding,
    Topology,
    binding_prefix,
    cpu_list,
    parse_cpu_list,
    plan_binding,
    read_topology,
)
from tests.numa.topologies import (
    FOUR_NODES_NO_GPU,
    ONE_SOCKET_L3,
    RECORDED,
    TWO_SOCKETS_8_GPUS,
    write_sysfs,
)


def cpus(b: CpuBinding) -> str:
    return cpu_list(b.cpus)


def test_cpu_lists_round_trip() -> None:
    assert parse_cpu_list("0-3,8,10-11\n") == {0, 1, 2, 3, 8, 10, 11}
    assert cpu_list({11, 0, 1, 2, 3, 8, 10}) == "0-3,8,10-11"
    assert parse_cpu_list("") == frozenset()


def test_node_and_socket_on_two_sockets() -> None:
    node = plan_binding(TWO_SOCKETS_8_GPUS, "node", 8, None)
    assert [cpus(b) for b in node] == ["0-55,112-167"] * 4 + ["56-111,168-223"] * 4
    assert [b.device for b in node] == [f"GPU {g}" for g in range(8)]
    assert [set(b.nodes) for b in node] == [{0}] * 4 + [{1}] * 4
    # One node per socket: socket is node.
    assert [b.cpus for b in plan_binding(TWO_SOCKETS_8_GPUS, "socket", 8, None)] == [b.cpus for b in node]


def test_exclusive_splits_cores_with_their_hyperthreads() -> None:
    ex = plan_binding(TWO_SOCKETS_8_GPUS, "exclusive", 8, None)
    assert [cpus(b) for b in ex[:4]] == ["0-13,112-125", "14-27,126-139", "28-41,140-153", "42-55,154-167"]
    assert cpus(ex[4]) == "56-69,168-181"
    assert all(not (a.cpus & b.cpus) for a in ex for b in ex if a is not b)


def test_exclusive_gives_the_remainder_to_the_lowest_gpus() -> None:
    ex = plan_binding(ONE_SOCKET_L3, "exclusive", 3, "0,1,2")
    # 64 cores for 3 GPUs: 22, 21, 21.
    assert [len(b.cpus) // 2 for b in ex] == [22, 21, 21]
    assert cpus(ex[0]) == "0-21,64-85"


def test_core_complex_takes_one_l3_group_each() -> None:
    cc = plan_binding(ONE_SOCKET_L3, "core-complex", 4, None)
    assert [cpus(b) for b in cc] == ["0-7,64-71", "8-15,72-79", "16-23,80-87", "24-31,88-95"]
    # One L3 per socket: every GPU of the node gets the whole cache group.
    assert {cpus(b) for b in plan_binding(TWO_SOCKETS_8_GPUS, "core-complex", 4, None)} == {"0-55,112-167"}


def test_visible_devices_order_and_subset() -> None:
    """Local rank r uses the r-th visible GPU: torchrun's `gpu_index = local_rank` on the physical
    list would bind rank 0 to node 0 here."""
    b = plan_binding(TWO_SOCKETS_8_GPUS, "node", 3, "6,2,5")
    assert [x.device for x in b] == ["GPU 6", "GPU 2", "GPU 5"]
    assert [set(x.nodes) for x in b] == [{1}, {0}, {1}]
    ex = plan_binding(TWO_SOCKETS_8_GPUS, "exclusive", 3, "6,2,5")
    # Node 1's visible GPUs are 6 and 5 (local ranks 0 and 2): two shares of its 56 cores.
    assert [cpus(x) for x in ex] == ["56-83,168-195", "0-55,112-167", "84-111,196-223"]


def test_gpu_uuids_name_gpus_as_cuda_reads_them() -> None:
    uuids = TWO_SOCKETS_8_GPUS.gpu_uuids
    b = plan_binding(TWO_SOCKETS_8_GPUS, "node", 2, f"{uuids[5]},{uuids[1][:7]}")  # a unique prefix is enough
    assert [x.device for x in b] == ["GPU 5", "GPU 1"]


def test_no_visible_gpu_is_a_cpu_only_node() -> None:
    b = plan_binding(TWO_SOCKETS_8_GPUS, "node", 2, "")
    assert [x.device for x in b] == ["no GPU", "no GPU"]
    assert [set(x.nodes) for x in b] == [{0}, {1}]


def test_cpu_only_spreads_workers_over_nodes() -> None:
    b = plan_binding(FOUR_NODES_NO_GPU, "node", 8, None)
    assert [min(x.nodes) for x in b] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert all(x.device == "no GPU" for x in b)
    assert [cpus(x) for x in plan_binding(FOUR_NODES_NO_GPU, "exclusive", 8, None)][:2] == ["0-3", "4-7"]
    sock = plan_binding(FOUR_NODES_NO_GPU, "socket", 4, None)
    assert [cpus(x) for x in sock] == ["0-15", "0-15", "16-31", "16-31"]
    assert [set(x.nodes) for x in sock] == [{0, 1}, {0, 1}, {2, 3}, {2, 3}]


def test_allowed_cpus_limit_every_mode() -> None:
    topo = Topology(
        node_cpus=FOUR_NODES_NO_GPU.node_cpus,
        package=FOUR_NODES_NO_GPU.package,
        core=FOUR_NODES_NO_GPU.core,
        cache=FOUR_NODES_NO_GPU.cache,
        allowed=frozenset(range(4, 12)),
    )
    # Only nodes 0 (4-7) and 1 (8-11) have usable CPUs: the workers spread over those two.
    assert [cpus(x) for x in plan_binding(topo, "node", 2, None)] == ["4-7", "8-11"]


@pytest.mark.parametrize(
    ("topo", "mode", "nproc", "visible", "words"),
    [
        (TWO_SOCKETS_8_GPUS, "node", 9, None, "9 workers and 8 visible GPU(s)"),
        (TWO_SOCKETS_8_GPUS, "node", 2, "GPU-5d3c", "'GPU-5d3c' names no GPU of this node"),
        (TWO_SOCKETS_8_GPUS, "node", 1, "GPU-", "names several GPUs"),
        (TWO_SOCKETS_8_GPUS, "node", 1, "MIG-0a1b", "MIG instances are not supported"),
        (TWO_SOCKETS_8_GPUS, "node", 2, "0,-1,3", "2 workers and 1 visible GPU(s)"),
        (TWO_SOCKETS_8_GPUS, "node", 1, "8", "no GPU 8"),
        (TWO_SOCKETS_8_GPUS, "nodes", 1, None, "must be one of node, socket, exclusive, core-complex"),
        (FOUR_NODES_NO_GPU, "exclusive", 40, None, "8 physical core(s) for 10 worker(s)"),
    ],
)
def test_refusals_name_the_reason(topo: Topology, mode: str, nproc: int, visible: str | None, words: str) -> None:
    with pytest.raises(ConfigError) as e:
        plan_binding(topo, mode, nproc, visible)
    assert words in e.value.message


def test_prefix_numactl_sets_memory_on_one_node_taskset_cpus_only() -> None:
    one = CpuBinding(local_rank=0, cpus=frozenset({0, 1, 2}), nodes=frozenset({1}), device="GPU 4")
    two = CpuBinding(local_rank=0, cpus=frozenset({0, 8}), nodes=frozenset({0, 1}), device="no GPU")
    assert binding_prefix(one, "/usr/bin/numactl") == ("/usr/bin/numactl", "--physcpubind=0-2", "--preferred=1", "--")
    assert binding_prefix(two, "/usr/bin/numactl") == ("/usr/bin/numactl", "--physcpubind=0,8", "--")
    assert binding_prefix(one, "/usr/bin/taskset") == ("/usr/bin/taskset", "-c", "0-2")
    assert one.describe() == "0-2 (NUMA node 1, GPU 4)"


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_reading_a_recorded_sysfs_tree_gives_the_topology(name: str, tmp_path: Path) -> None:
    topo = RECORDED[name][0]
    write_sysfs(topo, str(tmp_path))
    read = read_topology(str(tmp_path / "sys"), str(tmp_path / "proc"), allowed=frozenset())
    assert read == topo


def test_this_machine() -> None:
    topo = read_topology()
    assert topo.allowed and topo.node_cpus
    assert set().union(*topo.node_cpus.values()) >= topo.allowed
    for mode in ("node", "socket", "core-complex"):
        assert all(b.cpus <= topo.allowed for b in plan_binding(topo, mode, 2, None))
