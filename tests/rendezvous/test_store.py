"""The Store contract, checked on every implementation (memory, c10d TCPStore, etcd), plus
connecting/hosting and import cost. etcd-only behaviour is in test_etcd_store.py."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from elaunch.errors import StoreError
from elaunch.rendezvous.store import MemoryStore, Store, connect_store, is_local_address
from scripts.testbed import free_port

from ._support import Call

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["memory", "tcp", pytest.param("etcd", marks=pytest.mark.etcd)])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    if request.param == "memory":
        s: Store = MemoryStore(timeout=5)
        yield s
        s.close()
        return
    if request.param == "etcd":
        pytest.importorskip("etcd3gw")
        from elaunch.rendezvous.etcd import connect_etcd

        server = request.getfixturevalue("etcd_server")  # skips where etcd is not installed
        s = connect_etcd("127.0.0.1", server.port, connect_timeout=10, timeout=5)
        yield s
        s.close()
        return
    pytest.importorskip("torch")
    host = connect_store("127.0.0.1", 0, is_host=True, timeout=5)
    client = host.clone()
    yield client
    client.close()
    host.close()


@pytest.mark.timeout(30)
def test_set_get_add_append(store: Store) -> None:
    store.set("/a", "1")
    assert store.get("/a") == b"1"
    assert store.add("/n", 2) == 2
    assert store.add("/n", 0) == 2
    assert store.add("/n", 3) == 5
    store.append("/l", "x")
    store.append("/l", b"y")
    assert store.get("/l") == b"xy"
    assert store.check(["/a", "/n", "/l"])
    assert not store.check(["/a", "/missing"])
    assert store.multi_get(["/a", "/l"]) == [b"1", b"xy"]
    assert store.delete_key("/a")
    assert not store.check(["/a"])


@pytest.mark.timeout(30)
def test_compare_set_semantics(store: Store) -> None:
    # absent + expected "" -> set; absent + expected non-empty -> returns expected, sets nothing
    assert store.compare_set("/c", "x", "y") == b"x"
    assert not store.check(["/c"])
    assert store.compare_set("/c", "", "first") == b"first"
    assert store.compare_set("/c", "", "second") == b"first"
    assert store.compare_set("/c", "wrong", "third") == b"first"
    assert store.compare_set("/c", "first", "fourth") == b"fourth"


@pytest.mark.timeout(30)
def test_wait_blocks_until_another_connection_sets(store: Store) -> None:
    other = store.clone()
    try:
        waiter = Call(lambda: store.wait(["/k1", "/k2"], 10))
        other.set("/k1", "1")
        assert not waiter.done() or waiter.result() is False  # one key is not enough
        other.set("/k2", "1")
        assert waiter.result(10) is True
    finally:
        other.close()


@pytest.mark.timeout(30)
def test_wait_and_get_time_out(store: Store) -> None:
    t0 = time.monotonic()
    assert store.wait(["/never"], 0.2) is False
    assert time.monotonic() - t0 < 5
    with pytest.raises(StoreError, match="timed out"):
        store.get("/never", timeout=0.2)
    store.set("/after", "ok")  # the connection still works after a timeout
    assert store.get("/after") == b"ok"


@pytest.mark.timeout(60)
def test_concurrent_adds_appends_and_compare_sets_are_atomic(store: Store) -> None:
    """Several connections at once: exact totals, every piece appended once, one compare_set winner."""
    threads, rounds = 4, 25
    conns = [store.clone() for _ in range(threads)]
    try:

        def work(i: int, conn: Store) -> bytes:
            for j in range(rounds):
                conn.add("/count", 1)
                conn.append("/pieces", f"{i}.{j};")
            return conn.compare_set("/winner", "", f"t{i}")

        calls = [Call(lambda i=i, c=c: work(i, c), f"worker{i}") for i, c in enumerate(conns)]
        winners = {call.result(50) for call in calls}
    finally:
        for c in conns:
            c.close()
    assert store.add("/count", 0) == threads * rounds
    pieces = store.get("/pieces").decode().split(";")[:-1]
    assert sorted(pieces) == sorted(f"{i}.{j}" for i in range(threads) for j in range(rounds))
    assert len(winners) == 1 and store.get("/winner") in winners


@pytest.mark.timeout(10)
def test_memory_store_failure_and_close() -> None:
    s = MemoryStore()
    c = s.clone()
    waiter = Call(lambda: c.wait(["/x"], 10))
    s.fail("server died")
    with pytest.raises(StoreError, match="server died"):
        waiter.result(5)
    with pytest.raises(StoreError, match="memory"):
        s.set("/x", "1")
    t = MemoryStore()
    t.close()
    with pytest.raises(StoreError, match="closed"):
        t.get("/x")


@pytest.mark.timeout(30)
def test_unreachable_endpoint_fails_within_timeout_naming_host_and_port() -> None:
    port = free_port()
    t0 = time.monotonic()
    with pytest.raises(StoreError) as e:
        connect_store("127.0.0.1", port, is_host=False, connect_timeout=1.0)
    took = time.monotonic() - t0
    assert f"127.0.0.1:{port}" in e.value.message
    assert "tried for" in e.value.message
    assert took < 5, took


@pytest.mark.timeout(30)
def test_host_or_connect() -> None:
    pytest.importorskip("torch")
    host = connect_store("127.0.0.1", 0, is_host=None, timeout=5)  # loopback: hosts
    assert host.is_host
    try:
        # same machine, port taken: falls back to a client, like torch
        client = connect_store("127.0.0.1", host.port, is_host=None, connect_timeout=5, timeout=5)
        assert not client.is_host
        client.set("/x", "1")
        assert host.get("/x") == b"1"
        client.close()
        with pytest.raises(StoreError, match="could not host"):
            connect_store("127.0.0.1", host.port, is_host=True, timeout=5)
    finally:
        host.close()


@pytest.mark.timeout(30)
def test_closing_the_host_frees_the_port() -> None:
    pytest.importorskip("torch")
    host = connect_store("127.0.0.1", 0, is_host=True, timeout=5)
    port = host.port
    host.close()

    def bindable() -> bool:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                return False
            return True

    deadline = time.monotonic() + 5
    while not bindable():
        assert time.monotonic() < deadline, f"port {port} still bound after the host store was closed"
        threading.Event().wait(0.05)


@pytest.mark.timeout(10)
def test_is_local_address() -> None:
    assert is_local_address("localhost")
    assert is_local_address("127.0.0.1")
    assert is_local_address(socket.gethostname())
    assert not is_local_address("192.0.2.1")  # TEST-NET-1, never assigned


@pytest.mark.timeout(60)
def test_importing_the_rendezvous_does_not_import_torch_or_etcd3gw() -> None:
    code = (
        "import sys\n"
        "import elaunch.rendezvous.dynamic, elaunch.rendezvous.static, elaunch.rendezvous.store\n"
        "import elaunch.rendezvous.etcd\n"
        "from elaunch.rendezvous.store import MemoryStore\n"
        "from elaunch.rendezvous.dynamic import DynamicRendezvous\n"
        "DynamicRendezvous(MemoryStore(), 'j', 1, 1).shutdown()\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'etcd3gw', 'requests'))\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=50)
    assert r.returncode == 0, r.stderr
