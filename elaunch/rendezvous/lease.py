"""etcd: one lease per job, so that the job's keys vanish with it (docs/rendezvous.md#etcd).

The first node grants a lease and records its id in `P/lease` (`compare_set` from absent; that key
carries the lease too); the others adopt it. Each node's `EtcdStore` connections then attach every
key they write to it, and a keeper thread on a connection of its own renews it every TTL/3
seconds. When the job ends cleanly, the last node to say goodbye revokes it: every key of the job
is gone at once, so the same `--rdzv-id` can start a new job. When every node dies instead, the
keys go TTL seconds after the last renewal. The c10d backend has no leases (the store's host, or
`elaunch rdzv-server`, removes them).
"""

from __future__ import annotations

import math
import threading

from elaunch.errors import StoreError
from elaunch.rendezvous.api import RendezvousSettings
from elaunch.rendezvous.dynamic import DynamicRendezvous
from elaunch.rendezvous.etcd import EtcdStore
from elaunch.rendezvous.keys import Keys


def lease_ttl(settings: RendezvousSettings) -> int:
    """Seconds the job's keys outlive its last node: 3 heartbeat timeouts, at least 15 s (a
    renewal every TTL/3 then survives one missed request and a slow etcd)."""
    return max(15, math.ceil(3 * settings.heartbeat_timeout))


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


class LeasedRendezvous(DynamicRendezvous):
    """The dynamic rendezvous on etcd with the job's keys under a `JobLease`."""

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
        self._lease = JobLease.join(store, Keys(run_id), lease_ttl(settings))
        try:
            super().__init__(store, run_id, min_nodes, max_nodes, settings, node_id, standby=standby)
        except BaseException:
            self._lease.finish(None)
            raise

    def shutdown(self) -> None:
        first = not self._shut
        super().shutdown()
        if first:
            rv = self._state.round
            self._lease.finish(None if rv is None else rv.size)


__all__ = ["JobLease", "LeasedRendezvous", "last_to_leave", "lease_ttl"]
