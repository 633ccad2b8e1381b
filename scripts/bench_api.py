#!/usr/bin/env python3
"""elaunch.run vs torch's elastic_launch (a trivial function, 4 workers), and --numa-binding's effect.

    python scripts/bench_api.py            # 5 repetitions of each, ~1-2 min on 2 cores
    python scripts/bench_api.py --quick    # 1 repetition (CI smoke)
    python scripts/bench_api.py --only api --reps 9

* api: one fresh interpreter per launch, which imports the launcher (elaunch, or torch's
  `torch.distributed.launcher.api`) and then times one call launching a function that returns its
  rank on 4 workers (`nproc_per_node=4`, one node; torch: c10d on localhost:0, spawn, as its docs
  show). The call's wall time is measured inside (the import is reported separately); launchers
  interleaved per repetition. Target: elaunch <= 0.2x torch.
* numa: a memory-bandwidth-bound worker (`bytearray` copies of 256 MiB, memcpy) on 2 workers,
  `--numa-binding exclusive` vs unbound; each worker prints its pid and this script reads
  `Cpus_allowed_list` from /proc/<pid>/status while it runs. Reported: GB/s per worker.

Prints markdown tables on stdout and writes bench-results/api[-quick].json.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import benchlib as bl  # scripts/ is on sys.path when run as `python scripts/bench_api.py`

NPROC = 4

ELAUNCH_DRIVER = """\
import os, sys, time
t0 = time.perf_counter()
import elaunch
t1 = time.perf_counter()

def rank():
    return int(os.environ["RANK"])

if __name__ == "__main__":
    r = elaunch.run(rank, nproc_per_node=NPROC, no_live=True)
    t2 = time.perf_counter()
    assert r.return_values == {i: i for i in range(NPROC)}, r.return_values
    print(f"RESULT {t1 - t0:.6f} {t2 - t1:.6f}")
"""

TORCH_DRIVER = """\
import os, sys, time
t0 = time.perf_counter()
from torch.distributed.launcher.api import LaunchConfig, elastic_launch
t1 = time.perf_counter()

def rank():
    return int(os.environ["RANK"])

if __name__ == "__main__":
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=NPROC, run_id="bench", rdzv_backend="c10d",
                          rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1)
    out = elastic_launch(config, rank)()
    t2 = time.perf_counter()
    assert out == {i: i for i in range(NPROC)}, out
    print(f"RESULT {t1 - t0:.6f} {t2 - t1:.6f}")
"""

MEMCPY = """\
import os, sys, time
print(f"PID {os.getpid()}", flush=True)
n = 256 * 1024 * 1024
src, dst = bytearray(os.urandom(1024) * (n // 1024)), bytearray(n)
dst[:] = src  # touch every page once
reps = int(sys.argv[1])
t = time.perf_counter()
for _ in range(reps):
    dst[:] = src
dt = time.perf_counter() - t
print(f"GBPS {2 * n * reps / dt / 1e9:.3f}", flush=True)
"""


def driver_time(script: Path, env: dict[str, str], timeout: float) -> tuple[float, float] | None:
    """(import seconds, call seconds) from one fresh interpreter, or None if it failed."""
    try:
        p = subprocess.run(
            [bl.PYTHON, str(script)], capture_output=True, text=True, timeout=timeout, env=env, cwd=script.parent
        )
    except subprocess.TimeoutExpired:
        bl.log(f"{script.name}: timed out after {timeout:.0f} s")
        return None
    m = re.search(r"^RESULT (\S+) (\S+)$", p.stdout, re.M)
    if p.returncode != 0 or not m:
        bl.log(f"{script.name}: exit {p.returncode}: {p.stderr[-2000:]}")
        return None
    return float(m.group(1)), float(m.group(2))


def bench_api(work: Path, env: dict[str, str], reps: int) -> tuple[dict[str, Any], str]:
    drivers = {
        "elaunch.run": work / "elaunch_driver.py",
        "torch elastic_launch": work / "torch_driver.py",
    }
    drivers["elaunch.run"].write_text(ELAUNCH_DRIVER.replace("NPROC", str(NPROC)))
    drivers["torch elastic_launch"].write_text(TORCH_DRIVER.replace("NPROC", str(NPROC)))
    raw: dict[str, dict[str, list[float | None]]] = {k: {"import": [], "call": []} for k in drivers}
    for i in range(reps):
        for name, script in drivers.items():
            bl.log(f"api rep {i + 1}/{reps}: {name}")
            got = driver_time(script, env, timeout=180)
            raw[name]["import"].append(got[0] if got else None)
            raw[name]["call"].append(got[1] if got else None)
    st = {k: {m: bl.stats(v) for m, v in d.items()} for k, d in raw.items()}
    e, t = st["elaunch.run"], st["torch elastic_launch"]
    rows = [
        [
            f"launch a function on {NPROC} workers (the call)",
            bl.fmt_seconds(e["call"]),
            bl.fmt_seconds(t["call"]),
            bl.fmt_ratio(bl.ratio(e["call"], t["call"])),
        ],
        [
            "import of the launcher in the caller",
            bl.fmt_seconds(e["import"]),
            bl.fmt_seconds(t["import"]),
            bl.fmt_ratio(bl.ratio(e["import"], t["import"])),
        ],
    ]
    table = bl.md_table(["measure", "elaunch.run", "torch elastic_launch", "ratio"], rows)
    return {"raw": raw, "stats": st}, table


def run_memcpy(work: Path, env: dict[str, str], bound: bool, reps: int) -> tuple[list[float], list[str]]:
    """GB/s of each worker and the Cpus_allowed_list read from /proc/<pid>/status while it ran."""
    script = work / "memcpy.py"
    script.write_text(MEMCPY)
    cmd = [*bl.launcher_cmd("elaunch"), "--no-live", "--nproc-per-node", "2"]  # type: ignore[misc]
    if bound:
        cmd += ["--numa-binding", "exclusive"]
    proc = subprocess.Popen(
        [*cmd, str(script), str(reps)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    rates, affinity = [], []
    deadline = time.monotonic() + 300
    assert proc.stdout is not None
    for line in proc.stdout:
        m = re.search(r"PID (\d+)", line)
        if m:
            try:
                status = Path(f"/proc/{m.group(1)}/status").read_text()
                affinity += re.findall(r"^Cpus_allowed_list:\s*(\S+)", status, re.M)
            except OSError:
                affinity.append("?")
        m = re.search(r"GBPS (\S+)", line)
        if m:
            rates.append(float(m.group(1)))
        if time.monotonic() > deadline:
            proc.kill()
            break
    proc.wait(timeout=60)
    return rates, affinity


def bench_numa(work: Path, env: dict[str, str], reps: int, copies: int) -> tuple[dict[str, Any], str]:
    raw: dict[str, Any] = {"unbound": {"gbps": [], "cpus": []}, "exclusive": {"gbps": [], "cpus": []}}
    for i in range(reps):
        for name, bound in (("unbound", False), ("exclusive", True)):
            bl.log(f"numa rep {i + 1}/{reps}: {name}")
            rates, cpus = run_memcpy(work, env, bound, copies)
            raw[name]["gbps"] += rates
            raw[name]["cpus"].append(sorted(cpus))
    rows = []
    for name, d in raw.items():
        st = bl.stats(d["gbps"])
        rows.append([name, bl.fmt_value(st, "GB/s"), ", ".join(sorted({" / ".join(c) for c in d["cpus"]}))])
    table = bl.md_table(["2 workers, memcpy 256 MiB", "per worker", "Cpus_allowed_list (/proc/<pid>/status)"], rows)
    return raw, table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="one repetition of each (CI smoke)")
    p.add_argument("--reps", type=int, default=None, help="repetitions (default 5, 1 with --quick)")
    p.add_argument("--only", default="api,numa", help="comma list: api,numa")
    p.add_argument("--out", default=None, help="JSON path (default bench-results/api[-quick].json)")
    args = p.parse_args(argv)
    reps = args.reps if args.reps is not None else (1 if args.quick else 5)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    bl.install_signal_cleanup()
    bl.become_subreaper()
    env = {k: v for k, v in os.environ.items() if k not in bl.PYTHON_SKEW and not k.startswith(("PET_", "ELAUNCH_"))}
    env["PYTHONPATH"] = os.pathsep.join(x for x in (str(bl.ROOT), os.environ.get("PYTHONPATH")) if x)
    result: dict[str, Any] = {"environment": bl.environment({"elaunch": bl.launcher_cmd("elaunch")})}
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        work = Path(tmp)
        env["TMPDIR"] = tmp
        try:
            if "api" in only:
                result["api"], table = bench_api(work, env, reps)
                print(f"## elaunch.run vs torch's elastic_launch ({reps} rep{'s' if reps > 1 else ''})\n\n{table}\n")
            if "numa" in only:
                result["numa"], table = bench_numa(work, env, reps, 4 if args.quick else 16)
                print(f"## --numa-binding exclusive vs unbound ({reps} rep{'s' if reps > 1 else ''})\n\n{table}\n")
        finally:
            bl.check_no_children()
    path = bl.write_json("api-quick" if args.quick else "api", result, args.out)
    print(f"results: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
