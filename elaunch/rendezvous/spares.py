"""Hot spares (`--standby K`): nodes beyond MAX that stand by, heartbeat, and take the group rank
of an active node that is lost or gives up (docs/rendezvous.md "Hot spares").

Standing by itself is the protocol's (`DynamicRendezvous._standby`: a node that finds the
running round full waits until a slot of it is released). This module adds what makes such a
node a *spare*: it announces itself in `P/spares` (one line `+<id> <host>` when it starts
standing by, `-<id> <host>` when it stops), beats while it waits, and, with `--standby`, the
survivors of a round keep their group ranks in the next one, so the spare fills exactly the
rank of the node it replaces. The rules are the pure functions below.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

from elaunch.rendezvous.keys import Keys
from elaunch.rendezvous.rounds import NodeRecord
from elaunch.rendezvous.store import Store
from elaunch.values import replace


# -- pure ------------------------------------------------------------------------------------------
def spare_line(node_id: str, host: str, standing_by: bool) -> str:
    """One line of `P/spares`: `+<id> <host>` (standing by) or `-<id> <host>` (no longer)."""
    return f"{'+' if standing_by else '-'}{node_id} {host}\n"


def spare_hosts(raw: bytes, in_group: Collection[str]) -> tuple[str, ...]:
    """Hosts standing by now, in the order they first stood by: each id's last line is `+`, and
    it is not in the running group (`in_group`: its node ids)."""
    last: dict[str, tuple[bool, str]] = {}
    for line in raw.decode(errors="replace").splitlines():
        if len(line) < 2 or line[0] not in "+-":
            continue
        node_id, _, host = line[1:].partition(" ")
        last[node_id] = (line[0] == "+", host)
    return tuple(host for nid, (on, host) in last.items() if on and nid not in in_group)


def keep_group_ranks(records: Sequence[NodeRecord], previous: Sequence[NodeRecord]) -> list[NodeRecord]:
    """The records with each survivor of the previous group asking for its previous group rank
    (unless it asked for one itself, `--node-rank`), so that `order_nodes` keeps every survivor in
    place and a spare fills the rank of the node it replaces. Same order and ids as `records`."""
    before = {r.id: rank for rank, r in enumerate(previous)}
    out = []
    for r in records:
        rank = before.get(r.id)
        if r.info.node_rank is None and rank is not None:
            r = r._replace(info=replace(r.info, node_rank=rank))
        out.append(r)
    return out


def as_published(ordered: Sequence[NodeRecord], records: Sequence[NodeRecord]) -> list[NodeRecord]:
    """`ordered` (from `keep_group_ranks` records) with each node's own record again, so that the
    rank preferences added for ordering are not published as if the nodes had asked for them."""
    own = {r.id: r for r in records}
    return [own[r.id] for r in ordered]


# -- store I/O -------------------------------------------------------------------------------------
def announce(st: Store, keys: Keys, node_id: str, host: str, standing_by: bool) -> None:
    """Say in `P/spares` that this node stands by (or no longer does): one `append`."""
    st.append(keys.spares, spare_line(node_id, host, standing_by))


def read_spares(st: Store, keys: Keys, in_group: Callable[[], Collection[str]]) -> tuple[str, ...]:
    """Hosts standing by (`spare_hosts`): 1 operation when there are none, else 2.

    `in_group` gives the ids of the current round's nodes; it is called only when some node ever
    stood by: every node reads this each beat, and an O(N) set per beat on each of N nodes made
    a 2,048-node round several times slower (the nodes done early starve the others of CPU)."""
    if not st.check([keys.spares]):
        return ()
    return spare_hosts(st.get(keys.spares), in_group())


__all__ = ["announce", "as_published", "keep_group_ranks", "read_spares", "spare_hosts", "spare_line"]
