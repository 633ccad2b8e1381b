"""The membership thread: heartbeats, the ring watch, and this node's view of membership.

One thread per node (`elaunch-rdzv-<run id>`) on the control connection. Every beat period it
makes at most eight store operations, whatever the number of nodes: is the job closed, beat, look
at the watched node, read `R/lost`, read how many wait in the next round, read the spares standing
by (`P/spares`). What a beat and a look are is the node's `Liveness`:

* c10d (`CounterLiveness`): the beat is `add P/hb/<me> 1`, a write; the look reads the watched
  node's counter, which is lost once it has not moved for heartbeat_timeout on our clock.
* etcd (`lease.LeaseLiveness`): the beat is a keep-alive of the node's own lease, on which its
  alive key `P/alive/<me>` was written once; the look reads the watched node's alive key, which
  etcd deletes when that lease expires. No write: an idle job adds no etcd revision. A beat that
  finds this node's own lease expired (etcd heard nothing from it for the TTL) makes up to seven more
  operations: a new lease, the alive key again, and this node reported lost in its round.

Decisions (stale counter, next node to watch, a lapsed lease) are `rounds` functions.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

from elaunch.errors import StoreError
from elaunch.rendezvous import rounds
from elaunch.rendezvous.api import Membership, RendezvousSettings
from elaunch.rendezvous.keys import Keys
from elaunch.rendezvous.rounds import BeatSeen, Round
from elaunch.rendezvous.spares import read_spares
from elaunch.rendezvous.store import Store

STORE_LOST = "lost the rendezvous store"
"""How `Membership.reason` starts when this node lost the store (then: `at host:port: error`)."""


class Beat:
    """A heartbeat counter read on our own clock (see `rounds.heartbeat_stale`)."""

    def __init__(self, timeout: float, period: float) -> None:
        self._timeout = timeout
        self._period = period
        self._seen = BeatSeen()

    def stale(self, value: int, now: float) -> bool:
        """Remember `value` read at `now` (monotonic); True once it has not moved for `timeout`."""
        self._seen, lost = rounds.heartbeat_stale(self._seen, value, now, self._timeout, self._period)
        return lost


class NodeWatch(Protocol):
    """One node looked at again and again (the ring's target, a finaliser, the running rank 0)."""

    def lost(self, st: Store, node_id: str) -> bool:
        """One look at node `node_id` (one store operation): True once it counts as lost.
        Raises `StoreError` when the store does not answer."""
        ...


class Liveness(Protocol):
    """How nodes show they are alive and how a node finds another one lost: heartbeat counters
    (`CounterLiveness`, c10d) or etcd leases (`lease.LeaseLiveness`)."""

    @property
    def early(self) -> bool:
        """Whether the membership thread runs from the moment the rendezvous is built (a lease
        must be kept alive while the node joins), rather than from its first round."""
        ...

    def beat(self, st: Store) -> str | None:
        """The membership thread's beat (one store operation, on `st` or the liveness' own
        connection). None, or why this node's liveness lapsed (its lease had expired: the
        reason for its user; a new one was granted). Raises `StoreError`."""
        ...

    def joining_beat(self, st: Store) -> None:
        """A beat from the joining loops (a finaliser between waits, a spare standing by), whose
        membership thread may not run yet: 0 or 1 store operation. Raises `StoreError`."""
        ...

    def watch(self) -> NodeWatch:
        """A new look-out on one node."""
        ...

    def all_alive(self, st: Store, ids: Sequence[str], ending: str) -> bool:
        """Whether every node of `ids` is alive (within heartbeat_timeout) and `ending` did not
        appear meanwhile (the round is ending). Raises `StoreError`."""
        ...


class CounterLiveness:
    """c10d: each node beats by `add P/hb/<me> 1` (a write, once per beat period); a node is lost
    once its counter has not moved for heartbeat_timeout on the watcher's clock
    (`rounds.heartbeat_stale`). TCPStore has no leases."""

    early = False

    def __init__(self, keys: Keys, node_id: str, settings: RendezvousSettings) -> None:
        self._k = keys
        self._id = node_id
        self._timeout = settings.heartbeat_timeout
        self._period = settings.beat_period

    def beat(self, st: Store) -> str | None:
        st.add(self._k.hb(self._id), 1)
        return None

    def joining_beat(self, st: Store) -> None:
        st.add(self._k.hb(self._id), 1)

    def watch(self) -> _Counter:
        return _Counter(self._k, self._timeout, self._period)

    def all_alive(self, st: Store, ids: Sequence[str], ending: str) -> bool:
        """Every counter moves within heartbeat_timeout (read twice or more), and `ending` does not
        appear meanwhile: up to heartbeat_timeout."""
        keys = [self._k.hb(i) for i in ids]
        first = [st.add(k, 0) for k in keys]
        pending = set(range(len(keys)))
        deadline = time.monotonic() + self._timeout
        while pending:
            left = deadline - time.monotonic()
            if left <= 0 or st.wait([ending], min(self._period, left) / 4):
                return False
            pending = {i for i in pending if st.add(keys[i], 0) == first[i]}
        return True


class _Counter:
    """`CounterLiveness.watch`: one node's counter on our clock."""

    def __init__(self, keys: Keys, timeout: float, period: float) -> None:
        self._k = keys
        self._beat = Beat(timeout, period)

    def lost(self, st: Store, node_id: str) -> bool:
        return self._beat.stale(st.add(self._k.hb(node_id), 0), time.monotonic())


class RingWatch:
    """Which ring neighbour this node watches (the next group rank), and the look-out on it."""

    def __init__(self, liveness: Liveness) -> None:
        self._live = liveness
        self.round = -1
        self.me = 0
        self.target: int | None = None
        self.look = liveness.watch()

    def reset(self, rv: Round) -> None:
        self.round = rv.number
        self.me = rv.rank
        self.target = rounds.ring_target(rv.rank, rv.size)
        self.look = self._live.watch()

    def advance(self, rv: Round) -> None:
        """Watch the next node in the ring (the lost one watched it); stop when back at us."""
        self.look = self._live.watch()
        self.target = rounds.ring_after(self.target or 0, self.me, rv.size)


class MembershipState:
    """This node's view, shared by the joining calls and the membership thread (thread-safe).

    `closed` holds the reason once the job is closed; a new round resets `waiting` and `lost`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._round: Round | None = None
        self._waiting = 0
        self._lost: tuple[str, ...] = ()
        self._closed: str | None = None
        self._restart: str | None = None
        self._spare = False
        self._spares: tuple[str, ...] = ()
        self._wake: Callable[[], None] | None = None
        self._notice: Callable[[str], None] | None = None

    @property
    def round(self) -> Round | None:
        with self._lock:
            return self._round

    @property
    def closed(self) -> str | None:
        with self._lock:
            return self._closed

    @property
    def lost(self) -> tuple[str, ...]:
        with self._lock:
            return self._lost

    def view(self) -> Membership:
        with self._lock:
            return Membership(
                waiting=self._waiting,
                lost=self._lost,
                closed=self._closed is not None,
                reason=self._closed,
                restart=self._restart,
                spare=self._spare,
                spares=self._spares,
            )

    def new_round(self, rv: Round) -> None:
        with self._lock:
            self._round = rv
            self._waiting = 0
            self._lost = ()
            self._restart = None
            self._spare = False

    def close(self, reason: str) -> str:
        """Closed locally with `reason` unless already closed; returns the reason that holds."""
        with self._lock:
            if self._closed is None:
                self._closed = reason
            return self._closed

    def closed_by_store(self, reason: str) -> bool:
        """The store says the job is closed for `reason` (the first reason there wins over a
        local one); True if that changed the view."""
        with self._lock:
            changed = self._closed != reason
            self._closed = reason
            return changed

    def update(self, rv: Round, lost: tuple[str, ...], waiting: int) -> bool:
        """Store what a beat saw of round `rv`; ignored (False) if another round started meanwhile."""
        with self._lock:
            if self._round is not rv:
                return False
            changed = lost != self._lost or waiting != self._waiting
            self._lost, self._waiting = lost, waiting
            return changed

    def set_restart(self, rv: Round, reason: str) -> bool:
        """A restart round follows round `rv` (`restarts.RestartWatch`); False if another round
        started meanwhile or it was already known."""
        with self._lock:
            if self._round is not rv or self._restart == reason:
                return False
            self._restart = reason
            return True

    def set_spare(self, standing_by: bool) -> bool:
        """This node stands by as a spare (or no longer); True if that changed the view."""
        with self._lock:
            changed, self._spare = self._spare != standing_by, standing_by
            return changed

    def set_spares(self, hosts: tuple[str, ...]) -> bool:
        """Hosts standing by, as the last beat read them; True if that changed the view."""
        with self._lock:
            changed, self._spares = self._spares != hosts, hosts
            return changed

    def set_wakeup(self, wake: Callable[[], None]) -> None:
        with self._lock:
            self._wake = wake

    def set_notice(self, notice: Callable[[str], None]) -> None:
        with self._lock:
            self._notice = notice

    def tell(self, text: str) -> None:
        """Give the user a line (`set_notice`'s callback, from any thread); a broken callback must
        not kill the caller."""
        with self._lock:
            notice = self._notice
        if notice is not None:
            try:
                notice(text)
            except Exception:
                pass

    def notify(self) -> None:
        """Call the wake-up callback, if any; a broken callback must not kill the watcher."""
        with self._lock:
            wake = self._wake
        if wake is not None:
            try:
                wake()
            except Exception:
                pass


class ControlConnection:
    """The node's second store connection, for calls that must not queue behind a blocking
    `wait` on the main one: the membership thread, `set_closed`, `publish_failure`, `failures`,
    goodbyes. Its calls are bounded by the heartbeat timeout, so a silent store is noticed in time.
    """

    def __init__(self, store: Store, address: str) -> None:
        self._store: Store | None = store
        self._address = address
        self._lock = threading.Lock()

    @contextmanager
    def use(self) -> Iterator[Store]:
        """The connection, held for the block; `StoreError` once it was closed."""
        with self._lock:
            if self._store is None:
                raise StoreError(f"rendezvous store at {self._address}: this node has shut down its connections")
            yield self._store

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None


def release_slot(st: Store, keys: Keys, rv: Round, rank: int, by: str) -> bool:
    """Mark group rank `rank` of round `rv` as having left it (rejoined, or lost): False if it
    was already released. Whoever releases the last slot sets the round's `done`, which lets the
    next round complete."""
    rk = keys.round(rv.number)
    if st.compare_set(rk.rel(rank), "", by) != by.encode():
        return False  # already released: it rejoined, or another node reported it
    if rounds.round_released(st.add(rk.released, 1), rv.size):
        st.set(rk.done, "1")
    return True


class MembershipThread:
    """A daemon thread of a node's membership (the `Watcher`, `restarts.RestartWatch`): started
    once, with the first round, and ended by `stop`; `_run` returns soon after `_stop` is set."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread once (no-op afterwards, or once stopped)."""
        if self._thread is None and not self._stop.is_set():
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def stop(self, timeout: float) -> bool:
        """Ask the thread to end and wait up to `timeout` seconds for it; True once it has ended."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            return not self._thread.is_alive()
        return True

    def _run(self) -> None:
        raise NotImplementedError


class Watcher(MembershipThread):
    """The membership thread of one node: started with the first round, ended by `stop`."""

    def __init__(
        self,
        ctl: ControlConnection,
        keys: Keys,
        node_id: str,
        settings: RendezvousSettings,
        state: MembershipState,
        address: str,
        name: str,
        liveness: Liveness | None = None,
    ) -> None:
        self._ctl = ctl
        self._k = keys
        self._id = node_id
        self._s = settings
        self._state = state
        self._address = address
        self._period = settings.beat_period
        self.liveness: Liveness = liveness or CounterLiveness(keys, node_id, settings)
        self._lapses = 0
        super().__init__(name)

    def _run(self) -> None:
        """Beat until stopped or closed. A store that keeps failing for heartbeat_timeout closes
        the job locally with a "lost the rendezvous store" reason: the agent then stops its
        workers and exits."""
        w = RingWatch(self.liveness)
        failing_since: float | None = None
        # One period between looks, the first one too: not N nodes' worth of calls at the very
        # moment every node is reading the group.
        while not self._stop.wait(self._period):
            try:
                with self._ctl.use() as ctl:
                    changed, closed = self.tick(ctl, w)
                failing_since = None
            except StoreError as e:
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since < self._s.heartbeat_timeout:
                    continue
                msg = e.message.removeprefix(f"rendezvous store at {self._address}: ")
                self._state.close(f"{STORE_LOST} at {self._address}: {msg}")
                self._state.notify()
                return
            if changed:
                self._state.notify()
            if closed:
                return

    def tick(self, ctl: Store, w: RingWatch) -> tuple[bool, bool]:
        """One heartbeat period: at most 8 store operations, whatever the number of nodes (the
        last two read `P/spares`, whose size is the number of spares that ever stood by; a beat
        that finds this node's lease expired makes up to 7 more). Before this node's first round
        (a liveness that runs `early`) it only beats: the joining loops watch `P/closed`.
        Returns (the view changed, the job is closed)."""
        k = self._k
        rv = self._state.round
        if rv is None:
            self._lapsed(ctl, None, self.liveness.beat(ctl))
            return False, False
        if ctl.check([k.closed]):
            reason = ctl.get(k.closed).decode(errors="replace")
            return self._state.closed_by_store(reason), True
        self._lapsed(ctl, rv, self.liveness.beat(ctl))
        rk = k.round(rv.number)
        if w.round != rv.number:
            w.reset(rv)
        if w.target is not None:
            target = rv.nodes[w.target]
            if w.look.lost(ctl, target.id):
                # A node that reached the exit barrier (`fin`) may stop beating: it is not lost.
                finished = ctl.check([rk.fin(w.target)])
                if not finished and release_slot(ctl, k, rv, w.target, f"lost:{self._id}"):
                    ctl.append(rk.lost, rounds.lost_line(w.target, target.info.host, target.id))
                w.advance(rv)
        lost = self._state.lost
        if ctl.check([rk.lost]):
            lost = rounds.lost_nodes(ctl.get(rk.lost))
        waiting = ctl.add(k.round(rv.number + 1).joined, 0)
        spares = read_spares(ctl, k, lambda: {r.id for r in rv.nodes})
        return self._state.update(rv, lost, waiting) | self._state.set_spares(spares), False

    def _lapsed(self, ctl: Store, rv: Round | None, reason: str | None) -> None:
        """This node's liveness lapsed (`reason`; None: it did not): report itself lost in its
        round when `rounds.lapse_reported_lost` says so, and tell the user."""
        if reason is None:
            return
        finished = rv is not None and ctl.check([self._k.round(rv.number).fin(rv.rank)])
        report = rounds.lapse_reported_lost(rv is not None, finished)
        if report and rv is not None:
            me = rv.nodes[rv.rank]
            self._lapses += 1  # `by` unique to this lapse: a slot released before is not counted twice
            if release_slot(ctl, self._k, rv, rv.rank, f"lapsed:{self._lapses}:{self._id}"):
                ctl.append(self._k.round(rv.number).lost, rounds.lost_line(rv.rank, me.info.host, self._id))
        self._state.tell(rounds.lapse_notice(reason, None if rv is None else rv.number, report))


__all__ = [
    "STORE_LOST",
    "Beat",
    "ControlConnection",
    "CounterLiveness",
    "Liveness",
    "MembershipState",
    "MembershipThread",
    "NodeWatch",
    "RingWatch",
    "Watcher",
    "release_slot",
]
