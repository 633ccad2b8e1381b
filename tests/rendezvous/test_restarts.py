"""Restart rounds (docs/rendezvous.md "Restart rounds"): the pure rules, and the protocol on the
in-memory store with threads as nodes."""

from __future__ import annotations

from typing import Any

import pytest

from elaunch.rendezvous import restarts, rounds
from elaunch.rendezvous.api import Membership
from elaunch.rendezvous.dynamic import DynamicRendezvous, NodeRecord
from elaunch.rendezvous.store import MemoryStore
from scripts.testbed import wait_until

from ._support import FAST, Call, info, nodes, rdzv_threads, settings, shutdown_all


@pytest.fixture(autouse=True)
def no_threads_left() -> object:
    before = set(rdzv_threads())
    yield None
    left = wait_until(
        lambda: [t for t in rdzv_threads() if t not in before] == [] or None, 5, "rendezvous threads to stop"
    )
    assert left


def join_all(rdzvs: list[DynamicRendezvous], ports: tuple[int, ...] = ()) -> list[Any]:
    calls = [
        Call(lambda r=r, i=i: r.next_rendezvous(info(f"h{i}", port=ports[i] if ports else 29500)), f"h{i}")
        for i, r in enumerate(rdzvs)
    ]
    return [c.result() for c in calls]


# -- pure ------------------------------------------------------------------------------------------
def test_a_restart_payload_is_a_final_payload_with_a_reason() -> None:
    group = (NodeRecord("a", info("h0")), NodeRecord("b", info("h1")))
    raw = restarts.restart_payload(3, "b", group, "h1: exit 1")
    assert rounds.final_doc(raw)["round"] == 3 and rounds.decode_group(raw) == group
    assert restarts.restart_reason(raw) == "h1: exit 1"
    assert restarts.restart_reason(rounds.final_payload(3, "a", group)) is None
    assert restarts.rank_in(group, "b") == 1 and restarts.rank_in(group, "z") == -1
    moved = restarts.with_master_port(group, 4242)
    assert moved[0].info.master_port == 4242 and moved[1] == group[1]


@pytest.mark.parametrize(
    ("closed", "lost_seen", "lost_in_store", "waiting", "allowed"),
    [
        (False, 0, False, 0, True),
        (True, 0, False, 0, False),
        (False, 1, False, 0, False),
        (False, 0, True, 0, False),
        (False, 0, False, 2, False),
    ],
)
def test_a_restart_round_needs_unchanged_membership(
    closed: bool, lost_seen: int, lost_in_store: bool, waiting: int, allowed: bool
) -> None:
    assert restarts.may_restart_in_place(closed, lost_seen, lost_in_store, waiting) is allowed


# -- protocol ------------------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_a_restart_round_keeps_the_group_and_skips_the_last_call() -> None:
    # A last call of 600 s and MIN < MAX: only a restart round can complete within the timeout.
    conf = {**FAST, "last_call_timeout": 600.0, "keep_alive_interval": 5.0, "heartbeat_timeout": 15.0}
    rs = nodes(MemoryStore(), 3, 2, 3, conf=conf)
    a, b, c = rs
    try:
        r0 = join_all(rs, ports=(1000, 1001, 1002))
        assert b.request_restart("h1: worker 1 failed")
        # a and c hear of it without a beat (a beat period of 5 s here: the watch is a blocking wait)
        wait_until(lambda: a.membership().restart and c.membership().restart, 3, "a and c to see the restart")
        assert a.membership() == Membership(restart="h1: worker 1 failed")
        r1 = join_all(rs, ports=(2000, 2001, 2002))
        assert [x.round for x in r1] == [1, 1, 1]
        assert [x.group_rank for x in r1] == [x.group_rank for x in r0]
        head = r0[0].nodes[0].host
        head_port = 2000 + int(head[1:])
        assert {(x.master_addr, x.master_port) for x in r1} == {(head, head_port)}
        assert all(r.membership() == Membership() for r in rs)
    finally:
        shutdown_all(rs)


@pytest.mark.timeout(30)
def test_a_waiting_node_makes_the_next_round_a_full_one() -> None:
    conf = {**FAST, "last_call_timeout": 1.0}
    store = MemoryStore()
    rs = nodes(store, 2, 2, 3, conf=conf)
    a, b = rs
    late = DynamicRendezvous(store.clone(), "job", 2, 3, settings(conf), "late")
    try:
        join_all(rs)
        waiter = Call(lambda: late.next_rendezvous(info("h9")), "late")
        wait_until(lambda: a.membership().waiting, 10, "a to see the late node")
        assert not b.request_restart("h1: failed")
        r1 = join_all(rs)
        r_late = waiter.result()
        assert r1[0].group_world_size == r_late.group_world_size == 3
    finally:
        shutdown_all([*rs, late])


@pytest.mark.timeout(30)
def test_a_lost_node_makes_the_next_round_a_full_one() -> None:
    rs = nodes(MemoryStore(), 3, 2, 3, severable=True)
    a, b, c = rs
    try:
        join_all(rs)
        c._store.cut()  # type: ignore[attr-defined]
        wait_until(lambda: a.membership().lost and b.membership().lost, 10, "a and b to see c lost")
        assert not b.request_restart("h1: failed")
        r1 = join_all([a, b])
        assert [x.group_world_size for x in r1] == [2, 2]
    finally:
        shutdown_all(rs)


@pytest.mark.timeout(30)
def test_two_nodes_asking_at_once_share_one_restart_round() -> None:
    rs = nodes(MemoryStore(), 2, 2, 2)
    a, b = rs
    try:
        join_all(rs)
        assert a.request_restart("h0: failed") and b.request_restart("h1: failed")
        r1 = join_all(rs)
        assert [x.round for x in r1] == [1, 1]
        assert a.membership().restart is None
        # and round 2 is a restart round again
        assert b.request_restart("h1: failed again")
        assert [x.round for x in join_all(rs)] == [2, 2]
    finally:
        shutdown_all(rs)


@pytest.mark.timeout(30)
def test_a_node_that_leaves_while_a_restart_round_forms_is_lost_in_it_at_once() -> None:
    # A heartbeat timeout of 60 s: only report_gone can make b lost within the test's timeout.
    conf = {**FAST, "heartbeat_timeout": 60.0, "keep_alive_interval": 0.2}
    rs = nodes(MemoryStore(), 3, 2, 3, conf=conf)
    a, b, c = rs
    try:
        join_all(rs)
        assert b.request_restart("h1: worker failed")
        assert b.leave("h1: health check failed")  # elastic, two others left: it may leave
        r1 = [Call(lambda r=r, i=i: r.next_rendezvous(info(f"h{i}")), f"h{i}") for i, r in ((0, a), (2, c))]
        assert [x.result().round for x in r1] == [1, 1]
        # Named as the heartbeat watcher names it (whichever of the two reports b first).
        assert a.membership().lost == ("h1 (group rank 1)",) and c.membership().lost == ("h1 (group rank 1)",)
        r2 = join_all([a, c])
        assert [x.group_world_size for x in r2] == [2, 2]
    finally:
        shutdown_all(rs)


@pytest.mark.timeout(30)
def test_a_node_lost_while_a_restart_round_forms_is_lost_in_it_at_once() -> None:
    # b dies (its connection cut) right after a asked for a restart round, as when a peer's crash
    # makes a's collective fail first: a and c wait for b's slot (found lost after 1 s), then
    # report it lost in the restart round at once rather than after another heartbeat timeout.
    rs = nodes(MemoryStore(), 3, 2, 3, severable=True)
    a, b, c = rs
    try:
        join_all(rs)
        assert a.request_restart("h0: connection reset by peer")
        b._store.cut()  # type: ignore[attr-defined]
        r1 = [Call(lambda r=r, i=i: r.next_rendezvous(info(f"h{i}")), f"h{i}") for i, r in ((0, a), (2, c))]
        assert [x.result().round for x in r1] == [1, 1]
        # Named as the heartbeat watcher names it (whichever of the two reports b first).
        assert a.membership().lost == ("h1 (group rank 1)",) and c.membership().lost == ("h1 (group rank 1)",)
        assert [x.group_world_size for x in join_all([a, c])] == [2, 2]
    finally:
        shutdown_all(rs)


def test_missing_ranks_are_slots_released_by_someone_else() -> None:
    group = [NodeRecord(i, info(f"h{i}")) for i in ("a", "b", "c")]
    assert restarts.missing_ranks([b"a", b"lost:a", b"left:c"], group) == [1, 2]
    assert restarts.missing_ranks([b"a", b"b", b"c"], group) == []
