"""One beat of the membership thread (watcher.Watcher.tick) on an in-memory store, driven by
hand: no thread is started, time passes only as far as a deadline needs."""

from __future__ import annotations

import pytest

from elaunch.rendezvous.api import Membership, RendezvousSettings
from elaunch.rendezvous.keys import Keys
from elaunch.rendezvous.rounds import NodeRecord, Round
from elaunch.rendezvous.store import MemoryStore, Store
from elaunch.rendezvous.watcher import ControlConnection, CounterLiveness, MembershipState, RingWatch, Watcher
from scripts.testbed import wait_until

from ._support import info

pytestmark = pytest.mark.timeout(20)

HB = 0.3
SETTINGS = RendezvousSettings(heartbeat_timeout=HB, keep_alive_interval=0.05)


class Lapsing(CounterLiveness):
    """Counter heartbeats whose beats say the node's liveness lapsed while `lapse` is set (what
    `lease.LeaseLiveness` says when it found the node's etcd lease expired)."""

    lapse: str | None = None
    beats = 0

    def beat(self, st: Store) -> str | None:
        super().beat(st)
        self.beats += 1
        return self.lapse


def setup(
    liveness: Lapsing | None = None, in_round: bool = True
) -> tuple[MemoryStore, Keys, MembershipState, Watcher, RingWatch, Round]:
    store = MemoryStore()
    keys = Keys("job")
    group = tuple(NodeRecord(n, info(f"host-{n}")) for n in ("a", "b", "c"))
    rv = Round(0, group, rank=0)  # we are a: we watch b, then c
    state = MembershipState()
    if in_round:
        state.new_round(rv)
    w = Watcher(
        ControlConnection(store.clone(), "memory"), keys, "a", SETTINGS, state, "memory", "test-watch", liveness
    )
    return store, keys, state, w, RingWatch(w.liveness), rv


def test_a_stuck_neighbour_is_released_reported_and_skipped() -> None:
    store, keys, state, w, ring, _ = setup()

    def beat() -> bool:
        store.add(keys.hb("c"), 1)  # c is alive; b never beats
        changed, closed = w.tick(store, ring)
        assert not closed
        return changed

    assert not beat()
    assert ring.target == 1
    wait_until(beat, 5, "b to be found lost", interval=0.02, max_interval=0.1)
    assert state.view() == Membership(lost=("host-b (group rank 1)",))
    r0 = keys.round(0)
    assert store.get(r0.rel(1)) == b"lost:a"  # its slot was released, by us
    assert store.add(r0.released, 0) == 1
    assert store.get(r0.lost).count(b"host-b") == 1
    assert ring.target == 2  # now watching c, which beats
    for _ in range(5):
        assert not beat()
    assert store.add(keys.hb("a"), 0) >= 7  # every tick beat for us too


def test_waiting_nodes_and_a_closed_job_are_seen_in_one_beat() -> None:
    store, keys, state, w, ring, _ = setup()
    store.add(keys.hb("b"), 1)
    assert w.tick(store, ring) == (False, False)
    store.add(keys.round(1).joined, 1)  # a node waits in round 1
    assert w.tick(store, ring) == (True, False)
    assert state.view().waiting == 1
    store.compare_set(keys.closed, "", "h9 failed")
    assert w.tick(store, ring) == (True, True)
    assert state.view() == Membership(waiting=1, closed=True, reason="h9 failed")


def test_what_a_beat_saw_of_a_replaced_round_is_dropped() -> None:
    _, _, state, _, _, rv = setup()
    assert state.update(rv, (), 2) and state.view().waiting == 2
    state.new_round(Round(1, rv.nodes, rank=0))  # round 1 began while a beat of round 0 ran
    assert state.view() == Membership()  # a new round starts with a clean view
    assert not state.update(rv, ("host-b",), 3)
    assert state.view() == Membership()


def test_a_node_whose_liveness_lapsed_reports_itself_lost_and_says_so() -> None:
    live = Lapsing(Keys("job"), "a", SETTINGS)
    store, keys, state, w, ring, _ = setup(live)
    told: list[str] = []
    state.set_notice(told.append)
    store.add(keys.hb("b"), 1)
    assert w.tick(store, ring) == (False, False)
    live.lapse = "its lease expired"
    assert w.tick(store, ring) == (True, False)
    assert state.view() == Membership(lost=("host-a (group rank 0)",))  # itself: its agent re-forms
    r0 = keys.round(0)
    assert store.get(r0.rel(0)) == b"lapsed:1:a" and store.add(r0.released, 0) == 1
    assert told == ["its lease expired; it reports itself lost in round 0, so the group re-forms with it"]
    assert w.tick(store, ring) == (False, False)  # lapsed again: its slot is released already
    assert store.get(r0.lost).count(b'"id": "a"') == 1 and store.add(r0.released, 0) == 1


def test_a_finished_node_whose_liveness_lapsed_is_not_lost() -> None:
    live = Lapsing(Keys("job"), "a", SETTINGS)
    store, keys, state, w, ring, _ = setup(live)
    told: list[str] = []
    state.set_notice(told.append)
    store.set(keys.round(0).fin(0), "1")  # at the exit barrier
    live.lapse = "its lease expired"
    store.add(keys.hb("b"), 1)
    assert w.tick(store, ring) == (False, False)
    assert not store.check([keys.round(0).lost, keys.round(0).rel(0)])
    assert told == ["its lease expired"]


def test_before_its_first_round_a_node_only_beats() -> None:
    live = Lapsing(Keys("job"), "a", SETTINGS)
    store, keys, state, w, ring, _ = setup(live, in_round=False)
    store.compare_set(keys.closed, "", "h9 failed")
    assert w.tick(store, ring) == (False, False)  # the joining loops read P/closed, not the beat
    assert live.beats == 1 and state.view() == Membership()
