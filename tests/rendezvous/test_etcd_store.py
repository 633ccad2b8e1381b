"""EtcdStore beyond the shared Store contract (test_store.py runs that on etcd too): key prefix,
independent clones, a stopped or hung etcd, unreachable and non-etcd endpoints, no threads
left by waits, and the rendezvous protocol over a real etcd (agents as threads)."""

from __future__ import annotations

import http.server
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from elaunch.errors import RendezvousClosedError, StoreError
from elaunch.rendezvous import EtcdOptions, Rendezvous, create_rendezvous
from elaunch.rendezvous.dynamic import STORE_LOST
from scripts.testbed import free_port, wait_until

from ._support import FAST, Call, config, info, rdzv_threads, settings

pytest.importorskip("etcd3gw")

from elaunch.rendezvous.etcd import EtcdStore, connect_etcd


@pytest.fixture
def store(etcd_server: Any) -> Iterator[EtcdStore]:
    s = connect_etcd("127.0.0.1", etcd_server.port, connect_timeout=10, timeout=5)
    yield s
    s.close()


@pytest.mark.etcd
@pytest.mark.timeout(30)
def test_keys_live_under_the_prefix(etcd_server: Any, store: EtcdStore) -> None:
    import etcd3gw

    team = connect_etcd("127.0.0.1", etcd_server.port, options=EtcdOptions(prefix="/team"), timeout=5)
    try:
        team.set("/elaunch/j/x", "1")
        raw = etcd3gw.client(host="127.0.0.1", port=etcd_server.port, timeout=5)
        assert raw.get("/team/elaunch/j/x") == [b"1"]
        assert not store.check(["/elaunch/j/x"])  # no prefix: another namespace
        store.set("/elaunch/j/x", "2")
        assert team.get("/elaunch/j/x") == b"1"
    finally:
        team.close()


@pytest.mark.etcd
@pytest.mark.timeout(30)
def test_clones_are_independent_connections(store: EtcdStore) -> None:
    other = store.clone()
    try:
        blocked = Call(lambda: store.wait(["/late"], 3))
        t0 = time.monotonic()
        other.set("/a", "1")  # not delayed by the wait on the other connection
        assert other.get("/a") == b"1"
        assert time.monotonic() - t0 < 2
        other.set("/late", "x")
        assert blocked.result(5) is True
        store.close()
        with pytest.raises(StoreError, match="closed"):
            store.get("/a")
        assert other.get("/a") == b"1"  # closing one connection leaves the clone working
    finally:
        other.close()


@pytest.mark.etcd
@pytest.mark.timeout(30)
def test_waits_make_no_threads(store: EtcdStore) -> None:
    before = set(threading.enumerate())
    other = store.clone()
    for i in range(5):
        assert store.wait([f"/w{i}"], 0.1) is False
        setter = threading.Timer(0.05, other.set, args=(f"/w{i}", "1"))
        setter.start()
        assert store.get(f"/w{i}", timeout=5) == b"1"
        setter.join()
    other.close()
    assert set(threading.enumerate()) == before


@pytest.mark.etcd
@pytest.mark.timeout(30)
def test_reads_of_more_keys_than_one_etcd_transaction_allows(store: EtcdStore) -> None:
    # etcd refuses a transaction of more than 128 operations (--max-txn-ops): a 200-node group's
    # keys are read in several requests.
    keys = [f"/many/{i}" for i in range(200)]
    assert not store.check(keys)
    for k in keys[:-1]:
        store.set(k, k)
    assert not store.check(keys)
    other = store.clone()
    setter = threading.Timer(0.05, other.set, args=(keys[-1], keys[-1]))
    try:
        setter.start()
        assert store.multi_get(keys, timeout=5) == [k.encode() for k in keys]  # the last one waited for
    finally:
        setter.join()
        other.close()
    assert store.check(keys)


@pytest.mark.etcd
@pytest.mark.timeout(30)
def test_a_stopped_server_fails_every_call_fast_naming_the_endpoint(etcd_server: Any, store: EtcdStore) -> None:
    where = f"127.0.0.1:{etcd_server.port}"
    waiter = Call(lambda: store.wait(["/never"], 20))
    wait_until(lambda: not waiter.done(), 1, "the waiter to block")
    etcd_server.close()  # TERM, then KILL: connections are closed
    t0 = time.monotonic()
    err = waiter.error(10)
    assert isinstance(err, StoreError) and where in err.message, err
    for call in (lambda: store.set("/k", "v"), lambda: store.add("/n", 1), lambda: store.clone().check(["/k"])):
        with pytest.raises(StoreError, match=where):
            call()
    assert time.monotonic() - t0 < 8


@pytest.mark.etcd
@pytest.mark.timeout(40)
def test_a_hung_server_bounds_every_call(etcd_server: Any, store: EtcdStore) -> None:
    """etcd frozen (SIGSTOP): the kernel still accepts connections, nothing answers."""
    store.set("/k", "v")
    store.set_timeout(1.0)
    watcher = store.clone()
    waiter = Call(lambda: watcher.wait(["/never"], 2))  # blocked in a watch when etcd freezes
    wait_until(lambda: not waiter.done(), 1, "the waiter to block")
    os.kill(etcd_server.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        err = waiter.error(2 + 1 + 2)  # its timeout, one request's timeout, a margin
        assert isinstance(err, StoreError) and "no answer" in err.message, err
        with pytest.raises(StoreError, match="no answer"):
            store.set("/k", "w")
        with pytest.raises(StoreError, match="no answer"):
            store.add("/n", 1)
        with pytest.raises(StoreError, match=f"127.0.0.1:{etcd_server.port}"):
            store.wait(["/never"], 0.5)
        assert time.monotonic() - t0 < 2 + 3 * (1.0 + 1.0) + 2
    finally:
        os.kill(etcd_server.pid, signal.SIGCONT)
        watcher.close()
    store.set_timeout(5.0)
    # the set that got no answer may still be applied once etcd runs again
    assert wait_until(lambda: store.get("/k") in (b"v", b"w"), 10, "etcd to answer again")


@pytest.mark.timeout(30)
def test_a_keep_alive_answered_with_an_error_is_no_expiry() -> None:
    # The gateway streams {"error": ...} when etcd cannot serve the renewal (overloaded, no leader):
    # that says nothing about the lease, and must not be read as "expired" (its node would
    # report itself lost).
    st = EtcdStore("127.0.0.1", 1, timeout=1)
    answers = {  # by lease id
        "1": {"error": {"grpc_code": 14, "message": "etcdserver: request timed out"}},
        "2": {"result": {"header": {"revision": "7"}, "ID": "2"}},  # unknown: TTL 0, left out
        "3": {"result": {"header": {"revision": "7"}, "ID": "3", "TTL": "5"}},
    }
    try:
        st._post = lambda op, path, payload: answers[payload["ID"]]  # type: ignore[method-assign]
        with pytest.raises(StoreError, match="keep_alive failed: etcdserver: request timed out"):
            st.keep_alive(1)
        assert st.keep_alive(2) == -1  # expired or revoked
        assert st.keep_alive(3) == 5
    finally:
        st.close()


@pytest.mark.timeout(30)
def test_unreachable_etcd_fails_within_the_timeout_naming_host_and_port() -> None:
    port = free_port()
    t0 = time.monotonic()
    with pytest.raises(StoreError) as e:
        connect_etcd("127.0.0.1", port, connect_timeout=1.0)
    assert time.monotonic() - t0 < 5
    msg = e.value.message
    assert msg.startswith(f"could not reach etcd at 127.0.0.1:{port}: tried for") and "Connection refused" in msg, msg
    assert msg.count(f"127.0.0.1:{port}") == 1


@pytest.mark.timeout(30)
def test_something_that_is_not_etcd_fails_at_once() -> None:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(404)
            self.end_headers()
            self.wfile.write(b"no etcd here")

        def log_message(self, *args: Any) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    t.start()
    try:
        t0 = time.monotonic()
        with pytest.raises(StoreError, match="not as etcd") as e:
            connect_etcd("127.0.0.1", srv.server_address[1], connect_timeout=30)
        assert time.monotonic() - t0 < 5  # not retried until the join timeout
        assert "404" in e.value.message
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)


@pytest.mark.etcd
@pytest.mark.timeout(60)
def test_a_round_over_etcd_then_losing_etcd_closes_the_job(etcd_server: Any) -> None:
    port = etcd_server.port
    cfg = config("etcd-v2", port, run_id="job/1", settings=settings({**FAST, "join_timeout": 20.0}))
    rs: list[Rendezvous] = []
    try:
        for i in range(2):
            rs.append(create_rendezvous(cfg, node_id=f"n{i}"))
        calls = [Call(lambda r=r, i=i: r.next_rendezvous(info(f"h{i}")), f"node{i}") for i, r in enumerate(rs)]
        got = [c.result(20) for c in calls]
        assert sorted(g.group_rank for g in got) == [0, 1]
        assert {g.group_world_size for g in got} == {2}
        assert got[0].nodes == got[1].nodes
        etcd_server.close()
        for r in rs:
            m = wait_until(lambda r=r: r.membership().closed and r.membership(), 15, "etcd to be declared lost")
            assert m.reason is not None and m.reason.startswith(f"{STORE_LOST} at 127.0.0.1:{port}"), m
    finally:
        t0 = time.monotonic()
        for r in rs:
            r.shutdown()
        assert time.monotonic() - t0 < 15
    wait_until(lambda: not rdzv_threads(), 10, "rendezvous threads to stop")


def _job_keys(port: int, run_id: str) -> list[tuple[bytes, dict[str, Any]]]:
    """Every key of job `run_id` in etcd, with its metadata (read with etcd3gw, not elaunch)."""
    import etcd3gw

    raw = etcd3gw.client(host="127.0.0.1", port=port, timeout=5)
    try:
        return list(raw.get_prefix(f"/elaunch/{run_id}/"))
    finally:
        raw.session.close()


@pytest.mark.etcd
@pytest.mark.timeout(60)
def test_every_key_of_a_job_carries_its_lease_and_a_finished_job_leaves_none(etcd_server: Any) -> None:
    cfg = config("etcd", etcd_server.port, run_id="leased", nnodes=(2, 2))
    rs = [create_rendezvous(cfg, node_id=f"n{i}") for i in range(2)]
    try:
        calls = [Call(lambda r=r, i=i: r.next_rendezvous(info(f"h{i}"))) for i, r in enumerate(rs)]
        for c in calls:
            c.result(30)
        keys = _job_keys(etcd_server.port, "leased")
        alive = {m["key"].rsplit(b"/", 1)[1]: int(m.get("lease", 0)) for _, m in keys if b"/alive/" in m["key"]}
        leases = {int(meta.get("lease", 0)) for _, meta in keys if b"/alive/" not in meta["key"]}
        assert len(keys) > 5 and len(leases) == 1 and 0 not in leases, keys  # one lease, on every key...
        (lease,) = leases
        assert [v for v, m in keys if m["key"].endswith(b"/lease")] == [str(lease).encode()]
        # ... but each node's alive key, which is on the node's own lease
        assert set(alive) == {b"n0", b"n1"} and len({*alive.values(), lease, 0}) == 4, alive
        for c in [Call(lambda r=r: r.exit_barrier(10)) for r in rs]:
            c.result(30)
    finally:
        for r in rs:
            r.shutdown()  # passed the barrier: closed ("finished"); the last goodbye revokes the lease
    assert _job_keys(etcd_server.port, "leased") == []


@pytest.mark.etcd
@pytest.mark.timeout(60)
def test_a_finished_run_id_can_be_used_again(etcd_server: Any) -> None:
    cfg = config("etcd", etcd_server.port, run_id="again", nnodes=(1, 1))
    for i in range(2):
        r = create_rendezvous(cfg, node_id=f"n{i}")
        try:
            assert r.next_rendezvous(info("h0")).round == 0  # a new job, not the closed one
            r.exit_barrier(5)
        finally:
            r.shutdown()


@pytest.mark.etcd
@pytest.mark.timeout(60)
def test_a_run_id_closed_but_not_yet_expired_is_refused_with_how_to_reuse_it(etcd_server: Any) -> None:
    cfg = config("etcd", etcd_server.port, run_id="done", nnodes=(1, 1))
    r = create_rendezvous(cfg, node_id="n0")
    try:
        r.next_rendezvous(info("h0"))
        r.set_closed("it failed")  # and the node is still there (no goodbye): the keys stay until it leaves
        with pytest.raises(RendezvousClosedError) as e:
            create_rendezvous(cfg, node_id="n1")
    finally:
        r.shutdown()
    msg = e.value.message
    assert "it failed" in msg and "--rdzv-id" in msg and "del --prefix /elaunch/done/" in msg, msg
