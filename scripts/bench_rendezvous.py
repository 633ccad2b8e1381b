#!/usr/bin/env python3
"""Benchmark: N agents completing one rendezvous round, elaunch's DynamicRendezvous against
torch's DynamicRendezvousHandler + C10dRendezvousBackend, in the same harness and run.

Harness (identical for both): the parent hosts one TCPStore server on 127.0.0.1; N agents run as
threads spread over --procs worker processes (default max(4, N/64): with hundreds of threads in
one process the GIL, not the protocol, sets the pace), each agent with its own TCPStore client
connection, all made before the clock starts. The clock runs from the parent's "go" to the last
agent's return from `next_rendezvous` (CLOCK_MONOTONIC is shared by all processes).
MIN = MAX = N, so neither implementation waits for a last call. torch gets --torch-limit seconds
per N; once it misses one, larger N are skipped for it.

    python scripts/bench_rendezvous.py            # N = 8 32 64 128 256 1024 2048 4096
    python scripts/bench_rendezvous.py --sizes 1024,2048,4096 --no-torch --repeats 1   # the large rounds
    python scripts/bench_rendezvous.py --quick    # N = 8 32 (CI smoke)
    python scripts/bench_rendezvous.py --sizes 8,64 --repeats 5 --torch-limit 120
    python scripts/bench_rendezvous.py --recovery # also: node death -> survivors' next round
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SIZES = (8, 32, 64, 128, 256, 1024, 2048, 4096)
QUICK_SIZES = (8, 32)


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


# -- worker process ---------------------------------------------------------------------------
def _make_agent(impl: str, port: int, run_id: str, n: int, index: int, conf: dict[str, float]) -> Any:
    dist = _dist()
    client = dist.TCPStore("127.0.0.1", port, is_master=False, wait_for_workers=False, timeout=timedelta(seconds=300))
    if impl == "elaunch":
        from elaunch.rendezvous.api import RendezvousSettings
        from elaunch.rendezvous.dynamic import DynamicRendezvous
        from elaunch.rendezvous.store import TCPStoreAdapter

        settings = RendezvousSettings(**conf)  # type: ignore[arg-type]
        return DynamicRendezvous(TCPStoreAdapter.wrap(client, 300.0), run_id, n, n, settings, f"agent{index}")
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


def worker_main(args: argparse.Namespace) -> None:
    """Build `count` agents, say ready, wait for go, run them, report the last finish time."""
    _raise_fd_limit()
    _dist()  # import once, before the threads
    conf = json.loads(args.conf)
    first, count = args.first, args.count
    try:
        with ThreadPoolExecutor(min(64, count)) as ex:  # connect in parallel
            agents = list(
                ex.map(
                    lambda i: _make_agent(args.impl, args.port, args.run_id, args.n, i, conf),
                    range(first, first + count),
                )
            )
    except Exception as e:
        print(f"setup failed: {type(e).__name__}: {e}", flush=True)
        os._exit(1)
    ends: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    go = threading.Event()

    def run(i: int) -> None:
        go.wait()
        try:
            _join(args.impl, agents[i], first + i)
            t = time.monotonic()
            with lock:
                ends.append(t)
        except Exception as e:
            with lock:
                errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    print("ready", flush=True)
    sys.stdin.readline()
    go.set()
    for t in threads:
        t.join()
    print(json.dumps({"last": max(ends) if ends else None, "done": len(ends), "errors": errors[:3]}), flush=True)
    os._exit(0)  # teardown is not measured: torch's shutdown alone takes minutes at large N


# -- parent -----------------------------------------------------------------------------------
def run_round(impl: str, n: int, procs: int, limit: float, conf: dict[str, float]) -> float | None:
    """Seconds for n agents to complete one round, or None if not done within `limit`."""
    dist = _dist()
    server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, multi_tenant=True)
    run_id = f"bench-{impl}-{n}-{os.getpid()}-{time.monotonic_ns()}"
    procs = max(1, min(procs, n))
    per = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
    children: list[subprocess.Popen[str]] = []
    first = 0
    env = {**os.environ, "TORCH_CPP_LOG_LEVEL": os.environ.get("TORCH_CPP_LOG_LEVEL", "FATAL")}
    for count in per:
        cmd = [sys.executable, __file__, "--worker", "--impl", impl, "--n", str(n), "--port", str(server.port)]
        cmd += ["--run-id", run_id, "--first", str(first), "--count", str(count), "--conf", json.dumps(conf)]
        children.append(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env))
        first += count
    try:
        for c in children:
            line = c.stdout.readline() if c.stdout else ""
            if line.strip() != "ready":
                raise RuntimeError(f"{impl} worker failed to start (got {line!r})")
        t0 = time.monotonic()
        for c in children:
            assert c.stdin is not None
            c.stdin.write("go\n")
            c.stdin.flush()
        results = _collect(children, t0 + limit)
        if results is None:
            return None
        errors = [e for r in results for e in r["errors"]]
        if errors:
            raise RuntimeError(f"{impl} N={n}: {errors[0]}")
        return max(r["last"] for r in results) - t0
    finally:
        for c in children:
            if c.poll() is None:
                c.send_signal(signal.SIGKILL)
            c.wait()
            for f in (c.stdin, c.stdout):
                if f is not None:
                    f.close()
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
    from elaunch.rendezvous.store import TCPStoreAdapter

    dist = _dist()
    conf = json.loads(args.conf)
    first, count = args.first, args.count

    def make(i: int) -> DynamicRendezvous:
        client = dist.TCPStore(
            "127.0.0.1", args.port, is_master=False, wait_for_workers=False, timeout=timedelta(seconds=300)
        )
        settings = RendezvousSettings(**conf)
        return DynamicRendezvous(TCPStoreAdapter.wrap(client), args.run_id, args.n - 1, args.n, settings, f"agent{i}")

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="N = 8, 32 only")
    p.add_argument("--sizes", help="comma-separated N values")
    p.add_argument("--repeats", type=int, default=3, help="elaunch runs per N (median reported)")
    p.add_argument("--torch-limit", type=float, default=60.0, help="seconds torch gets per N")
    p.add_argument(
        "--procs", type=int, default=0, help="worker processes the agents are spread over (default: max(4, N/64))"
    )
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--recovery", action="store_true", help="also time node death -> survivors' next round")
    # worker modes (internal)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--recovery-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--impl", default="elaunch", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--run-id", default="", help=argparse.SUPPRESS)
    p.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--conf", default="{}", help=argparse.SUPPRESS)
    args = p.parse_args()
    _quiet_resolver()
    if args.worker:
        return worker_main(args)
    if args.recovery_worker:
        return recovery_worker_main(args)

    _raise_fd_limit()
    sizes = tuple(int(s) for s in args.sizes.split(",")) if args.sizes else (QUICK_SIZES if args.quick else SIZES)
    conf = {"join_timeout": 600.0, "last_call_timeout": 30.0}
    print(
        "# one rendezvous round, MIN=MAX=N, agents as threads over "
        f"{args.procs or 'max(4, N/64)'} processes, one TCPStore on 127.0.0.1"
    )
    _dist()
    print(f"# python {sys.version.split()[0]}, torch {sys.modules['torch'].__version__}, {os.cpu_count()} CPUs")
    rows = []
    torch_ok = not args.no_torch
    for n in sizes:
        procs = args.procs or max(4, -(-n // 64))  # <= 64 agents per process: less GIL, more protocol
        times = [run_round("elaunch", n, procs, 600.0, conf) for _ in range(args.repeats)]
        done = [t for t in times if t is not None]
        ours = statistics.median(done) if len(done) == len(times) else None
        theirs: float | None = None
        theirs_s = "skipped"
        if torch_ok:
            theirs = run_round("torch", n, procs, args.torch_limit, conf)
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
        rows.append((n, ours_s, theirs_s, ratio))
        print(f"# N={n}: elaunch {[round(t, 3) if t else None for t in times]} torch {theirs_s}", flush=True)
    print()
    # ms per node: flat means the round grows linearly with N (all N agents share this machine's CPUs)
    print("| N | elaunch median (s) | ms per node | torch (s) | torch / elaunch |")
    print("|---:|---:|---:|---:|---:|")
    for n, a, b, r in rows:
        per = f"{1000 * float(a) / n:.2f}" if a != "not done" else "-"
        print(f"| {n} | {a} | {per} | {b} | {r} |")
    if args.recovery:
        rconf = {"join_timeout": 120.0, "last_call_timeout": 1.0, "heartbeat_timeout": 2.0, "keep_alive_interval": 0.5}
        print()
        print(f"# node death -> survivors' next round complete (elaunch; conf {rconf}; MIN=N-1, MAX=N)")
        print("| N | seconds |")
        print("|---:|---:|")
        for n in (8, 64):
            if args.quick and n > 8:
                break
            print(f"| {n} | {run_recovery(n, rconf, args.procs or 4):.3f} |", flush=True)


if __name__ == "__main__":
    main()
