"""The round's decisions (elaunch.rendezvous.rounds) from scripted round histories: plain values
in, a decision out; no store, no threads, no clock. Also the key schema (keys.Keys)."""

from __future__ import annotations

import json
import zlib

import pytest

from elaunch.rendezvous import rounds
from elaunch.rendezvous.keys import Keys
from elaunch.rendezvous.rounds import BeatSeen, LastCall, NodeRecord, Placement

from ._support import info

pytestmark = pytest.mark.timeout(10)


def rec(name: str, rank: int | None = None, prio: int = 0) -> NodeRecord:
    return NodeRecord(name, info(f"host-{name}", node_rank=rank), prio)


def nodes_key(*records: NodeRecord) -> bytes:
    """The bytes of `R/nodes` after these joins (in this order)."""
    return "".join(rounds.record_line(r) for r in records).encode()


def lost_key(*entries: tuple[int, str, str]) -> bytes:
    return "".join(rounds.lost_line(*e) for e in entries).encode()


# -- joining --------------------------------------------------------------------------------------
def test_join_indices_decide_arrival_markers_and_the_finaliser() -> None:
    # MIN=2, MAX=4: four nodes join in turn (their `add R/joined 1` gives 1, 2, 3, 4)
    steps = [(rounds.marks_arrival(k, 2), rounds.claims_finaliser(k, 2)) for k in (1, 2, 3, 4)]
    assert steps == [(False, False), (True, True), (True, False), (True, False)]


@pytest.mark.parametrize(
    ("last_round", "open_round", "expected"),
    [
        (None, 0, 0),  # the first node of a job
        (None, 3, 3),  # a new node: the open round
        (2, 3, 3),  # a running node restarts into the next round
        (3, 3, 4),  # never a round it was already in
        (1, 5, 5),  # the job moved on while it was away
    ],
)
def test_which_round_a_node_joins(last_round: int | None, open_round: int, expected: int) -> None:
    assert rounds.round_to_join(last_round, open_round) == expected


def test_placement_after_a_round_was_published() -> None:
    group = (rec("a"), rec("b"))
    assert rounds.placement(group, "b", max_nodes=3, strict=False) == (Placement.IN, 1)
    assert rounds.placement(group, "c", max_nodes=3, strict=False) == (Placement.LATE, -1)  # room: next round
    assert rounds.placement(group, "c", max_nodes=2, strict=False) == (Placement.STANDBY, -1)  # full: stand by
    assert rounds.placement(group, "c", max_nodes=2, strict=True) == (Placement.REFUSED, -1)  # static: no room
    assert rounds.round_is_full(2, 2) and not rounds.round_is_full(1, 2)


# -- finalising: who is in ------------------------------------------------------------------------
def test_live_joiners_keep_join_order_without_repeats_or_gone_nodes() -> None:
    raw = nodes_key(rec("a"), rec("b"), rec("a"), rec("c"), rec("d"))  # a joined twice (a retry)
    live = rounds.live_records(raw, gone={"c"})
    assert [r.id for r in live] == ["a", "b", "d"]
    assert live[0].info.host == "host-a"
    assert rounds.id_set(b"c\nx\n\n") == {"c", "x"}
    assert rounds.enough_joined(len(live), 3) and not rounds.enough_joined(len(live), 4)


def test_a_new_round_waits_for_the_previous_one_except_round_zero() -> None:
    assert [rounds.previous_round_must_end(n) for n in (0, 1, 7)] == [False, True, True]


def test_round_zero_last_call_history_min_2_max_3() -> None:
    # a and b joined (MIN reached): last call; nobody else comes until c arrives
    live = ["a", "b"]
    assert rounds.last_call_needed(len(live), 3)
    assert rounds.last_call(live, 3, expected=None) is LastCall.WAIT
    assert rounds.last_call_after_count(2, 3) is LastCall.WAIT  # R/joined: 2, wait for at/3
    # c's join is seen through the counter before its record is read: close after re-reading
    assert rounds.last_call_after_count(3, 3) is LastCall.END_REREAD
    # ...or through its record: MAX in
    assert rounds.last_call([*live, "c"], 3, expected=None) is LastCall.END
    assert not rounds.last_call_needed(3, 3)


def test_max_joins_end_the_last_call_even_if_a_joiner_left_since() -> None:
    # 3 joins happened (MAX 3) but d gave up after joining: only 2 live, the count still ends it
    live = rounds.live_records(nodes_key(rec("a"), rec("b"), rec("d")), gone={"d"})
    assert rounds.last_call([r.id for r in live], 3, expected=None) is LastCall.WAIT
    assert rounds.last_call_after_count(3, 3) is LastCall.END_REREAD


def test_restart_round_after_a_loss_ends_once_the_survivors_joined() -> None:
    # round 0: a, b, c (MIN 2, MAX 3); c was found lost; round 1: b then a rejoin
    group = [r.id for r in (rec("a"), rec("b"), rec("c"))]
    lost = rounds.lost_ids(lost_key((2, "host-c", "c")))
    expected = rounds.survivors(group, lost, gone=set())
    assert expected == {"a", "b"}
    assert rounds.last_call(["b"], 3, expected) is LastCall.WAIT  # a is alive: wait for it
    assert rounds.last_call(["b", "a"], 3, expected) is LastCall.END  # no 30 s wait for nobody


def test_restart_round_without_a_loss_waits_for_every_member() -> None:
    expected = rounds.survivors(["a", "b", "c"], lost=set(), gone=set())
    assert rounds.last_call(["b", "c"], 3, expected) is LastCall.WAIT  # MIN is 2, but a is coming
    assert rounds.last_call(["b", "c", "a"], 3, expected) is LastCall.END


def test_restart_round_does_not_wait_for_gone_nodes_and_a_newcomer_does_not_count() -> None:
    expected = rounds.survivors(["a", "b", "c"], lost=set(), gone={"b"})  # b gave up (join timeout)
    assert expected == {"a", "c"}
    assert rounds.last_call(["d", "a"], 4, expected) is LastCall.WAIT  # d is new; c is still expected
    assert rounds.last_call(["d", "a", "c"], 4, expected) is LastCall.END


def test_the_finalised_group_round_trips_through_the_final_key() -> None:
    live = [rec("a"), rec("b", prio=2), rec("c", rank=2), rec("d")]
    ordered = rounds.order_nodes(live, max_nodes=3)  # d is beyond MAX
    assert [r.id for r in ordered] == ["b", "a", "c"]  # the store's host is rank 0; c's preference held
    raw = rounds.final_payload(4, "a", ordered)
    assert json.loads(zlib.decompress(raw))["round"] == 4 and json.loads(zlib.decompress(raw))["by"] == "a"
    group = rounds.decode_group(raw)
    assert group == tuple(ordered)
    assert group.infos == tuple(r.info for r in ordered) and group.rank_of("c") == 2 and group.rank_of("d") == -1
    assert rounds.placement(group, "a", max_nodes=3, strict=False) == (Placement.IN, 1)  # the O(1) path


def test_static_rank_conflicts_become_one_reason() -> None:
    with pytest.raises(ValueError) as e:
        rounds.order_nodes([rec("a", rank=1), rec("b", rank=1)], 2, strict=True)
    reason = rounds.strict_ranks_reason(e.value, 2)
    assert reason == (
        "static rendezvous: nodes host-a and host-b both have --node-rank 1; "
        "each node needs a distinct --node-rank in 0..1"
    )
    assert "one too many" in rounds.no_room_reason(3, 2, "h9", 5)


def test_join_timeout_reasons() -> None:
    assert rounds.join_timeout_reason("job", 0, 600, 1, 2, 4).endswith(
        "round 0: timed out after 600 s (join_timeout): 1 of the minimum 2 nodes joined (max 4)"
    )
    assert "nodes of round 2 never came back" in rounds.join_timeout_reason("job", 3, 5, 2, 2, 2, True)
    assert rounds.join_timeout_reason("job", 0, 1.5, None, 2, 2).endswith("the minimum is 2 nodes")


# -- heartbeats: finaliser, ring, standby ------------------------------------------------------------
def test_heartbeat_history_on_our_clock() -> None:
    # (counter value read, our monotonic time) -> lost? ; timeout 1 s, period 0.2 s (pause > 0.9 s)
    history = [(5, 100.0), (5, 100.2), (6, 100.4), (6, 101.2), (6, 101.5)]
    seen, decisions = BeatSeen(), []
    for value, now in history:
        seen, lost = rounds.heartbeat_stale(seen, value, now, timeout=1.0, period=0.2)
        decisions.append(lost)
    assert decisions == [False, False, False, False, True]


def test_a_pause_on_our_side_restarts_the_count() -> None:
    seen = BeatSeen()
    out = []
    for value, now in [(6, 200.0), (6, 205.0), (6, 205.8), (6, 206.1)]:  # we stalled 5 s
        seen, lost = rounds.heartbeat_stale(seen, value, now, timeout=1.0, period=0.2)
        out.append(lost)
    assert out == [False, False, False, True]


def test_an_unclaimed_finaliser_is_replaced_after_the_heartbeat_timeout() -> None:
    # MIN 2; joiners look between waits: (joined count, time)
    since = None
    for joined, now in [(1, 10.0), (1, 11.0), (2, 12.0), (2, 15.0)]:
        since = rounds.finaliser_unclaimed_since(joined, 2, since, now)
    assert since == 12.0  # counted from when MIN had joined
    assert not rounds.overdue(since, 17.0, timeout=5.0)
    assert rounds.overdue(since, 17.1, timeout=5.0)
    assert not rounds.overdue(None, 1e9, timeout=5.0)


def test_the_ring_skips_lost_nodes_and_stops_at_us() -> None:
    assert rounds.ring_target(0, 1) is None  # alone: nobody to watch
    assert rounds.ring_target(2, 3) == 0
    # node 0 of 4 watches 1; 1 is lost -> 2; 2 lost -> 3; 3 lost -> back at 0: stop
    target: int | None = rounds.ring_target(0, 4)
    seen = []
    while target is not None:
        seen.append(target)
        target = rounds.ring_after(target, 0, 4)
    assert seen == [1, 2, 3]


def test_a_node_whose_liveness_lapsed_reports_itself_lost_only_while_it_runs_a_round() -> None:
    assert rounds.lapse_reported_lost(in_round=True, finished=False)
    assert not rounds.lapse_reported_lost(in_round=True, finished=True)  # at the exit barrier: finished
    assert not rounds.lapse_reported_lost(in_round=False, finished=False)  # joining, standing by: no slot
    assert rounds.lapse_notice("it lapsed", 4, reported=True) == (
        "it lapsed; it reports itself lost in round 4, so the group re-forms with it"
    )
    assert rounds.lapse_notice("it lapsed", None, reported=False) == "it lapsed"


def test_the_etcd_leases_ttls() -> None:
    from elaunch.rendezvous.api import RendezvousSettings
    from elaunch.rendezvous.lease import expired_reason, lease_ttl, node_lease_ttl

    default = RendezvousSettings()
    assert (node_lease_ttl(default), lease_ttl(default)) == (5, 15)  # heartbeat_timeout 5 s
    fast = RendezvousSettings(heartbeat_timeout=1.5, keep_alive_interval=0.2)
    assert node_lease_ttl(fast) == 2  # whole seconds, rounded up
    assert node_lease_ttl(fast) > fast.beat_period  # renewed before it can expire
    assert node_lease_ttl(RendezvousSettings(heartbeat_timeout=0.1)) == 1
    assert "for 5 s" in expired_reason(5) and "holds a new lease" in expired_reason(5)


# -- leaving: release, barrier, goodbyes ------------------------------------------------------------
def test_releasing_barrier_and_goodbye_counts() -> None:
    assert [rounds.round_released(n, 3) for n in (1, 2, 3)] == [False, False, True]
    assert [rounds.last_at_barrier(n, 2) for n in (1, 2)] == [False, True]
    assert rounds.goodbyes_expected(4, lost=1) == 3
    assert rounds.goodbyes_expected(None, lost=0) == 1  # never completed a round: only itself


def test_lost_reports_show_each_node_once_in_report_order() -> None:
    raw = lost_key((2, "h2", "n2"), (0, "h0", "n0"), (2, "h2", "n2"))  # two watchers reported n2
    assert rounds.lost_nodes(raw) == ("h2 (group rank 2)", "h0 (group rank 0)")
    assert rounds.lost_ids(raw) == {"n2", "n0"}
    assert rounds.lost_nodes(b"") == ()


def test_lost_nodes_on_hosts_of_the_same_name_are_told_apart() -> None:
    raw = lost_key((1, "vm", "n1"), (2, "vm", "n2"))
    assert rounds.lost_nodes(raw) == ("vm (group rank 1)", "vm (group rank 2)")


# -- the key schema -----------------------------------------------------------------------------------
def test_every_key_lives_under_the_quoted_run_id() -> None:
    k = Keys("job/2 x")
    p = "/elaunch/job%2F2%20x"
    assert k.prefix == p
    assert (k.open_round, k.closed, k.gone, k.failures, k.bye) == (
        f"{p}/open_round",
        f"{p}/closed",
        f"{p}/gone",
        f"{p}/failures",
        f"{p}/bye",
    )
    assert k.hb("host:12:ab/c") == f"{p}/hb/host%3A12%3Aab%2Fc"
    assert k.alive("host:12:ab/c") == f"{p}/alive/host%3A12%3Aab%2Fc"
    assert k.bye_at(3) == f"{p}/bye/3"
    r = k.round(7)
    names = [r.nodes, r.joined, r.finaliser, r.final, r.released, r.done, r.lost, r.exit, r.exit_done]
    assert names == [
        f"{p}/r7/{n}"
        for n in ("nodes", "joined", "finaliser", "final", "released", "done", "lost", "exit", "exit_done")
    ]
    assert (r.at(3), r.rel(0)) == (f"{p}/r7/at/3", f"{p}/r7/rel/0")


def test_the_store_host_stays_only_while_nodes_have_not_finished() -> None:
    assert rounds.store_host_stays(2, 2) is None
    why = rounds.store_host_stays(1, 3)
    assert why is not None and "other 2 node(s) still run" in why and "--exit-barrier-timeout" in why
