"""create_rendezvous (one factory for every backend), the `store` property, the
master_port == 0 rule (the rendezvous picks a free port), the connect back-off, and the
package's layering (no elaunch.config, lazy backends)."""

from __future__ import annotations

import ast
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from elaunch.errors import StoreError
from elaunch.rendezvous import NodeInfo, Rendezvous, RendezvousConfig, create_rendezvous
from elaunch.rendezvous.local import LocalRendezvous
from elaunch.rendezvous.ports import free_port
from elaunch.rendezvous.retry import Retry, retry_until
from elaunch.rendezvous.static import StaticRendezvous
from elaunch.rendezvous.store import MemoryStore
from scripts.testbed import wait_until

from ._support import Call, config, info, nodes, rdzv_threads, settings, shutdown_all

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "elaunch" / "rendezvous"


def me(port: int = 0) -> NodeInfo:
    return NodeInfo(host="127.0.0.1", role="default", local_world_size=1, master_port=port)


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


# -- local ----------------------------------------------------------------------------------------
@pytest.mark.timeout(10)
def test_local_has_no_store_and_picks_a_free_master_port() -> None:
    r = create_rendezvous(RendezvousConfig(backend="local", run_id="one", master_addr="10.1.2.3"))
    assert isinstance(r, LocalRendezvous) and isinstance(r, Rendezvous)
    assert r.store is None
    first, second = r.next_rendezvous(me()), r.next_rendezvous(me())
    assert (first.round, second.round) == (0, 1)
    assert first.master_addr == "10.1.2.3"
    assert first.master_port > 0 and second.master_port > 0
    assert r.next_rendezvous(me(4242)).master_port == 4242  # the node's own port, when it has one
    fixed = create_rendezvous(RendezvousConfig(backend="local", run_id="one", master_port=29511))
    assert fixed.next_rendezvous(me(4242)).master_port == 29511  # --master-port wins


@pytest.mark.timeout(30)
def test_local_imports_no_backend_module() -> None:
    code = (
        "import sys\n"
        "from elaunch.rendezvous import RendezvousConfig, create_rendezvous, NodeInfo\n"
        "r = create_rendezvous(RendezvousConfig(backend='local', run_id='x'))\n"
        "r.next_rendezvous(NodeInfo('h', 'default', 1))\n"
        "heavy = ['torch', 'etcd3gw', 'requests', 'elaunch.rendezvous.store', 'elaunch.rendezvous.dynamic']\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=25, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# -- the dynamic protocol: store property and free ports --------------------------------------------
@pytest.mark.timeout(20)
def test_dynamic_exposes_its_store_and_picks_a_port_per_node_when_asked() -> None:
    store = MemoryStore()
    rs = nodes(store, 2, 2, 2)
    try:
        assert all(r.store is not None and r.store.address == "memory" for r in rs)
        calls = [Call(lambda r=r, i=i: r.next_rendezvous(NodeInfo(f"h{i}", "default", 1, 0))) for i, r in enumerate(rs)]
        got = [c.result() for c in calls]
        ports = [n.master_port for n in got[0].nodes]
        assert all(p > 0 for p in ports), ports  # nobody published port 0
        assert got[0].master_port == ports[0] == got[1].master_port
    finally:
        shutdown_all(rs)
    wait_until(lambda: not rdzv_threads(), 5, "rendezvous threads to stop")


@pytest.mark.timeout(20)
def test_static_points_at_the_agent_store_without_a_free_port() -> None:
    store = MemoryStore()
    rs = [StaticRendezvous(store.clone(), "job", 2, rank, "m", 29533, settings(), f"n{rank}") for rank in (0, 1)]
    try:
        assert all(r.store is not None for r in rs)
        calls = [Call(lambda r=r: r.next_rendezvous(info(f"h{r.node_rank}", port=0))) for r in rs]
        got = [c.result() for c in calls]
        assert {(g.master_addr, g.master_port, g.use_agent_store) for g in got} == {("m", 29533, True)}
        assert [n.master_port for n in got[0].nodes] == [29533, 29533]  # the records carry the store's port
    finally:
        shutdown_all(rs)


# -- the factory over real stores -------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_c10d_from_a_config_hosts_the_store_and_releases_it() -> None:
    pytest.importorskip("torch")
    port = free_port("127.0.0.1")
    r = create_rendezvous(config("c10d", port, nnodes=(1, 1)), node_id="n0")
    try:
        assert r.store is not None and r.store.address == f"127.0.0.1:{port}"
        assert getattr(r.store, "is_host", False)
        got = r.next_rendezvous(me())
        assert got.group_world_size == 1 and got.master_port > 0
    finally:
        r.shutdown()
    wait_until(lambda: _bindable(port), 10, "the hosted store to release its port")


@pytest.mark.timeout(60)
def test_a_store_opened_for_a_rendezvous_that_fails_is_closed() -> None:
    pytest.importorskip("torch")
    port = free_port("127.0.0.1")
    with pytest.raises(ValueError, match="MIN <= MAX") as e:  # config refuses 3:2; here it fails after connecting
        create_rendezvous(config("c10d", port, nnodes=(3, 2)), node_id="n0")
    # the traceback (kept alive by `e`) still references the store object: only close() frees the port
    wait_until(lambda: _bindable(port), 10, "the store server to be closed")
    assert e.value is not None


@pytest.mark.timeout(30)
def test_an_unreachable_static_store_fails_within_join_timeout() -> None:
    port = free_port("127.0.0.1")
    cfg = config("static", port, nnodes=(2, 2), node_rank=1, settings=settings({"join_timeout": 0.5}))
    t0 = time.monotonic()
    with pytest.raises(StoreError, match=rf"could not reach the rendezvous store at 127\.0\.0\.1:{port}: tried for"):
        create_rendezvous(cfg)
    assert time.monotonic() - t0 < 5


@pytest.mark.timeout(10)
def test_configs_the_factory_cannot_build_are_programming_errors() -> None:
    with pytest.raises(ValueError, match="needs an endpoint"):
        create_rendezvous(RendezvousConfig(backend="c10d", run_id="x", min_nodes=2, max_nodes=2))
    with pytest.raises(ValueError, match="needs node_rank"):
        create_rendezvous(config("static", 1, nnodes=(2, 2)))


# -- connect back-off ---------------------------------------------------------------------------------
@pytest.mark.timeout(10)
def test_retry_until_retries_only_what_may_help() -> None:
    lefts: list[float] = []

    def twice_then_ok(left: float) -> str:
        lefts.append(left)
        if len(lefts) < 3:
            raise Retry(f"refused #{len(lefts)}")
        return "connected"

    assert retry_until(twice_then_ok, 5.0, lambda t, last: TimeoutError(last)) == "connected"
    assert len(lefts) == 3 and all(0 < x <= 5.0 for x in lefts) and lefts[0] > lefts[2]

    calls = []

    def not_etcd(left: float) -> str:
        calls.append(left)
        raise StoreError("it answers, but not as etcd")

    with pytest.raises(StoreError, match="not as etcd"):
        retry_until(not_etcd, 5.0, lambda t, last: TimeoutError(last))
    assert len(calls) == 1  # not retried


@pytest.mark.timeout(10)
def test_retry_until_gives_up_at_the_deadline_with_the_last_reason() -> None:
    n = []

    def refused(left: float) -> None:
        n.append(left)
        raise Retry(f"refused #{len(n)}")

    t0 = time.monotonic()
    with pytest.raises(TimeoutError) as e:
        retry_until(refused, 0.4, lambda elapsed, last: TimeoutError(f"{elapsed:.1f} s; {last}"))
    took = time.monotonic() - t0
    assert 0.4 <= took < 2.0
    assert str(e.value).endswith(f"refused #{len(n)}")
    assert 2 <= len(n) <= 6  # backed off (50 ms doubling), not spinning


# -- layering ---------------------------------------------------------------------------------------
def test_the_rendezvous_package_does_not_import_config() -> None:
    offenders = []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            if any(n == "elaunch.config" or n.startswith("elaunch.config.") for n in names):
                offenders.append(path.name)
            if (
                isinstance(node, ast.ImportFrom)
                and node.module == "elaunch"
                and any(a.name == "config" for a in node.names)
            ):
                offenders.append(path.name)
    assert offenders == []
    assert len(list(PACKAGE.glob("*.py"))) >= 10  # the glob found the package
