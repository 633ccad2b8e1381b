#!/usr/bin/env python3
"""Node death -> the survivors' workers running again, elaunch vs torchrun, in one harness and run.

    python scripts/bench_recovery.py            # 3 repetitions, ~10 min on 2 cores
    python scripts/bench_recovery.py --quick    # 1 repetition
    python scripts/bench_recovery.py --reps 5 --rdzv-conf last_call_timeout=5

Three real launcher processes on 127.0.0.1 (`--nnodes 2:3 --nproc-per-node 1 --rdzv-backend c10d
--max-restarts 3`, a fresh endpoint port and run id per trial), each running a tiny worker
without torch that prints `T_START=<time.time()> restart=... group=... pid=...` as its first
statement and then sleeps, with no collectives. Node "a" starts first and hosts the rendezvous
store (checked: its process tree listens on the endpoint port); "b" and "c" start once the port
accepts. When every node's worker runs in a group of three, a node that does not host the store
is SIGKILLed as a whole (its agent's process group and process tree: agent, worker, helpers)
at t_kill = time.time(). Measured: t_kill to the first line of a NEW worker (another pid; a
membership restart need not raise TORCHELASTIC_RESTART_COUNT) on each survivor; the figure is
the last survivor's. Each launcher gets a time limit (--elaunch-limit 60 s, --torchrun-limit
120 s); a launcher whose survivors start no new worker within it is reported "not noticed".

Both launchers run with their rendezvous defaults (no --rdzv-conf) unless --rdzv-conf is given,
which then goes to both (integers: torchrun reads them with int()); the heartbeat, keep-alive and
last-call settings in effect are reported with the results. Launchers alternate order per
repetition. Prints a markdown table on stdout, progress on stderr, and writes
bench-results/recovery[-quick].json. Every subprocess has a timeout; at the end (also on Ctrl-C)
every process started is killed by PID and reaped (this process is a child subreaper) and the
temp dir is removed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import benchlib as bl  # scripts/ is on sys.path when run as `python scripts/bench_recovery.py`
import psutil
from testbed import WaitTimeout, free_port, wait_until
from testbed.procs import alive, descendants, kill_pids

NODES = ("a", "b", "c")
STORE_NODE = "a"
WORKER = """\
print(f"T_START={__import__('time').time():.6f} restart={__import__('os').environ.get('TORCHELASTIC_RESTART_COUNT')} group={__import__('os').environ.get('GROUP_RANK')} groups={__import__('os').environ.get('GROUP_WORLD_SIZE')} pid={__import__('os').getpid()} node={__import__('sys').argv[1]}", flush=True)
import time
time.sleep(float(__import__('sys').argv[2]))
"""
RE_START = re.compile(
    r"T_START=(\d+\.\d+) restart=(\S+) group=(\S+) groups=(\S+) pid=(\d+) node=([a-z])",
)
RE_STAMP = re.compile(r"^\[elaunch (\d\d):(\d\d):(\d\d\.\d+)\] (.*)$")
SETUP_TIMEOUT = 90.0
"""Seconds for the three nodes to form their first group of three."""
SETTLE = 1.0
"""Seconds the group of three runs before the kill (agents back in their monitoring loop)."""


@dataclass
class Start:
    t: float
    restart: str
    group: str
    groups: str
    pid: int
    node: str
    seen: float
    """time.time() when the line reached us (through the agent for elaunch)."""


@dataclass
class Node:
    name: str
    run: bl.Run
    buf: bytes = b""
    starts: list[Start] = field(default_factory=list)


class Trial:
    """One launcher, three nodes, one kill."""

    def __init__(self, b: Bench, name: str, rep: int) -> None:
        self.b = b
        self.name = name
        self.rep = rep
        self.cond = threading.Condition()
        self.nodes: dict[str, Node] = {}
        self.port = free_port()
        self.run_id = f"rec-{name}-{uuid.uuid4().hex[:8]}"

    def argv(self, node: str) -> list[str]:
        cmd = self.b.cmd[self.name]
        assert cmd is not None
        argv = [*cmd, "--nnodes", "2:3", "--nproc-per-node", "1", "--rdzv-backend", "c10d"]
        argv += ["--rdzv-endpoint", f"127.0.0.1:{self.port}", "--rdzv-id", self.run_id, "--max-restarts", "3"]
        if self.b.args.rdzv_conf:
            argv += ["--rdzv-conf", self.b.args.rdzv_conf]
        return [*argv, self.b.script, node, str(self.b.sleep_s)]

    def _feed(self, node: Node, data: bytes) -> None:
        now = time.time()
        with self.cond:
            node.buf += data
            *lines, node.buf = node.buf.split(b"\n")
            for line in lines:
                m = RE_START.search(line.decode(errors="replace"))
                if m:
                    t, restart, group, groups, pid, who = m.groups()
                    node.starts.append(Start(float(t), restart, group, groups, int(pid), who, now))
            self.cond.notify_all()

    def start(self, node: str) -> None:
        r = bl.Run([self.argv(node)], env=self.b.env, cwd=str(self.b.work.path), timeout=self.b.limit(self.name) + 300)
        n = Node(node, r)
        r.on_stdout.append(lambda data: self._feed(n, data))
        self.nodes[node] = n
        r.start()

    def wait_for(self, pred: Any, deadline: float) -> bool:
        with self.cond:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0 or self._all_exited():
                    return bool(pred())
                self.cond.wait(min(left, 0.5))
            return True

    def _all_exited(self) -> bool:
        return all(n.run.procs[0].poll() is not None for n in self.nodes.values())

    def latest(self, node: str) -> Start | None:
        s = self.nodes[node].starts
        return s[-1] if s else None

    def group_of_three(self) -> bool:
        """Every node's latest worker runs in a group of three, and all in the same group."""
        last = [self.latest(n) for n in NODES]
        return all(s is not None and s.groups == "3" for s in last) and len({s.group for s in last if s}) == 3

    def store_host(self) -> str | None:
        for name, n in self.nodes.items():
            for pid in [n.run.pid, *descendants([n.run.pid])]:
                with contextlib.suppress(psutil.Error):
                    for c in psutil.Process(pid).net_connections(kind="tcp"):
                        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == self.port:
                            return name
        return None

    def execute(self) -> dict[str, Any]:
        res: dict[str, Any] = {"launcher": self.name, "rep": self.rep, "port": self.port, "run_id": self.run_id}
        limit = self.b.limit(self.name)
        try:
            self.start(STORE_NODE)
            if not wait_port(self.port, SETUP_TIMEOUT, self.nodes[STORE_NODE].run):
                return self._fail(res, "the first node never served the rendezvous port")
            for node in NODES:
                if node != STORE_NODE:
                    self.start(node)
            if not self.wait_for(self.group_of_three, time.monotonic() + SETUP_TIMEOUT):
                return self._fail(res, f"no group of three within {SETUP_TIMEOUT:g} s")
            time.sleep(SETTLE)
            host = self.store_host()
            res["store_host"] = host
            if host is None:
                return self._fail(res, "no node listens on the rendezvous port")
            victim = next(n for n in reversed(NODES) if n != host)
            survivors = [n for n in NODES if n != victim]
            with self.cond:
                if not self.group_of_three():
                    return self._fail(res, "the group changed while settling")
                before = {n: self.latest(n) for n in NODES}
                res["round0"] = {n: vars(s) for n, s in before.items() if s}
                res["setup_starts"] = {n: len(self.nodes[n].starts) for n in NODES}
            res["victim"], res["survivors"] = victim, survivors
            victims = [self.nodes[victim].run.pid, *descendants([self.nodes[victim].run.pid])]
            t_kill = time.time()
            kill_node(self.nodes[victim].run.pid, victims)
            res["t_kill"] = t_kill
            res["killed_pids"] = victims
            bl.log(f"    {self.name}: killed node {victim} ({len(victims)} processes); waiting up to {limit:g} s")

            def new_start(n: str) -> Start | None:
                old = before[n]
                return next((s for s in self.nodes[n].starts if old is not None and s.pid != old.pid), None)

            self.wait_for(lambda: all(new_start(n) for n in survivors), time.monotonic() + limit)
            t_end = time.time()
            with self.cond:
                new = {n: new_start(n) for n in survivors}
            res["new_starts"] = {n: vars(s) if s else None for n, s in new.items()}
            res["alive_at_end"] = {n: self.nodes[n].run.procs[0].poll() is None for n in survivors}
            res["round0_workers_alive_at_end"] = {n: worker_alive(before[n]) for n in survivors}
            res["watched_s"] = t_end - t_kill
            got = [s.t - t_kill for s in new.values() if s]
            res["first"] = min(got) if got else None
            res["last"] = max(got) if len(got) == len(survivors) else None
            res["outcome"] = (
                "recovered"
                if res["last"] is not None
                else "not noticed"
                if not got and all(res["alive_at_end"].values())
                else "partial"
                if got
                else "survivors exited"
            )
            if new:
                res["restart_counts"] = {n: s.restart if s else None for n, s in new.items()}
            return res
        finally:
            self._close(res)

    def _fail(self, res: dict[str, Any], why: str) -> dict[str, Any]:
        res["outcome"] = f"setup failed: {why}"
        res["first"] = res["last"] = None
        return res

    def _close(self, res: dict[str, Any]) -> None:
        for n in self.nodes.values():
            kill_node(n.run.pid, [n.run.pid, *descendants([n.run.pid])])
        for n in self.nodes.values():  # reap each agent here: Run.finish reaps every descendant
            bl.wait_exit(n.run.procs[0], 10)
        errs: dict[str, str] = {}
        rcs: dict[str, Any] = {}
        strays: list[str] = []
        for name, n in self.nodes.items():
            r = n.run.finish()
            rcs[name] = r.returncodes[0]
            strays += r.strays
            errs[name] = r.err.decode(errors="replace")
        res["returncodes"] = rcs
        res["strays"] = strays
        res["tmp_left"] = self.b.work.sweep_tmp()
        res["stderr_tail"] = {k: v.strip().splitlines()[-12:] for k, v in errs.items()}
        if self.name == "elaunch" and "t_kill" in res:
            res["elaunch_log"] = elaunch_milestones(errs, res["t_kill"], res.get("survivors", []))


def elaunch_milestones(errs: dict[str, str], t_kill: float, survivors: list[str]) -> dict[str, Any]:
    """Seconds after t_kill of the survivors' agent lines: lost noticed, restart, new round formed."""
    day0 = datetime.datetime.fromtimestamp(t_kill).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    out: dict[str, Any] = {}
    for node in survivors:
        marks: dict[str, float] = {}
        lines: list[str] = []
        for raw in errs.get(node, "").splitlines():
            m = RE_STAMP.match(raw)
            if not m:
                continue
            h, mi, s, text = m.groups()
            t = day0 + int(h) * 3600 + int(mi) * 60 + float(s) - t_kill
            if t < -0.5:
                continue
            lines.append(f"{t:+.3f}s {text}")
            found = {
                "lost": text.startswith("membership:") and "lost " in text,
                "restart": text.startswith("restarting the group"),
                "round": text.startswith("rendezvous round"),
            }
            for key, hit in found.items():
                if hit and key not in marks:
                    marks[key] = t
        out[node] = {"marks": marks, "lines": lines[:20]}
    return out


# -- processes -----------------------------------------------------------------------------------
def wait_port(port: int, timeout: float, run: bl.Run) -> bool:
    """True once 127.0.0.1:port accepts TCP; False after `timeout` s or when the process exits."""

    def up_or_exited() -> str | None:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return "up"
        return "exited" if run.procs[0].poll() is not None else None

    try:
        return wait_until(up_or_exited, timeout, f"port {port}", interval=0.05) == "up"
    except WaitTimeout:
        return False


def worker_alive(s: Start | None) -> bool:
    """Is this worker still running (not a zombie)?"""
    return s is not None and alive(s.pid)


def kill_node(pid: int, victims: list[int]) -> None:
    """SIGKILL a node: the agent's process group (it leads its own session), then every process of
    its tree (`victims`, collected before, so nothing escapes by being re-parented)."""
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)
    kill_pids(victims)


def torch_defaults() -> dict[str, Any] | None:
    """torchrun's dynamic-rendezvous defaults, read from the installed torch (in a subprocess)."""
    code = (
        "import inspect, json\n"
        "from torch.distributed.elastic.rendezvous import dynamic_rendezvous as d\n"
        "t = {k + '_timeout': v.total_seconds() for k, v in d.RendezvousTimeout._DEFAULT_TIMEOUTS.items()}\n"
        "p = inspect.signature(d.DynamicRendezvousHandler.from_backend).parameters\n"
        "t.update({k: p[k].default for k in ('keep_alive_interval', 'keep_alive_max_attempt')})\n"
        "print(json.dumps(t))\n"
    )
    with contextlib.suppress(OSError, subprocess.SubprocessError, ValueError):
        r = subprocess.run([bl.PYTHON, "-c", code], capture_output=True, text=True, timeout=120)
        if r.returncode == 0:
            return dict(json.loads(r.stdout.strip().splitlines()[-1]))
    return None


def parse_conf(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        k, _, v = item.partition("=")
        with contextlib.suppress(ValueError):
            out[k.strip()] = float(v)
    return out


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = bl.Workdir("bench-recovery-", keep_python_env=args.keep_python_env)
        # c10d's reverse DNS lookups: see docs/rendezvous.md (the same for both launchers).
        self.env = self.work.env(RES_OPTIONS=os.environ.get("RES_OPTIONS", "timeout:1 attempts:1"))
        self.cmd: dict[str, list[str] | None] = {
            "elaunch": bl.launcher_cmd("elaunch"),
            "torchrun": None if args.no_torchrun else bl.launcher_cmd("torchrun"),
        }
        self.sleep_s = max(args.elaunch_limit, args.torchrun_limit) + SETUP_TIMEOUT + 60
        self.script = self.work.write("worker.py", WORKER)
        self.trials: list[dict[str, Any]] = []

    def limit(self, name: str) -> float:
        return float(self.args.elaunch_limit if name == "elaunch" else self.args.torchrun_limit)

    def launchers(self) -> list[str]:
        return [n for n, c in self.cmd.items() if c is not None]

    def execute(self) -> None:
        for rep in range(self.args.reps):
            order = self.launchers()
            if rep % 2:
                order.reverse()
            for name in order:
                bl.log(f"[rep {rep + 1}/{self.args.reps}] {name}")
                res = Trial(self, name, rep).execute()
                self.trials.append(res)
                got = f"{res['last']:.2f} s" if res.get("last") is not None else res.get("outcome")
                first = res.get("first")
                bl.log(f"    {name}: {got}" + (f" (first survivor {first:.2f} s)" if first is not None else ""))
                if res.get("strays"):
                    bl.log(f"    {name}: left {len(res['strays'])} process(es), killed: {res['strays']}")


# -- table -----------------------------------------------------------------------------------------
def settings(b: Bench) -> dict[str, dict[str, Any]]:
    conf = parse_conf(b.args.rdzv_conf)
    out: dict[str, dict[str, Any]] = {}
    try:
        from elaunch.config import RDZV_CONF_DEFAULTS

        e: dict[str, Any] = {**RDZV_CONF_DEFAULTS, **conf}
        e["beat_period"] = min(e["keep_alive_interval"], e["heartbeat_timeout"] / e["keep_alive_max_attempt"])
        # found after heartbeat_timeout + up to one beat; the other survivor hears of it within one
        # more beat; the new round then ends its last call once both survivors joined (a restart
        # round waits only for the previous round's survivors, see docs/rendezvous.md)
        e["expected_s"] = e["heartbeat_timeout"] + e["beat_period"]
        e["expected_max_s"] = e["expected_s"] + e["beat_period"]
        out["elaunch"] = e
    except ImportError:
        pass
    t = torch_defaults()
    if t is not None:
        t = {**t, **{k: float(int(v)) for k, v in conf.items()}}
        t["dead_after"] = t["keep_alive_interval"] * t["keep_alive_max_attempt"]
        out["torchrun"] = t
    return out


def summarize(b: Bench) -> tuple[str, dict[str, Any], list[str]]:
    by: dict[str, list[dict[str, Any]]] = {n: [t for t in b.trials if t["launcher"] == n] for n in b.launchers()}
    st: dict[str, dict[str, Any]] = {}
    for key in ("last", "first"):
        st[key] = {n: bl.stats(t.get(key) for t in ts) for n, ts in by.items()}
    notes: list[str] = []

    def cell(n: str, key: str) -> str:
        ts = by.get(n, [])
        s = st[key].get(n)
        if not ts:
            return "—"
        if s is None:
            outs = sorted({t["outcome"] for t in ts})
            if outs == ["not noticed"]:
                return f"not noticed in {b.limit(n):g} s ({len(ts)}/{len(ts)})"
            return "; ".join(outs)
        return bl.fmt_seconds(s)

    def ratio(key: str) -> str:
        e, t = st[key].get("elaunch"), st[key].get("torchrun")
        if e is not None and t is not None:
            return bl.fmt_ratio(bl.ratio(e, t))
        if e is not None and by.get("torchrun") and all(x["outcome"] == "not noticed" for x in by["torchrun"]):
            return f"< {bl.fmt_ratio(e['median'] / b.limit('torchrun'))}"
        return "—"

    rows = [
        ["node SIGKILL → new worker running on the LAST survivor", cell("elaunch", "last"), cell("torchrun", "last")],
        [
            "node SIGKILL → new worker running on the first survivor",
            cell("elaunch", "first"),
            cell("torchrun", "first"),
        ],
    ]
    rows[0].append(ratio("last"))
    rows[1].append(ratio("first"))
    # elaunch's own timeline, from its agent lines (same host: its clock is ours).
    marks: dict[str, list[float | None]] = {"noticed": [], "all_restarting": [], "round": []}
    for trial in by.get("elaunch", []):
        log = trial.get("elaunch_log") or {}
        for k, key, pick in (("noticed", "lost", min), ("all_restarting", "restart", max), ("round", "round", max)):
            vals = [v["marks"].get(key) for v in log.values()]
            marks[k].append(pick(v for v in vals if v is not None) if vals and None not in vals else None)
    labels = {
        "noticed": "elaunch: SIGKILL → lost node found (its ring watcher)",
        "all_restarting": "elaunch: SIGKILL → every survivor restarting",
        "round": "elaunch: SIGKILL → next rendezvous round formed",
    }
    if by.get("elaunch"):
        rows += [[labels[k], bl.fmt_seconds(bl.stats(v)), "—", "—"] for k, v in marks.items()]
    sets = settings(b)
    e, t = sets.get("elaunch"), sets.get("torchrun")

    def f(v: float) -> str:
        return f"{v:g}"

    rows.append(
        [
            "heartbeat settings in effect",
            (
                f"heartbeat_timeout {f(e['heartbeat_timeout'])} s, keep_alive_interval {f(e['keep_alive_interval'])} s, "
                f"max_attempt {f(e['keep_alive_max_attempt'])} (beat every {e['beat_period']:.2f} s)"
            )
            if e
            else "?",
            (
                f"keep_alive_interval {f(t['keep_alive_interval'])} s × max_attempt {f(t['keep_alive_max_attempt'])} "
                f"(dead after {f(t['dead_after'])} s), heartbeat_timeout {f(t['heartbeat_timeout'])} s"
            )
            if t
            else "?",
            "—",
        ]
    )
    rows.append(
        [
            "last_call_timeout (2 survivors < max 3; elaunch ends it once both joined)",
            f"{f(e['last_call_timeout'])} s" if e else "?",
            f"{f(t['last_call_timeout'])} s" if t else "?",
            "—",
        ]
    )
    if e:
        rows.append(
            [
                "elaunch expected: heartbeat_timeout + 1–2 beats",
                f"{e['expected_s']:.1f}–{e['expected_max_s']:.1f} s",
                "—",
                "—",
            ]
        )
        last = st["last"].get("elaunch")
        if last is not None and last["max"] > e["expected_max_s"] + 2:
            notes.append(
                f"elaunch took up to {last['max']:.1f} s, more than heartbeat_timeout + 2 beats "
                f"({e['expected_max_s']:.1f} s) + 2 s for the workers"
            )
    headers = ["measure", "elaunch: median (min–max)", "torchrun: median (min–max)", "ratio e/t"]
    summary = {"last": st["last"], "first": st["first"], "elaunch_marks": marks, "settings": sets}
    for n, ts in by.items():
        outs = [x["outcome"] for x in ts]
        if any(o not in ("recovered", "not noticed") for o in outs):
            notes.append(f"{n}: outcomes {outs}")
    for n, ts in by.items():
        quiet = [x for x in ts if x["outcome"] == "not noticed"]
        if quiet:
            agents = sum(sum(x["alive_at_end"].values()) for x in quiet)
            workers = sum(sum(x["round0_workers_alive_at_end"].values()) for x in quiet)
            said = sorted({line for x in quiet for v in x["stderr_tail"].values() for line in v})
            notes.append(
                f"{n}, {len(quiet)} trial(s) with nothing noticed: {b.limit(n):g} s after the kill {agents} of "
                f"{2 * len(quiet)} survivor agents still ran, {workers} of {2 * len(quiet)} round-0 workers were "
                f"still the same processes; the agents wrote {len(said)} distinct line(s) on stderr"
                + (f" (last: {said[-1][:160]!r})" if said else "")
            )
    return bl.md_table(headers, rows), summary, notes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    bl.add_trial_options(p, "recovery")
    p.add_argument("--elaunch-limit", type=float, default=60.0, help="seconds elaunch gets after the kill")
    p.add_argument("--torchrun-limit", type=float, default=120.0, help="seconds torchrun gets after the kill")
    p.add_argument("--rdzv-conf", default="", help="--rdzv-conf for both launchers (default: none, their defaults)")
    p.add_argument("--no-torchrun", action="store_true", help="measure elaunch only")
    args = p.parse_args(argv)
    bl.trial_reps(p, args)

    b = Bench(args)
    run = bl.run_trials(p, b, args.keep_python_env)
    table, summary, more = summarize(b)
    notes = run.notes + more + ([run.busy] if run.busy else [])
    total = run.total
    conf = f"--rdzv-conf {args.rdzv_conf}" if args.rdzv_conf else "rendezvous defaults"
    print(
        f"## elaunch vs torchrun: node death → survivors' workers running again ({args.reps} rep{'s' if args.reps > 1 else ''}{', quick' if args.quick else ''})"
    )
    print()
    print(
        f"3 nodes on 127.0.0.1, `--nnodes 2:3 --nproc-per-node 1 --max-restarts 3`, c10d, {conf}; a non-store node SIGKILLed."
    )
    print()
    print(table)
    print()
    return bl.finish(
        "recovery", args, b.cmd, notes, total, table,
        subreaper=run.subreaper, load_average=run.load_average, summary=summary, trials=b.trials,
    )  # fmt: skip


if __name__ == "__main__":
    bl.entry(main)
