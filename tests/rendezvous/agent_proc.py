"""One rendezvous agent in its own process, for the multi-process tests.

Driven by commands on stdin (join, close REASON, barrier SECONDS, fail TEXT, failures, exit);
reports JSON lines on stdout: ready (with the store's address), round, membership changes,
notices, errors. `--backend etcd` meets in an etcd at `--port` instead of a TCPStore. Joins run
in a thread so that commands (e.g. close) still work while one blocks.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading

from elaunch.errors import ElaunchError
from elaunch.rendezvous import Endpoint, NodeInfo, RendezvousConfig, RendezvousSettings, create_rendezvous

_out = threading.Lock()


def say(**event: object) -> None:
    with _out:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--name", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--run-id", default="job")
    p.add_argument("--nnodes", default="2:3")
    p.add_argument("--conf", default="{}")
    p.add_argument("--backend", default="c10d", help="c10d (the endpoint's port 0: host it) or etcd")
    p.add_argument("--standby", type=int, default=0)
    a = p.parse_args()
    lo, _, hi = a.nnodes.partition(":")
    try:
        conf = json.loads(a.conf)
        cfg = RendezvousConfig(
            backend=a.backend,
            run_id=a.run_id,
            min_nodes=int(lo),
            max_nodes=int(hi or lo),
            endpoint=Endpoint("127.0.0.1", a.port),
            settings=RendezvousSettings(**conf),
            standby=a.standby,
        )
        rdzv = create_rendezvous(cfg, node_id=a.name)
    except ElaunchError as e:
        say(event="error", op="create", type=type(e).__name__, message=e.message)
        return
    me = NodeInfo(host=a.name, role="default", local_world_size=1, master_port=40000)
    changed = threading.Event()
    rdzv.set_wakeup(changed.set)
    if hasattr(rdzv, "set_notice"):
        rdzv.set_notice(lambda text: say(event="notice", text=text))
    stop = threading.Event()

    def watch() -> None:
        last = rdzv.membership()
        while not stop.is_set():
            changed.wait(0.5)
            changed.clear()
            m = rdzv.membership()
            if m != last:
                last = m
                say(event="membership", waiting=m.waiting, lost=list(m.lost), closed=m.closed, reason=m.reason)

    def join() -> None:
        try:
            r = rdzv.next_rendezvous(me)
            hosts = [n.host for n in r.nodes]
            say(event="round", round=r.round, rank=r.group_rank, hosts=hosts, master=r.master_addr)
        except ElaunchError as e:
            say(event="error", op="join", type=type(e).__name__, message=e.message)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    say(event="ready", store=rdzv.store.address if rdzv.store is not None else None)
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        try:
            if cmd == "join":
                threading.Thread(target=join, daemon=True).start()
            elif cmd == "close":
                rdzv.set_closed(arg)
            elif cmd == "barrier":
                rdzv.exit_barrier(float(arg))
                say(event="barrier")
            elif cmd == "fail":
                rdzv.publish_failure(arg)
                say(event="published")
            elif cmd == "failures":
                say(event="failures", items=rdzv.failures())
            elif cmd == "exit":
                break
        except ElaunchError as e:
            say(event="error", op=cmd, type=type(e).__name__, message=e.message)
    stop.set()
    watcher.join()
    rdzv.shutdown()
    say(event="bye")


if __name__ == "__main__":
    main()
