"""The dynamic rendezvous protocol on the in-memory store, with threads as nodes."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from elaunch.errors import RendezvousClosedError, RendezvousError, RendezvousTimeoutError
from elaunch.rendezvous.api import Membership, Rendezvous, RendezvousSettings
from elaunch.rendezvous.dynamic import DynamicRendezvous, NodeRecord, order_nodes
from elaunch.rendezvous.store import MemoryStore
from scripts.testbed import wait_until

from ._support import FAST, Call, info, nodes, rdzv_threads, shutdown_all


@pytest.fixture(autouse=True)
def no_threads_left() -> object:
    before = set(rdzv_threads())
    yield None
    left = wait_until(
        lambda: [t for t in rdzv_threads() if t not in before] == [] or None, 5, "rendezvous threads to stop"
    )
    assert left


def join_all(rdzvs: list[DynamicRendezvous]) -> list[Any]:
    """Every node joins at once (node i as host hi); their RendezvousInfo, in node order."""
    calls = [Call(lambda r=r, i=i: r.next_rendezvous(info(f"h{i}")), f"h{i}") for i, r in enumerate(rdzvs)]
    return [c.result() for c in calls]


@pytest.mark.timeout(20)
def test_protocol_conformance() -> None:
    (r,) = nodes(MemoryStore(), 1, 1, 1)
    try:
        assert isinstance(r, Rendezvous)
        assert (r.run_id, r.min_nodes, r.max_nodes) == ("job", 1, 1)
    finally:
        r.shutdown()


@pytest.mark.timeout(20)
def test_min_reached_then_last_call_completes_the_round() -> None:
    rs = nodes(MemoryStore(), 2, 2, 3)
    try:
        t0 = time.monotonic()
        a, b = join_all(rs)
        took = time.monotonic() - t0
        assert a.round == b.round == 0
        assert a.group_world_size == b.group_world_size == 2
        assert {a.group_rank, b.group_rank} == {0, 1}
        assert a.nodes == b.nodes
        assert took >= FAST["last_call_timeout"] * 0.9  # MAX not reached: the last call was waited for
        assert a.master_addr == a.nodes[0].host and a.master_port == a.nodes[0].master_port
    finally:
        shutdown_all(rs)


@pytest.mark.timeout(20)
def test_max_reached_completes_without_waiting_for_the_last_call() -> None:
    conf = {**FAST, "last_call_timeout": 60.0}
    rs = nodes(MemoryStore(), 3, 1, 3, conf=conf)
    try:
        results = join_all(rs)  # would block 60 s if the last call were waited for (test timeout 20 s)
        assert [x.group_world_size for x in results] == [3, 3, 3]
        assert sorted(x.group_rank for x in results) == [0, 1, 2]
    finally:
        shutdown_all(rs)


@pytest.mark.timeout(30)
def test_late_joiner_waits_is_reported_and_admitted_next_round() -> None:
    store = MemoryStore()
    a, b, c = nodes(store, 3, 2, 3)
    woke = threading.Event()
    a.set_wakeup(woke.set)
    try:
        r0 = join_all([a, b])
        assert [x.group_world_size for x in r0] == [2, 2]
        late = Call(lambda: c.next_rendezvous(info("h2")), "late")
        m = wait_until(lambda: a.membership().waiting and a.membership(), 10, "a to see the waiting node")
        assert m == Membership(waiting=1)
        assert woke.wait(5)
        wait_until(lambda: b.membership().waiting == 1, 10, "b to see the waiting node")
        assert not late.done()
        r1 = join_all([a, b])  # the agents restart to admit it
        r1c = late.result()
        assert [x.round for x in [*r1, r1c]] == [1, 1, 1]
        assert r1c.group_world_size == 3
        assert sorted(x.group_rank for x in [*r1, r1c]) == [0, 1, 2]
        assert a.membership() == Membership()  # a new round starts with a clean view
    finally:
        shutdown_all([a, b, c])


@pytest.mark.timeout(20)
def test_node_rank_preferences_are_honoured_when_free() -> None:
    rs = nodes(MemoryStore(), 3, 3, 3)
    try:
        calls = [
            Call(lambda: rs[0].next_rendezvous(info("a", node_rank=2))),
            Call(lambda: rs[1].next_rendezvous(info("b", node_rank=None))),
            Call(lambda: rs[2].next_rendezvous(info("c", node_rank=0))),
        ]
        got = {x.nodes[x.group_rank].host: x.group_rank for x in (c.result() for c in calls)}
        assert got == {"a": 2, "b": 1, "c": 0}
    finally:
        shutdown_all(rs)


@pytest.mark.timeout(20)
def test_the_store_host_is_group_rank_zero_and_master() -> None:
    store = MemoryStore()
    rs = nodes(store, 3, 3, 3, priorities=(0, 0, 2))
    try:
        first = [Call(lambda i=i: rs[i].next_rendezvous(info(f"h{i}", port=1000 + i))) for i in (0, 1)]
        wait_until(lambda: store.add("/elaunch/job/r0/joined", 0) == 2, 5, "two nodes to join first")
        host = rs[2].next_rendezvous(info("h2", port=1002))
        others = [c.result() for c in first]
        assert host.group_rank == 0
        assert all(x.master_addr == "h2" and x.master_port == 1002 for x in [host, *others])
    finally:
        shutdown_all(rs)


def test_order_nodes_is_pure_and_deterministic() -> None:
    def rec(i: int, rank: int | None = None, prio: int = 0) -> NodeRecord:
        return NodeRecord(f"id{i}", info(f"h{i}", node_rank=rank), prio)

    rs = [rec(0), rec(1, prio=1), rec(2, rank=0), rec(3, rank=9), rec(4, prio=2)]
    assert [r.id for r in order_nodes(rs, 5)] == ["id2", "id0", "id1", "id3", "id4"]  # pref 0 beats host
    rs = [rec(0), rec(1, prio=1), rec(2, prio=2), rec(3, prio=2)]
    assert [r.id for r in order_nodes(rs, 4)] == ["id2", "id0", "id1", "id3"]
    assert [r.id for r in order_nodes(rs, 2)] == ["id1", "id0"]  # only the first MAX are in
    with pytest.raises(ValueError, match="both have --node-rank 0"):
        order_nodes([rec(0, rank=0), rec(1, rank=0)], 2, strict=True)
    with pytest.raises(ValueError, match=r"not in 0\.\.1"):
        order_nodes([rec(0, rank=0), rec(1, rank=None)], 2, strict=True)


@pytest.mark.timeout(30)
def test_lost_node_is_detected_through_heartbeats_and_the_rest_go_on() -> None:
    store = MemoryStore()
    rs = nodes(store, 3, 2, 3, severable=True)
    a, b, c = rs
    try:
        join_all(rs)
        host_c = "h2 (group rank 2)"  # as reports name a node
        t_cut = time.monotonic()
        c._store.cut()  # type: ignore[attr-defined]  # node c vanishes: its beats stop
        m = wait_until(lambda: a.membership().lost and a.membership(), 10, "a to see c lost")
        took = time.monotonic() - t_cut
        assert m.lost == (host_c,)
        assert took < FAST["heartbeat_timeout"] + 2.0, took
        wait_until(lambda: b.membership().lost == (host_c,), 5, "b to see c lost")
        # c's own view: it lost the store
        mc = wait_until(lambda: c.membership().closed and c.membership(), 10, "c to notice it lost the store")
        assert mc.reason is not None and mc.reason.startswith("lost the rendezvous store at memory")
        r1 = join_all([a, b])  # survivors restart without c
        assert [x.round for x in r1] == [1, 1]
        assert [x.group_world_size for x in r1] == [2, 2]
        assert "h2" not in {n.host for n in r1[0].nodes}
    finally:
        shutdown_all(rs)


@pytest.mark.timeout(30)
def test_after_a_loss_the_survivors_do_not_wait_the_last_call() -> None:
    # A last call of 600 s: the re-formed round can only complete within the test's timeout if it
    # ends as soon as every survivor of the previous round has joined.
    conf = {**FAST, "last_call_timeout": 600.0}
    rs = nodes(MemoryStore(), 3, 2, 3, conf=conf, severable=True)
    a, b, c = rs
    try:
        join_all(rs)  # MAX joined: no last call in round 0
        c._store.cut()  # type: ignore[attr-defined]
        wait_until(lambda: a.membership().lost and b.membership().lost, 10, "a and b to see c lost")
        r1 = join_all([a, b])
        assert [x.round for x in r1] == [1, 1] and [x.group_world_size for x in r1] == [2, 2]
    finally:
        shutdown_all(rs)


@pytest.mark.timeout(30)
def test_a_restart_round_waits_for_every_surviving_member() -> None:
    # b and c restart first; the round must not close at MIN without a, which is alive.
    conf = {**FAST, "last_call_timeout": 600.0}
    rs = nodes(MemoryStore(), 3, 2, 3, conf=conf)
    a, b, c = rs
    try:
        join_all(rs)
        early = [Call(lambda r=r, i=i: r.next_rendezvous(info(f"h{i}")), f"h{i}") for i, r in ((1, b), (2, c))]
        wait_until(lambda: a.membership().waiting >= 2, 10, "b and c to wait in round 1")
        ra = a.next_rendezvous(info("h0"))
        rb, rc = (x.result() for x in early)
        assert ra.round == rb.round == rc.round == 1
        assert ra.group_world_size == 3 and ra.nodes == rb.nodes == rc.nodes
    finally:
        shutdown_all(rs)


@pytest.mark.timeout(20)
def test_closing_the_job_reaches_everyone_and_blocks_new_rounds() -> None:
    store = MemoryStore()
    a, b, c = nodes(store, 3, 2, 3)
    try:
        join_all([a, b])
        joining = Call(lambda: c.next_rendezvous(info("h2")))  # waits for the next round
        wait_until(lambda: a.membership().waiting == 1, 5, "c to wait")
        woke = threading.Event()
        b.set_wakeup(woke.set)
        a.set_closed("h0 failed: rank 3 exited with code 1")
        assert a.membership().closed
        assert woke.wait(5)
        m = wait_until(lambda: b.membership().closed and b.membership(), 5, "b to see the job closed")
        assert m.reason == "h0 failed: rank 3 exited with code 1"
        err = joining.error(5)
        assert isinstance(err, RendezvousClosedError) and "rank 3 exited" in err.message
        with pytest.raises(RendezvousClosedError, match="rank 3 exited"):
            b.next_rendezvous(info("h1"))
        b.set_closed("a later reason")  # the first reason wins
        assert b.membership().reason == "h0 failed: rank 3 exited with code 1"
    finally:
        shutdown_all([a, b, c])


@pytest.mark.timeout(20)
def test_join_timeout_names_how_many_joined() -> None:
    (a,) = nodes(MemoryStore(), 1, 2, 4, conf={**FAST, "join_timeout": 0.5})
    try:
        with pytest.raises(RendezvousTimeoutError) as e:
            a.next_rendezvous(info("h0"))
        assert "1 of the minimum 2 nodes joined (max 4)" in e.value.message
        assert "0.5 s" in e.value.message
    finally:
        a.shutdown()


@pytest.mark.timeout(20)
def test_exit_barrier_waits_for_every_node() -> None:
    rs = nodes(MemoryStore(), 3, 3, 3)
    try:
        join_all(rs)
        first = [Call(lambda r=r: r.exit_barrier(10)) for r in rs[:2]]
        assert not any(c.done() for c in first)
        rs[2].exit_barrier(10)
        for c in first:
            c.result(5)
    finally:
        shutdown_all(rs)
    # every node passed: the job is closed as finished for anyone still waiting
    assert rs[0].membership().closed


@pytest.mark.timeout(20)
def test_exit_barrier_times_out_with_a_count() -> None:
    rs = nodes(MemoryStore(), 2, 2, 2)
    try:
        join_all(rs)
        with pytest.raises(RendezvousTimeoutError, match=r"1 of 2 nodes finished within 0\.3 s"):
            rs[0].exit_barrier(0.3)
    finally:
        shutdown_all(rs)


@pytest.mark.timeout(20)
def test_failures_are_visible_to_every_node() -> None:
    rs = nodes(MemoryStore(), 2, 2, 2)
    try:
        join_all(rs)
        assert rs[0].failures() == []
        rs[0].publish_failure("h0 rank 1 exit 3\nTraceback: ValueError: bad\n")
        rs[1].publish_failure("h1 rank 2 signal SIGKILL")
        for r in rs:
            assert sorted(r.failures()) == [
                "h0 rank 1 exit 3\nTraceback: ValueError: bad\n",
                "h1 rank 2 signal SIGKILL",
            ]
    finally:
        shutdown_all(rs)


@pytest.mark.timeout(20)
def test_two_run_ids_on_one_store_do_not_collide() -> None:
    store = MemoryStore()
    job1 = nodes(store, 2, 2, 2, run_id="job1")
    job2 = nodes(store, 3, 3, 3, run_id="job/2")
    try:
        calls = [Call(lambda r=r, i=i: r.next_rendezvous(info(f"one{i}"))) for i, r in enumerate(job1)]
        calls += [Call(lambda r=r, i=i: r.next_rendezvous(info(f"two{i}"))) for i, r in enumerate(job2)]
        res = [c.result() for c in calls]
        assert {n.host for n in res[0].nodes} == {"one0", "one1"}
        assert {n.host for n in res[2].nodes} == {"two0", "two1", "two2"}
        job1[0].set_closed("job1 done")
        wait_until(lambda: job1[1].membership().closed, 5, "job1 to close")
        assert not job2[0].membership().closed
        assert all(k.startswith(("/elaunch/job1/", "/elaunch/job%2F2/")) for k in store.list_keys())
    finally:
        shutdown_all(job1 + job2)


@pytest.mark.timeout(30)
def test_a_dead_finaliser_is_replaced() -> None:
    store = MemoryStore()
    conf = {**FAST, "last_call_timeout": 60.0}
    a, b, c = nodes(store, 3, 2, 3, conf=conf, severable=True)
    try:
        ja = Call(lambda: a.next_rendezvous(info("h0")))
        wait_until(lambda: store.add("/elaunch/job/r0/joined", 0) == 1, 5, "a to join")
        jb = Call(lambda: b.next_rendezvous(info("h1")))  # 2nd = MIN: b finalises, last call 60 s
        wait_until(lambda: store.check(["/elaunch/job/r0/finaliser"]), 5, "b to become the finaliser")
        b._store.cut()  # type: ignore[attr-defined]  # ...and dies during the last call
        assert isinstance(jb.error(10), RendezvousError)
        wait_until(lambda: store.get("/elaunch/job/r0/finaliser") == b"n0", 10, "a to take over")
        rc = c.next_rendezvous(info("h2"))  # MAX is 3 with b counted: a finalises at once without b
        ra = ja.result(10)
        assert ra.round == rc.round == 0
        assert {n.host for n in ra.nodes} == {"h0", "h2"}
    finally:
        shutdown_all([a, b, c])


@pytest.mark.timeout(20)
def test_shutdown_from_another_thread_unblocks_a_join() -> None:
    (a,) = nodes(MemoryStore(), 1, 2, 2)
    joining = Call(lambda: a.next_rendezvous(info("h0")))  # alone: would wait for join_timeout
    wait_until(lambda: a._store.check(["/elaunch/job/r0/joined"]), 5, "a to join")  # type: ignore[attr-defined]
    a.shutdown()
    err = joining.error(5)
    assert isinstance(err, RendezvousClosedError) and "shutting down" in err.message


def test_settings_defaults_and_beat_period() -> None:
    # parsing and range checks of --rdzv-conf live in elaunch.config (tests/unit/test_config.py)
    s = RendezvousSettings(heartbeat_timeout=6, keep_alive_interval=5)
    assert s.join_timeout == 600 and s.heartbeat_timeout == 6
    assert s.beat_period == pytest.approx(2.0)  # lost after 3 missed beats, within 6 s
    with pytest.raises(ValueError, match="MIN <= MAX"):  # a programming error: config refuses 3:2 first
        DynamicRendezvous(MemoryStore(), "j", 3, 2)


@pytest.mark.timeout(30)
def test_a_node_beyond_max_stands_by_without_making_the_job_restart() -> None:
    store = MemoryStore()
    a, b, c = nodes(store, 3, 1, 2, conf={**FAST, "last_call_timeout": 60.0})
    try:
        join_all([a, b])  # MAX reached: complete at once
        standby = Call(lambda: c.next_rendezvous(info("h2")), "standby")
        beats = store.add("/elaunch/job/hb/n0", 0)
        wait_until(lambda: store.add("/elaunch/job/hb/n0", 0) >= beats + 3, 5, "a few of a's heartbeats")
        assert a.membership().waiting == 0 and b.membership().waiting == 0  # no restart storm
        assert not standby.done()
        ra = Call(lambda: a.next_rendezvous(info("h0")), "a")  # a restarts (say, its worker failed)
        wait_until(lambda: b.membership().waiting >= 1, 5, "b to see nodes waiting")
        rb = Call(lambda: b.next_rendezvous(info("h1")), "b")
        calls = (ra, rb, standby)
        done = wait_until(
            lambda: [x for x in calls if x.done()] if sum(x.done() for x in calls) >= 2 else None, 10, "round 1"
        )
        results = [x.result() for x in done]
        assert all(r.round == 1 and r.group_world_size == 2 for r in results)
        left_out = next(x for x in calls if x not in done)
        assert not left_out.done()  # the third stands by again...
        beats = store.add("/elaunch/job/hb/n0", 0)
        wait_until(lambda: store.add("/elaunch/job/hb/n0", 0) >= beats + 3, 5, "a few more heartbeats")
        running = [r for r, call in zip((a, b, c), calls, strict=True) if call in done]
        assert [r.membership().waiting for r in running] == [0, 0]  # ...without a restart storm
    finally:
        shutdown_all([a, b, c])


def test_heartbeat_staleness_uses_our_clock_and_forgives_our_own_pauses() -> None:
    from elaunch.rendezvous.watcher import Beat

    b = Beat(timeout=1.0, period=0.2)  # a look is a pause on our side if > 2 x 0.2 + 0.5 s late
    assert not b.stale(5, 100.0)
    assert not b.stale(5, 100.2)
    assert not b.stale(6, 100.4)  # it moved: the count restarts
    assert not b.stale(6, 101.2)  # 0.8 s without a move (looks 0.8 s apart: not a pause)
    assert b.stale(6, 101.5)  # 1.1 s without a move: lost
    c = Beat(timeout=1.0, period=0.2)
    assert not c.stale(6, 200.0)
    assert not c.stale(6, 205.0)  # 5 s since our last look: we (or the store) stalled, restart
    assert not c.stale(6, 205.8)
    assert c.stale(6, 206.1)


@pytest.mark.timeout(20)
def test_exit_barrier_gives_up_early_when_a_node_is_lost() -> None:
    rs = nodes(MemoryStore(), 3, 3, 3, severable=True)
    try:
        join_all(rs)
        rs[2]._store.cut()  # type: ignore[attr-defined]
        t0 = time.monotonic()
        with pytest.raises(RendezvousError, match=r"h2 \(group rank 2\) were lost before finishing"):
            rs[0].exit_barrier(60)
        assert time.monotonic() - t0 < 10
    finally:
        shutdown_all(rs)
