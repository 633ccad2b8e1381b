#!/usr/bin/env python3
"""Benchmark: N agents completing one rendezvous round, elaunch's DynamicRendezvous against
torch's DynamicRendezvousHandler + C10dRendezvousBackend, in the same harness and run.

Harness (identical for both): the parent hosts one TCPStore server on 127.0.0.1 (c10d's libuv
server, as an agent or `elaunch rdzv-server` would). N agents run as threads, --per-proc of them
(default 128, over at least 4 processes) in each worker process; every worker is forked from one
fork server that imported torch and both rendezvous implementations once, so starting 32 workers
costs 32 forks rather than 32 imports of torch (2 s of CPU each) and the workers share its pages.
Each agent is the real thing, built as the agent builds it: its own TCPStore client connection
(`connect_store`; elaunch's `DynamicRendezvous` then clones its control and restart-watch
connections, as on a real node), every connection made before the clock starts. Each agent's `next_rendezvous` runs on a thread
of its own, which the protocol needs (its calls block on the store); elaunch's membership
threads start, as on a real node, once that node's round is complete. The clock runs from the
parent's "go" to the last agent's return from `next_rendezvous` (CLOCK_MONOTONIC is shared by all
processes). MIN = MAX = N, so neither implementation waits for a last call. torch gets
--torch-limit seconds per N; once it misses one, larger N are skipped for it.

What it prints per run: when the last agent had joined (its `add` on the round's counter), when
10/50/90 % of them had returned, and the store operations per node while the clock ran, counted
by a wrapper around each elaunch agent's store (`join:` the agent's own calls, `after:` its
membership threads' once its round was complete). A flat "ms per node" column means the round
grows linearly with N. What it cannot show: N agents here share 2 cores with each other and with
the store server, so every node's client work (a real node does it on its own CPU, in parallel)
is added up in the time; at 4096 nodes that is ~12,000 threads once rounds are complete (the
agent's, its heartbeat thread and its restart watch) and the server thread gets a small share of
the CPU. Figures vary with the machine's load: the load average is printed with each row.

    python scripts/bench_rendezvous.py            # N = 8 32 64 128 256 1024 2048 4096
    python scripts/bench_rendezvous.py --sizes 1024,2048,4096 --no-torch --repeats 1   # the large rounds
    python scripts/bench_rendezvous.py --quick    # N = 8 32 (CI smoke)
    python scripts/bench_rendezvous.py --sizes 8,64 --repeats 5 --torch-limit 120
    python scripts/bench_rendezvous.py --recovery # also: node death -> survivors' next round
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SIZES = (8, 32, 64, 128, 256, 1024, 2048, 4096)
QUICK_SIZES = (8, 32)
PER_PROC = 128
MIN_PROCS = 4
"""Small rounds are spread over 4 processes too: torch's handler pickles its whole state per call, and
128 of its agents in one process wait on one GIL (its 128-node round did not finish in 60 s)."""


def _quiet_resolver() -> None:
    """c10d makes a reverse DNS lookup per connection (client and server side, the latter in the
    server's event loop). Where the resolver drops queries (this sandbox's does, ~1 in 25) each
    costs glibc's 5 s timeout; 1 s is enough to keep setup of 2000 connections short. Only
    setup is affected (no connection is made while the clock runs), equally for both sides."""
    os.environ.setdefault("RES_OPTIONS", "timeout:1 attempts:1")


def _raise_fd_limit() -> None:
    """Each agent holds one or two connections; the server process holds all of them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 16
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def _dist() -> Any:
    sys.path.insert(0, str(ROOT))
    from elaunch.rendezvous.store import _import_torch_distributed

    return _import_torch_distributed()


# -- counting store operations ------------------------------------------------------------------
class Counted:
    """A `Store` that counts the calls made on it (and on its clones) into `counts`, keyed by
    whether the calling thread is the agent's own (`join`) or one of the membership threads
    elaunch starts once a node's round is complete (`after`). A dict increment per call: the
    protocol's operations per node, N by N, are printed next to the times."""

    def __init__(self, inner: Any, counts: dict[str, int]) -> None:
        self._inner = inner
        self._counts = counts

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name in ("address", "port", "is_host") or not callable(attr):
            return attr
        counts = self._counts

        def call(*args: Any, **kwargs: Any) -> Any:
            kind = "after" if threading.current_thread().name.startswith("elaunch") else "join"
            key = f"{kind}:{name}"
            counts[key] = counts.get(key, 0) + 1
            out = attr(*args, **kwargs)
            if key == "join:add" and args[1] == 1:  # a join (or a finaliser's beat: close enough)
                counts["last_join_ns"] = max(counts.get("last_join_ns", 0), time.monotonic_ns())
            return Counted(out, counts) if name == "clone" else out

        return call


# -- worker process ---------------------------------------------------------------------------
def _make_agent(
    impl: str, port: int, run_id: str, n: int, index: int, conf: dict[str, float], counts: dict[str, int]
) -> Any:
    dist = _dist()
    if impl == "elaunch":
        from elaunch.rendezvous.api import RendezvousSettings
        from elaunch.rendezvous.dynamic import DynamicRendezvous
        from elaunch.rendezvous.store import connect_store

        settings = RendezvousSettings(**conf)  # type: ignore[arg-type]
        # as the agent connects (so its calls are bounded by the socket, on the caller's thread)
        store = Counted(connect_store("127.0.0.1", port, is_host=False, connect_timeout=300, timeout=300), counts)
        return DynamicRendezvous(store, run_id, n, n, settings, f"agent{index}")
    client = dist.TCPStore("127.0.0.1", port, is_master=False, wait_for_workers=False, timeout=timedelta(seconds=300))
    from torch.distributed.elastic.rendezvous import RendezvousParameters
    from torch.distributed.elastic.rendezvous.c10d_rendezvous_backend import C10dRendezvousBackend
    from torch.distributed.elastic.rendezvous.dynamic_rendezvous import create_handler

    params = RendezvousParameters(
        backend="c10d",
        endpoint=f"127.0.0.1:{port}",
        run_id=run_id,
        min_nodes=n,
        max_nodes=n,
        local_addr="127.0.0.1",  # rank 0 hosts the workers' store there: must resolve
        **{k: int(v) if k == "keep_alive_max_attempt" else v for k, v in conf.items()},
    )
    return create_handler(client, C10dRendezvousBackend(client, run_id), params)


def _join(impl: str, agent: Any, index: int) -> None:
    if impl == "elaunch":
        from elaunch.rendezvous.api import NodeInfo

        agent.next_rendezvous(NodeInfo(host=f"agent{index}", role="default", local_world_size=1, master_port=20000))
    else:
        agent.next_rendezvous()


def worker_main(conn: Connection, impl: str, n: int, port: int, run_id: str, first: int, count: int, conf: str) -> None:
    """One worker process (forked from the preloaded fork server): build `count` agents, say
    ready, wait for go, run them (one thread each), send back when the last one returned and
    the store operations they made."""
    _raise_fd_limit()
    counts: dict[str, int] = {}
    settings = json.loads(conf)
    try:
        with ThreadPoolExecutor(min(8, count)) as ex:  # connect in parallel
            agents = list(
                ex.map(
                    lambda i: _make_agent(impl, port, run_id, n, i, settings, counts),
                    range(first, first + count),
                )
            )
    except Exception as e:
        conn.send({"error": f"setup failed: {type(e).__name__}: {e}"})
        os._exit(1)
    ends: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    go = threading.Event()
    setup = dict(counts)
    counts.clear()

    def run(i: int) -> None:
        go.wait()
        try:
            _join(impl, agents[i], first + i)
            t = time.monotonic()
            with lock:
                ends.append(t)
        except Exception as e:
            with lock:
                errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    conn.send({"ready": setup})
    conn.recv()
    go.set()
    for t in threads:
        t.join()
    conn.send({"ends": ends, "done": len(ends), "errors": errors[:3], "counts": dict(counts)})
    conn.recv()  # the parent says when: teardown is not measured (torch's alone takes minutes at large N)
    os._exit(0)


# -- parent -----------------------------------------------------------------------------------
@dataclass
class Outcome:
    """One round: seconds until the last agent returned (None: not within the limit), when 10 /
    50 / 90 % of them had, and the store operations per node (`join:` the agent's calls, `after:`
    its membership threads' once its round was complete) while the clock ran."""

    seconds: float | None
    joined: float = 0.0
    """When the last agent had joined (its `add` on the round's counter returned)."""
    quantiles: tuple[float, float, float] = (0.0, 0.0, 0.0)
    ops: dict[str, float] = field(default_factory=dict)


_CTX: Any = None


def _context() -> Any:
    """The fork server every worker process is forked from: torch and the rendezvous modules are
    imported once there (not once per worker: 2 s of CPU each), and the workers share its pages."""
    global _CTX
    if _CTX is None:
        _CTX = multiprocessing.get_context("forkserver")
        _CTX.set_forkserver_preload(
            [
                "torch.distributed",
                "torch.distributed.elastic.rendezvous.dynamic_rendezvous",
                "torch.distributed.elastic.rendezvous.c10d_rendezvous_backend",
                "elaunch.rendezvous.dynamic",
                "elaunch.rendezvous.store",
                "__main__",
            ]
        )
    return _CTX


def run_round(impl: str, n: int, per_proc: int, limit: float, conf: dict[str, float]) -> Outcome:
    """One round of n agents (MIN = MAX = n) against one TCPStore server in this process."""
    dist = _dist()
    server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, multi_tenant=True)
    run_id = f"bench-{impl}-{n}-{os.getpid()}-{time.monotonic_ns()}"
    procs = min(n, max(MIN_PROCS, -(-n // per_proc)))
    per = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
    ctx = _context()
    children: list[tuple[Any, Connection]] = []
    first = 0
    try:
        for count in per:
            mine, theirs = ctx.Pipe()
            args = (theirs, impl, n, server.port, run_id, first, count, json.dumps(conf))
            proc = ctx.Process(target=worker_main, args=args, daemon=True)
            proc.start()
            theirs.close()
            children.append((proc, mine))
            first += count
        for _, c in children:
            msg = c.recv() if c.poll(600.0) else {"error": "no answer within 600 s"}
            if "error" in msg:
                raise RuntimeError(f"{impl} worker failed to start: {msg['error']}")
        t0 = time.monotonic()
        for _, c in children:
            c.send("go")
        results: list[dict[str, Any]] = []
        for _, c in children:
            if not c.poll(max(0.0, t0 + limit - time.monotonic())):
                return Outcome(None)
            results.append(c.recv())
        errors = [e for r in results for e in r["errors"]]
        if errors:
            raise RuntimeError(f"{impl} N={n}: {errors[0]}")
        ends = sorted(t - t0 for r in results for t in r["ends"])
        ops: dict[str, int] = {}
        joined = 0.0
        for r in results:
            joined = max(joined, r["counts"].pop("last_join_ns", 0) / 1e9 - t0)
            for k, v in r["counts"].items():
                ops[k] = ops.get(k, 0) + v
        q = (ends[len(ends) // 10], ends[len(ends) // 2], ends[9 * len(ends) // 10])
        return Outcome(ends[-1], joined, q, {k: v / n for k, v in sorted(ops.items())})
    finally:
        for proc, c in children:
            with contextlib.suppress(OSError):
                c.send("bye")
            proc.join(5.0)
            if proc.is_alive():
                proc.kill()
                proc.join()
            c.close()
        del server


def _collect(children: list[subprocess.Popen[str]], deadline: float) -> list[dict[str, Any]] | None:
    """Each worker's result line, or None if any is not there by `deadline`."""
    out: list[dict[str, Any]] = []
    box: dict[int, str] = {}

    def read(i: int, c: subprocess.Popen[str]) -> None:
        box[i] = c.stdout.readline() if c.stdout else ""

    readers = [threading.Thread(target=read, args=(i, c), daemon=True) for i, c in enumerate(children)]
    for r in readers:
        r.start()
    for r in readers:
        r.join(max(0.0, deadline - time.monotonic()))
        if r.is_alive():
            return None
    for i in range(len(children)):
        line = box.get(i, "")
        if not line:
            raise RuntimeError("a worker died without a result")
        out.append(json.loads(line))
    return out


def run_recovery(n: int, conf: dict[str, float], procs: int) -> float:
    """elaunch: SIGKILL one agent's process after round 0; seconds from the kill until every
    survivor has completed round 1 (lost detection + restart + new round)."""
    dist = _dist()
    server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, multi_tenant=True)
    run_id = f"bench-recovery-{n}-{time.monotonic_ns()}"
    cmd = [sys.executable, __file__, "--recovery-worker", "--port", str(server.port), "--run-id", run_id]
    cmd += ["--n", str(n), "--conf", json.dumps(conf)]
    victim = subprocess.Popen(
        [*cmd, "--first", "0", "--count", "1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    rest = n - 1
    procs = max(1, min(procs, rest))
    per = [rest // procs + (1 if i < rest % procs else 0) for i in range(procs)]
    survivors = []
    first = 1
    for count in per:
        survivors.append(
            subprocess.Popen(
                [*cmd, "--first", str(first), "--count", str(count)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
        first += count
    everyone = [victim, *survivors]
    try:
        for c in everyone:  # round 0 done everywhere
            assert c.stdout is not None
            if c.stdout.readline().strip() != "round0":
                raise RuntimeError("recovery worker failed in round 0")
        t_kill = time.monotonic()
        victim.send_signal(signal.SIGKILL)
        results = _collect(survivors, t_kill + 120)
        if results is None:
            raise RuntimeError("survivors did not complete round 1 within 120 s")
        return max(r["last"] for r in results) - t_kill
    finally:
        for c in everyone:
            if c.poll() is None:
                c.send_signal(signal.SIGKILL)
            c.wait()
            for f in (c.stdin, c.stdout):
                if f is not None:
                    f.close()
        del server


def recovery_worker_main(args: argparse.Namespace) -> None:
    """Agents that complete round 0, then (like the agent) rejoin as soon as membership shows
    a lost node, and report when round 1 is complete."""
    _raise_fd_limit()
    from elaunch.rendezvous.api import NodeInfo, RendezvousSettings
    from elaunch.rendezvous.dynamic import DynamicRendezvous
    from elaunch.rendezvous.store import connect_store

    conf = json.loads(args.conf)
    first, count = args.first, args.count

    def make(i: int) -> DynamicRendezvous:
        store = connect_store("127.0.0.1", args.port, is_host=False, connect_timeout=300, timeout=60)
        settings = RendezvousSettings(**conf)
        return DynamicRendezvous(store, args.run_id, args.n - 1, args.n, settings, f"agent{i}")

    with ThreadPoolExecutor(min(64, count)) as ex:
        agents = list(ex.map(make, range(first, first + count)))
    me = [
        NodeInfo(host=f"agent{first + i}", role="default", local_world_size=1, master_port=20000) for i in range(count)
    ]
    with ThreadPoolExecutor(count) as ex:
        list(ex.map(lambda i: agents[i].next_rendezvous(me[i]), range(count)))
    print("round0", flush=True)
    ends: list[float] = []
    lock = threading.Lock()

    def again(i: int) -> None:
        changed = threading.Event()
        agents[i].set_wakeup(changed.set)
        while not agents[i].membership().lost:
            changed.wait(1.0)
            changed.clear()
        agents[i].next_rendezvous(me[i])
        with lock:
            ends.append(time.monotonic())

    with ThreadPoolExecutor(count) as ex:
        list(ex.map(again, range(count)))
    print(json.dumps({"last": max(ends), "done": len(ends), "errors": []}), flush=True)
    os._exit(0)


def _load() -> str:
    """The 1-minute load average, with each figure (the machine is shared)."""
    return f"{os.getloadavg()[0]:.1f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="N = 8, 32 only")
    p.add_argument("--sizes", help="comma-separated N values")
    p.add_argument("--repeats", type=int, default=3, help="elaunch runs per N (median reported)")
    p.add_argument("--torch-limit", type=float, default=60.0, help="seconds torch gets per N")
    p.add_argument("--limit", type=float, default=300.0, help="seconds elaunch gets per run")
    p.add_argument("--per-proc", type=int, default=PER_PROC, help=f"agents per worker process (default {PER_PROC})")
    p.add_argument("--procs", type=int, default=4, help="worker processes of the recovery runs (default 4)")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--recovery", action="store_true", help="also time node death -> survivors' next round")
    # worker mode of the recovery runs (internal)
    p.add_argument("--recovery-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--run-id", default="", help=argparse.SUPPRESS)
    p.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--conf", default="{}", help=argparse.SUPPRESS)
    args = p.parse_args()
    _quiet_resolver()
    if args.recovery_worker:
        return recovery_worker_main(args)

    _raise_fd_limit()
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "FATAL")  # c10d logs each timed-out wait
    sizes = tuple(int(s) for s in args.sizes.split(",")) if args.sizes else (QUICK_SIZES if args.quick else SIZES)
    conf = {"join_timeout": 600.0, "last_call_timeout": 30.0}
    print(
        f"# one rendezvous round, MIN=MAX=N, agents as threads, {args.per_proc} a process (forked from one "
        "preloaded fork server), one TCPStore on 127.0.0.1"
    )
    _dist()
    print(f"# python {sys.version.split()[0]}, torch {sys.modules['torch'].__version__}, {os.cpu_count()} CPUs")
    rows = []
    torch_ok = not args.no_torch
    for n in sizes:
        load = _load()
        runs = []
        for _ in range(args.repeats):
            run = run_round("elaunch", n, args.per_proc, args.limit, conf)
            runs.append(run)
            if run.seconds is None:
                print(f"# N={n}: elaunch not done in {args.limit:g} s (load {_load()})", flush=True)
                continue
            q = ", ".join(f"{t:.2f}" for t in run.quantiles)
            ops = ", ".join(f"{k} {v:.2f}" for k, v in run.ops.items())
            print(
                f"# N={n}: elaunch {run.seconds:.3f} s (load {_load()}): all joined {run.joined:.2f} s; "
                f"returned at 10/50/90 %: {q} s; store operations per node: {ops}",
                flush=True,
            )
        times = [r.seconds for r in runs]
        done = [t for t in times if t is not None]
        ours = statistics.median(done) if len(done) == len(times) else None
        theirs: float | None = None
        theirs_s = "skipped"
        if torch_ok:
            theirs = run_round("torch", n, args.per_proc, args.torch_limit, conf).seconds
            if theirs is None:
                theirs_s = f"not done in {args.torch_limit:g} s"
                torch_ok = False
            else:
                theirs_s = f"{theirs:.3f}"
        ours_s = f"{ours:.3f}" if ours is not None else "not done"
        if ours and theirs:
            ratio = f"{theirs / ours:.1f}x"
        elif ours and theirs_s.startswith("not done"):
            ratio = f">{args.torch_limit / ours:.0f}x"
        else:
            ratio = "-"
        rows.append((n, ours_s, theirs_s, ratio, f"{load}-{_load()}"))
        print(f"# N={n}: elaunch {[round(t, 3) if t else None for t in times]} torch {theirs_s}", flush=True)
    print()
    # ms per node: flat means the round grows linearly with N (all N agents share this machine's CPUs)
    print("| N | elaunch median (s) | ms per node | torch (s) | torch / elaunch | load average |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n, a, b, r, ld in rows:
        per = f"{1000 * float(a) / n:.2f}" if a != "not done" else "-"
        print(f"| {n} | {a} | {per} | {b} | {r} | {ld} |")
    if args.recovery:
        rconf = {"join_timeout": 120.0, "last_call_timeout": 1.0, "heartbeat_timeout": 2.0, "keep_alive_interval": 0.5}
        print()
        print(f"# node death -> survivors' next round complete (elaunch; conf {rconf}; MIN=N-1, MAX=N)")
        print("| N | seconds |")
        print("|---:|---:|")
        for n in (8, 64):
            if args.quick and n > 8:
                break
            print(f"| {n} | {run_recovery(n, rconf, args.procs):.3f} |", flush=True)


if __name__ == "__main__":
    main()
