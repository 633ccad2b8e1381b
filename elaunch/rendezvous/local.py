"""The one-node rendezvous: `--standalone`, or any backend with `--nnodes 1`. No store, no torch."""

from __future__ import annotations

import os
from collections.abc import Callable

from elaunch.errors import RendezvousClosedError
from elaunch.rendezvous.api import Membership, NodeInfo, RendezvousInfo
from elaunch.rendezvous.ports import free_port


class LocalRendezvous:
    """A group of exactly this node; rounds only count restarts.

    `master_addr`/`master_port` fix where rank 0's worker hosts the process-group store.
    A port of 0 means: each round uses `me.master_port`, or, when that is 0 too, a free port
    picked on this node (`ports.free_port`).
    """

    def __init__(self, run_id: str | None = None, master_addr: str = "127.0.0.1", master_port: int = 0) -> None:
        self._run_id = run_id or os.urandom(6).hex()
        self._master_addr = master_addr
        self._master_port = master_port
        self._round = -1
        self._closed: str | None = None
        self._failures: list[str] = []

    @property
    def run_id(self) -> str:
        return self._run_id

    @property
    def store(self) -> None:
        """No store: one node needs none."""
        return None

    @property
    def lost_within(self) -> None:
        """One node: no other node to lose."""
        return None

    @property
    def min_nodes(self) -> int:
        return 1

    @property
    def max_nodes(self) -> int:
        return 1

    def next_rendezvous(self, me: NodeInfo) -> RendezvousInfo:
        if self._closed is not None:
            raise RendezvousClosedError(self._closed)
        self._round += 1
        port = self._master_port or me.master_port or free_port()
        return RendezvousInfo(
            run_id=self._run_id,
            round=self._round,
            group_rank=0,
            nodes=(me,),
            master_addr=self._master_addr,
            master_port=port,
        )

    def request_restart(self, reason: str) -> bool:
        """One node: every round is already immediate."""
        return False

    def membership(self) -> Membership:
        return Membership(closed=self._closed is not None, reason=self._closed)

    def set_wakeup(self, wake: Callable[[], None]) -> None:
        """Nothing ever changes membership of a one-node job."""

    def set_closed(self, reason: str) -> None:
        self._closed = reason

    def leave(self, reason: str) -> bool:
        """One node: leaving ends the job."""
        self.set_closed(reason)
        return False

    def exit_barrier(self, timeout: float) -> None:
        """Only this node: nothing to wait for."""

    def serving_others(self) -> str | None:
        """No store, nobody else."""
        return None

    def keep_serving(self) -> None:
        """Nothing to serve."""

    def publish_failure(self, summary: str) -> None:
        self._failures.append(summary)

    def failures(self) -> list[str]:
        return list(self._failures)

    def shutdown(self) -> None:
        """Holds no resources."""
