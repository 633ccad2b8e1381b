"""The static rendezvous (--rdzv-backend static, several nodes): fixed ranks, the agent's store
for the workers, every node's NodeInfo, clear errors for bad ranks, and the exit barrier."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from elaunch.errors import RendezvousError
from elaunch.rendezvous import create_rendezvous
from elaunch.rendezvous.static import StaticRendezvous
from elaunch.rendezvous.store import MemoryStore
from scripts.testbed import free_port, wait_until

from ._support import Call, config, info, settings


@pytest.mark.timeout(60)
def test_static_over_tcp_keeps_ranks_and_points_workers_at_the_agent_store() -> None:
    torch_dist = pytest.importorskip("torch.distributed")
    port = free_port()

    def static(rank: int) -> StaticRendezvous:
        r = create_rendezvous(config("static", port, nnodes=(3, 3), node_rank=rank))
        assert isinstance(r, StaticRendezvous)
        return r

    node0 = static(0)  # node 0 hosts at MASTER_PORT
    others = [static(r) for r in (2, 1)]
    everyone = [node0, *others]
    try:
        lws = {0: 2, 1: 1, 2: 4}  # nodes may run different numbers of workers
        calls = [
            Call(lambda r=r: r.next_rendezvous(info(f"host{r.node_rank}", lws=lws[r.node_rank]))) for r in everyone
        ]
        results = [c.result(30) for c in calls]
        for r, res in zip(everyone, results, strict=True):
            assert res.group_rank == r.node_rank
            assert res.group_world_size == 3
            assert (res.master_addr, res.master_port, res.use_agent_store) == ("127.0.0.1", port, True)
            assert [n.host for n in res.nodes] == ["host0", "host1", "host2"]
            assert [n.local_world_size for n in res.nodes] == [2, 1, 4]
        # a worker (TORCHELASTIC_USE_AGENT_STORE=True) connects to the agent's store as a client
        worker = torch_dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timedelta(seconds=10))
        worker.set("/worker/attempt_0/x", "1")
        assert worker.get("/worker/attempt_0/x") == b"1"
        del worker
        barrier = [Call(lambda r=r: r.exit_barrier(20)) for r in everyone]
        for b in barrier:
            b.result(30)
    finally:
        for r in reversed(everyone):
            r.shutdown()
    wait_until(
        lambda: not [t for t in threading.enumerate() if t.name.startswith(("elaunch-rdzv", "elaunch-store"))],
        10,
        "rendezvous threads to stop",
    )


@pytest.mark.timeout(20)
def test_duplicate_node_ranks_fail_clearly_for_everyone() -> None:
    store = MemoryStore()
    a = StaticRendezvous(store.clone(), "job", 2, 1, "m", 29500, settings(), "a")
    b = StaticRendezvous(store.clone(), "job", 2, 1, "m", 29500, settings(), "b")
    try:
        ca = Call(lambda: a.next_rendezvous(info("ha")))
        cb = Call(lambda: b.next_rendezvous(info("hb")))
        errors = [ca.error(10), cb.error(10)]
        assert all(isinstance(e, RendezvousError) for e in errors)
        assert all("both have --node-rank 1" in e.message for e in errors), errors  # type: ignore[attr-defined]
    finally:
        a.shutdown()
        b.shutdown()


@pytest.mark.timeout(10)
def test_node_rank_out_of_range_is_refused_before_any_store_call() -> None:
    # the usage error (exit 2) is elaunch.config's; here an out-of-range rank is a programming error
    store = MemoryStore()
    with pytest.raises(ValueError, match=r"node_rank must be in 0..1"):
        StaticRendezvous(store, "job", 2, 2, "m", 29500)
    assert store.list_keys() == []
