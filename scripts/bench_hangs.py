#!/usr/bin/env python3
"""Hangs and pointless restarts (issue #11), elaunch vs torchrun, in one harness and run.

    python scripts/bench_hangs.py            # 3 repetitions
    python scripts/bench_hangs.py --quick    # 1 repetition, torchrun's hang run shortened

1. **Hang**: `--nproc-per-node 2 --hang-timeout 5 --max-restarts 1`; a tiny worker (no torch)
   prints a line every 0.1 s; rank 1 prints `SILENT_AT=<time.time()>` and goes silent (sleeps).
   On the restart both exit 0. Measured from the events file: SILENT_AT -> `HangDetected` (target:
   <= timeout + 2 s), whether the stacks of both ranks are in it (py-spy shows the worker's file),
   and SILENT_AT -> the first `WorkerStarted` of the new group. torchrun runs the same job until a
   limit (15 s, 10 s with --quick): it has no hang detection, so "not noticed".
2. **Always-failing start-up**: `--nproc-per-node 1 --max-restarts 50`, a worker that raises
   `ValueError('bad config')` at once: attempts made (tracebacks printed) and wall time.

Prints a markdown table on stdout, progress on stderr, writes bench-results/hangs[-quick].json.
Every process started is killed by PID and reaped at the end; the temp dir is removed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from typing import Any

import benchlib as bl  # scripts/ is on sys.path when run as `python scripts/bench_hangs.py`

TIMEOUT = 5.0
HANG_WORKER = """\
import os, sys, time
if os.environ["TORCHELASTIC_RESTART_COUNT"] != "0":
    sys.exit(0)
for i in range(20):
    print("step", i, flush=True)
    time.sleep(0.1)
if os.environ["RANK"] == "1":
    print(f"SILENT_AT={time.time():.6f}", flush=True)
    time.sleep(600)
while True:
    print("step", flush=True)
    time.sleep(0.1)
"""
FAIL_WORKER = "raise ValueError('bad config: lr=-1')\n"
RE_SILENT = re.compile(rb"SILENT_AT=(\d+\.\d+)")


def events(path: str) -> list[dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError):
        return []


def hang_trial(work: bl.Workdir, who: str, cmd: list[str], limit: float, n: int) -> dict[str, Any]:
    script = work.write("hang_worker.py", HANG_WORKER)
    ev_path = str(work.path / f"events-{who}-{n}.jsonl")
    extra = ["--hang-timeout", str(TIMEOUT), "--events-file", ev_path] if who == "elaunch" else []
    argv = [*cmd, "--nproc-per-node", "2", "--max-restarts", "1", *extra, script]
    r = bl.run([argv], env=work.env(), timeout=limit, work=work)
    m = RE_SILENT.search(r.out)
    silent = float(m.group(1)) if m else None
    rec: dict[str, Any] = {"rc": r.rc_text, "elapsed": r.elapsed, "detected_s": None, "restarted_s": None,
                           "stacks": 0}  # fmt: skip
    evs = events(ev_path) if who == "elaunch" else []
    hang = next((e for e in evs if e.get("event") == "HangDetected"), None)
    if hang is not None and silent is not None:
        rec["detected_s"] = hang["ts"] - silent
        rec["stacks"] = sum(1 for _, _, text in hang["stacks"] if "hang_worker.py" in text)
        starts = [e for e in evs if e.get("event") == "WorkerStarted" and e["ts"] > hang["ts"]]
        if starts:
            rec["restarted_s"] = starts[-1]["ts"] - silent
    return rec


def fail_trial(work: bl.Workdir, who: str, cmd: list[str], limit: float) -> dict[str, Any]:
    script = work.write("fail_worker.py", FAIL_WORKER)
    r = bl.run([[*cmd, "--nproc-per-node", "1", "--max-restarts", "50", script]], env=work.env(), timeout=limit,
               work=work)  # fmt: skip
    # elaunch says when each generation runs; torchrun's workers print one traceback per attempt.
    attempts = r.err.count(b"INIT -> HEALTHY") if who == "elaunch" else r.err.count(b"ValueError: bad config: lr=-1")
    return {"rc": r.rc_text, "elapsed": r.elapsed, "attempts": attempts}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="1 repetition, shorter torchrun hang run")
    p.add_argument("--reps", type=int, default=None, help="repetitions (default 3, 1 with --quick)")
    p.add_argument("--no-torchrun", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    reps = args.reps or (1 if args.quick else 3)
    bl.install_signal_cleanup()
    bl.become_subreaper()
    cmds = {
        "elaunch": bl.launcher_cmd("elaunch"),
        "torchrun": None if args.no_torchrun else bl.launcher_cmd("torchrun"),
    }
    results: dict[str, dict[str, list[dict[str, Any]]]] = {"hang": {}, "fail": {}}
    load = bl.LoadWatch()
    work = bl.Workdir("bench-hangs-")
    try:
        for n in range(reps):
            for who, cmd in cmds.items():
                if cmd is None:
                    continue
                limit = 60.0 if who == "elaunch" else (10.0 if args.quick else 15.0)
                print(f"[{n + 1}/{reps}] {who}: hang", file=sys.stderr, flush=True)
                results["hang"].setdefault(who, []).append(hang_trial(work, who, cmd, limit, n))
                print(f"[{n + 1}/{reps}] {who}: always-failing start-up", file=sys.stderr, flush=True)
                results["fail"].setdefault(who, []).append(fail_trial(work, who, cmd, 300.0))
    finally:
        work.close()
        bl.check_no_children()
    info = load.stop()

    def med(who: str, kind: str, key: str) -> dict[str, Any] | None:
        return bl.stats(r[key] for r in results[kind].get(who, []))

    rows = []
    for who in cmds:
        if who not in results["hang"]:
            continue
        h = results["hang"][who]
        detected = med(who, "hang", "detected_s")
        rows.append([
            f"{who}: hang, --hang-timeout {TIMEOUT:g}" if who == "elaunch" else f"{who}: the same hang",
            bl.fmt_seconds(detected) if detected else f"not noticed in {h[0]['elapsed']:.0f} s",
            f"{min(r['stacks'] for r in h)}/2" if who == "elaunch" else "—",
            bl.fmt_seconds(med(who, "hang", "restarted_s")) if who == "elaunch" else "—",
        ])  # fmt: skip
    table1 = bl.md_table(["run", "silent -> hang reported", "stacks", "silent -> group restarted"], rows)
    rows = []
    for who, recs in results["fail"].items():
        rows.append([f"{who}: always-failing start-up, --max-restarts 50",
                     "/".join(str(r["attempts"]) for r in recs), bl.fmt_seconds(med(who, "fail", "elapsed")),
                     ",".join(r["rc"] for r in recs)])  # fmt: skip
    table2 = bl.md_table(["run", "attempts", "wall time", "exit code"], rows)
    print(table1 + "\n\n" + table2)
    print(f"\nload: {info}", file=sys.stderr)
    out = bl.write_json("hangs-quick" if args.quick else "hangs",
                        {"environment": bl.environment(cmds), "load": info, "results": results}, args.out)  # fmt: skip
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    start = time.perf_counter()
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
