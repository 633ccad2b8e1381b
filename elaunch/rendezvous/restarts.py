"""Restart rounds: the group restarts its workers in place when membership is unchanged.

A worker failure on one node used to make every node go through a whole new round: the failing
node joins round n+1, the others notice it waiting on their next beat (up to one beat period,
5/3 s by default), restart, join, and the finaliser closes the round. When every node of round
n is still alive and nobody waits to join, none of that is needed: round n+1 is round n's
group again. The failing node says so by publishing round n+1's `final` itself, marked as a
restart (`request_restart`, one `compare_set`); every node blocks on that key (`RestartWatch`,
one thread and one connection per node), so the others hear of it within one store round trip,
stop their workers, release their slot of round n and wait for the round to be `done` (every
node stopped its workers: old and new workers never overlap). Group rank 0 publishes a fresh
MASTER_PORT for the round (`R/master_port`) before it releases its slot.

Membership changes still take a full round: a restart round is only published when this node
sees no lost node, the store has no `R/lost` for round n and no node waits in round n+1, and
`compare_set` makes it first-writer-wins against a finaliser of round n+1. A node that is
lost while a restart round forms is found lost again in round n+1 (one heartbeat timeout more).
The decisions are the pure functions below; `DynamicRendezvous` does the store I/O through
`publish_restart` and `join_restart`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from elaunch.errors import StoreError
from elaunch.rendezvous import rounds
from elaunch.rendezvous.keys import Keys
from elaunch.rendezvous.rounds import NodeRecord, Round
from elaunch.rendezvous.store import Store
from elaunch.rendezvous.watcher import MembershipState, MembershipThread, release_slot
from elaunch.values import replace


# -- pure ------------------------------------------------------------------------------------------
def restart_payload(number: int, by: str, group: Sequence[NodeRecord], reason: str) -> bytes:
    """The value of `R/final` for a restart round: `final_payload`'s fields plus `restart`, the
    reason (who asked, and why)."""
    return rounds.final_payload(number, by, group, restart=reason or "restart")


def restart_reason(raw_final: bytes) -> str | None:
    """The reason of a published round that is a restart round; None for a full round."""
    reason = rounds.final_doc(raw_final).get("restart")
    return str(reason) if reason else None


def may_restart_in_place(closed: bool, lost_seen: int, lost_in_store: bool, waiting: int) -> bool:
    """A restart round may replace a full round only while membership is unchanged: the job is
    open, this node saw no lost node, the store lists none for the round, nobody waits to join."""
    return not closed and lost_seen == 0 and not lost_in_store and waiting == 0


def rank_in(group: Sequence[NodeRecord], node_id: str) -> int:
    """This node's group rank in a published group (-1: not in it)."""
    return next((i for i, r in enumerate(group) if r.id == node_id), -1)


def with_master_port(group: Sequence[NodeRecord], port: int) -> tuple[NodeRecord, ...]:
    """The group with rank 0's MASTER_PORT replaced by the port it published for the restart round."""
    head = group[0]
    return (head._replace(info=replace(head.info, master_port=port)), *group[1:])


# -- store I/O -------------------------------------------------------------------------------------
def publish_restart(st: Store, keys: Keys, node_id: str, rv: Round, state: MembershipState, reason: str) -> bool:
    """Publish round `rv.number + 1` as a restart of `rv`'s group, if membership is unchanged.

    True when a restart round for the next round is published (by us or by a node that asked at
    the same time); False when a full round is needed (or already formed). At most 5 operations.
    """
    nxt = keys.round(rv.number + 1)
    if not st.check([nxt.final]):
        closed = state.closed is not None or st.check([keys.closed])
        lost_in_store = st.check([keys.round(rv.number).lost])
        if not may_restart_in_place(closed, len(state.lost), lost_in_store, st.add(nxt.joined, 0)):
            return False
        st.compare_set(nxt.final, "", restart_payload(rv.number + 1, node_id, rv.nodes, reason))
    return restart_reason(st.get(nxt.final)) is not None


def join_restart(
    st: Store,
    keys: Keys,
    node_id: str,
    rv: Round,
    master_port: int,
    wait_done: Callable[[str], bool],
) -> Round | None:
    """Take part in round `rv.number + 1` if it was published as a restart round with us in it:
    release our slot of `rv` (rank 0 first publishes `master_port`), wait until every node of `rv`
    has (`wait_done(key)`: True once the key exists, False at the join deadline: then None is
    returned with the slot released, and the caller's full round reports the timeout), advance
    `open_round`. None: no restart round for us, go through a full round."""
    nxt = keys.round(rv.number + 1)
    if not st.check([nxt.final]):
        return None
    raw = st.get(nxt.final)
    group = rounds.decode_group(raw)
    rank = rank_in(group, node_id)
    if restart_reason(raw) is None or rank < 0:
        return None
    if rank == 0:
        st.compare_set(nxt.master_port, "", str(master_port))
    st.add(keys.round(rv.number).rejoined, 1)  # before the release: counted once `done` is seen
    release_slot(st, keys, rv, rv.rank, node_id)
    if not wait_done(keys.round(rv.number).done) or not wait_done(nxt.master_port):
        return None
    port = int(st.get(nxt.master_port))
    st.compare_set(keys.open_round, str(rv.number + 1), str(rv.number + 2))
    return Round(rv.number + 1, with_master_port(group, port), rank)


def missing_ranks(rels: Sequence[bytes], group: Sequence[NodeRecord]) -> list[int]:
    """Group ranks of a round whose slot was not released by the node itself when the round ended
    (`R/rel/<g>` holds who released it: a watcher that found it lost, or `left:` when it left)."""
    return [g for g, (by, r) in enumerate(zip(rels, group, strict=True)) if by.decode(errors="replace") != r.id]


def report_missing(st: Store, keys: Keys, prev: Round, new: Round) -> tuple[str, ...]:
    """Members of restart round `new` that did not come back from `prev` (found lost while it
    ended, or left it: a failed health check): release their slots of `new` and list them in its
    `R/lost` at once, instead of a heartbeat timeout later; returns them as `rounds.node_label`s, as
    `R/lost` is read (every node does the
    same; the slot's `compare_set` makes one report each). 1 operation when everybody came back."""
    rk = keys.round(prev.number)
    if st.add(rk.rejoined, 0) >= prev.size:
        return ()
    rels = st.multi_get([rk.rel(g) for g in range(prev.size)])
    hosts = []
    for g in missing_ranks(rels, prev.nodes):
        r = new.nodes[g]
        if release_slot(st, keys, new, g, f"missing:{r.id}"):
            st.append(keys.round(new.number).lost, rounds.lost_line(g, r.info.host, r.id))
        hosts.append(rounds.node_label(r.info.host, g))
    return tuple(hosts)


class RestartWatch(MembershipThread):
    """One thread per node that blocks on the next round's `final` and wakes the agent as soon
    as it is a restart round (`MembershipState.set_restart`): what makes a restart reach every
    node within a store round trip instead of a beat period.

    Its own connection, because a blocking `wait` would delay the heartbeats' calls: `conn`, made
    with the node's others when the rendezvous is built (a connection made once this node's round
    is complete is one more accept for the server while the other nodes still read the round:
    4096 of them at once made a round ten times slower); `connect()` makes a new one after a
    failure. Store errors are left to the heartbeat thread to judge: this one retries each period.
    """

    def __init__(
        self,
        connect: Callable[[], Store],
        keys: Keys,
        node_id: str,
        state: MembershipState,
        period: float,
        name: str,
        conn: Store | None = None,
    ) -> None:
        self._connect = connect
        self._k = keys
        self._id = node_id
        self._state = state
        self._period = period
        self._conn: Store | None = conn
        super().__init__(name)

    def stop(self, timeout: float) -> bool:
        """End the thread (it is in a wait of at most one period) and close its connection."""
        ended = super().stop(timeout)
        if ended and self._conn is not None:
            self._conn.close()
            self._conn = None
        return ended

    def _drop(self) -> None:
        """Forget a connection that failed (a timed-out call abandons it): the next look reconnects."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except StoreError:
                pass

    def _run(self) -> None:
        seen = -1  # the last round whose restart was reported
        while not self._stop.is_set():
            rv = self._state.round
            if rv is None or rv.number == seen or self._state.closed is not None:
                self._stop.wait(self._period)
                continue
            try:
                if self._conn is None:
                    self._conn = self._connect()
                final = self._k.round(rv.number + 1).final
                if not self._conn.wait([final], self._period):
                    continue
                reason = restart_reason(self._conn.get(final))
            except StoreError:
                self._drop()
                self._stop.wait(self._period)
                continue
            seen = rv.number
            if reason is not None and self._state.set_restart(rv, reason):
                self._state.notify()


__all__ = [
    "RestartWatch",
    "join_restart",
    "may_restart_in_place",
    "missing_ranks",
    "publish_restart",
    "rank_in",
    "report_missing",
    "restart_payload",
    "restart_reason",
    "with_master_port",
]
