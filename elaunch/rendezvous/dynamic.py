"""The elastic rendezvous over a key-value store, built so that joining costs each node a constant
number of store operations whatever the number of nodes (see docs/rendezvous.md).

torch keeps the whole job in one pickled blob that every node compare-and-sets in a retry loop,
so N nodes make O(N^2) round trips and time out beyond ~100 nodes. Here a node joins with one
`append` and one atomic `add`; one node (the MIN-th to join) finalises the round and publishes
the ordered group in one key that every other node blocks on. Membership while training is
watched by a background thread with O(1) store operations per node per heartbeat period.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, NoReturn
from urllib.parse import quote

from elaunch.config import RDZV_CONF_DEFAULTS
from elaunch.errors import (
    ConfigError,
    NotSupportedError,
    RendezvousClosedError,
    RendezvousError,
    RendezvousTimeoutError,
    StoreError,
)
from elaunch.rendezvous.api import Membership, NodeInfo, RendezvousInfo
from elaunch.rendezvous.store import Store, connect_store, is_local_address

KEY_ROOT = "/elaunch"
STORE_LOST = "lost the rendezvous store"
"""How `Membership.reason` starts when this node lost the store (then: `at host:port: error`)."""


@dataclass(frozen=True)
class RendezvousSettings:
    """torchrun's --rdzv-conf timings, in seconds; see `from_conf`."""

    join_timeout: float = 600.0
    last_call_timeout: float = 30.0
    close_timeout: float = 30.0
    heartbeat_timeout: float = 5.0
    keep_alive_interval: float = 5.0
    keep_alive_max_attempt: int = 3
    read_timeout: float = 60.0

    @classmethod
    def from_conf(cls, conf: Mapping[str, object] | None) -> RendezvousSettings:
        """Merge `conf` (as from `config.parse_rdzv_conf`) over `RDZV_CONF_DEFAULTS`."""
        merged: dict[str, object] = {**RDZV_CONF_DEFAULTS, **(conf or {})}
        values: dict[str, float] = {}
        for key in RDZV_CONF_DEFAULTS:
            raw = merged[key]
            if isinstance(raw, bool) or not isinstance(raw, int | float | str):
                raise ConfigError(f"--rdzv-conf {key}: expected a number of seconds, got {raw!r}")
            try:
                v = float(raw)
            except ValueError:
                raise ConfigError(f"--rdzv-conf {key}: expected a number of seconds, got {raw!r}") from None
            if not v > 0:
                raise ConfigError(f"--rdzv-conf {key}: must be greater than 0, got {raw!r}")
            values[key] = v
        return cls(
            join_timeout=values["join_timeout"],
            last_call_timeout=values["last_call_timeout"],
            close_timeout=values["close_timeout"],
            heartbeat_timeout=values["heartbeat_timeout"],
            keep_alive_interval=values["keep_alive_interval"],
            keep_alive_max_attempt=max(1, int(values["keep_alive_max_attempt"])),
            read_timeout=values["read_timeout"],
        )

    @property
    def beat_period(self) -> float:
        """Seconds between heartbeats (and between checks in bounded waits).

        A node is lost after `keep_alive_max_attempt` missed beats, and that must fit in
        `heartbeat_timeout`, so the period is the shorter of keep_alive_interval and
        heartbeat_timeout / keep_alive_max_attempt (5/3 s with the defaults).
        """
        return min(self.keep_alive_interval, self.heartbeat_timeout / max(1, self.keep_alive_max_attempt))


class NodeRecord(NamedTuple):
    """A joined node: its stable id, what it told the others, and its claim to group rank 0.

    A tuple, not a dataclass: every node decodes every other node's record each round.
    """

    id: str
    info: NodeInfo
    master_priority: int = 0
    """2: hosts the store; 1: on the endpoint's host; 0: elsewhere. Highest gets rank 0 by default."""

    def encode(self) -> list[object]:
        i = self.info
        return [self.id, i.host, i.role, i.local_world_size, i.master_port, i.node_rank, self.master_priority]

    @classmethod
    def decode(cls, row: Sequence[Any]) -> NodeRecord:
        """Inverse of `encode` (rows come from json, so numbers are already ints)."""
        nid, host, role, lws, port, rank, prio = row
        return cls(nid, NodeInfo(host, role, lws, port, rank), prio)


def order_nodes(records: Sequence[NodeRecord], max_nodes: int, strict: bool = False) -> list[NodeRecord]:
    """Group-rank order for one round. Pure and deterministic.

    The first `max_nodes` records (join order) are in. Preferred ranks (`NodeInfo.node_rank`)
    are honoured when free and in range; rank 0, if still free, goes to the node with the
    highest master priority (the store's host); the others fill the free ranks in join order.
    With `strict` (static rendezvous) every node must claim a distinct rank in range, else
    `ValueError` says which.
    """
    chosen = list(records[:max_nodes])
    n = len(chosen)
    slots: list[NodeRecord | None] = [None] * n
    rest: list[NodeRecord] = []
    for rec in chosen:
        pref = rec.info.node_rank
        if pref is not None and 0 <= pref < n and slots[pref] is None:
            slots[pref] = rec
            continue
        if strict:
            if pref is None or not 0 <= pref < n:
                raise ValueError(f"node {rec.info.host} has --node-rank {pref}, which is not in 0..{n - 1}")
            other = slots[pref]
            raise ValueError(
                f"nodes {other.info.host if other else '?'} and {rec.info.host} both have --node-rank {pref}"
            )
        rest.append(rec)
    if slots and slots[0] is None and rest:
        best = max(rest, key=lambda r: r.master_priority)  # first among equals: join order
        if best.master_priority > 0:
            slots[0] = best
            rest.remove(best)
    it = iter(rest)
    return [s if s is not None else next(it) for s in slots]


@functools.lru_cache(maxsize=8)
def _decode_group(raw: bytes) -> tuple[NodeRecord, ...]:
    """A round's published group. Pure, hence memoised: agents that share a process (tests,
    the benchmark's threads) decode a round once instead of once each; a real node decodes
    its own (about 3 ms for 1024 nodes)."""
    return tuple(NodeRecord.decode(row) for row in json.loads(raw)["nodes"])


@dataclass(frozen=True)
class _Round:
    """A completed round as this node saw it."""

    number: int
    nodes: tuple[NodeRecord, ...]
    rank: int

    @property
    def size(self) -> int:
        return len(self.nodes)


class _Keys:
    """Every store key, under `/elaunch/<run_id>/` so that jobs sharing a store never collide."""

    def __init__(self, run_id: str) -> None:
        self.prefix = f"{KEY_ROOT}/{quote(run_id, safe='')}"
        p = self.prefix
        self.closed = f"{p}/closed"
        self.open_round = f"{p}/open_round"
        self.gone = f"{p}/gone"
        self.failures = f"{p}/failures"
        self.bye = f"{p}/bye"

    def hb(self, node_id: str) -> str:
        return f"{self.prefix}/hb/{quote(node_id, safe='')}"

    def bye_at(self, k: int) -> str:
        return f"{self.bye}/{k}"

    def r(self, rnd: int, name: str) -> str:
        return f"{self.prefix}/r{rnd}/{name}"


def default_node_id(local_addr: str | None = None) -> str:
    """Unique per agent process: host, pid and a random suffix (pids repeat across hosts)."""
    return f"{local_addr or socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class DynamicRendezvous:
    """The elastic rendezvous (`--rdzv-backend c10d`) over any `Store`; see docs/rendezvous.md.

    `store` is this node's connection; the membership thread and the control calls
    (`set_closed`, `publish_failure`, `failures`) use one `store.clone()`, because a c10d
    client blocked in `wait` would delay every other call on it. With `owns_store` the
    connections are closed by `shutdown`; if the store object hosts the server
    (`store.is_host`), `shutdown` first waits up to close_timeout for the other nodes to leave.
    """

    def __init__(
        self,
        store: Store,
        run_id: str,
        min_nodes: int,
        max_nodes: int,
        conf: Mapping[str, object] | None = None,
        node_id: str | None = None,
        *,
        master_priority: int = 0,
        strict_node_ranks: bool = False,
        owns_store: bool = True,
    ) -> None:
        if not run_id:
            raise ConfigError("the rendezvous id (--rdzv-id) must not be empty")
        if min_nodes < 1 or max_nodes < min_nodes:
            raise ConfigError(f"--nnodes: need 0 < MIN <= MAX, got {min_nodes}:{max_nodes}")
        self._store = store
        self._run_id = run_id
        self._min = min_nodes
        self._max = max_nodes
        self._s = RendezvousSettings.from_conf(conf)
        self._id = node_id or default_node_id()
        self._prio = master_priority
        self._strict = strict_node_ranks
        self._owns = owns_store
        self._k = _Keys(run_id)
        self._slice = self._s.beat_period

        self._main_lock = threading.Lock()  # next_rendezvous / exit_barrier: the blocking calls
        self._ctl_lock = threading.Lock()  # the control connection, shared with the watcher
        self._ctl: Store | None = None
        self._lock = threading.Lock()  # the fields below
        self._round: _Round | None = None
        self._waiting = 0
        self._lost: tuple[str, ...] = ()
        self._closed: str | None = None
        self._wake: Callable[[], None] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._passed_barrier = False
        self._shut = False

        store.compare_set(self._k.open_round, "", "0")
        # Made now, not when first needed: a connection made mid-round costs the server an
        # accept (and c10d a reverse DNS lookup) while every node is waiting on it.
        self._ctl = store.clone()
        self._ctl.set_timeout(min(self._s.read_timeout, self._s.heartbeat_timeout))

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
    def store(self) -> Store:
        """The rendezvous store (torch's `WorkerGroup.store`); its keys under the run id are ours."""
        return self._store

    @property
    def store_address(self) -> str:
        """`host:port` of the store (the real port when the endpoint said 0)."""
        return self._store.address

    def next_rendezvous(self, me: NodeInfo) -> RendezvousInfo:
        """Join the next round and block until it is complete (or raise within join_timeout)."""
        if me.master_port == 0:  # TEMPORARY (rdzv branch): a free port of this node for MASTER_PORT
            from dataclasses import replace

            from elaunch.rendezvous.local import free_port

            me = replace(me, master_port=free_port())
        with self._main_lock:
            st = self._store
            deadline = time.monotonic() + self._s.join_timeout
            self._check(st)
            prev = self._round
            open_round = int(st.get(self._k.open_round))
            if prev is not None:
                rnd = max(prev.number + 1, open_round)
                self._release(st, prev, prev.rank, self._id)
            else:
                rnd = open_round
                if rnd > 0:  # a job is running: if its round is full, stand by (see below)
                    running = self._decode_final(st.get(self._k.r(rnd - 1, "final")))
                    if len(running) >= self._max:
                        self._standby(st, rnd - 1, running)
                        deadline = time.monotonic() + self._s.join_timeout
            rec = NodeRecord(self._id, me, self._prio)
            while True:
                final = self._join_round(st, rnd, rec, deadline)
                mine = [i for i, r in enumerate(final) if r.id == self._id]
                if mine:
                    break
                if self._strict:
                    raise RendezvousError(
                        f"static rendezvous: round {rnd} already has its {len(final)} nodes; this node "
                        f"({me.host}, --node-rank {me.node_rank}) is one too many: check --nnodes and --node-rank"
                    )
                if len(final) >= self._max:
                    # The round is full: admitting us would push another node out. Stand by
                    # without counting as waiting (else the job would restart forever), until
                    # the round ends for another reason; then join the next one.
                    self._standby(st, rnd, final)
                    deadline = time.monotonic() + self._s.join_timeout
                rnd += 1  # late: join the next round; that tells the running nodes we wait
            new = _Round(rnd, tuple(final), mine[0])
            with self._lock:
                self._round = new
                self._waiting = 0
                self._lost = ()
            self._start_watcher()
        head = new.nodes[0].info
        return RendezvousInfo(
            run_id=self._run_id,
            round=rnd,
            group_rank=new.rank,
            nodes=tuple(r.info for r in new.nodes),
            master_addr=head.host,
            master_port=head.master_port,
        )

    def membership(self) -> Membership:
        with self._lock:
            return Membership(
                waiting=self._waiting,
                lost=self._lost,
                closed=self._closed is not None,
                reason=self._closed,
            )

    def set_wakeup(self, wake: Callable[[], None]) -> None:
        with self._lock:
            self._wake = wake

    def set_closed(self, reason: str) -> None:
        """Close the job for every node; the first reason written wins everywhere.

        The local view is closed at once; raises `StoreError` if the store cannot be told.
        """
        reason = reason or "closed"
        with self._lock:
            if self._closed is None:
                self._closed = reason
            store_lost = self._closed.startswith(STORE_LOST)
        if not store_lost:
            with self._ctl_lock:
                got = self._ctl_store().compare_set(self._k.closed, "", reason).decode(errors="replace")
            with self._lock:
                self._closed = got
        self._notify()

    def exit_barrier(self, timeout: float) -> None:
        """Wait until every node of the current round has called this, or `timeout`.

        Raises `RendezvousTimeoutError` on timeout, `RendezvousError` as soon as a node of the
        round is lost (it will never arrive), `RendezvousClosedError` if the job is closed first.
        """
        rv = self._round
        if rv is None:
            return
        with self._main_lock:
            st = self._store
            done = self._k.r(rv.number, "exit_done")
            if st.add(self._k.r(rv.number, "exit"), 1) >= rv.size:
                st.set(done, "1")
            else:
                until = time.monotonic() + timeout

                def between() -> None:
                    if st.check([done]):
                        return
                    self._check(st)
                    lost = self.membership().lost
                    if lost:
                        raise RendezvousError(f"exit barrier: node(s) {', '.join(lost)} were lost before finishing")

                if not self._wait_key(st, done, until, between):
                    arrived = st.add(self._k.r(rv.number, "exit"), 0)
                    raise RendezvousTimeoutError(
                        f"exit barrier: {arrived} of {rv.size} nodes finished within {timeout:g} s"
                    )
            self._passed_barrier = True

    def publish_failure(self, summary: str) -> None:
        with self._ctl_lock:
            self._ctl_store().append(self._k.failures, json.dumps(summary) + "\n")

    def failures(self) -> list[str]:
        with self._ctl_lock:
            ctl = self._ctl_store()
            if not ctl.check([self._k.failures]):
                return []
            raw = ctl.get(self._k.failures)
        return [json.loads(line) for line in raw.decode(errors="replace").splitlines() if line]

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
        if self._thread is not None:
            self._thread.join(timeout=self._s.heartbeat_timeout + self._slice + 1.0)
        try:
            if self._passed_barrier and self._closed is None and self._round is not None:
                self.set_closed(f"the job finished on all {self._round.size} nodes")
            self._say_bye()
        except (StoreError, RendezvousError):
            pass
        with self._ctl_lock:
            if self._ctl is not None:
                self._ctl.close()
                self._ctl = None
        if self._owns and self._main_lock.acquire(timeout=self._slice + 1.0):
            try:
                self._store.close()
            finally:
                self._main_lock.release()

    # -- joining -----------------------------------------------------------------------------
    def _join_round(self, st: Store, rnd: int, rec: NodeRecord, deadline: float) -> list[NodeRecord]:
        """Join round `rnd`; return its final group (which may not include us: then we are late)."""
        k = self._k
        st.append(k.r(rnd, "nodes"), json.dumps(rec.encode()) + "\n")
        idx = st.add(k.r(rnd, "joined"), 1)
        if idx >= self._min:
            st.set(k.r(rnd, f"at/{idx}"), "1")
        if idx == self._min and st.compare_set(k.r(rnd, "finaliser"), "", self._id) == self._id.encode():
            return self._finalise(st, rnd, deadline)
        return self._await_final(st, rnd, deadline)

    def _await_final(self, st: Store, rnd: int, deadline: float) -> list[NodeRecord]:
        """Block on the round's `final` key; between bounded waits, watch the finaliser's
        heartbeat and take over if it stopped (it died during the last call)."""
        k = self._k
        final_key = k.r(rnd, "final")
        fin_id: str | None = None
        beat = _Beat(self._s.heartbeat_timeout, self._slice)
        no_finaliser_since: float | None = None
        while True:
            left = deadline - time.monotonic()
            if st.wait([final_key], max(0.0, min(left, self._slice))):
                return self._decode_final(st.get(final_key))
            self._check(st)
            now = time.monotonic()
            if now >= deadline:
                self._give_up(st, rnd)
            if fin_id is None:
                if st.check([k.r(rnd, "finaliser")]):
                    fin_id = st.get(k.r(rnd, "finaliser")).decode()
                elif st.add(k.r(rnd, "joined"), 0) >= self._min:
                    no_finaliser_since = no_finaliser_since or now
                    if now - no_finaliser_since > self._s.heartbeat_timeout:
                        fin_id = self._take_over(st, rnd, "")
                        if fin_id == self._id:
                            return self._finalise(st, rnd, deadline)
                continue
            if beat.stale(st.add(k.hb(fin_id), 0), time.monotonic()):
                dead = fin_id
                fin_id = self._take_over(st, rnd, dead)
                beat = _Beat(self._s.heartbeat_timeout, self._slice)
                if fin_id == self._id:
                    st.append(k.gone, dead + "\n")
                    return self._finalise(st, rnd, deadline)

    def _standby(self, st: Store, rnd: int, group: Sequence[NodeRecord]) -> None:
        """Block until a node of the full round `rnd` leaves it (`released` appears) or the job
        closes. No join timeout applies meanwhile (torch's "redundancy list"), but if the
        round's rank 0 stops beating and nobody releases it, the job is presumed dead and we
        go on to join (and time out there with a clear message) rather than wait forever."""
        released = self._k.r(rnd, "released")
        beat = _Beat(self._s.heartbeat_timeout, self._slice)
        while not st.wait([released], self._slice):
            self._check(st)
            stale = beat.stale(st.add(self._k.hb(group[0].id), 0), time.monotonic())
            if stale and not st.check([released]):
                return

    def _take_over(self, st: Store, rnd: int, expected: str) -> str:
        return st.compare_set(self._k.r(rnd, "finaliser"), expected, self._id).decode()

    def _finalise(self, st: Store, rnd: int, deadline: float) -> list[NodeRecord]:
        """As the round's finaliser: wait for the previous round to be released, for MIN live
        joiners, then up to last_call_timeout for MAX; publish the ordered group."""
        k = self._k
        me_hb = k.hb(self._id)
        st.add(me_hb, 1)

        def alive() -> None:
            """Between bounded waits: closed? still the finaliser? (and beat for the joiners)"""
            self._check(st)
            st.add(me_hb, 1)
            if st.get(k.r(rnd, "finaliser")).decode() != self._id:
                raise _Superseded

        def joining() -> None:
            alive()
            if time.monotonic() >= deadline:
                self._give_up(st, rnd)

        try:
            if rnd > 0 and not self._wait_key(st, k.r(rnd - 1, "done"), deadline, joining):
                self._give_up(st, rnd, waiting_for_previous=True)
            while True:
                live = self._live_records(st, rnd)
                if len(live) >= self._min:
                    break
                joined = st.add(k.r(rnd, "joined"), 0)
                if not self._wait_key(st, k.r(rnd, f"at/{joined + 1}"), deadline, joining):
                    self._give_up(st, rnd)
            if len(live) < self._max:  # last call: MIN are in; wait a little for up to MAX
                live = self._last_call(st, rnd, live, alive)
        except _Superseded:
            return self._await_final(st, rnd, deadline)
        try:
            ordered = order_nodes(live, self._max, strict=self._strict)
        except ValueError as e:
            reason = f"static rendezvous: {e}; each node needs a distinct --node-rank in 0..{self._max - 1}"
            st.compare_set(k.closed, "", reason)
            raise RendezvousError(reason) from None
        payload = json.dumps({"round": rnd, "by": self._id, "nodes": [r.encode() for r in ordered]})
        got = st.compare_set(k.r(rnd, "final"), "", payload)
        st.compare_set(k.open_round, str(rnd), str(rnd + 1))
        return self._decode_final(got)

    def _last_call(self, st: Store, rnd: int, live: list[NodeRecord], alive: Callable[[], None]) -> list[NodeRecord]:
        """Wait up to last_call_timeout for more joiners, up to MAX.

        A later round (a restart) ends its last call as soon as every node of the previous round
        that is still alive has joined: the nodes that come are known, and a node arriving later
        is admitted by a membership restart, as after any last call. So a job below MAX that
        loses a node, or restarts after a failure, does not wait last_call_timeout for nobody.
        """
        k = self._k
        expected = self._survivors(st, rnd - 1) if rnd > 0 else None
        until = time.monotonic() + self._s.last_call_timeout
        while len(live) < self._max:
            if expected is not None and expected <= {r.id for r in live}:
                break
            joined = st.add(k.r(rnd, "joined"), 0)
            if joined >= self._max:  # MAX joins happened (some may have left since): no more wait
                return self._live_records(st, rnd)  # re-read: they may have joined since `live`
            # Wake at the next join (at/<n> is set by the n-th joiner once n >= MIN).
            arrived = self._wait_key(st, k.r(rnd, f"at/{joined + 1}"), until, alive)
            live = self._live_records(st, rnd)
            if not arrived:
                break
        return live

    def _survivors(self, st: Store, rnd: int) -> set[str] | None:
        """Ids of round `rnd`'s group minus the nodes recorded as lost or gone (None: no group)."""
        if not st.check([self._k.r(rnd, "final")]):
            return None
        group = {r.id for r in self._decode_final(st.get(self._k.r(rnd, "final")))}
        out: set[str] = set()
        if st.check([self._k.r(rnd, "lost")]):
            out = {json.loads(line)["id"] for line in st.get(self._k.r(rnd, "lost")).decode().splitlines() if line}
        if st.check([self._k.gone]):
            out |= set(st.get(self._k.gone).decode().splitlines())
        return group - out

    def _live_records(self, st: Store, rnd: int) -> list[NodeRecord]:
        """Joiners of the round in join order, without duplicates and nodes that left."""
        raw = st.get(self._k.r(rnd, "nodes"))
        gone: set[str] = set()
        if st.check([self._k.gone]):
            gone = set(st.get(self._k.gone).decode().splitlines())
        out: list[NodeRecord] = []
        seen: set[str] = set()
        for line in raw.decode().splitlines():
            if not line:
                continue
            rec = NodeRecord.decode(json.loads(line))
            if rec.id in seen or rec.id in gone:
                continue
            seen.add(rec.id)
            out.append(rec)
        return out

    @staticmethod
    def _decode_final(raw: bytes) -> list[NodeRecord]:
        return list(_decode_group(raw))

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
            with self._lock:
                self._closed = reason
            raise RendezvousClosedError(reason)

    def _give_up(self, st: Store, rnd: int, waiting_for_previous: bool = False) -> NoReturn:
        """Join timeout: leave the job (so no finaliser counts us) and say why."""
        try:
            joined = st.add(self._k.r(rnd, "joined"), 0)
            st.append(self._k.gone, self._id + "\n")
        except StoreError:
            joined = -1
        t = self._s.join_timeout
        if waiting_for_previous:
            why = f"{joined} node(s) joined, but nodes of round {rnd - 1} never came back to the rendezvous"
        elif joined >= 0:
            why = f"{joined} of the minimum {self._min} nodes joined (max {self._max})"
        else:
            why = f"the minimum is {self._min} nodes"
        raise RendezvousTimeoutError(
            f"rendezvous '{self._run_id}' round {rnd}: timed out after {t:g} s (join_timeout): {why}"
        )

    def _release(self, st: Store, rv: _Round, rank: int, by: str) -> bool:
        """Mark node `rank` of round `rv` as having left it (rejoined, or lost); the node that
        releases the last one sets the round's `done`, which lets the next round finish."""
        k = self._k
        if st.compare_set(k.r(rv.number, f"rel/{rank}"), "", by) != by.encode():
            return False  # already released: it rejoined, or another node reported it
        if st.add(k.r(rv.number, "released"), 1) >= rv.size:
            st.set(k.r(rv.number, "done"), "1")
        return True

    def _say_bye(self) -> None:
        if (self._closed or "").startswith(STORE_LOST):
            return  # nobody to tell, and a silent store would make each call wait its timeout
        with self._ctl_lock:
            ctl = self._ctl_store()
            n = ctl.add(self._k.bye, 1)
            ctl.set(self._k.bye_at(n), "1")
            if getattr(self._store, "is_host", False):
                rv = self._round
                expected = rv.size - len(self._lost) if rv is not None else 1
                if expected > n:
                    ctl.wait([self._k.bye_at(expected)], self._s.close_timeout)

    # -- membership while training ------------------------------------------------------------
    def _ctl_store(self) -> Store:
        """The control connection (callers hold `_ctl_lock`); its calls are bounded by the
        heartbeat timeout so that a silent store is noticed in time."""
        if self._ctl is None:
            raise StoreError(f"rendezvous store at {self._store.address}: this node has shut down its connections")
        return self._ctl

    def _start_watcher(self) -> None:
        if self._thread is None and not self._stop.is_set():
            self._thread = threading.Thread(target=self._watch, name=f"elaunch-rdzv-{self._run_id}", daemon=True)
            self._thread.start()

    def _notify(self) -> None:
        with self._lock:
            wake = self._wake
        if wake is not None:
            try:
                wake()
            except Exception:  # a broken callback must not kill the watcher
                pass

    def _watch(self) -> None:
        """Heartbeat, watch the ring neighbour, read `lost`, `waiting` and `closed`.

        A store that keeps failing for heartbeat_timeout closes the job locally with a
        "lost the rendezvous store" reason: the agent then stops its workers and exits.
        """
        w = _Watch(self._s.heartbeat_timeout, self._slice)
        failing_since: float | None = None
        # One period between looks, the first one too: not N nodes' worth of calls at the very
        # moment every node is reading the group.
        while not self._stop.wait(self._slice):
            try:
                with self._ctl_lock:
                    changed, closed = self._tick(self._ctl_store(), w)
                failing_since = None
            except StoreError as e:
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since < self._s.heartbeat_timeout:
                    continue
                msg = e.message.removeprefix(f"rendezvous store at {self._store.address}: ")
                with self._lock:
                    if self._closed is None:
                        self._closed = f"{STORE_LOST} at {self._store.address}: {msg}"
                self._notify()
                return
            if changed:
                self._notify()
            if closed:
                return

    def _tick(self, ctl: Store, w: _Watch) -> tuple[bool, bool]:
        """One heartbeat period: at most 6 store operations, whatever the number of nodes."""
        k = self._k
        if ctl.check([k.closed]):
            reason = ctl.get(k.closed).decode(errors="replace")
            with self._lock:
                changed = self._closed != reason
                self._closed = reason
            return changed, True
        ctl.add(k.hb(self._id), 1)
        with self._lock:
            rv = self._round
        if rv is None:
            return False, False
        if w.round != rv.number:
            w.reset(rv)
        if w.target is not None:
            target = rv.nodes[w.target]
            if w.beat.stale(ctl.add(k.hb(target.id), 0), time.monotonic()):
                if self._release(ctl, rv, w.target, f"lost:{self._id}"):
                    entry = {"rank": w.target, "host": target.info.host, "id": target.id}
                    ctl.append(k.r(rv.number, "lost"), json.dumps(entry) + "\n")
                w.advance(rv)
        lost = self._lost
        if ctl.check([k.r(rv.number, "lost")]):
            hosts: list[str] = []
            for line in ctl.get(k.r(rv.number, "lost")).decode().splitlines():
                host = json.loads(line)["host"] if line else None
                if host and host not in hosts:
                    hosts.append(host)
            lost = tuple(hosts)
        waiting = ctl.add(k.r(rv.number + 1, "joined"), 0)
        with self._lock:
            if self._round is not rv:
                return False, False  # a new round started meanwhile: this view is stale
            changed = lost != self._lost or waiting != self._waiting
            self._lost, self._waiting = lost, waiting
        return changed, False


class _Superseded(Exception):
    """Another node took over finalising the round (we looked dead to it)."""


class _Beat:
    """A heartbeat counter read on our own clock: stale once it has not moved for `timeout`.

    A pause on our side (a store that stalled every client, a starved process) restarts the
    count, so a stall that delays everybody's beats is not mistaken for a death.
    """

    def __init__(self, timeout: float, period: float) -> None:
        self._timeout = timeout
        self._pause = 2 * period + 0.5
        self._value: int | None = None
        self._since = 0.0
        self._last_look = 0.0

    def stale(self, value: int, now: float) -> bool:
        paused = self._last_look > 0 and now - self._last_look > self._pause
        self._last_look = now
        if value != self._value or paused:
            self._value, self._since = value, now
            return False
        return now - self._since > self._timeout


class _Watch:
    """Which ring neighbour this node watches (the next group rank), and its heartbeat."""

    def __init__(self, timeout: float, period: float) -> None:
        self._timeout = timeout
        self._period = period
        self.round = -1
        self.me = 0
        self.target: int | None = None
        self.beat = _Beat(timeout, period)

    def reset(self, rv: _Round) -> None:
        self.round = rv.number
        self.me = rv.rank
        self.target = (rv.rank + 1) % rv.size if rv.size > 1 else None
        self.beat = _Beat(self._timeout, self._period)

    def advance(self, rv: _Round) -> None:
        """Watch the next node in the ring (the lost one watched it); stop when back at us."""
        self.beat = _Beat(self._timeout, self._period)
        nxt = ((self.target or 0) + 1) % rv.size
        self.target = None if nxt == self.me else nxt


def create_c10d_rendezvous(
    endpoint_host: str,
    endpoint_port: int,
    run_id: str,
    min_nodes: int,
    max_nodes: int,
    conf: Mapping[str, object] | None = None,
    local_addr: str | None = None,
    *,
    node_id: str | None = None,
) -> DynamicRendezvous:
    """`--rdzv-backend c10d`: host the TCPStore at the endpoint or connect to it, then rendezvous.

    `conf` is `config.parse_rdzv_conf(...)` output (merged over the defaults here); its
    `is_host` forces hosting, `use_libuv` picks the server backend, `store_type` must be tcp.
    The node hosting the store becomes group rank 0 unless a `--node-rank` preference says
    otherwise. Unreachable endpoints fail within join_timeout with a `StoreError`.
    """
    conf = dict(conf or {})
    settings = RendezvousSettings.from_conf({k: v for k, v in conf.items() if k in RDZV_CONF_DEFAULTS})
    store_type = str(conf.get("store_type", "tcp")).strip().lower()
    if store_type != "tcp":
        raise NotSupportedError(f"--rdzv-conf store_type={store_type}: only tcp is supported")
    is_host = conf.get("is_host")
    store = connect_store(
        endpoint_host,
        endpoint_port,
        is_host=None if is_host is None else bool(is_host),
        connect_timeout=settings.join_timeout,
        timeout=settings.read_timeout,
        use_libuv=bool(conf.get("use_libuv", True)),
    )
    priority = 2 if store.is_host else (1 if is_local_address(endpoint_host) else 0)
    try:
        return DynamicRendezvous(
            store,
            run_id,
            min_nodes,
            max_nodes,
            conf={k: v for k, v in conf.items() if k in RDZV_CONF_DEFAULTS},
            node_id=node_id or default_node_id(local_addr),
            master_priority=priority,
        )
    except BaseException:
        store.close()
        raise


__all__ = [
    "STORE_LOST",
    "DynamicRendezvous",
    "NodeRecord",
    "RendezvousSettings",
    "create_c10d_rendezvous",
    "default_node_id",
    "order_nodes",
]
