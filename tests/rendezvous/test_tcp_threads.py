"""Real TCPStore, agents as threads: a store that goes silent (a cut link, nothing closed) must
still end in a clear "lost the rendezvous store" within seconds, and nothing may hang."""

from __future__ import annotations

import threading
import time

import pytest

from elaunch.rendezvous.dynamic import STORE_LOST, DynamicRendezvous
from elaunch.rendezvous.store import connect_store
from scripts.testbed import wait_until

from ._support import FAST, Call, FreezableProxy, info

pytest.importorskip("torch")


@pytest.mark.timeout(60)
def test_a_silent_store_is_reported_lost_and_nothing_hangs() -> None:
    host = connect_store("127.0.0.1", 0, is_host=True, timeout=10)
    proxy = FreezableProxy(host.port)
    rs: list[DynamicRendezvous] = []
    try:
        for i in range(2):
            conn = connect_store("127.0.0.1", proxy.port, is_host=False, connect_timeout=10, timeout=10)
            rs.append(DynamicRendezvous(conn, "job", 2, 2, FAST, f"n{i}"))
        calls = [Call(lambda r=r, i=i: r.next_rendezvous(info(f"h{i}"))) for i, r in enumerate(rs)]
        assert [c.result(20).group_world_size for c in calls] == [2, 2]
        t0 = time.monotonic()
        proxy.freeze()  # the link to the store goes silent; TCP alone would wait ~15 min
        for r in rs:
            m = wait_until(lambda r=r: r.membership().closed and r.membership(), 15, "the store to be declared lost")
            assert m.reason is not None and m.reason.startswith(f"{STORE_LOST} at 127.0.0.1:{proxy.port}"), m
        assert time.monotonic() - t0 < 4 * FAST["heartbeat_timeout"] + 5
        blocked = Call(lambda: rs[0].exit_barrier(60))  # a main-connection call: bounded too
        assert blocked.error(30) is not None
    finally:
        t_shut = time.monotonic()
        for r in rs:
            r.shutdown()
        assert time.monotonic() - t_shut < 30
        proxy.close()
        host.close()
    # the watchers, and the helper threads of the abandoned connections (unblocked now that the
    # proxy closed its sockets), are all gone
    wait_until(
        lambda: not [t for t in threading.enumerate() if t.name.startswith(("elaunch-rdzv", "elaunch-store"))],
        10,
        "rendezvous threads to stop",
    )
