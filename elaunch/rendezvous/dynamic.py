"""The elastic rendezvous over a key-value store, built so that joining costs each node a constant
number of store operations whatever the number of nodes (see docs/rendezvous.md).

torch keeps the whole job in one pickled blob that every node compare-and-sets in a retry loop,
so N nodes make O(N^2) round trips and time out beyond ~100 nodes. Here a node joins with one
`append` and one atomic `add`; one node (the MIN-th to join) finalises the round and publishes
the ordered group in one key that every other node blocks on. This module is the store I/O of
joining, finalising and the exit barrier; the decisions are `rounds` functions, the keys are
`keys.Keys`, and membership while training is `watcher.Watcher`'s.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import NoReturn

from elaunch.errors import (
    RendezvousClosedError,
    RendezvousError,
    RendezvousRefusedError,
    RendezvousTimeoutError,
    StoreError,
)
from elaunch.failures import PUBLISHED_CHARS
from elaunch.rendezvous import rounds, spares
from elaunch.rendezvous.api import Membership, NodeInfo, RendezvousInfo, RendezvousSettings
from elaunch.rendezvous.keys import Keys
from elaunch.rendezvous.ports import free_port
from elaunch.rendezvous.restarts import RestartWatch, join_restart, publish_restart, report_missing
from elaunch.rendezvous.rounds import LastCall, NodeRecord, Placement, Round, order_nodes
from elaunch.rendezvous.store import Store
from elaunch.rendezvous.watcher import (
    STORE_LOST,
    ControlConnection,
    CounterLiveness,
    Liveness,
    MembershipState,
    Watcher,
    release_slot,
)
from elaunch.tails import clip_text
from elaunch.values import replace

REMOTE_FAILURES = 16
"""At most this many failure texts published by other nodes are read (each clipped)."""


def default_node_id(local_addr: str | None = None) -> str:
    """Unique per agent process: host, pid and a random suffix (pids repeat across hosts)."""
    return f"{local_addr or socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class _Superseded(Exception):
    """Another node took over finalising the round (we looked dead to it)."""


class DynamicRendezvous:
    """The elastic rendezvous (`--rdzv-backend c10d`, `etcd`) over any `Store`; see docs/rendezvous.md.

    `store` is this node's connection; the membership thread and the control calls
    (`set_closed`, `publish_failure`, `failures`) use one `store.clone()`, because a c10d
    client blocked in `wait` would delay every other call on it. `liveness` is how nodes beat
    and are found lost (default: heartbeat counters, `watcher.CounterLiveness`; etcd passes
    `lease.LeaseLiveness`). With `owns_store` the
    connections are closed by `shutdown`; if the store object hosts the server
    (`store.is_host`), `shutdown` first waits up to close_timeout for the other nodes to leave.
    Arguments are taken as validated (`elaunch.config`): a non-empty `run_id` and
    0 < min_nodes <= max_nodes, else `ValueError` (a programming error, not a usage error).
    """

    def __init__(
        self,
        store: Store,
        run_id: str,
        min_nodes: int,
        max_nodes: int,
        settings: RendezvousSettings | None = None,
        node_id: str | None = None,
        *,
        master_priority: int = 0,
        strict_node_ranks: bool = False,
        owns_store: bool = True,
        standby: int = 0,
        liveness: Liveness | None = None,
    ) -> None:
        if not run_id or not 0 < min_nodes <= max_nodes:
            raise ValueError(
                f"DynamicRendezvous: need a run id and 0 < MIN <= MAX, got {run_id!r}, {min_nodes}:{max_nodes}"
            )
        self._store = store
        self._run_id = run_id
        self._min = min_nodes
        self._max = max_nodes
        self._s = settings or RendezvousSettings()
        self._id = node_id or default_node_id()
        self._prio = master_priority
        self._strict = strict_node_ranks
        self._owns = owns_store
        self._spares_wanted = standby
        self._keep_ranks = standby > 0 and not strict_node_ranks
        self._k = Keys(run_id)
        self._slice = self._s.beat_period
        self._live: Liveness = liveness or CounterLiveness(self._k, self._id, self._s)

        self._main_lock = threading.Lock()  # next_rendezvous / exit_barrier: the blocking calls
        self._state = MembershipState()
        self._stop = threading.Event()
        self._passed_barrier = False
        self._shut = False
        self._standing_by = False

        store.compare_set(self._k.open_round, "", "0")
        # Made now, not when first needed (this one and the restart watch's): a connection made
        # mid-round costs the server an accept (and c10d a reverse DNS lookup) while every node
        # is waiting on it.
        ctl = store.clone()
        ctl.set_timeout(min(self._s.read_timeout, self._s.heartbeat_timeout))
        self._ctl = ControlConnection(ctl, store.address)
        self._watcher = Watcher(
            self._ctl,
            self._k,
            self._id,
            self._s,
            self._state,
            store.address,
            name=f"elaunch-rdzv-{run_id}",
            liveness=self._live,
        )
        self._restarts = RestartWatch(
            self._restart_connection,
            self._k,
            self._id,
            self._state,
            self._slice,
            f"elaunch-rdzv-restart-{run_id}",
            conn=self._restart_connection(),
        )
        if self._live.early:  # a lease is kept alive while the node joins, not only once it runs
            self._watcher.start()

    # -- Rendezvous protocol ---------------------------------------------------------------
    @property
    def run_id(self) -> str:
        return self._run_id

    @property
    def min_nodes(self) -> int:
        return self._min

    @property
    def max_nodes(self) -> int:
        return self._max

    @property
    def node_id(self) -> str:
        return self._id

    @property
    def settings(self) -> RendezvousSettings:
        return self._s

    @property
    def lost_within(self) -> float:
        """`rounds.lost_within`: a lost node's heartbeat goes stale, its watcher records it, the
        others read the record; every step bounded by the heartbeat settings."""
        return rounds.lost_within(self._s.heartbeat_timeout, self._s.beat_period)

    @property
    def store(self) -> Store:
        """The rendezvous store (torch's `WorkerGroup.store`); its keys under the run id are ours."""
        return self._store

    @property
    def store_address(self) -> str:
        """`host:port` of the store (the real port when the endpoint said 0)."""
        return self._store.address

    def next_rendezvous(self, me: NodeInfo) -> RendezvousInfo:
        """Join the next round and block until it is complete (or raise within join_timeout).

        `me.master_port == 0` means: pick a free port on this node (used as MASTER_PORT if this
        node becomes group rank 0); a new one each round.
        """
        if me.master_port == 0:
            me = replace(me, master_port=free_port())
        with self._main_lock:
            st = self._store
            deadline = time.monotonic() + self._s.join_timeout
            self._check(st)
            prev = self._state.round
            if prev is not None:  # a restart round (same group) when one was published for us

                def wait(key: str) -> bool:
                    return self._wait_key(st, key, deadline, lambda: self._check(st))

                fast = join_restart(st, self._k, self._id, prev, me.master_port, wait)
                if fast is not None:
                    info = self._completed(fast)
                    # nodes found lost, or that left, while it formed: lost in it at once
                    missing = report_missing(st, self._k, prev, fast)
                    if missing and self._state.update(fast, missing, 0):
                        self._state.notify()
                    return info
            rnd = rounds.round_to_join(None if prev is None else prev.number, int(st.get(self._k.open_round)))
            if prev is not None:
                release_slot(st, self._k, prev, prev.rank, self._id)
            elif rnd > 0:  # a job is running: if its round is full, stand by (see below)
                running = rounds.decode_group(st.get(self._k.round(rnd - 1).final))
                if rounds.round_is_full(len(running), self._max):
                    if self._min == self._max and not self._spares_wanted and self._all_beating(st, rnd - 1, running):
                        # A fixed size without spares (--standby) and no node of the job is lost (this
                        # is not its replacement): a second job with the same id. Told at once.
                        raise RendezvousRefusedError(rounds.already_running_reason(self._run_id, running))
                    self._standby(st, rnd - 1, running, me.host)
                    deadline = time.monotonic() + self._s.join_timeout
            rec = NodeRecord(self._id, me, self._prio)
            while True:
                final = self._join_round(st, rnd, rec, deadline)
                where, rank = rounds.placement(final, self._id, self._max, self._strict)
                if where is Placement.IN:
                    break
                if where is Placement.REFUSED:
                    raise RendezvousError(rounds.no_room_reason(rnd, len(final), me.host, me.node_rank))
                if where is Placement.STANDBY:
                    # The round is full: admitting us would push another node out. Stand by
                    # without counting as waiting (else the job would restart forever), until
                    # the round ends for another reason; then join the next one.
                    self._standby(st, rnd, final, me.host)
                    deadline = time.monotonic() + self._s.join_timeout
                rnd += 1  # late: join the next round; that tells the running nodes we wait
            return self._completed(Round(rnd, final if isinstance(final, tuple) else tuple(final), rank))

    def _completed(self, new: Round) -> RendezvousInfo:
        """Round `new` is this node's now: reset the membership view, (first time) start the
        membership threads, and say who is in it."""
        self._state.new_round(new)
        if not self._stop.is_set():
            self._watcher.start()
            self._restarts.start()
        head = new.nodes[0].info
        return RendezvousInfo(
            run_id=self._run_id,
            round=new.number,
            group_rank=new.rank,
            nodes=new.nodes.infos if isinstance(new.nodes, rounds.Group) else tuple(r.info for r in new.nodes),
            master_addr=head.host,
            master_port=head.master_port,
        )

    def request_restart(self, reason: str) -> bool:
        """Publish the next round as a restart round of the current group (`restarts`): every
        node hears of it within a store round trip and restarts its workers without a join or last
        call. False (a full round follows) when membership changed, or the store cannot be told."""
        rv = self._state.round
        if rv is None:
            return False
        try:
            with self._ctl.use() as ctl:
                return publish_restart(ctl, self._k, self._id, rv, self._state, reason)
        except StoreError:
            return False

    def membership(self) -> Membership:
        return self._state.view()

    def set_wakeup(self, wake: Callable[[], None]) -> None:
        self._state.set_wakeup(wake)

    def set_notice(self, notice: Callable[[str], None]) -> None:
        """`notice(text)` is called (from the thread that runs `next_rendezvous`) with a line for the
        user when this node starts to stand by for a full running round, and (from the membership
        thread) when its liveness lapsed (`rounds.lapse_notice`)."""
        self._state.set_notice(notice)

    def set_closed(self, reason: str) -> None:
        """Close the job for every node; the first reason written wins everywhere.

        The local view is closed at once; raises `StoreError` if the store cannot be told.
        """
        reason = reason or "closed"
        if not self._state.close(reason).startswith(STORE_LOST):
            with self._ctl.use() as ctl:
                got = ctl.compare_set(self._k.closed, "", reason).decode(errors="replace")
            self._state.closed_by_store(got)
        self._state.notify()

    def leave(self, reason: str) -> bool:
        """Leave the job without ending it when `rounds.can_leave` says the others go on: this node's
        slot of the round is released and it is reported lost there (every watcher sees it on its
        next beat and wakes its agent), and it is `gone` for later rounds; else close the job.
        Returns True when the job goes on. Raises `StoreError` if the store cannot be told."""
        rv = self._state.round
        if rv is None and self._standing_by:  # a spare that never joined: the job is not ours to close
            return True
        others = None if rv is None else rv.size - 1 - len(self._state.lost)
        hosts_store = bool(getattr(self._store, "is_host", False))
        spare_count = 0
        if rv is not None and self._min == self._max and self._state.closed is None:
            with self._ctl.use() as ctl:  # read now: the view is a beat old
                spare_count = len(spares.read_spares(ctl, self._k, lambda: {r.id for r in rv.nodes}))
        if self._state.closed is not None or not rounds.can_leave(
            self._min, self._max, others, hosts_store, spare_count
        ):
            self.set_closed(reason)
            return False
        assert rv is not None
        me = rv.nodes[rv.rank]
        with self._ctl.use() as ctl:
            ctl.append(self._k.gone, self._id + "\n")  # first: no finaliser waits for it once it is released
            if release_slot(ctl, self._k, rv, rv.rank, f"left:{self._id}"):
                ctl.append(self._k.round(rv.number).lost, rounds.lost_line(rv.rank, me.info.host, self._id))
        return True

    def exit_barrier(self, timeout: float) -> None:
        """Wait until every node of the current round has called this, or `timeout`.

        Raises `RendezvousTimeoutError` on timeout, `RendezvousError` as soon as a node of the
        round is lost (it will never arrive), `RendezvousClosedError` if the job is closed first.
        """
        rv = self._state.round
        if rv is None:
            return
        rk = self._k.round(rv.number)
        with self._main_lock:
            st = self._store
            st.set(rk.fin(rv.rank), "1")  # from now on our heartbeat may stop: we are not lost
            if rounds.last_at_barrier(st.add(rk.exit, 1), rv.size):
                st.set(rk.exit_done, "1")
            else:
                until = time.monotonic() + timeout

                def between() -> None:
                    if st.check([rk.exit_done]):
                        return
                    self._check(st)
                    lost = self._state.lost
                    if lost:
                        raise RendezvousError(f"exit barrier: node(s) {', '.join(lost)} were lost before finishing")

                if not self._wait_key(st, rk.exit_done, until, between):
                    arrived = st.add(rk.exit, 0)
                    raise RendezvousTimeoutError(
                        f"exit barrier: {arrived} of {rv.size} nodes finished within {timeout:g} s"
                    )
            self._passed_barrier = True

    def serving_others(self) -> str | None:
        """After a timed-out exit barrier: why this node stays (it hosts the store and nodes of
        the round have not finished: `rounds.store_host_stays`), or None."""
        rv = self._state.round
        if rv is None or not getattr(self._store, "is_host", False) or self._state.closed is not None:
            return None
        try:
            with self._ctl.use() as ctl:
                arrived = ctl.add(self._k.round(rv.number).exit, 0)
        except StoreError:
            return None
        return rounds.store_host_stays(arrived, rv.size)

    def keep_serving(self) -> None:
        """Block while this node hosts the store and a node of the round that has not reached
        the exit barrier still beats (each is read on our clock, as the ring does); return when
        every node finished, the others' heartbeats stopped, or the job closed. The node's own
        membership thread keeps beating meanwhile. Store errors end it (nobody left to serve)."""
        rv = self._state.round
        if rv is None or not getattr(self._store, "is_host", False):
            return
        rk = self._k.round(rv.number)
        beats = {g: self._live.watch() for g in range(rv.size) if g != rv.rank}
        with self._main_lock:
            st = self._store
            try:
                while not st.wait([rk.exit_done], self._slice):
                    self._check(st)
                    for g in [g for g in beats if st.check([rk.fin(g)])]:
                        del beats[g]  # finished
                    for g in [g for g, b in beats.items() if b.lost(st, rv.nodes[g].id)]:
                        del beats[g]  # gone without finishing: nothing to serve it
                    if not beats:
                        return
            except (RendezvousClosedError, StoreError):
                return

    def publish_failure(self, summary: str) -> None:
        with self._ctl.use() as ctl:
            ctl.append(self._k.failures, json.dumps(summary) + "\n")

    def failures(self) -> list[str]:
        with self._ctl.use() as ctl:
            if not ctl.check([self._k.failures]):
                return []
            raw = ctl.get(self._k.failures)
        found = [str(json.loads(line)) for line in raw.decode(errors="replace").splitlines() if line]
        # Bounded whoever wrote them (an older node may not clip its text): failures.PUBLISHED_CHARS each.
        kept = [clip_text(text, PUBLISHED_CHARS) for text in found[:REMOTE_FAILURES]]
        if len(found) > REMOTE_FAILURES:
            kept.append(f"... and {len(found) - REMOTE_FAILURES} more failure(s) reported by other nodes")
        return kept

    def shutdown(self) -> None:
        """Stop the watcher and release the connections; idempotent.

        A node that passed the exit barrier closes the job ("finished") so that nodes still
        waiting to join stop too. The store's host waits (up to close_timeout) until the nodes
        of its round have said goodbye, so that none of them sees the store vanish mid-exit.
        """
        if self._shut:
            return
        self._shut = True
        self._stop.set()
        self._watcher.stop(timeout=self._s.heartbeat_timeout + self._slice + 1.0)
        self._restarts.stop(timeout=self._slice + self._s.heartbeat_timeout + 1.0)
        rv = self._state.round
        try:
            if self._passed_barrier and self._state.closed is None and rv is not None:
                self.set_closed(f"the job finished on all {rv.size} nodes")
            self._say_bye()
        except (StoreError, RendezvousError):
            pass
        self._ctl.close()
        if self._owns and self._main_lock.acquire(timeout=self._slice + 1.0):
            try:
                self._store.close()
            finally:
                self._main_lock.release()

    def _restart_connection(self) -> Store:
        """The restart watch's own connection, bounded like the control connection."""
        conn = self._store.clone()
        conn.set_timeout(min(self._s.read_timeout, self._s.heartbeat_timeout))
        return conn

    # -- joining -----------------------------------------------------------------------------
    def _join_round(self, st: Store, rnd: int, rec: NodeRecord, deadline: float) -> Sequence[NodeRecord]:
        """Join round `rnd`; return its final group (which may not include us: then we are late)."""
        rk = self._k.round(rnd)
        st.append(rk.nodes, rounds.record_line(rec))
        idx = st.add(rk.joined, 1)
        if rounds.marks_arrival(idx, self._min):
            st.set(rk.at(idx), "1")
        if rounds.claims_finaliser(idx, self._min) and st.compare_set(rk.finaliser, "", self._id) == self._id.encode():
            return self._finalise(st, rnd, deadline)
        return self._await_final(st, rnd, deadline)

    def _await_final(self, st: Store, rnd: int, deadline: float) -> Sequence[NodeRecord]:
        """Block on the round's `final` key; between bounded waits, watch the finaliser's
        heartbeat and take over if it stopped (it died during the last call)."""
        k = self._k
        rk = k.round(rnd)
        fin_id: str | None = None
        look = self._live.watch()
        unclaimed_since: float | None = None
        while True:
            left = deadline - time.monotonic()
            if st.wait([rk.final], max(0.0, min(left, self._slice))):
                return rounds.decode_group(st.get(rk.final))
            self._check(st)
            now = time.monotonic()
            if now >= deadline:
                self._give_up(st, rnd)
            if fin_id is None:
                if st.check([rk.finaliser]):
                    fin_id = st.get(rk.finaliser).decode()
                else:
                    unclaimed_since = rounds.finaliser_unclaimed_since(
                        st.add(rk.joined, 0), self._min, unclaimed_since, now
                    )
                    if rounds.overdue(unclaimed_since, now, self._s.heartbeat_timeout):
                        fin_id = self._take_over(st, rnd, "")
                        if fin_id == self._id:
                            return self._finalise(st, rnd, deadline)
                continue
            if look.lost(st, fin_id):
                dead = fin_id
                fin_id = self._take_over(st, rnd, dead)
                look = self._live.watch()
                if fin_id == self._id:
                    st.append(k.gone, dead + "\n")
                    return self._finalise(st, rnd, deadline)

    def _all_beating(self, st: Store, rnd: int, group: Sequence[NodeRecord]) -> bool:
        """True when every node of the running round `rnd` is alive (`Liveness.all_alive`: counters
        move within heartbeat_timeout; etcd: every alive key is there) and the round is not ending
        (`released` absent): the job is alive and whole. False as soon as the round ends, or when
        a node stopped beating."""
        return self._live.all_alive(st, [r.id for r in group], self._k.round(rnd).released)

    def _standby(self, st: Store, rnd: int, group: Sequence[NodeRecord], host: str) -> None:
        self._state.tell(rounds.standby_notice(self._run_id, group))
        self._standing_by = True  # not in the job: stopping now must not close it (`leave`)
        try:
            self._stand_by(st, rnd, group, host)
        finally:
            self._standing_by = False

    def _stand_by(self, st: Store, rnd: int, group: Sequence[NodeRecord], host: str) -> None:
        """Block until a node of the full round `rnd` leaves it (`released` appears) or the job
        closes. No join timeout applies meanwhile (torch's "redundancy list"), but if the
        round's rank 0 stops beating and nobody releases it, the job is presumed dead and we
        go on to join (and time out there with a clear message) rather than wait forever."""
        released = self._k.round(rnd).released
        look = self._live.watch()
        spares.announce(st, self._k, self._id, host, standing_by=True)
        if self._state.set_spare(True):
            self._state.notify()
        try:
            while not st.wait([released], self._slice):
                self._check(st)
                self._live.joining_beat(st)  # a spare beats too: the running nodes may count on it
                if look.lost(st, group[0].id) and not st.check([released]):
                    return
        finally:
            with contextlib.suppress(StoreError):
                spares.announce(st, self._k, self._id, host, standing_by=False)
            self._state.set_spare(False)

    def _take_over(self, st: Store, rnd: int, expected: str) -> str:
        return st.compare_set(self._k.round(rnd).finaliser, expected, self._id).decode()

    def _finalise(self, st: Store, rnd: int, deadline: float) -> Sequence[NodeRecord]:
        """As the round's finaliser: wait for the previous round to be released, for MIN live
        joiners, then up to last_call_timeout for MAX; publish the ordered group."""
        k = self._k
        rk = k.round(rnd)
        self._live.joining_beat(st)

        def alive() -> None:
            """Between bounded waits: closed? still the finaliser? (and beat for the joiners)"""
            self._check(st)
            self._live.joining_beat(st)
            if st.get(rk.finaliser).decode() != self._id:
                raise _Superseded

        def joining() -> None:
            alive()
            if time.monotonic() >= deadline:
                self._give_up(st, rnd)

        try:
            if rounds.previous_round_must_end(rnd) and not self._wait_key(st, k.round(rnd - 1).done, deadline, joining):
                self._give_up(st, rnd, waiting_for_previous=True)
            while True:
                live = self._live_records(st, rnd)
                if rounds.enough_joined(len(live), self._min):
                    break
                joined = st.add(rk.joined, 0)
                if not self._wait_key(st, rk.at(joined + 1), deadline, joining):
                    self._give_up(st, rnd)
            if rounds.last_call_needed(len(live), self._max):
                live = self._last_call(st, rnd, live, alive)
        except _Superseded:
            return self._await_final(st, rnd, deadline)
        try:
            if self._keep_ranks and rnd > 0 and st.check([k.round(rnd - 1).final]):
                previous = rounds.decode_group(st.get(k.round(rnd - 1).final))
                kept = spares.keep_group_ranks(live, previous)
                ordered = spares.as_published(order_nodes(kept, self._max), live)
            else:
                ordered = order_nodes(live, self._max, strict=self._strict)
        except ValueError as e:
            reason = rounds.strict_ranks_reason(e, self._max)
            st.compare_set(k.closed, "", reason)
            raise RendezvousError(reason) from None
        got = st.compare_set(rk.final, "", rounds.final_payload(rnd, self._id, ordered))
        st.compare_set(k.open_round, str(rnd), str(rnd + 1))
        return rounds.decode_group(got)

    def _last_call(self, st: Store, rnd: int, live: list[NodeRecord], alive: Callable[[], None]) -> list[NodeRecord]:
        """Wait up to last_call_timeout for more joiners, up to MAX, or (a restart round) until
        every surviving member of the previous round has joined (`rounds.last_call`)."""
        rk = self._k.round(rnd)
        expected = self._survivors(st, rnd - 1) if rnd > 0 else None
        until = time.monotonic() + self._s.last_call_timeout
        while rounds.last_call([r.id for r in live], self._max, expected) is LastCall.WAIT:
            joined = st.add(rk.joined, 0)
            if rounds.last_call_after_count(joined, self._max) is LastCall.END_REREAD:
                return self._live_records(st, rnd)  # re-read: they may have joined since `live`
            # Wake at the next join (at/<n> is set by the n-th joiner once n >= MIN).
            arrived = self._wait_key(st, rk.at(joined + 1), until, alive)
            live = self._live_records(st, rnd)
            if not arrived:
                break
        return live

    def _survivors(self, st: Store, rnd: int) -> set[str] | None:
        """Ids of round `rnd`'s group minus the nodes recorded as lost or gone (None: no group)."""
        rk = self._k.round(rnd)
        if not st.check([rk.final]):
            return None
        group = [r.id for r in rounds.decode_group(st.get(rk.final))]
        lost = rounds.lost_ids(st.get(rk.lost)) if st.check([rk.lost]) else set()
        return rounds.survivors(group, lost, self._gone(st))

    def _live_records(self, st: Store, rnd: int) -> list[NodeRecord]:
        """Joiners of the round in join order, without duplicates and nodes that left."""
        raw = st.get(self._k.round(rnd).nodes)
        return rounds.live_records(raw, self._gone(st))

    def _gone(self, st: Store) -> set[str]:
        return rounds.id_set(st.get(self._k.gone)) if st.check([self._k.gone]) else set()

    def _wait_key(self, st: Store, key: str, until: float, between: Callable[[], None]) -> bool:
        """Block on `key` until `until` (monotonic), in bounded waits; `between` runs after each
        wait that timed out and may raise (closed, shutting down). True if the key exists."""
        while True:
            left = until - time.monotonic()
            if left <= 0:
                return st.check([key])
            if st.wait([key], min(left, self._slice)):
                return True
            between()

    def _check(self, st: Store) -> None:
        """Raise if this node is shutting down or the job was closed."""
        if self._stop.is_set():
            raise RendezvousClosedError("this node is shutting down")
        if st.check([self._k.closed]):
            reason = st.get(self._k.closed).decode(errors="replace")
            self._state.closed_by_store(reason)
            raise RendezvousClosedError(reason)

    def _give_up(self, st: Store, rnd: int, waiting_for_previous: bool = False) -> NoReturn:
        """Join timeout: leave the job (so no finaliser counts us) and say why."""
        joined: int | None
        try:
            joined = st.add(self._k.round(rnd).joined, 0)
            st.append(self._k.gone, self._id + "\n")
        except StoreError:
            joined = None
        raise RendezvousTimeoutError(
            rounds.join_timeout_reason(
                self._run_id, rnd, self._s.join_timeout, joined, self._min, self._max, waiting_for_previous
            )
        )

    def _say_bye(self) -> None:
        if (self._state.closed or "").startswith(STORE_LOST):
            return  # nobody to tell, and a silent store would make each call wait its timeout
        with self._ctl.use() as ctl:
            n = ctl.add(self._k.bye, 1)
            ctl.set(self._k.bye_at(n), "1")
            if getattr(self._store, "is_host", False):
                rv = self._state.round
                expected = rounds.goodbyes_expected(None if rv is None else rv.size, len(self._state.lost))
                if expected > n:
                    ctl.wait([self._k.bye_at(expected)], self._s.close_timeout)


__all__ = ["STORE_LOST", "DynamicRendezvous", "NodeRecord", "default_node_id", "order_nodes"]
