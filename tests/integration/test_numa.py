"""--numa-binding with real workers: each worker's affinity, read by the worker itself before anything else."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from elaunch.api import options_for
from elaunch.launch import launch
from elaunch.numa import MODES, CpuBinding, binding_prefix, cpu_list, parse_cpu_list, plan_binding, read_topology
from elaunch.options import build_config
from elaunch.values import replace
from tests.helpers import run_elaunch, write_script
from tests.numa.topologies import RECORDED

# The worker's first lines: its affinity and memory policy as the kernel reports them.
REPORT = """\
import os, sys
status = open("/proc/self/status").read()
cpus = [l.split(":")[1].strip() for l in status.splitlines() if l.startswith("Cpus_allowed_list")][0]
prefer = "prefer:" in open("/proc/self/numa_maps").read()
with open(os.path.join(sys.argv[1], os.environ["LOCAL_RANK"] if len(sys.argv) < 3 else os.environ["RANK"]), "w") as f:
    f.write(f"{cpus} {prefer}")
"""


def reports(out: Path, n: int) -> list[tuple[str, bool]]:
    rows = []
    for r in range(n):
        cpus, prefer = (out / str(r)).read_text().split()
        rows.append((cpu_list(parse_cpu_list(cpus)), prefer == "True"))
    return rows


@pytest.mark.parametrize("mode", MODES)
def test_this_machine_each_mode(tmp_path: Path, mode: str) -> None:
    topo = read_topology()
    nproc = 2
    expected = plan_binding(topo, mode, nproc, None)
    script = write_script(tmp_path, "report.py", REPORT)
    out = tmp_path / "out"
    out.mkdir()
    dry = run_elaunch(["--numa-binding", mode, "--nproc-per-node", str(nproc), "--dry-run", str(script), str(out)])
    assert dry.returncode == 0, dry.stderr
    assert re.findall(r"  cpus: (\S+) \(NUMA node", dry.stdout) == [cpu_list(b.cpus) for b in expected]
    proc = run_elaunch(["--numa-binding", mode, "--nproc-per-node", str(nproc), "--no-live", str(script), str(out)])
    assert proc.returncode == 0, proc.stderr
    numactl = shutil.which("numactl") is not None
    assert reports(out, nproc) == [(cpu_list(b.cpus), numactl and len(b.nodes) == 1) for b in expected]


def fold(bindings: tuple[CpuBinding, ...], ncpu: int) -> tuple[CpuBinding, ...]:
    """A recorded machine's plan made runnable here: the k-th distinct CPU set of the plan runs on
    CPU k mod (this machine's CPUs), so each worker still gets its own rank's set, told apart
    (on two CPUs: neighbours in the plan's order run on different CPUs)."""
    distinct: list[frozenset[int]] = []
    for b in bindings:
        if b.cpus not in distinct:
            distinct.append(b.cpus)
    tool = bindings[0].prefix[0]
    out = []
    for b in bindings:
        cpu = sorted(os.sched_getaffinity(0))[distinct.index(b.cpus) % ncpu]
        # One recorded node becomes this machine's first (numactl --preferred must name a real node).
        here = min(read_topology().node_cpus)
        small = replace(b, cpus=frozenset({cpu}), nodes=frozenset({here}) if len(b.nodes) == 1 else b.nodes)
        out.append(replace(small, prefix=binding_prefix(small, tool)))
    return tuple(out)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(RECORDED))
def test_recorded_topologies_each_mode(tmp_path: Path, name: str, mode: str) -> None:
    topo, nproc, visible = RECORDED[name]
    env = dict(os.environ)
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible
    script = write_script(tmp_path, "report.py", REPORT)
    out = tmp_path / "out"
    out.mkdir()
    opts, sources = options_for({"nproc_per_node": nproc, "numa_binding": mode, "no_live": True}, refused=())
    opts["training_script"], opts["training_script_args"] = str(script), (str(out),)
    config = build_config(opts, sources, env, topology=topo)
    # The plan the options made is the recorded machine's (the unit tests check its CPUs).
    assert [b.cpus for b in config.cpu_binding] == [b.cpus for b in plan_binding(topo, mode, nproc, visible)]
    folded = fold(config.cpu_binding, len(os.sched_getaffinity(0)))
    with open(tmp_path / "console", "wb") as console:
        result = launch(replace(config, cpu_binding=folded), env=env, stdout=console, stderr=console)
    assert result.exit_code == 0, (tmp_path / "console").read_text()
    numactl = os.path.basename(folded[0].prefix[0]) == "numactl"
    assert reports(out, nproc) == [(cpu_list(b.cpus), numactl and len(b.nodes) == 1) for b in folded]
