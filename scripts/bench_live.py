#!/usr/bin/env python3
"""The live view's cost: the same job on a terminal with the live view and with `--no-live`.

    python scripts/bench_live.py            # 64 workers x 10 lines, 5 reps
    python scripts/bench_live.py --quick    # 1 rep (CI smoke)
    python scripts/bench_live.py --workers 16 --lines 1000 --reps 3

elaunch runs on a pty of its own (150x50, TERM=xterm-256color; a thread reads the other end, as
a terminal would), so it draws the live view, or plain lines with --no-live; its workers get
ptys too, as on any terminal. Each worker prints `--lines` lines with print(). Time is from just
before the start to the exit, median over the repetitions; CPU is elaunch's own (user + system,
its workers excluded: the redraws), which a loaded machine disturbs less than wall time. The row is the ratio live / --no-live (issue #10's target: <= 1.2 with
64 workers x 10 lines). Writes bench-results/live[-quick].json.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import resource
import statistics
import struct
import subprocess
import sys
import termios
import threading
import time
from typing import Any

import benchlib as bl  # scripts/ is on sys.path when run as `python scripts/bench_live.py`

WORKER = """\
import os, sys
n = int(sys.argv[1])
r = os.environ["RANK"]
for i in range(n):
    print(f"rank {r} line {i} " + "x" * 40)
"""


def _drain(fd: int, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            if not os.read(fd, 1 << 16):
                return
        except OSError:
            return


def _own_cpu(pid: int) -> float:
    """CPU seconds (user + system) of process `pid` itself, its children excluded: read while it is
    a zombie (fields 14 and 15 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one(cmd: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(wall seconds, elaunch's own CPU seconds, exit code) of one run on a fresh pty."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 150, 0, 0))
    stop = threading.Event()
    reader = threading.Thread(target=_drain, args=(master, stop), daemon=True)
    reader.start()
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env, start_new_session=True)
    os.close(slave)
    os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)
    wall = time.perf_counter() - t0
    cpu = _own_cpu(p.pid)
    code = p.wait()
    stop.set()
    reader.join(5)
    os.close(master)
    return wall, cpu, code


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="1 repetition (CI smoke)")
    p.add_argument("--reps", type=int, default=None, help="repetitions (default 5, 1 with --quick)")
    p.add_argument("--workers", type=int, default=64)
    p.add_argument("--lines", type=int, default=10, help="lines per worker")
    p.add_argument("--out", default=None, help="JSON path (default bench-results/live[-quick].json)")
    args = p.parse_args(argv)
    reps = args.reps if args.reps is not None else (1 if args.quick else 5)
    if reps < 1 or args.workers < 1 or args.lines < 0:
        p.error("--reps and --workers must be positive, --lines not negative")
    bl.install_signal_cleanup()
    bl.become_subreaper()
    elaunch = bl.launcher_cmd("elaunch") or [sys.executable, "-m", "elaunch"]
    t_start = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    with bl.Workdir("bench-live-") as wd:
        env = {k: v for k, v in wd.env(TERM="xterm-256color").items() if k not in ("NO_COLOR", "COLUMNS", "LINES")}
        script = wd.write("lines.py", WORKER)
        base = [*elaunch, "--standalone", "--nproc-per-node", str(args.workers), script, str(args.lines)]
        paths = {"live view": base, "--no-live": [*base[:1], "--no-live", *base[1:]]}
        samples: dict[str, list[tuple[float, float, int]]] = {k: [] for k in paths}
        for _ in range(reps):  # interleaved, so that a busy moment of the machine hits both
            for name, cmd in paths.items():
                samples[name].append(one(cmd, env))
        for name, runs in samples.items():
            results[name] = {
                "wall_s": statistics.median(r[0] for r in runs),
                "cpu_s": statistics.median(r[1] for r in runs),
                "exit_codes": sorted({r[2] for r in runs}),
            }
    live, plain = results["live view"], results["--no-live"]
    ratio_wall = live["wall_s"] / plain["wall_s"]
    ratio_cpu = live["cpu_s"] / plain["cpu_s"] if plain["cpu_s"] else None
    rows = [
        [name, f"{r['wall_s']:.2f} s", f"{r['cpu_s']:.2f} s", ",".join(map(str, r["exit_codes"]))]
        for name, r in results.items()
    ]
    rows.append(
        ["live / --no-live", f"{ratio_wall:.2f}x", f"{ratio_cpu:.2f}x" if ratio_cpu else "-", "target <= 1.2x wall"]
    )
    table = bl.md_table(["elaunch on a terminal", "wall (median)", "elaunch CPU", "exit"], rows)
    print(f"## live view cost: {args.workers} workers x {args.lines} lines ({reps} rep{'s' if reps > 1 else ''})")
    print()
    print(table)
    payload = {
        "workers": args.workers,
        "lines": args.lines,
        "reps": reps,
        "results": results,
        "ratio_wall": ratio_wall,
        "ratio_cpu": ratio_cpu,
        "seconds": time.perf_counter() - t_start,
        "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    path = bl.write_json("live-quick" if args.quick else "live", payload, args.out)
    print(f"\n(results: {path})")
    return 0 if {0} == set(live["exit_codes"]) | set(plain["exit_codes"]) else 1


if __name__ == "__main__":
    bl.entry(lambda: main())
