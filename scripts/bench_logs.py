#!/usr/bin/env python3
"""Console log throughput and integrity: elaunch vs torchrun vs plain python, side by side.

    python scripts/bench_logs.py            # 1 and 8 workers x 200k lines, 3 reps, ~3-4 min on 2 cores
    python scripts/bench_logs.py --quick    # 20k lines, 1 rep (CI smoke, < 60 s)
    python scripts/bench_logs.py --lines 50000 --reps 5 --workers 1,2,8

Every worker prints `--lines` unique lines `r{rank} i{i:07d} <fixed padding>` (61 bytes) with
print() and default buffering. The launcher's stdout is read from a pipe (stderr separately: elaunch
writes its own status lines there), then every stdout line is checked against the full pattern
(an optional `[prefix]` / `[prefix]:` followed by exactly one whole line):

* lost:  line ids that appear nowhere in stdout, not even in a broken line;
* cut:   stdout lines that are not exactly one whole line (pieces of two lines joined, a partial line);
* dup:   extra copies of line ids that arrived whole more than once;
* mislabeled: whole lines whose prefix names another rank.

Paths: plain python into a pipe (with N workers: N processes started together writing into one
shared pipe, the floor), the same with `python -u` (unbuffered, as torchrun runs its workers and
as elaunch's PYTHONUNBUFFERED=1 makes them), elaunch (default prefixes), elaunch --tee 3, elaunch
with PYTHONUNBUFFERED='' (workers keep python's default block buffering), torchrun (default),
torchrun --tee 3 (with a --log-dir temp dir that is removed). Time is from just before Popen to exit and EOF;
lines/s = all lines / time; "stream" = lines / (last byte - first byte), i.e. without start-up.
"vs python" is the issue's target (buffered python, no launcher); "vs python -u" compares with the
same worker as elaunch and torchrun run it (unbuffered) without a launcher: the launcher's own cost.
Writes bench-results/logs[-quick].json.
"""

from __future__ import annotations

import argparse
import re
import shutil
import time
from typing import Any

import benchlib as bl  # scripts/ is on sys.path when run as `python scripts/bench_logs.py`

PAD = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLM"  # 12 + 49 = 61 bytes per line with "\n"

WORKER = f"""\
import os
import sys

n = int(sys.argv[1])
rank = int(os.environ.get("RANK", sys.argv[2] if len(sys.argv) > 2 else "0"))
pad = {PAD!r}
for i in range(n):
    print(f"r{{rank}} i{{i:07d}} {{pad}}")
"""

LINE = re.compile(rb"(?:\[([^\]\n]*)\]:? ?)?r(\d+) i(\d{7}) " + PAD.encode())
ID = re.compile(rb"r(\d+) i(\d{7})")
TRAILING_INT = re.compile(rb"(\d+)$")
BUFFERED = "elaunch, PYTHONUNBUFFERED=''"
"""elaunch sets PYTHONUNBUFFERED=1 for workers (like torchrun's `python -u`); this variant opts out."""


def check(out: bytes, workers: int, lines: int) -> dict[str, int]:
    """Counts whole, lost, cut, duplicated and mislabeled lines in a launcher's stdout."""
    seen = [bytearray(lines) for _ in range(workers)]  # arrived whole
    arrived = [bytearray(lines) for _ in range(workers)]  # arrived whole or inside a broken line
    cut = dup = mislabeled = foreign = 0
    fullmatch = LINE.fullmatch
    for raw in out.split(b"\n"):
        if not raw:
            continue
        m = fullmatch(raw)
        if m is not None:
            r, i = int(m.group(2)), int(m.group(3))
            if r >= workers or i >= lines:
                foreign += 1
                continue
            row = seen[r]
            if row[i]:
                dup += 1
            else:
                row[i] = 1
                arrived[r][i] = 1
            pfx = m.group(1)
            if pfx is not None:
                pm = TRAILING_INT.search(pfx)
                if pm is None or int(pm.group(1)) != r:
                    mislabeled += 1
            continue
        cut += 1
        for pm in ID.finditer(raw):
            r, i = int(pm.group(1)), int(pm.group(2))
            if r < workers and i < lines:
                arrived[r][i] = 1
    whole = sum(row.count(1) for row in seen)
    lost = sum(row.count(0) for row in arrived)
    return {
        "expected": workers * lines,
        "whole": whole,
        "lost": lost,
        "cut": cut,
        "dup": dup,
        "mislabeled": mislabeled,
        "foreign": foreign,
    }


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = bl.Workdir("bench-logs-", keep_python_env=args.keep_python_env)
        self.env = self.work.env()
        self.script = self.work.write("print_lines.py", WORKER)
        self.cmd = {"elaunch": bl.launcher_cmd("elaunch"), "torchrun": bl.launcher_cmd("torchrun")}
        if args.no_torchrun:
            self.cmd["torchrun"] = None
        self.raw: dict[str, list[dict[str, Any]]] = {}
        self.notes: list[str] = []
        self.left: dict[str, list[int]] = {}

    def paths(self) -> list[str]:
        out = ["python", "python -u"]
        if self.cmd["elaunch"]:
            out += ["elaunch", "elaunch --tee 3", BUFFERED]
        if self.cmd["torchrun"]:
            out += ["torchrun", "torchrun --tee 3"]
        extras = ("python -u", "elaunch --tee 3", BUFFERED)
        return [p for p in out if not (self.args.no_extras and p in extras)]

    def argv(self, path: str, workers: int, log_dir: str | None) -> list[list[str]]:
        n = str(self.args.lines)
        if path.startswith("python"):
            flags = path.split()[1:]
            return [[bl.PYTHON, *flags, self.script, n, str(r)] for r in range(workers)]
        name, _, rest = path.partition(" ")
        cmd = self.cmd[name.rstrip(",")]
        assert cmd is not None
        extra = rest.split() if rest.startswith("--") else []
        if log_dir is not None:
            extra += ["--log-dir", log_dir]
        return [[*cmd, "--standalone", "--nproc-per-node", str(workers), *extra, self.script, n]]

    def one(self, path: str, workers: int, record: bool = True) -> None:
        log_dir = self.work.mkdir("log-dir") if "--tee" in path else None
        # An empty PYTHONUNBUFFERED keeps elaunch from setting it to 1 and leaves python's default buffering.
        env = self.work.env(PYTHONUNBUFFERED="") if path == BUFFERED else self.env
        try:
            r = bl.run(
                self.argv(path, workers, log_dir),
                env=env,
                timeout=self.args.timeout,
                cwd=str(self.work.path),
                work=self.work,
            )
        finally:
            if log_dir is not None:
                shutil.rmtree(log_dir, ignore_errors=True)
        if not record:
            return
        total = workers * self.args.lines
        counts = check(r.out, workers, self.args.lines)
        on_stderr = len(re.findall(rb"r\d+ i\d{7} ", r.err))
        stream = (r.last_out - r.first_out) if r.first_out is not None and r.last_out is not None else None
        res: dict[str, Any] = {
            "ok": r.ok,
            "rc": r.rc_text,
            "time": r.elapsed if not r.timed_out else None,
            "lines_per_s": total / r.elapsed if not r.timed_out else None,
            "stream_s": stream,
            "stream_lines_per_s": total / stream if stream else None,
            "first_byte_s": r.first_out,
            "stdout_bytes": len(r.out),
            "worker_lines_on_stderr": on_stderr,
            "tmp_left": r.tmp_left,
            "strays": r.strays,
            **counts,
        }
        self.left.setdefault(path.split()[0].rstrip(","), []).append(len(r.tmp_left) + len(r.strays))
        self.raw.setdefault(f"{workers}/{path}", []).append(res)
        flag = "" if r.ok else f"  exit {r.rc_text}"
        bl.log(
            f"    {path:<17} {workers} worker(s): {r.elapsed:6.2f} s  lost {counts['lost']}  cut {counts['cut']}  "
            f"dup {counts['dup']}  mislabeled {counts['mislabeled']}{flag}"
        )

    def execute(self) -> None:
        bl.log("warm-up (bytecode caches, page cache)")
        for path in self.paths():
            if path != "python":
                self.one(path, 1, record=False)
        for rep in range(self.args.reps):
            for workers in self.args.workers:
                bl.log(f"[rep {rep + 1}/{self.args.reps}] {workers} worker(s) x {self.args.lines} lines")
                for path in self.paths():
                    self.one(path, workers)

    def close(self) -> None:
        self.work.close()


def fmt_count(st: dict[str, Any] | None) -> str:
    if st is None:
        return "n/a"

    def f(v: float) -> str:
        v = round(v)
        return f"{v / 1000:.1f}k" if v >= 10000 else str(v)

    text = f(st["median"])
    if st["n"] > 1 and st["min"] != st["max"]:
        text += f" ({f(st['min'])}–{f(st['max'])})"
    return text


def build_table(b: Bench) -> tuple[str, dict[str, Any]]:
    rows: list[list[str]] = []
    summary: dict[str, Any] = {}
    for workers in b.args.workers:
        base = b.raw.get(f"{workers}/python", [])
        base_t = bl.stats(x["time"] for x in base)
        base_s = bl.stats(x["stream_s"] for x in base)
        # The same worker as elaunch runs it (unbuffered, like torchrun's `python -u`), no launcher:
        # the ratio to it is the launcher's own cost.
        unbuf_t = bl.stats(x["time"] for x in b.raw.get(f"{workers}/python -u", []))
        for path in b.paths():
            runs = b.raw.get(f"{workers}/{path}", [])
            if not runs:
                continue
            st = {
                k: bl.stats(x[k] for x in runs)
                for k in ("time", "lines_per_s", "stream_s", "lost", "cut", "dup", "mislabeled")
            }
            wall_ratio = bl.ratio(base_t, st["time"])  # throughput ratio = python time / this time
            stream_ratio = bl.ratio(base_s, st["stream_s"])
            unbuf_ratio = bl.ratio(unbuf_t, st["time"]) if unbuf_t else None
            met: bool | None = None
            target = "—"
            if path == "elaunch":
                target = "0 lost/cut/dup, ≥ 0.7× python"
                worst = max((x["lost"] + x["cut"] + x["dup"]) for x in runs)
                met = worst == 0 and all(x["ok"] for x in runs) and wall_ratio is not None and wall_ratio >= 0.7
            label = f"{path} ×{workers}, one shared pipe" if path.startswith("python") and workers > 1 else path
            lps = st["lines_per_s"]
            rows.append(
                [
                    str(workers),
                    label,
                    bl.fmt_seconds(st["time"]),
                    f"{lps['median'] / 1e6:.2f} M/s" if lps else "n/a",
                    bl.fmt_ratio(wall_ratio) if path != "python" else "1",
                    bl.fmt_ratio(stream_ratio) if path != "python" else "1",
                    bl.fmt_ratio(unbuf_ratio) if unbuf_ratio is not None else "—",
                    fmt_count(st["lost"]),
                    fmt_count(st["cut"]),
                    fmt_count(st["dup"]),
                    fmt_count(st["mislabeled"]),
                    target,
                    "—" if met is None else ("yes" if met else "**no**"),
                ]
            )
            summary[f"{workers}/{path}"] = {
                **st,
                "throughput_ratio_wall": wall_ratio,
                "throughput_ratio_stream": stream_ratio,
                "throughput_ratio_vs_unbuffered_python": unbuf_ratio,
                "failed_runs": sum(not x["ok"] for x in runs),
                "met": met,
            }
    headers = [
        "workers",
        "path",
        "time: median (min–max)",
        "lines/s",
        "vs python",
        "vs python, stream",
        "vs python -u",
        "lost",
        "cut",
        "dup",
        "mislabeled",
        "target",
        "met?",
    ]
    return bl.md_table(headers, rows), summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="20k lines per worker, 1 repetition (CI smoke, < 60 s)")
    p.add_argument("--reps", type=int, default=None, help="repetitions (default 3, 1 with --quick)")
    p.add_argument("--lines", type=int, default=None, help="lines per worker (default 200000, 20000 with --quick)")
    p.add_argument("--workers", default="1,8", help="worker counts, comma list (default 1,8)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per launcher run before it is killed")
    p.add_argument("--no-torchrun", action="store_true", help="measure elaunch (and python) only")
    p.add_argument(
        "--no-extras", action="store_true", help="skip python -u, elaunch --tee 3 and the buffered-worker variant"
    )
    p.add_argument("--keep-python-env", action="store_true", help="keep PYTHONDONTWRITEBYTECODE/PYTHONUNBUFFERED")
    p.add_argument("--out", default=None, help="JSON path (default bench-results/logs[-quick].json)")
    args = p.parse_args(argv)
    args.reps = args.reps if args.reps is not None else (1 if args.quick else 3)
    args.lines = args.lines if args.lines is not None else (20_000 if args.quick else 200_000)
    args.workers = [int(x) for x in args.workers.split(",") if x.strip()]
    if args.reps < 1 or args.lines < 1 or not args.workers or min(args.workers) < 1:
        p.error("--reps, --lines and --workers must be positive")
    if args.lines > 9_999_999:
        p.error("--lines must be below 10 million (7-digit line ids)")

    bl.install_signal_cleanup()
    subreaper = bl.become_subreaper()
    t_start = time.perf_counter()
    load = bl.LoadWatch()
    b = Bench(args)
    try:
        b.notes += bl.preflight(p, b.cmd, args.keep_python_env)
        b.execute()
        table, summary = build_table(b)
    finally:
        b.close()
        bl.check_no_children()
        load_info = load.stop()
    busy = load.note()
    if busy:
        b.notes.append(busy)
    left = {k: sum(v) for k, v in b.left.items()}
    b.notes.append(f"left behind (temp dirs + processes) over all runs: {left}")
    total = time.perf_counter() - t_start
    print(
        f"## elaunch vs torchrun: console output, {args.lines:,} lines per worker "
        f"({args.reps} rep{'s' if args.reps > 1 else ''}{', quick' if args.quick else ''})"
    )
    print()
    print(table)
    print()
    print(
        "- lost: ids found nowhere in stdout; cut: stdout lines that are not exactly one whole line; dup: extra whole copies"
    )
    print(
        "- vs python: throughput relative to plain python (wall time incl. start-up); stream: first to last byte only"
    )
    return bl.finish(
        "logs", args, b.cmd, b.notes, total, table, line_bytes=len(f"r0 i0000000 {PAD}\n"),
        subreaper=subreaper, load_average=load_info, summary=summary, raw=b.raw,
    )  # fmt: skip


if __name__ == "__main__":
    bl.entry(main)
