"""Recorded topologies of real machines, as `elaunch.numa.Topology` values (from their sysfs).

* `TWO_SOCKETS_8_GPUS`: a DGX H100 (2 x Xeon 8480C, 56 cores each with 2 threads: node 0 = CPUs
  0-55 and 112-167, node 1 = 56-111 and 168-223; one L3 per socket; GPUs 0-3 on node 0, 4-7 on
  node 1, as `nvidia-smi topo -m` shows; UUIDs from the driver's procfs, made up).
* `ONE_SOCKET_L3`: an AMD EPYC 7763 in NPS1 (one NUMA node, 64 cores with 2 threads, CPUs 0-127,
  thread siblings c and c+64; eight core complexes of 8 cores sharing an L3), 4 GPUs on node 0.
* `FOUR_NODES_NO_GPU`: a CPU-only 2-socket machine with sub-NUMA clustering (4 nodes of 8
  single-thread cores, 2 nodes per socket, one L3 per socket).
"""

from __future__ import annotations

from elaunch.numa import Topology


def _two_sockets_8_gpus() -> Topology:
    node0 = frozenset(range(0, 56)) | frozenset(range(112, 168))
    node1 = frozenset(range(56, 112)) | frozenset(range(168, 224))
    cpus = range(224)
    return Topology(
        node_cpus={0: node0, 1: node1},
        package={c: 0 if c in node0 else 1 for c in cpus},
        core={c: c % 112 for c in cpus},
        cache={c: 0 if c in node0 else 56 for c in cpus},
        gpu_nodes=(0, 0, 0, 0, 1, 1, 1, 1),
        gpu_uuids=tuple(f"GPU-{i}a1b2c3d-58e0-7f1c-9d2e-0123456789a{i}" for i in range(8)),
    )


def _one_socket_l3() -> Topology:
    cpus = range(128)
    return Topology(
        node_cpus={0: frozenset(cpus)},
        package={c: 0 for c in cpus},
        core={c: c % 64 for c in cpus},
        cache={c: (c % 64) // 8 * 8 for c in cpus},
        gpu_nodes=(0, 0, 0, 0),
    )


def _four_nodes_no_gpu() -> Topology:
    cpus = range(32)
    return Topology(
        node_cpus={n: frozenset(range(8 * n, 8 * n + 8)) for n in range(4)},
        package={c: c // 16 for c in cpus},
        core={c: c for c in cpus},
        cache={c: c // 16 * 16 for c in cpus},
    )


TWO_SOCKETS_8_GPUS = _two_sockets_8_gpus()
ONE_SOCKET_L3 = _one_socket_l3()
FOUR_NODES_NO_GPU = _four_nodes_no_gpu()
RECORDED = {
    "two_sockets_8_gpus": (TWO_SOCKETS_8_GPUS, 8, None),
    "one_socket_l3": (ONE_SOCKET_L3, 4, None),
    "visible_subset": (TWO_SOCKETS_8_GPUS, 3, "6,2,5"),
    "four_nodes_no_gpu": (FOUR_NODES_NO_GPU, 4, None),
}
"""name -> (topology, workers per node, CUDA_VISIBLE_DEVICES)."""


def write_sysfs(topo: Topology, root: str) -> None:
    """Lay `topo` out as a sysfs tree under root/sys (and root/proc for the GPUs), as Linux does."""
    import os

    from elaunch.numa import cpu_list

    sys_root = os.path.join(root, "sys")

    def put(rel: str, text: str) -> None:
        path = os.path.join(sys_root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text + "\n")

    for n, cpus in topo.node_cpus.items():
        put(f"devices/system/node/node{n}/cpulist", cpu_list(cpus))
        for c in cpus:
            d = f"devices/system/cpu/cpu{c}"
            put(f"{d}/topology/physical_package_id", str(topo.package[c]))
            put(f"{d}/topology/thread_siblings_list", cpu_list(x for x in topo.core if topo.core[x] == topo.core[c]))
            put(f"{d}/cache/index1/type", "Instruction")
            put(f"{d}/cache/index1/level", "1")
            put(f"{d}/cache/index1/shared_cpu_list", str(c))
            put(f"{d}/cache/index3/type", "Unified")
            put(f"{d}/cache/index3/level", "3")
            put(f"{d}/cache/index3/shared_cpu_list", cpu_list(x for x in topo.cache if topo.cache[x] == topo.cache[c]))
    for i, node in enumerate(topo.gpu_nodes):
        addr = f"0000:{0x18 + 0x10 * i:02x}:00.0"
        if topo.gpu_uuids:  # the driver's list, as /proc/driver/nvidia/gpus/<addr>/information
            info = os.path.join(root, "proc/driver/nvidia/gpus", addr, "information")
            os.makedirs(os.path.dirname(info), exist_ok=True)
            with open(info, "w") as f:
                f.write(
                    f"Model: \t\t NVIDIA H100 80GB HBM3\nGPU UUID: \t {topo.gpu_uuids[i]}\nBus Location: \t {addr}\n"
                )
        put(f"bus/pci/devices/{addr}/vendor", "0x10de")
        put(f"bus/pci/devices/{addr}/class", "0x030200")
        put(f"bus/pci/devices/{addr}/numa_node", str(node))
    put("bus/pci/devices/0000:00:1f.0/vendor", "0x8086")  # not a GPU
    put("bus/pci/devices/0000:00:1f.0/class", "0x060100")
