#!/usr/bin/env python3
"""Node SIGKILL with one hot spare -> the spare's worker running (elaunch only: torchrun has no spares).

    python scripts/bench_spare.py            # 3 repetitions
    python scripts/bench_spare.py --quick    # 1 repetition

Three real elaunch processes on 127.0.0.1 (`--nnodes 2 --standby 1 --nproc-per-node 1
--rdzv-backend c10d --max-restarts 0`, rendezvous defaults: heartbeat_timeout 5 s), each running
the tiny worker of bench_recovery.py. Nodes "a" and "b" form the group; "c" starts once they run
and stands by (checked on its console). The active node that does not host the store is then
SIGKILLed (its whole process tree) at t_kill = time.time(). Measured: t_kill to the first line of
the spare's worker, against issue #13's target, heartbeat_timeout + 2 s; also the group rank it
took (it must be the killed node's). Prints a markdown table on stdout and writes
bench-results/spare[-quick].json; every process started is killed and reaped at the end.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import bench_recovery as br  # scripts/ is on sys.path when run as `python scripts/bench_spare.py`
import benchlib as bl
from testbed.procs import descendants

SETUP_TIMEOUT = 90.0
HEARTBEAT_TIMEOUT = 5.0
"""elaunch's default heartbeat_timeout (this benchmark passes no --rdzv-conf)."""


class Trial(br.Trial):
    """Three elaunch nodes, one of them a spare, one SIGKILL."""

    def argv(self, node: str) -> list[str]:
        cmd = self.b.cmd["elaunch"]
        assert cmd is not None
        argv = [*cmd, "--nnodes", "2", "--standby", "1", "--nproc-per-node", "1", "--rdzv-backend", "c10d"]
        argv += ["--rdzv-endpoint", f"127.0.0.1:{self.port}", "--rdzv-id", self.run_id, "--max-restarts", "0"]
        return [*argv, "--no-live", self.b.script, node, str(self.b.sleep_s)]

    def pair(self) -> bool:
        return all(self.latest(n) is not None for n in ("a", "b"))

    def spare_standing_by(self) -> bool:
        r = self.nodes["c"].run
        return "stands by as a spare" in r._err.data().decode(errors="replace")

    def execute(self) -> dict[str, Any]:
        res: dict[str, Any] = {"launcher": "elaunch", "rep": self.rep, "port": self.port, "run_id": self.run_id}
        try:
            self.start("a")
            if not br.wait_port(self.port, SETUP_TIMEOUT, self.nodes["a"].run):
                return self._fail(res, "the first node never served the rendezvous port")
            self.start("b")
            if not self.wait_for(self.pair, time.monotonic() + SETUP_TIMEOUT):
                return self._fail(res, "a and b never ran their workers")
            self.start("c")
            deadline = time.monotonic() + SETUP_TIMEOUT
            while not self.spare_standing_by():
                if time.monotonic() > deadline:
                    return self._fail(res, "c never stood by")
                time.sleep(0.05)
            time.sleep(br.SETTLE)
            host = self.store_host()
            victim = "b" if host == "a" else "a"
            res.update(store_host=host, victim=victim, survivors=[n for n in ("a", "b", "c") if n != victim])
            lost = self.latest(victim)
            res["lost_group"] = lost.group if lost else None
            victims = [self.nodes[victim].run.pid, *descendants([self.nodes[victim].run.pid])]
            t_kill = time.time()
            br.kill_node(self.nodes[victim].run.pid, victims)
            res["t_kill"] = t_kill
            self.wait_for(lambda: self.latest("c") is not None, time.monotonic() + self.b.limit("elaunch"))
            got = self.latest("c")
            res["spare_start"] = vars(got) if got else None
            res["last"] = res["first"] = got.t - t_kill if got else None
            res["took_rank"] = got is not None and got.group == res["lost_group"]
            res["outcome"] = "took over" if got else "no take-over"
            return res
        finally:
            self._close(res)


class Bench(br.Bench):
    def __init__(self, args: argparse.Namespace) -> None:
        args.rdzv_conf, args.no_torchrun = "", True
        args.elaunch_limit = args.torchrun_limit = args.limit
        super().__init__(args)

    def execute(self) -> None:
        for rep in range(self.args.reps):
            bl.log(f"[rep {rep + 1}/{self.args.reps}] elaunch")
            res = Trial(self, "elaunch", rep).execute()
            self.trials.append(res)
            got = f"{res['last']:.2f} s" if res.get("last") is not None else res.get("outcome")
            bl.log(f"    elaunch: {got} (took the lost rank: {res.get('took_rank')})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    bl.add_trial_options(p, "spare")
    p.add_argument("--limit", type=float, default=60.0, help="seconds the spare gets after the kill")
    args = p.parse_args(argv)
    bl.trial_reps(p, args)
    b = Bench(args)
    run = bl.run_trials(p, b, args.keep_python_env)
    notes = [n for n in run.notes if not n.startswith("torchrun not measured")]
    st = bl.stats(t.get("last") for t in b.trials)
    target = HEARTBEAT_TIMEOUT + 2
    rows = [
        ["node SIGKILL → spare's worker running", bl.fmt_seconds(st), f"≤ {target:g} s (heartbeat_timeout + 2 s)"],
        ["spare took the killed node's group rank", f"{sum(bool(t.get('took_rank')) for t in b.trials)}/{len(b.trials)}",
         "all"],
    ]  # fmt: skip
    table = bl.md_table(["measure", "elaunch: median (min–max)", "target"], rows)
    outcomes = [t["outcome"] for t in b.trials]
    if any(o != "took over" for o in outcomes):
        notes.append(f"outcomes {outcomes}")
    if run.busy:
        notes.append(run.busy)
    total = run.total
    print(f"## elaunch: node SIGKILL with one hot spare ({args.reps} rep(s))")
    print()
    print("3 nodes on 127.0.0.1, `--nnodes 2 --standby 1 --nproc-per-node 1 --max-restarts 0`, c10d, defaults.")
    print()
    print(table)
    print()
    return bl.finish(
        "spare", args, b.cmd, notes, total, table,
        subreaper=run.subreaper, load_average=run.load_average, summary={"last": st}, trials=b.trials,
    )  # fmt: skip


if __name__ == "__main__":
    bl.entry(main)
