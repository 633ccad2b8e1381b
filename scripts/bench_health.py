#!/usr/bin/env python3
"""The agent's cost with the health endpoint on and scraped, under workers drawing tqdm bars.

    python scripts/bench_health.py            # 30 s per variant, 2 reps (~3 min on 2 cores)
    python scripts/bench_health.py --quick    # 10 s, 1 rep
    python scripts/bench_health.py --workers 8 --hz 50 --seconds 60 --reps 3
    python scripts/bench_health.py --root ../main --variants off   # the floor: a checkout without this work

`--workers` workers (default 8) each draw a real tqdm bar redrawn `--hz` times a second (default
50: `mininterval=0`, a 1/hz sleep per step), so the agent reads workers*hz progress updates a
second, parses each into steps, rates and ETA, and judges stragglers. Variants, in one run:

* `endpoint off`: elaunch as is (the floor: what progress parsing alone costs);
* `endpoint on, scraped 1/s`: `--health-port`, and this script GETs /metrics then /status once a
  second with urllib, timing each request (wall time from connect to the last byte).

Measured over the window after a `--warmup` (default 3 s): the agent process's CPU time (user +
system, psutil) over wall time, in % of one core; its RSS (the largest of 1 s samples, MiB; the
reaper is a separate, tiny process and not counted); /status and /metrics latencies (median,
95th percentile); the workers' steps/s as /status reports them (a check that the load is real).
Targets (issue #12): CPU <= 5 % of a core, RSS <= 40 MiB, /status median <= 5 ms. The elaunch
measured is this checkout's (`python -m elaunch` with PYTHONPATH at the repository root).
Prints a markdown table, writes bench-results/health[-quick].json; every process started is
killed by PID at the end and the temp dir removed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import urllib.request
from typing import Any

import benchlib as bl  # scripts/ is on sys.path when run as `python scripts/bench_health.py`
import psutil
from testbed import free_port, wait_until

WORKER = """\
import os, sys, time
from tqdm import tqdm
stop, hz = sys.argv[1], float(sys.argv[2])
bar = tqdm(total=10**9, mininterval=0, miniters=1, ascii=True, desc=f"rank {os.environ['RANK']}")
while not os.path.exists(stop):
    time.sleep(1 / hz)
    bar.update(1)
bar.close()
"""


def _get(url: str) -> tuple[float, bytes]:
    t = time.perf_counter()
    with urllib.request.urlopen(url, timeout=10) as r:
        body = r.read()
    return time.perf_counter() - t, body


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def trial(work: bl.Workdir, args: argparse.Namespace, endpoint: bool, rep: int) -> dict[str, Any]:
    script = work.write("bar.py", WORKER)
    stop = work.path / f"stop-{int(endpoint)}-{rep}"
    port = free_port()
    cmd = [bl.PYTHON, "-m", "elaunch", "--nproc-per-node", str(args.workers)]
    if endpoint:
        cmd += ["--health-port", str(port)]
    cmd += [script, str(stop), str(args.hz)]
    env = work.env(PYTHONPATH=str(args.root))
    err = open(work.path / f"stderr-{int(endpoint)}-{rep}.txt", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, stdin=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/"
    status_ms: list[float] = []
    metrics_ms: list[float] = []
    rss: list[float] = []
    rates: list[float] = []
    try:
        agent = psutil.Process(proc.pid)
        wait_until(lambda: len(agent.children()) >= args.workers + 1, 60, "the workers to start")
        time.sleep(args.warmup)  # a measurement window, not a wait for a condition
        c0, t0 = agent.cpu_times(), time.perf_counter()
        next_tick = t0
        while time.perf_counter() - t0 < args.seconds:
            next_tick += 1.0
            rss.append(agent.memory_info().rss / bl.MiB)
            if endpoint:
                dt, _ = _get(base + "metrics")
                metrics_ms.append(dt * 1000)
                dt, body = _get(base + "status")
                status_ms.append(dt * 1000)
                doc = json.loads(body)
            time.sleep(max(0.0, next_tick - time.perf_counter()))
        c1, t1 = agent.cpu_times(), time.perf_counter()
        if endpoint:
            rates = [w["progress"]["steps_per_s"] or 0.0 for w in doc["workers"] if w["progress"]]
    finally:
        stop.touch()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            bl.kill_tree([proc.pid])
            proc.wait()
        err.close()
    cpu = (c1.user + c1.system - c0.user - c0.system) / (t1 - t0) * 100
    out: dict[str, Any] = {"cpu_pct": cpu, "rss_mib": max(rss), "returncode": proc.returncode}
    if endpoint:
        out |= {
            "status_ms_median": statistics.median(status_ms),
            "status_ms_p95": _pct(status_ms, 0.95),
            "metrics_ms_median": statistics.median(metrics_ms),
            "metrics_ms_p95": _pct(metrics_ms, 0.95),
            "worker_steps_per_s_median": statistics.median(rates) if rates else None,
            "scrapes": len(status_ms),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="10 s windows, 1 repetition")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--hz", type=float, default=50.0, help="bar updates per second per worker")
    p.add_argument("--seconds", type=float, default=30.0, help="measurement window per trial")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--json", help="write results here instead of bench-results/")
    p.add_argument("--root", default=str(bl.ROOT), help="the elaunch checkout to measure (default: this one)")
    p.add_argument(
        "--variants",
        default="off,on",
        help="off, on or both (off,on); `--root` of a checkout without the endpoint: off",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.reps = 10.0, 1
    bl.become_subreaper()
    bl.install_signal_cleanup()
    results: dict[str, list[dict[str, Any]]] = {"endpoint off": [], "endpoint on, scraped 1/s": []}
    with bl.Workdir("elaunch-bench-health-") as work:
        for rep in range(args.reps):
            for name, endpoint in (("endpoint off", False), ("endpoint on, scraped 1/s", True)):
                if ("on" if endpoint else "off") not in args.variants.split(","):
                    continue
                print(f"rep {rep + 1}/{args.reps}: {name} ...", file=sys.stderr, flush=True)
                results[name].append(trial(work, args, endpoint, rep))
    bl.check_no_children()

    def st(name: str, key: str) -> dict[str, Any] | None:
        return bl.stats(r.get(key) for r in results[name])

    rows = []
    for name in results:
        if not results[name]:
            continue
        rows.append(
            [
                name,
                bl.fmt_value(st(name, "cpu_pct"), "%"),
                bl.fmt_value(st(name, "rss_mib"), "MiB"),
                bl.fmt_value(st(name, "status_ms_median"), "ms"),
                bl.fmt_value(st(name, "status_ms_p95"), "ms"),
                bl.fmt_value(st(name, "metrics_ms_median"), "ms"),
                bl.fmt_value(st(name, "worker_steps_per_s_median"), ""),
            ]
        )
    rows.append(["target (issue #12)", "<= 5 %", "<= 40 MiB", "<= 5 ms", "", "", f"~{args.hz:g}"])
    print(
        f"\n{args.workers} workers x tqdm bars at {args.hz:g} updates/s, {args.seconds:g} s windows, "
        f"{args.reps} rep(s); agent CPU in % of one core\n"
    )
    print(
        bl.md_table(
            ["variant", "agent CPU", "agent RSS", "/status median", "/status p95", "/metrics median", "steps/s seen"],
            rows,
        )
    )
    path = bl.write_json(
        "health-quick" if args.quick else "health",
        {
            "args": vars(args),
            "results": results,
            "environment": bl.environment({"elaunch": bl.launcher_cmd("elaunch")}),
        },
        args.json,
    )
    print(f"\nresults: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
