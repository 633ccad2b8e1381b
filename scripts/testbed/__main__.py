"""``python -m scripts.testbed up|down`` (from the repository root): a test bed by hand, or clean up.

``up`` holds the cluster until Ctrl-C/SIGTERM and then tears it down; ``down``
removes what a killed run left (namespaces, etcd, SLURM of dead owner PIDs).
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import signal
import sys
import threading

from . import etcd, netns, slurm


def _up(args: argparse.Namespace) -> int:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    host_link = args.host_link or args.etcd or args.slurm
    with contextlib.ExitStack() as stack:
        cl = stack.enter_context(netns.Cluster(args.hosts, host_link=host_link, subnet=args.subnet))
        print(f"cluster {cl.prefix}: hosts {', '.join(cl.hostnames)}", flush=True)
        for i in range(1, cl.n + 1):
            print(f"  host{i} {cl.addr(i)}: {shlex.join(cl.wrap(i, ['bash']))}")
        if args.etcd:
            e = stack.enter_context(etcd.EtcdServer(cl))
            print(f"etcd: {e.client_url} (hosts: http://host0:{e.port})")
        if args.slurm:
            s = stack.enter_context(slurm.SlurmCluster(cl, gpus_per_node=args.gpus))
            print(f"slurm: export SLURM_CONF={s.conf_path}")
        print("up; Ctrl-C to tear down", flush=True)
        while not stop.wait(1.0):
            pass
    print("down", flush=True)
    return 0


def _down(args: argparse.Namespace) -> int:
    for what in (
        slurm.cleanup_stale(),
        etcd.cleanup_stale(),
        netns.cleanup_stale(force=args.force),
    ):
        for item in what:
            print(f"removed {item}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run ``up`` or ``down``."""
    p = argparse.ArgumentParser(prog="python -m scripts.testbed")
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start fake hosts (and etcd/SLURM) until Ctrl-C")
    up.add_argument("--hosts", type=int, default=2)
    up.add_argument("--subnet", type=int, default=None)
    up.add_argument("--host-link", action="store_true")
    up.add_argument("--etcd", action="store_true")
    up.add_argument("--slurm", action="store_true")
    up.add_argument("--gpus", type=int, default=0, help="fake GPUs per SLURM node")
    down = sub.add_parser("down", help="remove leftovers of dead runs")
    down.add_argument("--force", action="store_true", help="also namespaces of live owners")
    args = p.parse_args(argv)
    return _up(args) if args.cmd == "up" else _down(args)


if __name__ == "__main__":
    sys.exit(main())
