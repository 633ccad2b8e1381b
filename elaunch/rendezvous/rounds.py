"""The round's decisions as pure functions of plain values (counts, records, times): no store here.

Each function is one rule of docs/rendezvous.md ("A round", "While training"); the store loops
in `dynamic.py` and `watcher.py` read values, call these, and act on the answer.
"""

from __future__ import annotations

import enum
import functools
import json
import threading
import zlib
from collections.abc import Collection, Sequence
from typing import Any, NamedTuple

from elaunch.rendezvous.api import NodeInfo
from elaunch.values import Value, value


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


@value
class Round(Value):
    """A completed round as this node saw it: the group in group-rank order, and our rank."""

    number: int
    nodes: tuple[NodeRecord, ...]
    rank: int

    @property
    def size(self) -> int:
        return len(self.nodes)


# -- encoding of the lists kept in the store ---------------------------------------------------
def record_line(rec: NodeRecord) -> str:
    """One line of `R/nodes`."""
    return json.dumps(rec.encode()) + "\n"


def live_records(raw_nodes: bytes, gone: Collection[str]) -> list[NodeRecord]:
    """The joiners of a round (`R/nodes`) in join order, without repeats and without the ids in
    `gone` (nodes that gave up or were replaced): the candidates for the group."""
    out: list[NodeRecord] = []
    seen: set[str] = set()
    for line in raw_nodes.decode().splitlines():
        if not line:
            continue
        rec = NodeRecord.decode(json.loads(line))
        if rec.id in seen or rec.id in gone:
            continue
        seen.add(rec.id)
        out.append(rec)
    return out


def id_set(raw: bytes) -> set[str]:
    """The node ids of a list kept one a line (`P/gone`)."""
    return set(raw.decode().splitlines()) - {""}


def lost_line(rank: int, host: str, node_id: str) -> str:
    """One line of `R/lost`: group rank `rank` of the round was found lost."""
    return json.dumps({"rank": rank, "host": host, "id": node_id}) + "\n"


LOST_SLACK = 2.0
"""Seconds allowed, beyond the heartbeat's own bounds, for store round trips and a busy machine."""


def lost_within(heartbeat_timeout: float, beat_period: float) -> float:
    """Seconds after a node's last heartbeat by which every node of the round knows it is lost:
    the timeout (the counter stops moving), one beat for its watcher to read it and record it in
    `R/lost`, one beat for every other node to read `R/lost`, and `LOST_SLACK`."""
    return heartbeat_timeout + 2 * beat_period + LOST_SLACK


def node_label(host: str, group_rank: int) -> str:
    """How a node is named in reports: `host (group rank R)`, so nodes on hosts of the same name
    (containers, fake hosts, several agents on one machine) are told apart."""
    return f"{host} (group rank {group_rank})"


def lost_nodes(raw_lost: bytes) -> tuple[str, ...]:
    """Nodes named by `R/lost` as `node_label`s, first report first, each node once (what
    `Membership.lost` shows)."""
    seen: dict[str, str] = {}
    for line in raw_lost.decode().splitlines():
        if line:
            row = json.loads(line)
            seen.setdefault(row["id"], node_label(row["host"], row["rank"]))
    return tuple(seen.values())


def lost_ids(raw_lost: bytes) -> set[str]:
    """Node ids named by `R/lost`."""
    return {json.loads(line)["id"] for line in raw_lost.decode().splitlines() if line}


def final_payload(number: int, by: str, ordered: Sequence[NodeRecord], **extra: object) -> bytes:
    """The value of `R/final`: round number, finaliser id and the group in group-rank order (and
    `extra` fields, e.g. a restart round's reason), as zlib-compressed JSON. Every node reads it,
    so a round moves N times its size through the store; records of one job look alike and
    compress about 6x (about 15 bytes a node)."""
    doc = {"round": number, "by": by, "nodes": [r.encode() for r in ordered], **extra}
    return zlib.compress(json.dumps(doc).encode(), 1)


def final_doc(raw: bytes) -> dict[str, Any]:
    """The fields of a published `R/final` (see `final_payload`)."""
    doc: dict[str, Any] = json.loads(zlib.decompress(raw))
    return doc


class Group(tuple[NodeRecord, ...]):
    """A published group in group-rank order (a tuple of `NodeRecord`), with what every node
    derives from it computed once per group rather than once per node: the `NodeInfo` tuple
    (`RendezvousInfo.nodes`) and the rank of each node id. Every node reads the whole group, so
    any O(N) step taken per node is O(N²) in all; agents that share a process (tests, the
    benchmark's threads) share one `Group` per round through `decode_group`'s memo."""

    @functools.cached_property
    def infos(self) -> tuple[NodeInfo, ...]:
        """Each node's `NodeInfo`, in group-rank order."""
        return tuple(r.info for r in self)

    @functools.cached_property
    def _ranks(self) -> dict[str, int]:
        return {r.id: g for g, r in enumerate(self)}

    def rank_of(self, node_id: str) -> int:
        """The group rank of `node_id`, or -1 when it is not in the group (O(1) once indexed)."""
        return self._ranks.get(node_id, -1)


@functools.lru_cache(maxsize=8)
def _decode_group(raw: bytes) -> Group:
    return Group(NodeRecord.decode(row) for row in final_doc(raw)["nodes"])


_decoding = threading.Lock()


def decode_group(raw: bytes) -> Group:
    """A round's published group (`R/final`). Pure, hence memoised: agents that share a process
    (tests, the benchmark's threads) decode a round once instead of once each; a real node
    decodes its own (about 10 ms for 4096 nodes). One decode at a time, so that the memo holds
    for threads woken together by the same `final`: `lru_cache` alone lets every thread that
    misses decode too (64 agent threads of a process did, each one 10 ms of the GIL)."""
    with _decoding:
        return _decode_group(raw)


# -- which round, and joining it ---------------------------------------------------------------
def round_to_join(last_round: int | None, open_round: int) -> int:
    """The round a node joins: `P/open_round` the first time, else the one after its last round
    (or the open round, if the job moved on meanwhile)."""
    return open_round if last_round is None else max(last_round + 1, open_round)


def round_is_full(group_size: int, max_nodes: int) -> bool:
    """A round with MAX nodes admits nobody: one more would push another node out."""
    return group_size >= max_nodes


def marks_arrival(join_index: int, min_nodes: int) -> bool:
    """The joiner with index k >= MIN sets `R/at/<k>` (what a waiting finaliser blocks on)."""
    return join_index >= min_nodes


def claims_finaliser(join_index: int, min_nodes: int) -> bool:
    """The MIN-th joiner tries to become the round's finaliser."""
    return join_index == min_nodes


class Placement(enum.Enum):
    """Where a node stands once a round it joined was published."""

    IN = "in"
    """It is in the group: the round is done for it."""
    LATE = "late"
    """Not in, the round had room: join the next round at once (the running nodes see it waiting)."""
    STANDBY = "standby"
    """Not in, the round is full: stand by until the round ends for another reason, then join
    the next round (joining now would make the job restart forever)."""
    REFUSED = "refused"
    """Not in, and ranks are strict (static): there is no room for this node at all."""


def placement(group: Sequence[NodeRecord], node_id: str, max_nodes: int, strict: bool) -> tuple[Placement, int]:
    """This node's place in a published group, and its group rank (-1 when not in).
    O(1) for a `Group` (what `decode_group` returns), O(N) for any other sequence."""
    rank = group.rank_of(node_id) if isinstance(group, Group) else Group(group).rank_of(node_id)
    if rank >= 0:
        return Placement.IN, rank
    if strict:
        return Placement.REFUSED, -1
    if round_is_full(len(group), max_nodes):
        return Placement.STANDBY, -1
    return Placement.LATE, -1


# -- finalising --------------------------------------------------------------------------------
def previous_round_must_end(number: int) -> bool:
    """Round n > 0 completes only once round n-1 is `done` (every slot released), so that the
    new group cannot overlap a running one."""
    return number > 0


def enough_joined(live: int, min_nodes: int) -> bool:
    """The finaliser goes on to the last call once MIN live joiners are in."""
    return live >= min_nodes


def can_leave(min_nodes: int, max_nodes: int, others_left: int | None, hosts_store: bool, spares: int = 0) -> bool:
    """Whether a node that is stopped may leave the job without ending it: the job is elastic
    (MIN < MAX) or a spare stands by to take its place, it has a round, at least MIN other nodes of
    it (and spares) are still in, and the node does not host the store (the others would lose it).
    torchrun re-forms without a node stopped by a signal."""
    if others_left is None or hosts_store or not (min_nodes < max_nodes or spares > 0):
        return False
    return others_left + spares >= min_nodes


def survivors(group: Collection[str], lost: Collection[str], gone: Collection[str]) -> set[str]:
    """Ids of the previous round's group that are expected back: not found lost, not gone."""
    return set(group) - set(lost) - set(gone)


class LastCall(enum.Enum):
    """What the finaliser does next during the last call."""

    WAIT = "wait"
    """Wait (until the last call's deadline) for the next joiner."""
    END = "end"
    """Close the round with the live joiners as they are."""
    END_REREAD = "end-reread"
    """Close the round, but read the joiners again first: they may have joined since."""


def last_call_needed(live: int, max_nodes: int) -> bool:
    """A last call is made only while fewer than MAX are in."""
    return live < max_nodes


def last_call(live: Collection[str], max_nodes: int, expected: Collection[str] | None) -> LastCall:
    """The last call's decision before reading the join counter.

    It ends once MAX are in, or (a restart round) once every surviving member of the previous
    round (`expected`, None in round 0) has joined: who is coming is known, and a node arriving
    later is admitted by a membership restart, as after any last call.
    """
    if not last_call_needed(len(live), max_nodes):
        return LastCall.END
    if expected is not None and set(expected) <= set(live):
        return LastCall.END
    return LastCall.WAIT


def last_call_after_count(joined: int, max_nodes: int) -> LastCall:
    """The last call's decision once `R/joined` was read: MAX join attempts happened (some may
    have left since) ends it, after reading the joiners again; else wait for the next one."""
    return LastCall.END_REREAD if joined >= max_nodes else LastCall.WAIT


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


def strict_ranks_reason(error: ValueError, max_nodes: int) -> str:
    """The reason a static round closes the job with when `order_nodes(strict=True)` refused."""
    return f"static rendezvous: {error}; each node needs a distinct --node-rank in 0..{max_nodes - 1}"


def no_room_reason(number: int, group_size: int, host: str, node_rank: int | None) -> str:
    """Why a static node that is not in a published round fails (`Placement.REFUSED`)."""
    return (
        f"static rendezvous: round {number} already has its {group_size} nodes; this node "
        f"({host}, --node-rank {node_rank}) is one too many: check --nnodes and --node-rank"
    )


def already_running_reason(run_id: str, running: Sequence[NodeRecord]) -> str:
    """Why a new node of a fixed-size job (--nnodes N) whose running round is full is refused."""
    hosts = ", ".join(dict.fromkeys(r.info.host for r in running))
    return (
        f"a job with run id {run_id!r} is already running on {hosts} ({len(running)} of {len(running)} nodes): "
        "use another --rdzv-id for a separate job (or --nnodes MIN:MAX for spare nodes that stand by)"
    )


def standby_notice(run_id: str, running: Sequence[NodeRecord]) -> str:
    """What a node that stands by for a full running round tells its user, once."""
    hosts = ", ".join(dict.fromkeys(r.info.host for r in running))
    return (
        f"a job with run id {run_id!r} is running on {hosts} with its maximum of {len(running)} nodes: "
        "this node stands by as a spare until a node leaves it (Ctrl-C to stop)"
    )


def join_timeout_reason(
    run_id: str,
    number: int,
    timeout: float,
    joined: int | None,
    min_nodes: int,
    max_nodes: int,
    waiting_for_previous: bool = False,
) -> str:
    """The message of a join timeout (`joined` None: the count could not be read)."""
    if waiting_for_previous:
        count = "?" if joined is None else joined
        why = f"{count} node(s) joined, but nodes of round {number - 1} never came back to the rendezvous"
    elif joined is not None:
        why = f"{joined} of the minimum {min_nodes} nodes joined (max {max_nodes})"
    else:
        why = f"the minimum is {min_nodes} nodes"
    return f"rendezvous '{run_id}' round {number}: timed out after {timeout:g} s (join_timeout): {why}"


# -- heartbeats ---------------------------------------------------------------------------------
@value
class BeatSeen(Value):
    """What a watcher last saw of a heartbeat counter, on its own monotonic clock."""

    value: int | None = None
    since: float = 0.0
    """When `value` was first seen."""
    last_look: float = 0.0
    """When the counter was last read (0: never)."""


def heartbeat_stale(seen: BeatSeen, value: int, now: float, timeout: float, period: float) -> tuple[BeatSeen, bool]:
    """Read a heartbeat counter: (what to remember, whether its node is lost).

    Lost once the counter has not moved for `timeout` seconds of our clock; the other host's
    clock is never used. A look more than 2 periods + 0.5 s after the previous one is a pause
    on our side (a stalled store, a starved process): the count restarts, so a stall that
    delays everybody's beats is not mistaken for a death.
    """
    paused = seen.last_look > 0 and now - seen.last_look > 2 * period + 0.5
    if value != seen.value or paused:
        return BeatSeen(value, now, now), False
    return BeatSeen(seen.value, seen.since, now), now - seen.since > timeout


def lapse_reported_lost(in_round: bool, finished: bool) -> bool:
    """Whether a node whose own liveness lapsed while it ran (etcd: its lease expired, so its alive
    key was gone for a while) reports itself lost in its round. Its watcher may or may not have
    looked during the gap; reporting it makes every node, this one too, re-form the group with it
    whatever the timing, instead of leaving it in a group that may have taken it for dead. A node
    that reached the exit barrier (`fin`) is finished, not lost; one without a round (joining,
    standing by) has no slot to report."""
    return in_round and not finished


def lapse_notice(reason: str, round_number: int | None, reported: bool) -> str:
    """The line a node whose liveness lapsed tells its user: `reason` (what lapsed, and what it
    holds now), then what follows from it."""
    if reported and round_number is not None:
        return f"{reason}; it reports itself lost in round {round_number}, so the group re-forms with it"
    return reason


def finaliser_unclaimed_since(joined: int, min_nodes: int, since: float | None, now: float) -> float | None:
    """Since when MIN have joined and nobody claimed `R/finaliser` (None: fewer joined so far)."""
    if joined < min_nodes:
        return since
    return since if since is not None else now


def overdue(since: float | None, now: float, timeout: float) -> bool:
    """More than `timeout` seconds since `since` (None: never started)."""
    return since is not None and now - since > timeout


def ring_target(rank: int, size: int) -> int | None:
    """The group rank a node watches: the next one in the ring (None when alone)."""
    return (rank + 1) % size if size > 1 else None


def ring_after(target: int, me: int, size: int) -> int | None:
    """The node to watch once `target` was found lost (it watched the next): None when the ring
    is back at us."""
    nxt = (target + 1) % size
    return None if nxt == me else nxt


# -- leaving a round ---------------------------------------------------------------------------
def round_released(released: int, size: int) -> bool:
    """Whoever brings `R/released` to the round's size sets `R/done`."""
    return released >= size


def last_at_barrier(arrived: int, size: int) -> bool:
    """The node that brings `R/exit` to the round's size sets `R/exit_done`."""
    return arrived >= size


def store_host_stays(arrived: int, size: int) -> str | None:
    """Why the node hosting the store stays once its exit barrier timed out with `arrived` of
    `size` nodes finished (None when all did): leaving would pull the store from under the
    others (pytorch#118891), so it serves them as long as they run, whatever
    --exit-barrier-timeout says."""
    if arrived >= size:
        return None
    left = size - arrived
    return (
        f"this node hosts the rendezvous store: it keeps serving while the other {left} node(s) "
        "still run (their heartbeats say so), whatever --exit-barrier-timeout says; "
        "an rdzv-server (`elaunch rdzv-server`) would let it go"
    )


def goodbyes_expected(round_size: int | None, lost: int) -> int:
    """How many goodbyes the store's host waits for: its round's nodes that were not lost (1,
    itself, when it never completed a round)."""
    return round_size - lost if round_size is not None else 1


__all__ = [
    "BeatSeen",
    "Group",
    "LastCall",
    "NodeRecord",
    "Placement",
    "Round",
    "claims_finaliser",
    "decode_group",
    "enough_joined",
    "final_doc",
    "final_payload",
    "finaliser_unclaimed_since",
    "goodbyes_expected",
    "heartbeat_stale",
    "id_set",
    "join_timeout_reason",
    "lapse_notice",
    "lapse_reported_lost",
    "last_at_barrier",
    "last_call",
    "last_call_after_count",
    "last_call_needed",
    "live_records",
    "lost_ids",
    "lost_line",
    "lost_nodes",
    "marks_arrival",
    "no_room_reason",
    "node_label",
    "order_nodes",
    "overdue",
    "placement",
    "previous_round_must_end",
    "record_line",
    "ring_after",
    "ring_target",
    "round_is_full",
    "round_released",
    "round_to_join",
    "store_host_stays",
    "strict_ranks_reason",
    "survivors",
]
