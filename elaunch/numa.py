"""`--numa-binding node|socket|exclusive|core-complex`: which CPUs each local worker runs on. Pure, but for the readers.

The modes are torch's (`torch/numa/binding.py`, `AffinityMode`), computed without torch:

* `node`: every CPU of the NUMA node of the worker's GPU.
* `socket`: every CPU of every NUMA node on the socket of that node.
* `exclusive`: the node's physical cores split evenly among the GPUs on that node, in GPU index
  order (the lowest indices get one more core when it does not divide); hyperthreads stay with
  their core.
* `core-complex`: one group of cores sharing the largest (L3) cache, the groups with the most CPUs
  first; the i-th GPU of the node takes group i modulo their number.

CPUs are always intersected with the agent's own affinity (torch: `sched_getaffinity`), so a
binding never leaves a cgroup or an outer `taskset`.

Where elaunch differs from torch, on purpose: the GPU of local rank r is the r-th entry of
`CUDA_VISIBLE_DEVICES` (physical indices, driver/PCI-bus order) -- torch asks CUDA for
`cuda:r`'s PCI address, which is the same GPU, but without importing torch in the agent; and a
node without GPUs spreads its workers over its NUMA nodes in blocks (local ranks
`r * nodes // nproc`), where torch binds only GPU workers. The topology is a `Topology` value:
`read_topology` reads it from sysfs, tests pass recorded ones to `plan_binding`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping

from elaunch.errors import ConfigError
from elaunch.values import Value, field, value

MODES = ("node", "socket", "exclusive", "core-complex")


@value
class Topology(Value):
    """One machine's CPUs, NUMA nodes and GPUs, as sysfs tells them.

    `node_cpus`: NUMA node -> its CPUs (`node<N>/cpulist`). `package`: CPU -> socket
    (`physical_package_id`). `core`: CPU -> its physical core, named by the lowest CPU of its
    `thread_siblings_list`. `cache`: CPU -> its largest unified/data cache (L3 on x86), named by the
    lowest CPU of `shared_cpu_list`. `gpu_nodes`: the NUMA node of each NVIDIA GPU, index = the
    physical GPU index (PCI bus order, as nvidia-smi and `CUDA_DEVICE_ORDER=PCI_BUS_ID`).
    `gpu_uuids`: their UUIDs (`GPU-...`, from the driver's procfs) where known, same order.
    `allowed`: the CPUs this process may run on (its affinity); empty means all.
    """

    node_cpus: Mapping[int, frozenset[int]]
    package: Mapping[int, int] = field(default_factory=dict)
    core: Mapping[int, int] = field(default_factory=dict)
    cache: Mapping[int, int] = field(default_factory=dict)
    gpu_nodes: tuple[int, ...] = ()
    gpu_uuids: tuple[str, ...] = ()
    allowed: frozenset[int] = frozenset()

    def cpus_of(self, node: int) -> frozenset[int]:
        """The node's CPUs this process may use."""
        cpus = self.node_cpus.get(node, frozenset())
        return cpus & self.allowed if self.allowed else cpus


@value
class CpuBinding(Value):
    """Where one local worker runs: its CPUs, the NUMA nodes they belong to, and why (`device`)."""

    local_rank: int
    cpus: frozenset[int]
    nodes: frozenset[int]
    device: str
    """`GPU 3` (a physical index) or `no GPU` (CPU-only node)."""
    prefix: tuple[str, ...] = ()
    """The command put before the worker's (numactl or taskset), filled in by `with_tool`."""

    def describe(self) -> str:
        """`0-3,8 (NUMA node 0, GPU 2)`: the --dry-run text."""
        nodes = ",".join(str(n) for n in sorted(self.nodes))
        return f"{cpu_list(self.cpus)} (NUMA node {nodes}, {self.device})"


def parse_cpu_list(text: str) -> frozenset[int]:
    """sysfs's list form `0-3,8,10-11` -> {0,1,2,3,8,10,11}; empty text -> empty set."""
    out: set[int] = set()
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return frozenset(out)


def cpu_list(cpus: Iterable[int]) -> str:
    """{0,1,2,3,8} -> `0-3,8` (the form of sysfs, taskset -c and numactl --physcpubind)."""
    ranges: list[list[int]] = []
    for c in sorted(cpus):
        if ranges and ranges[-1][1] == c - 1:
            ranges[-1][1] = c
        else:
            ranges.append([c, c])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def _visible_gpus(visible: str | None, topo: Topology) -> list[int]:
    """Physical GPU indices in CUDA_VISIBLE_DEVICES order (all GPUs when unset), as CUDA reads it:
    indices or `GPU-` UUIDs (a unique prefix is enough), and an entry that is neither, or -1,
    hides itself and every later one. ConfigError for MIG instances (not mapped to a PCI device
    here), a UUID not found, and an index that does not exist."""
    n_gpus = len(topo.gpu_nodes)
    if visible is None:
        return list(range(n_gpus))
    out: list[int] = []
    for item in visible.split(","):
        item = item.strip()
        if item.startswith("MIG-"):
            raise ConfigError(f"--numa-binding: CUDA_VISIBLE_DEVICES={visible!r}: MIG instances are not supported")
        if item.startswith("GPU-"):
            found = [i for i, u in enumerate(topo.gpu_uuids) if u.startswith(item)]
            if len(found) != 1:
                raise ConfigError(
                    f"--numa-binding: CUDA_VISIBLE_DEVICES={visible!r}: {item!r} names "
                    f"{'no GPU' if not found else 'several GPUs'} of this node"
                )
            out.append(found[0])
            continue
        if not item.isdigit():
            break  # CUDA: an invalid entry (or -1) hides it and every later one
        idx = int(item)
        if idx >= n_gpus:
            raise ConfigError(f"--numa-binding: CUDA_VISIBLE_DEVICES={visible!r}: no GPU {idx} ({n_gpus} found)")
        out.append(idx)
    return out


def _exclusive(topo: Topology, cpus: frozenset[int], index: int, peers: int, node: int) -> frozenset[int]:
    """torch's `exclusive`: the `index`-th of `peers` even shares of the node's physical cores."""
    cores: dict[int, set[int]] = {}
    for c in cpus:
        cores.setdefault(topo.core.get(c, c), set()).add(c)
    ordered = [cores[k] for k in sorted(cores)]
    per, extra = divmod(len(ordered), peers)
    if per < 1:
        raise ConfigError(
            f"--numa-binding exclusive: NUMA node {node} has {len(ordered)} physical core(s) for {peers} worker(s)"
        )
    start = index * per + min(index, extra)
    end = start + per + (1 if index < extra else 0)
    return frozenset(c for core in ordered[start:end] for c in core)


def _core_complex(topo: Topology, cpus: frozenset[int], index: int) -> frozenset[int]:
    """torch's `core-complex`: cache groups, largest first (then lowest CPU), taken round-robin."""
    groups: dict[int, set[int]] = {}
    for c in cpus:
        groups.setdefault(topo.cache.get(c, 0), set()).add(c)
    ordered = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    return frozenset(ordered[index % len(ordered)][1])


def _socket(topo: Topology, node: int) -> tuple[frozenset[int], frozenset[int]]:
    """(CPUs, nodes) of every NUMA node on `node`'s socket (a node's socket: that of its lowest CPU)."""

    def socket_of(n: int) -> int | None:
        cpus = topo.cpus_of(n)
        return topo.package.get(min(cpus), 0) if cpus else None

    mine = socket_of(node)
    nodes = frozenset(n for n in topo.node_cpus if socket_of(n) == mine)
    return frozenset().union(*(topo.cpus_of(n) for n in nodes)), nodes


def plan_binding(topo: Topology, mode: str, nproc: int, visible: str | None) -> tuple[CpuBinding, ...]:
    """Each local worker's CPUs under `mode` (one of MODES), in local-rank order.

    `visible` is the agent's CUDA_VISIBLE_DEVICES (None: unset). With GPUs, local rank r uses
    the r-th visible GPU; without GPUs (or none visible), workers are spread over the NUMA nodes
    that have usable CPUs. Raises ConfigError when a worker has no GPU, a node has no usable CPU,
    or `exclusive` has fewer cores than workers on a node.
    """
    if mode not in MODES:
        raise ConfigError(f"--numa-binding must be one of {', '.join(MODES)}, got {mode!r}")
    gpus = _visible_gpus(visible, topo) if topo.gpu_nodes else []
    if gpus:
        if nproc > len(gpus):
            raise ConfigError(
                f"--numa-binding binds local rank r to the r-th visible GPU, but there are {nproc} workers "
                f"and {len(gpus)} visible GPU(s)"
            )
        node_of = [topo.gpu_nodes[g] for g in gpus[:nproc]]
        # torch: the peers sharing a node are every visible GPU on it, in index order.
        peers_of = {n: [i for i, g in enumerate(gpus) if topo.gpu_nodes[g] == n] for n in set(node_of)}
        devices = [f"GPU {g}" for g in gpus[:nproc]]
    else:
        usable = sorted(n for n in topo.node_cpus if topo.cpus_of(n))
        if not usable:
            raise ConfigError("--numa-binding: no NUMA node has a CPU this process may use")
        node_of = [usable[r * len(usable) // nproc] for r in range(nproc)]
        peers_of = {n: [r for r in range(nproc) if node_of[r] == n] for n in set(node_of)}
        devices = ["no GPU"] * nproc
    out = []
    for r in range(nproc):
        node = node_of[r]
        cpus = topo.cpus_of(node)
        if not cpus:
            raise ConfigError(f"--numa-binding: NUMA node {node} ({devices[r]}) has no CPU this process may use")
        nodes = frozenset({node})
        index, peers = peers_of[node].index(r), len(peers_of[node])
        if mode == "socket":
            cpus, nodes = _socket(topo, node)
        elif mode == "exclusive":
            cpus = _exclusive(topo, cpus, index, peers, node)
        elif mode == "core-complex":
            cpus = _core_complex(topo, cpus, index)
        out.append(CpuBinding(local_rank=r, cpus=cpus, nodes=nodes, device=devices[r]))
    return tuple(out)


def binding_prefix(b: CpuBinding, tool: str) -> tuple[str, ...]:
    """The command that sets `b` and then executes the worker: numactl (CPUs, and memory preferred
    on the node when the CPUs are on one node) or taskset (CPUs only). `tool` is its path."""
    if os.path.basename(tool) == "numactl":
        mem = (f"--preferred={min(b.nodes)}",) if len(b.nodes) == 1 else ()
        return (tool, f"--physcpubind={cpu_list(b.cpus)}", *mem, "--")
    return (tool, "-c", cpu_list(b.cpus))  # taskset takes no `--`; it stops at the command


def find_tool(path: str | None = None) -> str:
    """numactl where installed (it also sets the memory policy), else util-linux's taskset.
    ConfigError when neither is on PATH."""
    for name in ("numactl", "taskset"):
        found = shutil.which(name, path=path)
        if found:
            return found
    raise ConfigError("--numa-binding needs numactl or taskset (util-linux) on PATH")


# -- reading the topology (the edge) --------------------------------------------------------------


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _largest_cache(cpu_dir: str, cpu: int) -> int:
    """The lowest CPU sharing `cpu`'s highest-level unified/data cache (torch's rule); `cpu` if none."""
    best, members = -1, frozenset({cpu})
    try:
        entries = os.listdir(os.path.join(cpu_dir, "cache"))
    except OSError:
        return cpu
    for e in entries:
        if not (e.startswith("index") and e[5:].isdecimal()):
            continue
        d = os.path.join(cpu_dir, "cache", e)
        if _read(os.path.join(d, "type")) not in ("Unified", "Data"):
            continue
        level = int(_read(os.path.join(d, "level")) or -1)
        shared = _read(os.path.join(d, "shared_cpu_list"))
        if level > best and shared:
            best, members = level, parse_cpu_list(shared)
    return min(members)


def _gpus(sys_root: str, proc_root: str) -> list[tuple[str, str]]:
    """(PCI address, UUID or "") of each NVIDIA GPU, in bus order: the driver's list (which has the
    UUIDs), else NVIDIA display devices found by a PCI scan."""
    driver = os.path.join(proc_root, "driver/nvidia/gpus")
    try:
        found = sorted(os.listdir(driver))
    except OSError:
        found = []
    if found:
        out = []
        for addr in found:
            info = _read(os.path.join(driver, addr, "information")) or ""
            uuid = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("GPU UUID")), "")
            out.append((addr, uuid))
        return out
    pci = os.path.join(sys_root, "bus/pci/devices")
    try:
        devices = sorted(os.listdir(pci))
    except OSError:
        return []
    return [
        (addr, "")
        for addr in devices
        if _read(os.path.join(pci, addr, "vendor")) == "0x10de"
        and (_read(os.path.join(pci, addr, "class")) or "")[:6] in ("0x0300", "0x0302")  # VGA / 3D controller
    ]


def read_topology(sys_root: str = "/sys", proc_root: str = "/proc", allowed: frozenset[int] | None = None) -> Topology:
    """This machine's topology from sysfs (roots injectable: a recorded tree reads the same way).

    `allowed`: the CPUs this process may use; None reads its affinity (`sched_getaffinity`).
    A kernel without NUMA (no `devices/system/node`) is one node holding every online CPU. A GPU
    whose `numa_node` is -1 (one-node machines) is on node 0, as torch reads it.
    """
    node_dir = os.path.join(sys_root, "devices/system/node")
    nodes: dict[int, frozenset[int]] = {}
    try:
        names = os.listdir(node_dir)
    except OSError:
        names = []
    for name in names:
        if name.startswith("node") and name[4:].isdecimal():
            nodes[int(name[4:])] = parse_cpu_list(_read(os.path.join(node_dir, name, "cpulist")) or "")
    if not nodes:
        nodes[0] = parse_cpu_list(_read(os.path.join(sys_root, "devices/system/cpu/online")) or "0")
    package, core, cache = {}, {}, {}
    for cpu in sorted(frozenset().union(*nodes.values())):
        d = os.path.join(sys_root, f"devices/system/cpu/cpu{cpu}")
        package[cpu] = int(_read(os.path.join(d, "topology/physical_package_id")) or 0)
        siblings = _read(os.path.join(d, "topology/thread_siblings_list"))
        core[cpu] = min(parse_cpu_list(siblings)) if siblings else cpu
        cache[cpu] = _largest_cache(d, cpu)
    gpus = _gpus(sys_root, proc_root)
    gpu_nodes = []
    for addr, _ in gpus:
        n = _read(os.path.join(sys_root, "bus/pci/devices", addr, "numa_node"))
        gpu_nodes.append(max(int(n), 0) if n and n.lstrip("-").isdigit() else 0)
    return Topology(
        node_cpus=nodes,
        package=package,
        core=core,
        cache=cache,
        gpu_nodes=tuple(gpu_nodes),
        gpu_uuids=tuple(u for _, u in gpus) if any(u for _, u in gpus) else (),
        allowed=frozenset(os.sched_getaffinity(0)) if allowed is None else allowed,
    )


def bind_workers(
    mode: str, nproc: int, env: Mapping[str, str], topology: Topology | None = None
) -> tuple[CpuBinding, ...]:
    """--numa-binding at option time: the plan for each local worker, with the command that applies it.

    `topology` defaults to this machine's (`read_topology`). ConfigError for every reason it
    cannot be applied (see `plan_binding`, `find_tool`).
    """
    tool = find_tool(env.get("PATH"))
    topo = topology if topology is not None else read_topology()
    plans = plan_binding(topo, mode, nproc, env.get("CUDA_VISIBLE_DEVICES"))
    return tuple(
        CpuBinding(local_rank=b.local_rank, cpus=b.cpus, nodes=b.nodes, device=b.device, prefix=binding_prefix(b, tool))
        for b in plans
    )
