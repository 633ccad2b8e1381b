#!/usr/bin/env python3
"""What an idle, healthy job costs etcd: revisions and lease keep-alives per minute.

    python scripts/bench_etcd_idle.py                   # 2 nodes, 60 s, rendezvous defaults
    python scripts/bench_etcd_idle.py --nodes 4 --window 20

Starts a private etcd (scripts/testbed, Debian etcd-server), builds `--nodes` etcd rendezvous
nodes as threads of this process (`create_rendezvous`, backend etcd, every setting at its default
unless `--heartbeat-timeout`/`--keep-alive-interval` say otherwise), forms round 0, lets one
heartbeat timeout pass, then reads etcd's revision and its `etcd_debugging_lease_renewed_total`
metric at the start and the end of a `--window` of seconds in which nothing happens but
heartbeats. Every put is one revision; a lease keep-alive is none. Prints a markdown table; etcd
is stopped and its data removed at the end. Runs against any commit (it uses only
`create_rendezvous`), so the figure before a change is measured by running it on that commit.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from elaunch.rendezvous import Endpoint, NodeInfo, RendezvousConfig, RendezvousSettings, create_rendezvous
from scripts.testbed.etcd import EtcdServer, lease_renewals, revision


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--window", type=float, default=60.0, help="seconds measured (default 60)")
    p.add_argument("--heartbeat-timeout", type=float, default=RendezvousSettings().heartbeat_timeout)
    p.add_argument("--keep-alive-interval", type=float, default=RendezvousSettings().keep_alive_interval)
    a = p.parse_args()
    s = RendezvousSettings(heartbeat_timeout=a.heartbeat_timeout, keep_alive_interval=a.keep_alive_interval)
    srv = EtcdServer().start()
    rdzvs = []
    try:
        cfg = RendezvousConfig(
            backend="etcd",
            run_id="idle",
            min_nodes=a.nodes,
            max_nodes=a.nodes,
            endpoint=Endpoint("127.0.0.1", srv.port),
            settings=s,
        )
        rdzvs = [create_rendezvous(cfg, node_id=f"n{i}") for i in range(a.nodes)]
        joins = [
            threading.Thread(target=r.next_rendezvous, args=(NodeInfo(f"h{i}", "default", 1, 29500 + i),))
            for i, r in enumerate(rdzvs)
        ]
        for t in joins:
            t.start()
        for t in joins:
            t.join(s.join_timeout)
        time.sleep(s.heartbeat_timeout)  # settle: every membership thread has looked once
        rev0, ka0, t0 = revision(srv.client_url), lease_renewals(srv.client_url), time.monotonic()
        time.sleep(a.window)
        rev1, ka1, t1 = revision(srv.client_url), lease_renewals(srv.client_url), time.monotonic()
        per_min = 60.0 / (t1 - t0)
        print("| nodes | beat period (s) | window (s) | etcd revisions / min | lease keep-alives / min |")
        print("|---:|---:|---:|---:|---:|")
        print(
            f"| {a.nodes} | {s.beat_period:.3g} | {t1 - t0:.1f} | {(rev1 - rev0) * per_min:.1f} "
            f"| {(ka1 - ka0) * per_min:.1f} |"
        )
        return 0
    finally:
        for r in rdzvs:
            r.shutdown()
        srv.close()


if __name__ == "__main__":
    sys.exit(main())
