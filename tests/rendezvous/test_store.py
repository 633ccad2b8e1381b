"""The Store contract, checked on every implementation (memory, c10d TCPStore, etcd), plus
connecting/hosting and import cost. etcd-only behaviour is in test_etcd_store.py."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from elaunch.errors import StoreError
from elaunch.rendezvous.store import MemoryStore, Store, TCPStoreAdapter, connect_store, is_local_address
from elaunch.watchdog import process_state
from scripts.testbed import free_port, wait_until

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


_FROZEN_SERVER = (
    "import sys, torch.distributed as d\n"
    "s = d.TCPStore('127.0.0.1', 0, is_master=True, wait_for_workers=False)\n"
    "s.set('/there', '1')\n"
    "print(s.port, flush=True)\n"
    "sys.stdin.read()\n"
)


def _all_threads_stopped(pid: int) -> bool:
    return all(process_state(int(t)) == "stopped (SIGSTOP)" for t in os.listdir(f"/proc/{pid}/task"))


@pytest.fixture
def frozen_server() -> Iterator[tuple[int, Callable[[], None]]]:
    """A TCPStore server in a process of its own: (port, freeze), freeze = SIGSTOP (the kernel
    still accepts and acknowledges, nothing answers: a hung server, or a cut link as the client
    sees it). Killed at the end."""
    pytest.importorskip("torch")
    proc = subprocess.Popen(
        [sys.executable, "-c", _FROZEN_SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())

        def freeze() -> None:
            os.kill(proc.pid, signal.SIGSTOP)  # delivered asynchronously: wait until every thread stopped
            wait_until(lambda: _all_threads_stopped(proc.pid), 10, "the store server stopped")

        yield port, freeze
    finally:
        proc.kill()
        proc.wait()
        for f in (proc.stdin, proc.stdout):
            if f is not None:
                f.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("call", ["add", "check", "compare_set", "get", "wait"])
def test_a_frozen_server_fails_each_call_within_its_bound(
    frozen_server: tuple[int, Callable[[], None]], call: str
) -> None:
    """c10d reads without a time limit (a call to a hung server blocks ~15 minutes): every call
    of a connection made by connect_store or clone is bounded by the kernel (SO_RCVTIMEO), on the
    caller's thread, and the connection is abandoned after it (a late answer would be misread).
    (`set` and `append` expect no answer in c10d's protocol: they return once sent.)"""
    port, freeze = frozen_server
    main = connect_store("127.0.0.1", port, is_host=False, connect_timeout=10, timeout=1.0)
    ctl = main.clone()
    try:
        assert main.bounded_by == "socket" and ctl.bounded_by == "socket"
        ctl.set_timeout(0.5)
        assert ctl.get("/there") == b"1"
        freeze()
        calls: dict[str, Callable[[Store], object]] = {
            "add": lambda s: s.add("/n", 1),
            "check": lambda s: s.check(["/there"]),
            "compare_set": lambda s: s.compare_set("/k", "", "v"),
            "get": lambda s: s.get("/there"),
            "wait": lambda s: s.wait(["/absent"], 0.5),
        }
        for conn, bound in ((ctl, 0.5), (main, 1.0)):
            thread = threading.current_thread()
            t0 = time.monotonic()
            with pytest.raises(StoreError, match=re.escape(f"{call} failed: no answer within {bound:g} s")):
                calls[call](conn)
            assert time.monotonic() - t0 < 10, "not bounded by the connection's timeout"
            assert threading.current_thread() is thread
            with pytest.raises(StoreError, match="an earlier call got no answer"):
                conn.check(["/there"])
    finally:
        ctl.close()
        main.close()


@pytest.mark.timeout(30)
def test_a_wrapped_store_is_bounded_by_a_helper_thread(frozen_server: tuple[int, Callable[[], None]]) -> None:
    """A TCPStore built elsewhere (`wrap`): its socket is not known, so calls run on a helper
    thread with a deadline; bounded all the same."""
    from datetime import timedelta

    import torch.distributed as dist

    port, freeze = frozen_server
    store = TCPStoreAdapter.wrap(dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timedelta(seconds=5)), 0.5)
    try:
        assert store.bounded_by == "thread"
        assert store.check(["/there"])
        freeze()
        with pytest.raises(StoreError, match=r"no answer within 0\.5 s"):
            store.add("/n", 1)
        with pytest.raises(StoreError, match="an earlier call got no answer"):
            store.check(["/there"])
    finally:
        store.close()
