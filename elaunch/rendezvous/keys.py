"""The rendezvous key schema: every store key the protocol uses, named once (docs/rendezvous.md#keys)."""

from __future__ import annotations

from urllib.parse import quote

KEY_ROOT = "/elaunch"


class RoundKeys:
    """The keys of round n, under `P/r<n>/`. Plain strings, built once per round object."""

    __slots__ = (
        "_base",
        "done",
        "exit",
        "exit_done",
        "final",
        "finaliser",
        "joined",
        "lost",
        "master_port",
        "nodes",
        "number",
        "rejoined",
        "released",
    )

    def __init__(self, prefix: str, number: int) -> None:
        self.number = number
        r = self._base = f"{prefix}/r{number}"
        self.nodes = f"{r}/nodes"
        """List of JSON records (`NodeRecord.encode`), one line per join (`append`)."""
        self.joined = f"{r}/joined"
        """Counter: a joiner's `add 1` is its join index; `add 0` is how many asked (waiting)."""
        self.finaliser = f"{r}/finaliser"
        """Node id of the round's finaliser (`compare_set` from absent, or from a dead one's id)."""
        self.final = f"{r}/final"
        """JSON `{round, by, nodes}`: the group in group-rank order (`compare_set` from absent)."""
        self.released = f"{r}/released"
        """Counter of released slots (`rel/<g>` set): a node left the round."""
        self.done = f"{r}/done"
        """Marker: every slot was released; the next round may complete."""
        self.lost = f"{r}/lost"
        """List of JSON `{rank, host, id}` lines: nodes found lost while the round ran."""
        self.exit = f"{r}/exit"
        """Counter of nodes that reached the exit barrier."""
        self.exit_done = f"{r}/exit_done"
        """Marker set by the last node to reach the exit barrier."""
        self.rejoined = f"{r}/rejoined"
        """Counter of nodes that left this round for the restart round after it (`restarts.join_restart`)."""
        self.master_port = f"{r}/master_port"
        """A restart round's MASTER_PORT, set by its group rank 0 (`restarts.join_restart`)."""

    def at(self, k: int) -> str:
        """Marker set by the k-th joiner once k >= MIN (the finaliser waits on the next one)."""
        return f"{self._base}/at/{k}"

    def fin(self, rank: int) -> str:
        """Marker: group rank `rank` reached the exit barrier (its workers finished), so its
        heartbeat may stop without it being lost."""
        return f"{self._base}/fin/{rank}"

    def rel(self, rank: int) -> str:
        """Group rank `rank` left the round (rejoined, or found lost); holds who released it."""
        return f"{self._base}/rel/{rank}"


class Keys:
    """Every key of one job, under `P = /elaunch/<run_id>/` (the id URL-quoted), so that jobs
    sharing a store never collide. `round(n)` gives round n's keys."""

    def __init__(self, run_id: str) -> None:
        self.prefix = f"{KEY_ROOT}/{quote(run_id, safe='')}"
        """`P` without the trailing slash (etcd puts its own prefix before it)."""
        p = self.prefix
        self.open_round = f"{p}/open_round"
        """Int: the round a new node joins (set to 0 by the first node, advanced by finalisers)."""
        self.closed = f"{p}/closed"
        """The reason the job was closed (`compare_set` from absent: the first reason wins)."""
        self.gone = f"{p}/gone"
        """List of node ids (one a line) that gave up or were replaced as finaliser."""
        self.failures = f"{p}/failures"
        """List of JSON strings: the failure summaries nodes published."""
        self.bye = f"{p}/bye"
        """Counter of nodes that said goodbye in `shutdown`."""
        self.spares = f"{p}/spares"
        """Lines `+<id> <host>` / `-<id> <host>`: nodes that stand by as spares, and stopped (`spares`)."""
        self.lease = f"{p}/lease"
        """etcd only: the id of the job's lease, which every key of the job (this one too) carries,
        but the `alive` keys (each on its node's own lease)."""

    def hb(self, node_id: str) -> str:
        """Heartbeat counter of node `node_id` (its id URL-quoted); c10d only (etcd: `alive`)."""
        return f"{self.prefix}/hb/{quote(node_id, safe='')}"

    def alive(self, node_id: str) -> str:
        """etcd only: node `node_id`'s alive key (its id URL-quoted), written once on the node's own
        lease: it exists while the node keeps that lease alive, and its absence means the node is
        lost (what `hb` is on c10d)."""
        return f"{self.prefix}/alive/{quote(node_id, safe='')}"

    def bye_at(self, k: int) -> str:
        """Marker set by the k-th node to say goodbye (the store's host waits on the last one)."""
        return f"{self.bye}/{k}"

    def round(self, number: int) -> RoundKeys:
        return RoundKeys(self.prefix, number)


__all__ = ["KEY_ROOT", "Keys", "RoundKeys"]
