#!/usr/bin/env python3
"""Launch overhead of elaunch vs torchrun (vs plain python), measured side by side in one run.

    python scripts/bench_launch.py            # full run, ~3-4 min on 2 cores
    python scripts/bench_launch.py --quick    # CI smoke, < 60 s
    python scripts/bench_launch.py --reps 7 --only wall,restart

Measures (median and min–max over --reps repetitions, launchers interleaved per repetition):

* wall time of a trivial script (`print` only), `--standalone`, 1/4/16 workers; floors: that many
  plain `python script.py` processes started together, and the same job under
  scripts/minimal_launcher.py (torchrun's worker variables, a session per worker, wait: the least
  a launcher does), printed in a second table with the ratio elaunch/minimal;
* start to the first line of user code: the worker prints `time.time()` as its first statement,
  compared with `time.time()` just before Popen of the launcher (1 worker);
* restart latency: rank 0 crashes with `os._exit(1)` on the first attempt (printing its
  timestamp just before), `--max-restarts 1`, 2 workers; latency = first line of the restarted
  workers - crash;
* the agent's RSS and CPU while 2 workers sleep 3 s (psutil samples of the launcher process itself,
  not its children; elaunch's forked reaper, a child of the agent, is reported separately);
* restart when the surviving worker ignores SIGTERM, `--shutdown-timeout 2` (torchrun ignores that
  option here and waits 30 s; it gets a 60 s timeout and one repetition, none with --quick).

Prints a markdown table on stdout, progress on stderr, and writes bench-results/launch[-quick].json.
Every subprocess has a timeout; whatever a launcher leaves behind (processes, temp dirs) is
killed/removed by PID and reported.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import benchlib as bl  # scripts/ is on sys.path when run as `python scripts/bench_launch.py`
import psutil

MINIMAL = [bl.PYTHON, str(bl.ROOT / "scripts" / "minimal_launcher.py")]
"""The floor launcher: no torch, no elaunch import; takes `--standalone --nproc-per-node N script`."""

TRIVIAL = 'print("hello")\n'

FIRST_LINE = """\
print(f"T_START={__import__('time').time():.6f}", flush=True)
"""

RESTART = """\
import time
t = time.time()
import os
import sys

rank = int(os.environ["RANK"])
restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
if restart > 0:
    print(f"T_START={t:.6f} rank={rank} restart={restart}", flush=True)
    sys.exit(0)
if rank == 0:
    time.sleep(CRASH_DELAY)
    print(f"T_CRASH={time.time():.6f}", flush=True)
    os._exit(1)
time.sleep(60)
"""

SIGTERM_IGNORE = """\
import time
t = time.time()
import os
import signal
import sys

rank = int(os.environ["RANK"])
restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
if restart > 0:
    print(f"T_START={t:.6f} rank={rank} restart={restart}", flush=True)
    sys.exit(0)
if rank == 1:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print(f"T_IGNORING={time.time():.6f}", flush=True)
    time.sleep(120)
    sys.exit(0)
time.sleep(CRASH_DELAY)
print(f"T_CRASH={time.time():.6f}", flush=True)
os._exit(1)
"""

SLEEP = """\
import time
print(f"T_SLEEP={time.time():.6f}", flush=True)
time.sleep(SLEEP_S)
print(f"T_WAKE={time.time():.6f}", flush=True)
"""

MINIMAL_TARGET = 1.15
"""elaunch's wall time for 4 workers, at most this many times the minimal launcher's."""
CRASH_DELAY = 0.6
"""Rank 0 crashes this long after starting, so both workers run and the agent is idle by then."""
SLEEP_S = 3.0

RE_START = re.compile(rb"T_START=(\d+\.\d+)(?: rank=(\d+) restart=(\d+))?")
RE_CRASH = re.compile(rb"T_CRASH=(\d+\.\d+)")
RE_SLEEP = re.compile(rb"T_SLEEP=(\d+\.\d+)")


def floats(rx: re.Pattern[bytes], data: bytes) -> list[float]:
    return [float(m.group(1)) for m in rx.finditer(data)]


def restarted_starts(data: bytes) -> list[float]:
    """T_START of workers whose TORCHELASTIC_RESTART_COUNT > 0."""
    return [float(m.group(1)) for m in RE_START.finditer(data) if m.group(3) is not None and int(m.group(3)) > 0]


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = bl.Workdir("bench-launch-", keep_python_env=args.keep_python_env)
        self.env = self.work.env()
        self.cmd: dict[str, list[str] | None] = {
            "elaunch": bl.launcher_cmd("elaunch"),
            "torchrun": bl.launcher_cmd("torchrun"),
        }
        if args.no_torchrun:
            self.cmd["torchrun"] = None
        self.scripts = {
            "trivial": self.work.write("trivial.py", TRIVIAL),
            "first": self.work.write("first_line.py", FIRST_LINE),
            "restart": self.work.write("restart.py", RESTART.replace("CRASH_DELAY", repr(CRASH_DELAY))),
            "sigterm": self.work.write("sigterm_ignore.py", SIGTERM_IGNORE.replace("CRASH_DELAY", repr(CRASH_DELAY))),
            "sleep": self.work.write("sleep.py", SLEEP.replace("SLEEP_S", repr(SLEEP_S))),
        }
        self.raw: dict[str, dict[str, list[Any]]] = {}
        self.left: dict[str, dict[str, list[int]]] = {}
        self.notes: list[str] = []

    def launchers(self) -> list[str]:
        return [name for name, cmd in self.cmd.items() if cmd is not None]

    # -- helpers ---------------------------------------------------------------------------
    def launch_argv(self, name: str, nproc: int, script: str, *extra: str) -> list[str]:
        cmd = self.cmd[name]
        assert cmd is not None
        return [*cmd, "--standalone", "--nproc-per-node", str(nproc), *extra, script]

    def record(self, measure: str, who: str, value: Any) -> None:
        self.raw.setdefault(measure, {}).setdefault(who, []).append(value)

    def run(self, cmds: list[list[str]], timeout: float, who: str) -> bl.RunResult:
        r = bl.run(cmds, env=self.env, timeout=timeout, cwd=str(self.work.path), work=self.work)
        left = self.left.setdefault(who, {"runs": [], "tmp": [], "procs": []})
        left["runs"].append(1)
        left["tmp"].append(len(r.tmp_left))
        left["procs"].append(len(r.strays))
        if not r.ok:
            tail = r.err.decode(errors="replace").strip().splitlines()[-3:]
            bl.log(f"    {who}: exit {r.rc_text} after {r.elapsed:.2f}s; stderr tail: {tail}")
        if r.strays:
            bl.log(f"    {who}: left {len(r.strays)} process(es) running, killed: {r.strays}")
        return r

    # -- measures --------------------------------------------------------------------------
    def wall(self, nproc: int) -> None:
        key = f"wall_{nproc}"
        for name in self.launchers():
            r = self.run([self.launch_argv(name, nproc, self.scripts["trivial"])], 120, name)
            good = r.ok and r.out.count(b"hello") == nproc
            self.record(key, name, r.elapsed if good else None)
        plain = [[bl.PYTHON, self.scripts["trivial"]]] * nproc
        r = self.run(plain, 60, "python")
        self.record(key, "python", r.elapsed if r.ok and r.out.count(b"hello") == nproc else None)
        minimal = [*MINIMAL, "--standalone", "--nproc-per-node", str(nproc), self.scripts["trivial"]]
        r = self.run([minimal], 60, "minimal")
        self.record(key, "minimal", r.elapsed if r.ok and r.out.count(b"hello") == nproc else None)

    def first_line(self) -> None:
        for name in [*self.launchers(), "python"]:
            argv = (
                [bl.PYTHON, self.scripts["first"]]
                if name == "python"
                else self.launch_argv(name, 1, self.scripts["first"])
            )
            r = self.run([argv], 60, name)
            ts = floats(RE_START, r.out)
            self.record("first_line", name, min(ts) - r.t0_wall if ts and r.ok else None)

    def _crash_restart(self, key: str, script: str, extra: list[str], timeouts: dict[str, float]) -> None:
        for name in self.launchers():
            if (
                key == "sigterm"
                and name == "torchrun"
                and len(self.raw.get(key, {}).get(name, [])) >= self.args.torchrun_sigterm_reps
            ):
                continue
            r = self.run([self.launch_argv(name, 2, script, *extra)], timeouts[name], name)
            crash = floats(RE_CRASH, r.out)
            starts = restarted_starts(r.out)
            value = min(starts) - crash[0] if crash and starts else None
            if value is None:
                why = "timed out" if r.timed_out else f"exit {r.rc_text}"
                self.notes.append(
                    f"{key}/{name}: no restarted worker seen ({why} after {r.elapsed:.1f}s; "
                    f"crash line {'seen' if crash else 'missing'})"
                )
            self.record(key, name, value)
            self.record(key + "_total", name, r.elapsed if not r.timed_out else None)

    def restart(self) -> None:
        self._crash_restart(
            "restart", self.scripts["restart"], ["--max-restarts", "1"], {"elaunch": 60, "torchrun": 60}
        )

    def sigterm(self) -> None:
        self._crash_restart(
            "sigterm",
            self.scripts["sigterm"],
            ["--max-restarts", "1", "--shutdown-timeout", "2"],
            {"elaunch": 60, "torchrun": 60},
        )

    def rss(self) -> None:
        for name in self.launchers():
            run = bl.Run(
                [self.launch_argv(name, 2, self.scripts["sleep"])], env=self.env, cwd=str(self.work.path), timeout=60
            )
            run.start()
            sampler = Sampler(run.pid, self.scripts["sleep"])
            sampler.start()
            r = run.finish()
            sampler.stop()
            r.tmp_left = self.work.sweep_tmp()
            left = self.left.setdefault(name, {"runs": [], "tmp": [], "procs": []})
            left["runs"].append(1)
            left["tmp"].append(len(r.tmp_left))
            left["procs"].append(len(r.strays))
            sleeps = floats(RE_SLEEP, r.out)
            if not r.ok or len(sleeps) != 2:
                bl.log(f"    {name}: sleep run failed (exit {r.rc_text}, {len(sleeps)} sleepers)")
                for k in ("rss", "cpu", "helper_rss", "helper_pss", "rss_peak", "pss"):
                    self.record(k, name, None)
                continue
            lo, hi = max(sleeps) + 0.3, min(sleeps) + SLEEP_S - 0.1
            win = [s for s in sampler.samples if lo <= s["t"] <= hi]
            if len(win) < 2:
                bl.log(f"    {name}: too few samples in the sleep window")
                continue
            self.record("rss", name, max(s["rss"] for s in win) / bl.MiB)
            self.record("rss_peak", name, max(s["rss"] for s in sampler.samples) / bl.MiB)
            self.record("cpu", name, win[-1]["cpu"] - win[0]["cpu"])
            self.record("cpu_window", name, win[-1]["t"] - win[0]["t"])
            pss = [s["pss"] for s in win if s.get("pss") is not None]
            self.record("pss", name, max(pss) / bl.MiB if pss else None)
            helpers = [s for s in win if s["helpers"]]
            self.record("helpers", name, max((len(s["helpers"]) for s in win), default=0))
            self.record(
                "helper_rss",
                name,
                max(sum(h["rss"] for h in s["helpers"]) for s in helpers) / bl.MiB if helpers else None,
            )
            hpss = [
                sum(h["pss"] for h in s["helpers"])
                for s in helpers
                if all(h.get("pss") is not None for h in s["helpers"])
            ]
            self.record("helper_pss", name, max(hpss) / bl.MiB if hpss else None)

    # -- driver ----------------------------------------------------------------------------
    def plan(self) -> list[tuple[str, Callable[[], None]]]:
        steps: list[tuple[str, Callable[[], None]]] = []
        for n in self.args.workers:
            steps.append((f"wall_{n}", lambda n=n: self.wall(n)))
        steps += [
            ("first_line", self.first_line),
            ("restart", self.restart),
            ("rss", self.rss),
            ("sigterm", self.sigterm),
        ]
        only = self.args.only
        return [(k, fn) for k, fn in steps if not only or any(k.startswith(o) for o in only)]

    def execute(self) -> None:
        steps = self.plan()
        bl.log("warm-up (bytecode caches, page cache)")
        for name in self.launchers():
            self.run([self.launch_argv(name, 1, self.scripts["trivial"])], 120, "warmup")
        self.run([[*MINIMAL, "--standalone", "--nproc-per-node", "1", self.scripts["trivial"]]], 60, "warmup")
        for rep in range(self.args.reps):
            for key, fn in steps:
                bl.log(f"[rep {rep + 1}/{self.args.reps}] {key}")
                fn()

    def close(self) -> None:
        self.work.close()


def cpu_seconds(proc: psutil.Process) -> float:
    """CPU time of all threads of `proc` (not its children), in ns resolution from schedstat.

    psutil's cpu_times() counts 10 ms clock ticks: too coarse for an agent that is nearly idle.
    """
    total = 0
    try:
        for tid in os.listdir(f"/proc/{proc.pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{proc.pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
    except OSError:
        ct = proc.cpu_times()
        return float(ct.user + ct.system)
    return total / 1e9


class Sampler(threading.Thread):
    """psutil samples of one process (not its children): RSS, CPU; PSS now and then; helper children."""

    def __init__(self, pid: int, worker_script: str, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.worker_script = worker_script
        self.interval = interval
        self.samples: list[dict[str, Any]] = []
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join(5)

    def run(self) -> None:
        i = 0
        while not self._halt.is_set():
            try:
                with self.proc.oneshot():
                    t = time.time()
                    s: dict[str, Any] = {"t": t, "rss": self.proc.memory_info().rss, "cpu": cpu_seconds(self.proc)}
                    full = i % 10 == 5
                    if full:
                        s["pss"] = self.proc.memory_full_info().pss
                    helpers = []
                    own = self.proc.cmdline()
                    for c in self.proc.children():
                        try:
                            cmdline = c.cmdline()
                            # a worker runs the script; a forked helper (elaunch's reaper) keeps our argv
                            if cmdline != own and self.worker_script in cmdline:
                                continue
                            h = {"pid": c.pid, "rss": c.memory_info().rss}
                            if full:
                                h["pss"] = c.memory_full_info().pss
                            helpers.append(h)
                        except psutil.Error:
                            pass
                    s["helpers"] = helpers
                self.samples.append(s)
            except psutil.Error:
                return
            i += 1
            self._halt.wait(self.interval)


def scale(st: dict[str, Any], k: float) -> dict[str, Any]:
    return {**st, "median": st["median"] * k, "min": st["min"] * k, "max": st["max"] * k}


# -- table ---------------------------------------------------------------------------------------
def build_table(b: Bench) -> tuple[str, dict[str, Any]]:
    S: dict[str, dict[str, Any]] = {m: {w: bl.stats(v) for w, v in d.items()} for m, d in b.raw.items()}

    def get(m: str, w: str) -> dict[str, Any] | None:
        return S.get(m, {}).get(w)

    rows: list[list[str]] = []
    summary: dict[str, Any] = {}

    def row(
        key: str,
        label: str,
        fmt: Callable[[dict[str, Any] | None], str],
        target: str = "—",
        check: Callable[[dict[str, Any] | None, dict[str, Any] | None, float | None], bool | None] | None = None,
        floor: str = "—",
        show_ratio: bool = True,
    ) -> None:
        if key not in S:
            return
        e, t = get(key, "elaunch"), get(key, "torchrun")
        r = bl.ratio(e, t) if show_ratio else None
        met = check(e, t, r) if check else None
        rows.append(
            [
                label,
                fmt(e),
                fmt(t) if t else "—",
                bl.fmt_ratio(r),
                target,
                "—" if met is None else ("yes" if met else "**no**"),
                floor,
            ]
        )
        summary[key] = {"label": label, "elaunch": e, "torchrun": t, "ratio": r, "target": target, "met": met}

    secs = bl.fmt_seconds
    for n in b.args.workers:
        is4 = n == 4
        row(
            f"wall_{n}",
            f"wall time, trivial script, {n} worker{'s' if n > 1 else ''}",
            secs,
            "≤ 0.1× torchrun" if is4 else "—",
            (lambda e, t, r: None if r is None else r <= 0.1) if is4 else None,
            floor=secs(get(f"wall_{n}", "python")),
        )
    row("first_line", "start → first line of user code, 1 worker", secs, floor=secs(get("first_line", "python")))
    row(
        "restart",
        "crash → first line of restarted workers, 2 workers",
        secs,
        "≤ 0.25× torchrun",
        lambda e, t, r: None if r is None else r <= 0.25,
    )
    row(
        "rss",
        "agent RSS while 2 workers sleep (max)",
        lambda s: bl.fmt_value(s, "MiB"),
        "≤ 60 MiB",
        lambda e, t, r: None if e is None else e["median"] <= 60,
    )
    row(
        "pss",
        "agent PSS while workers sleep (shared pages split, e.g. with the reaper)",
        lambda s: bl.fmt_value(s, "MiB"),
    )
    cw = get("cpu_window", "elaunch") or get("cpu_window", "torchrun")
    window = f"{cw['median']:.1f} s" if cw else "the"
    row("cpu", f"agent CPU time during {window} of worker sleep", lambda s: bl.fmt_value(s and scale(s, 1000), "ms", 2))
    if "helper_rss" in S:
        e_rss, e_pss = get("helper_rss", "elaunch"), get("helper_pss", "elaunch")
        t_h = get("helpers", "torchrun")
        rows.append(
            [
                "elaunch reaper (forked child of the agent): RSS / PSS",
                f"{bl.fmt_value(e_rss, 'MiB')} / {bl.fmt_value(e_pss, 'MiB')}",
                "no helper process" if t_h and t_h["max"] == 0 else "—",
                "—",
                "reported separately",
                "—",
                "—",
            ]
        )
        summary["reaper"] = {"rss": e_rss, "pss": e_pss}
    row(
        "sigterm",
        "crash → restart when the survivor ignores SIGTERM (`--shutdown-timeout 2`)",
        secs,
        "elaunch ≈ 2 s (≤ 2.5 s)",
        lambda e, t, r: None if e is None else e["median"] <= 2.5,
    )
    cells = []
    for who in ("elaunch", "torchrun"):
        lf = b.left.get(who)
        if lf:
            cells.append(f"{sum(lf['tmp'])} dirs, {sum(lf['procs'])} procs in {len(lf['runs'])} runs")
        else:
            cells.append("—")
    rows.append(["left behind (temp dirs in TMPDIR / processes), all runs", *cells, "—", "0 for elaunch", "—", "—"])
    el = b.left.get("elaunch")
    if el:
        rows[-1][5] = "yes" if sum(el["tmp"]) == 0 and sum(el["procs"]) == 0 else "**no**"
    summary["left_behind"] = b.left
    headers = [
        "measure",
        "elaunch: median (min–max)",
        "torchrun: median (min–max)",
        "ratio e/t",
        "target",
        "met?",
        "plain python",
    ]
    return bl.md_table(headers, rows), summary


def build_floor_table(b: Bench) -> tuple[str, dict[str, Any]]:
    """elaunch against the minimal launcher, wall time of the trivial job: what elaunch adds to the least a launcher does."""
    rows: list[list[str]] = []
    summary: dict[str, Any] = {}
    for n in b.args.workers:
        key = f"wall_{n}"
        if key not in b.raw:
            continue
        e, m = bl.stats(b.raw[key].get("elaunch", [])), bl.stats(b.raw[key].get("minimal", []))
        r = bl.ratio(e, m)
        target = f"≤ {MINIMAL_TARGET:g}× minimal" if n == 4 else "—"
        met = None if n != 4 or r is None else r <= MINIMAL_TARGET
        label = f"wall time, trivial script, {n} worker{'s' if n > 1 else ''}"
        rows.append([label, bl.fmt_seconds(e), bl.fmt_seconds(m), bl.fmt_ratio(r), target,
                     "—" if met is None else ("yes" if met else "**no**")])  # fmt: skip
        summary[key] = {"label": label, "elaunch": e, "minimal": m, "ratio": r, "target": target, "met": met}
    headers = [
        "measure",
        "elaunch: median (min–max)",
        "minimal launcher: median (min–max)",
        "ratio e/m",
        "target",
        "met?",
    ]
    return bl.md_table(headers, rows), summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="few repetitions, no 30 s torchrun SIGTERM case (CI smoke, < 60 s)"
    )
    p.add_argument("--reps", type=int, default=None, help="repetitions per measure (default 5, 1 with --quick)")
    p.add_argument("--only", default="", help="comma list of measures: wall,first_line,restart,rss,sigterm")
    p.add_argument("--no-torchrun", action="store_true", help="measure elaunch (and python) only")
    p.add_argument("--keep-python-env", action="store_true", help="keep PYTHONDONTWRITEBYTECODE/PYTHONUNBUFFERED")
    p.add_argument("--out", default=None, help="JSON path (default bench-results/launch[-quick].json)")
    args = p.parse_args(argv)
    args.reps = args.reps if args.reps is not None else (1 if args.quick else 5)
    if args.reps < 1:
        p.error("--reps must be at least 1")
    args.workers = [1, 4, 16]
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    args.torchrun_sigterm_reps = 0 if args.quick else 1

    bl.install_signal_cleanup()
    subreaper = bl.become_subreaper()
    t_start = time.perf_counter()
    load = bl.LoadWatch()
    b = Bench(args)
    try:
        b.notes += bl.preflight(p, b.cmd, args.keep_python_env)
        b.execute()
        table, summary = build_table(b)
        floor_table, summary["minimal_launcher"] = build_floor_table(b)
    finally:
        b.close()
        bl.check_no_children()
        load_info = load.stop()
    busy = load.note()
    if busy:
        b.notes.append(busy)
    if args.quick and "sigterm" in b.raw:
        b.notes.append("--quick: torchrun's SIGTERM-ignoring case is skipped (it takes ~30 s)")
    elif "sigterm" in b.raw:
        tot = b.raw.get("sigterm_total", {}).get("torchrun", [])
        lat = b.raw.get("sigterm", {}).get("torchrun", [])
        what = ", ".join(
            "timed out after 60 s"
            if t is None
            else f"finished in {t:.1f} s, restart after {x:.1f} s"
            if x
            else f"{t:.1f} s"
            for t, x in zip(tot, lat, strict=False)
        )
        b.notes.append(
            f"torchrun's SIGTERM-ignoring case runs {args.torchrun_sigterm_reps}× with a 60 s timeout "
            f"(`--shutdown-timeout 2` given): {what or 'not run'}"
        )
    total = time.perf_counter() - t_start
    title = f"## elaunch vs torchrun: launch ({args.reps} rep{'s' if args.reps > 1 else ''}{', quick' if args.quick else ''})"
    print(title)
    print()
    print(table)
    print()
    if summary["minimal_launcher"]:
        floor_title = "## elaunch vs a minimal launcher (scripts/minimal_launcher.py), same run"
        print(floor_title)
        print()
        print(floor_table)
        print()
        table += f"\n\n{floor_title}\n\n{floor_table}"
    return bl.finish(
        "launch", args, {**b.cmd, "minimal": MINIMAL}, b.notes, total, table,
        subreaper=subreaper, load_average=load_info, summary=summary, raw=b.raw,
    )  # fmt: skip


if __name__ == "__main__":
    bl.entry(main)
