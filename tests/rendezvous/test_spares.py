"""A node beyond MAX stands by as a spare and joins in place of a node that is lost
(README "Several nodes"), on the in-memory store with threads as nodes."""

from __future__ import annotations

import pytest

from elaunch.rendezvous import spares
from elaunch.rendezvous.dynamic import DynamicRendezvous, NodeRecord
from elaunch.rendezvous.store import MemoryStore
from scripts.testbed import wait_until

from ._support import Call, Severable, info, nodes, rdzv_threads, settings, shutdown_all


def test_spare_lines_say_who_stands_by_now() -> None:
    raw = "".join(
        [spares.spare_line("x", "h2", True), spares.spare_line("y", "h3", True), spares.spare_line("x", "h2", False)]
    ).encode()
    assert spares.spare_hosts(raw, in_group=()) == ("h3",)
    assert spares.spare_hosts(raw, in_group={"y"}) == ()
    assert spares.spare_hosts(b"garbage\n+z h9\n", in_group=()) == ("h9",)


def test_survivors_keep_their_group_ranks_and_a_spare_fills_the_gap() -> None:
    a, b, c, s = (NodeRecord(i, info(f"h{i}")) for i in ("a", "b", "c", "s"))
    previous = [a, b, c]
    live = [c, s, a]  # b was lost; join order c, s, a
    kept = spares.keep_group_ranks(live, previous)
    assert [r.info.node_rank for r in kept] == [2, None, 0]
    from elaunch.rendezvous.rounds import order_nodes

    ordered = spares.as_published(order_nodes(kept, 3), live)
    assert [r.id for r in ordered] == ["a", "s", "c"]
    assert all(r.info.node_rank is None for r in ordered)  # own records, not the preferences


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


@pytest.mark.timeout(40)
def test_with_standby_the_spare_takes_the_group_rank_of_the_lost_node() -> None:
    before = set(rdzv_threads())
    store = MemoryStore()
    rs = [DynamicRendezvous(Severable(store.clone()), "job", 2, 2, settings(), f"n{i}", standby=1) for i in range(3)]
    a, b, spare = rs
    try:
        calls = [Call(lambda r=r, i=i: r.next_rendezvous(info(f"h{i}")), f"h{i}") for i, r in enumerate((a, b))]
        r0 = [c.result() for c in calls]
        standing_by = Call(lambda: spare.next_rendezvous(info("h2")), "spare")
        wait_until(lambda: spare.membership().spare, 10, "the spare to stand by")
        wait_until(lambda: a.membership().spares == ("h2",), 10, "a to see the spare")
        lost_rank = r0[1].group_rank
        b._store.cut()  # type: ignore[attr-defined]
        wait_until(lambda: a.membership().lost or a.membership().waiting, 15, "a to see b lost or the spare waiting")
        ra = a.next_rendezvous(info("h0"))
        got = standing_by.result(20)
        assert got.round == ra.round and got.group_world_size == 2
        assert got.group_rank == lost_rank and ra.group_rank == r0[0].group_rank
        assert not spare.membership().spare
    finally:
        shutdown_all(rs)
    assert wait_until(lambda: [t for t in rdzv_threads() if t not in before] == [] or None, 5, "threads to stop")


def test_a_node_may_leave_a_fixed_size_job_when_a_spare_stands_by() -> None:
    from elaunch.rendezvous.rounds import can_leave

    assert not can_leave(2, 2, 1, hosts_store=False)  # MIN = MAX and nobody to take its place
    assert can_leave(2, 2, 1, hosts_store=False, spares=1)
    assert not can_leave(2, 2, 1, hosts_store=True, spares=1)  # the others would lose the store
    assert not can_leave(3, 3, 1, hosts_store=False, spares=1)  # 1 + 1 < MIN
    assert can_leave(2, 3, 2, hosts_store=False) and not can_leave(2, 3, None, hosts_store=False)
