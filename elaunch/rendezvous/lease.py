"""etcd: leases, so that a job's keys vanish with it and a node's liveness costs no write
(docs/rendezvous.md#etcd).

**The job's lease** (`JobLease`): the first node grants a lease and records its id in `P/lease`
(`compare_set` from absent; that key carries the lease too); the others adopt it. Each node's
`EtcdStore` connections then attach every key they write to it, and a keeper thread on a
connection of its own renews it every TTL/3 seconds. When the job ends cleanly, the last node to
say goodbye revokes it: every key of the job is gone at once, so the same `--rdzv-id` can start a
new job. When every node dies instead, the keys go TTL seconds after the last renewal.

**Each node's lease** (`NodeLease`, `LeaseLiveness`): a lease of heartbeat_timeout seconds
(`node_lease_ttl`) on which the node writes its alive key `P/alive/<id>` once; its beat is a
keep-alive of that lease (no put, no etcd revision), made by its membership thread from the moment
the rendezvous is built; a node is lost when its alive key is gone (etcd expired the lease). A
node that finds its own lease expired while it runs grants itself a new one, writes its alive key
again and reports itself lost in its round (`rounds.lapse_reported_lost`): it does not go on as a
ghost that the others may have taken for dead. At shutdown it revokes its lease.

The c10d backend has no leases (its heartbeats are counters; the store's host, or `elaunch
rdzv-server`, removes the keys).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

from elaunch.errors import StoreError
from elaunch.rendezvous.api import RendezvousSettings
from elaunch.rendezvous.dynamic import DynamicRendezvous
from elaunch.rendezvous.etcd import EtcdStore
from elaunch.rendezvous.keys import Keys
from elaunch.rendezvous.store import Store


def lease_ttl(settings: RendezvousSettings) -> int:
    """Seconds the job's keys outlive its last node: 3 heartbeat timeouts, at least 15 s (a
    renewal every TTL/3 then survives one missed request and a slow etcd)."""
    return max(15, math.ceil(3 * settings.heartbeat_timeout))


def node_lease_ttl(settings: RendezvousSettings) -> int:
    """Seconds a node's own lease lives without a keep-alive: heartbeat_timeout, rounded up to
    whole seconds (etcd's unit; etcd itself may raise it to its minimum, 2 s by default). The node
    renews it every beat period, so keep_alive_max_attempt - 1 keep-alives in a row may be lost, as
    heartbeats may on c10d."""
    return max(1, math.ceil(settings.heartbeat_timeout))


def expired_reason(ttl: int) -> str:
    """What a node whose own lease expired while it ran tells its user (`rounds.lapse_notice`
    adds what follows)."""
    return (
        f"this node's etcd lease expired: etcd heard no keep-alive from it for {ttl} s "
        "(etcd, or the link to it, was too slow), so the other nodes may have taken it for lost; "
        "it holds a new lease"
    )


def last_to_leave(closed: bool, goodbyes: int, round_size: int | None) -> bool:
    """Whether a node that said goodbye revokes the job's lease: the job is closed and every node
    of its round (as this node saw it; 1 if it never completed one) has said goodbye."""
    return closed and goodbyes >= (round_size or 1)


class JobLease:
    """This node's share of the job's lease: adopted or granted by `join`, renewed by a thread."""

    def __init__(self, store: EtcdStore, keys: Keys, lease: int, ttl: int) -> None:
        self._st = store
        self._k = keys
        self.id = lease
        self.ttl = ttl
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name=f"elaunch-lease-{lease:x}", daemon=True)
        self._thread.start()

    @classmethod
    def join(cls, store: EtcdStore, keys: Keys, ttl: int) -> JobLease:
        """The job's lease (granted here when the job has none yet), attached to `store`'s writes;
        renewed on a clone of `store` from now on. `StoreError` if etcd does not answer."""
        for _ in range(5):
            mine = store.grant_lease(ttl)
            store.use_lease(mine)
            got = store.compare_set(keys.lease, "", str(mine)).decode()
            if got == str(mine):
                return cls(store.clone(), keys, mine, ttl)
            store.use_lease(None)
            store.revoke_lease(mine)
            other = int(got)
            if store.keep_alive(other) > 0:  # still alive: it is the job's
                store.use_lease(other)
                return cls(store.clone(), keys, other, ttl)
            # it expired between the read and the renewal (its key with it): try again
        raise StoreError(f"rendezvous store at {store.address}: could not agree on the job's etcd lease")

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                if self._st.keep_alive(self.id) < 0:
                    return  # expired (etcd was unreachable for TTL): the keys are gone already
            except StoreError:
                continue  # the membership thread reports a lost etcd

    def finish(self, round_size: int | None) -> None:
        """Stop renewing; revoke the lease when this node is the last to leave a closed job
        (`last_to_leave`), else let the other nodes (or the TTL) decide. Never raises."""
        self._stop.set()
        self._thread.join(timeout=1.0)  # a renewal in flight is bounded by the connection's timeout
        try:
            closed = self._st.check([self._k.closed])
            byes = self._st.add(self._k.bye, 0) if closed else 0
            if last_to_leave(closed, byes, round_size):
                self._st.revoke_lease(self.id)
        except StoreError:
            pass
        finally:
            self._st.close()


class NodeLease:
    """This node's own lease, on a connection of its own: its alive key `P/alive/<id>` is written
    on it once, and lives as long as the lease is renewed (`renew`: the node's beat)."""

    def __init__(self, store: EtcdStore, keys: Keys, node_id: str, ttl: int) -> None:
        self._st = store
        self._alive = keys.alive(node_id)
        self.ttl = ttl
        """Seconds, as asked; raised to what etcd answers on renewal (it may round it up)."""
        self.id = 0
        self._held = False

    @classmethod
    def grant(cls, store: EtcdStore, keys: Keys, node_id: str, ttl: int, timeout: float) -> NodeLease:
        """A new lease for node `node_id` with its alive key written, on a clone of `store` whose
        calls are bounded by `timeout` seconds. `StoreError` if etcd does not answer."""
        conn = store.clone()
        conn.set_timeout(timeout)
        lease = cls(conn, keys, node_id, ttl)
        try:
            lease._grant()
        except BaseException:
            conn.close()
            raise
        return lease

    def _grant(self) -> None:
        self.id = self._st.grant_lease(self.ttl)
        self._st.use_lease(self.id)
        self._st.set(self._alive, "1")
        self._held = True

    def renew(self) -> bool:
        """Keep the lease alive: one request. False when it had expired (or was revoked: the alive
        key was gone) and a new lease was granted with the alive key written on it again (2 more
        requests). Raises `StoreError`; a call that failed half-way is completed by the next."""
        if self._held:
            ttl = self._st.keep_alive(self.id)
            if ttl > 0:
                self.ttl = max(self.ttl, ttl)
                return True
            self._held = False
        self._grant()
        return False

    def end(self) -> None:
        """Revoke the lease (the alive key goes at once) and close the connection. Never raises."""
        try:
            if self._held:
                self._held = False
                self._st.revoke_lease(self.id)
        except StoreError:
            pass  # it expires by itself within its TTL
        finally:
            self._st.close()


class _AliveKey:
    """`LeaseLiveness.watch`: a node is lost once its alive key is gone (its lease expired)."""

    def __init__(self, keys: Keys) -> None:
        self._k = keys

    def lost(self, st: Store, node_id: str) -> bool:
        return not st.check([self._k.alive(node_id)])


class LeaseLiveness:
    """etcd (`watcher.Liveness`): the beat is a keep-alive of the node's own lease, not a put; a
    node is lost when its alive key is gone. etcd keeps the time (the lease's TTL), not the
    watcher. The membership thread beats from the moment the rendezvous is built (`early`), so the
    joining loops do not beat."""

    early = True

    def __init__(self, lease: NodeLease, keys: Keys) -> None:
        self._lease = lease
        self._k = keys

    def beat(self, st: Store) -> str | None:
        if self._lease.renew():
            return None
        return expired_reason(self._lease.ttl)

    def joining_beat(self, st: Store) -> None:
        return None  # the membership thread keeps the lease alive

    def watch(self) -> _AliveKey:
        return _AliveKey(self._k)

    def all_alive(self, st: Store, ids: Sequence[str], ending: str) -> bool:
        """Every alive key is there and `ending` is absent: 2 reads, no waiting (etcd has already
        applied heartbeat_timeout: a key outlives its node's last keep-alive by the lease's TTL)."""
        return not st.check([ending]) and st.check([self._k.alive(i) for i in ids])


class LeasedRendezvous(DynamicRendezvous):
    """The dynamic rendezvous on etcd with the job's keys under a `JobLease` and this node's
    liveness on a `NodeLease` (`LeaseLiveness`)."""

    def __init__(
        self,
        store: EtcdStore,
        run_id: str,
        min_nodes: int,
        max_nodes: int,
        settings: RendezvousSettings,
        node_id: str,
        standby: int = 0,
    ) -> None:
        keys = Keys(run_id)
        self._lease = JobLease.join(store, keys, lease_ttl(settings))
        try:
            timeout = min(settings.read_timeout, settings.heartbeat_timeout)  # as the control connection's
            self._node_lease = NodeLease.grant(store, keys, node_id, node_lease_ttl(settings), timeout)
        except BaseException:
            self._lease.finish(None)
            raise
        try:
            super().__init__(
                store,
                run_id,
                min_nodes,
                max_nodes,
                settings,
                node_id,
                standby=standby,
                liveness=LeaseLiveness(self._node_lease, keys),
            )
        except BaseException:
            self._node_lease.end()
            self._lease.finish(None)
            raise

    def shutdown(self) -> None:
        first = not self._shut
        super().shutdown()
        if first:
            self._node_lease.end()
            rv = self._state.round
            self._lease.finish(None if rv is None else rv.size)


__all__ = [
    "JobLease",
    "LeaseLiveness",
    "LeasedRendezvous",
    "NodeLease",
    "expired_reason",
    "last_to_leave",
    "lease_ttl",
    "node_lease_ttl",
]
