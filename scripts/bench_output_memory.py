#!/usr/bin/env python3
"""The agent's memory while a worker prints very long lines, elaunch and torchrun side by side.

    python scripts/bench_output_memory.py                 # 4 lines of 50 MB on stderr, then a crash
    python scripts/bench_output_memory.py --mb 30 --lines 1

One worker writes `--lines` lines of `--mb` MB to stderr and raises. The launcher's peak RSS
(its own process, sampled every 10 ms with psutil: the workers are not counted), the size of the
failure report on stderr and of elaunch's --summary-file are printed. The output goes to /dev/null
(stdout) and to a temp file (stderr), removed at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import psutil

WORKER = """
import sys
n, k = int(sys.argv[1]), int(sys.argv[2])
line = "E" * n + "\\n"
for _ in range(k):
    sys.stderr.write(line)
    sys.stderr.flush()
raise RuntimeError("boom " + "x" * n)
"""


def peak_rss(argv: list[str], err_path: str) -> tuple[int, int]:
    """(peak RSS in bytes of the launcher process, its exit code)."""
    with open(err_path, "wb") as err:
        p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
    peak = 0
    proc = psutil.Process(p.pid)
    while p.poll() is None:
        try:
            peak = max(peak, proc.memory_info().rss)
        except psutil.Error:
            break
        time.sleep(0.01)
    return peak, p.wait()


def report_size(err_path: str, marker: bytes) -> int:
    """Bytes from the last `marker` to the end of the file (the failure report)."""
    size = os.path.getsize(err_path)
    with open(err_path, "rb") as f:
        f.seek(max(0, size - (64 << 20)))
        tail = f.read()
    i = tail.rfind(marker)
    return len(tail) - i if i >= 0 else -1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=50)
    ap.add_argument("--lines", type=int, default=4)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-mem-")
    try:
        worker = os.path.join(tmp, "w.py")
        with open(worker, "w") as f:
            f.write(WORKER)
        wargs = [worker, str(args.mb * 1_000_000), str(args.lines)]
        summary = os.path.join(tmp, "summary.json")
        err = os.path.join(tmp, "err")
        rows = []
        rss, rc = peak_rss([sys.executable, "-m", "elaunch", "--standalone", "--summary-file", summary, *wargs], err)
        rows.append(("elaunch", rss, rc, report_size(err, b"job FAILED"), os.path.getsize(summary)))
        if shutil.which("torchrun"):
            rss, rc = peak_rss(["torchrun", "--standalone", "--nproc-per-node", "1", *wargs], err)
            rows.append(("torchrun", rss, rc, report_size(err, b"ChildFailedError"), None))
        print(f"one worker prints {args.lines} x {args.mb} MB on stderr, then crashes")
        print(f"{'launcher':10} {'peak RSS':>10} {'exit':>5} {'report':>12} {'summary':>10}")
        for name, rss, rc, rep, summ in rows:
            s = f"{summ / 1000:.0f} kB" if summ is not None else "-"
            print(f"{name:10} {rss / 2**20:7.1f} MiB {rc:5} {rep / 1000:9.0f} kB {s:>10}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
