"""A node beyond MAX stands by as a spare and joins in place of a node that is lost
(README "Several nodes"), on the in-memory store with threads as nodes."""

from __future__ import annotations

import pytest

from elaunch.rendezvous.store import MemoryStore
from scripts.testbed import wait_until

from ._support import Call, info, nodes, rdzv_threads, shutdown_all


@pytest.mark.timeout(40)
def test_a_spare_joins_in_place_of_a_lost_node_at_the_same_world_size() -> None:
    before = set(rdzv_threads())
    rs = nodes(MemoryStore(), 3, 2, 2, severable=True)
    a, b, spare = rs
    try:
        calls = [Call(lambda r=r, i=i: r.next_rendezvous(info(f"h{i}")), f"h{i}") for i, r in enumerate((a, b))]
        assert all(c.result().round == 0 for c in calls)
        standing_by = Call(lambda: spare.next_rendezvous(info("h2")), "spare")
        b._store.cut()  # type: ignore[attr-defined]
        wait_until(lambda: a.membership().lost or a.membership().waiting, 15, "a to see b lost or the spare waiting")
        ra = a.next_rendezvous(info("h0"))
        rs_ = standing_by.result(20)
        assert ra.round == rs_.round and ra.group_world_size == rs_.group_world_size == 2
        assert {ra.group_rank, rs_.group_rank} == {0, 1}  # ranks fill in join order (no --node-rank)
        assert {n.host for n in ra.nodes} == {"h0", "h2"}
    finally:
        shutdown_all(rs)
    assert wait_until(lambda: [t for t in rdzv_threads() if t not in before] == [] or None, 5, "threads to stop")
