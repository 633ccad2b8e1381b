"""How a worker failure is told, written once: one line, a cross-node summary, the report block."""

from __future__ import annotations

import time

from elaunch.kinds import Kind, kind_of
from elaunch.spec import WorkerFailure
from elaunch.tails import clip_text

OOM_HINT = " (the kernel's OOM killer is a common cause: check `dmesg`)"


def clock_text(ts: float) -> str:
    """Wall-clock seconds -> local `HH:MM:SS.mmm` (the stamp of elaunch's lines)."""
    return time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int(ts * 1000) % 1000:03d}"


NODE_LOST_NOTE = "it is gone from the job: its heartbeat stopped (its agent or its machine died) or it left"


def node_lost_failure(label: str, timestamp: float, role: str, restart: int) -> WorkerFailure:
    """A lost node as a failure (kind `node_lost`), recorded by the nodes that survive it: `label`
    is the node as reports name it (`host (group rank R)`), `timestamp` when its loss was first
    felt (its peers' first connection error, wall-clock seconds). It has no rank (-1) and no pid (0)."""
    return WorkerFailure(
        local_rank=-1,
        global_rank=-1,
        role=role,
        host=label,
        pid=0,
        exitcode=None,
        signal=None,
        timestamp=timestamp,
        restart=restart,
        kind=Kind.NODE_LOST,
        note=NODE_LOST_NOTE,
    )


def how_it_ended(f: WorkerFailure) -> str:
    """`exited with code 1` / `was killed by SIGKILL` / `hung` / `was lost`."""
    if f.kind == Kind.HANG:
        return "hung"
    if f.kind == Kind.NODE_LOST:
        return "was lost"
    if f.signal is not None:
        return f"was killed by {f.signal_name}"
    return f"exited with code {f.exitcode}"


def cause_text(f: WorkerFailure) -> str:
    """`rank 3 (pid 123) exited with code 1` / `... was killed by SIGKILL` / `node h (group rank 1) was lost`."""
    if f.kind == Kind.NODE_LOST:
        return f"node {f.host} was lost"
    return f"rank {f.global_rank} (pid {f.pid}) {how_it_ended(f)}"


SUMMARY_CHARS = 16 * 1024
"""The most a failure summary published for other nodes (through the store) holds, in characters."""


def kind_text(f: WorkerFailure) -> str:
    """`exception ValueError, restartable` / `startup_error ModuleNotFoundError, not restartable`."""
    what = f"{f.kind.value} {f.exception}" if f.exception else f.kind.value
    return f"{what}, {'restartable' if f.restartable else 'not restartable'}"


def failure_text(f: WorkerFailure) -> str:
    """A short text for other nodes' reports: host, rank, code or signal, and the traceback
    (head and tail kept within `SUMMARY_CHARS`: it goes through the rendezvous store)."""
    head = cause_text(f) if f.kind == Kind.NODE_LOST else f"{f.host}: {cause_text(f)}"
    body = f.traceback or "\n".join(f.last_lines[-5:])
    return clip_text(f"{head}\n{body}" if body else head, SUMMARY_CHARS)


PUBLISHED = "elaunch.failure/1"
PUBLISHED_CHARS = 4 * SUMMARY_CHARS + 4096
"""The most a published failure record holds: its text, traceback, error message and note, each
within `SUMMARY_CHARS`, and the small fields. Records read back are clipped to this (an older or
foreign writer), so a well-formed one is never cut."""
_FIELDS = ("local_rank", "global_rank", "role", "host", "pid", "exitcode", "signal", "timestamp", "restart",
           "traceback", "error_message", "exception", "note")  # fmt: skip


def failure_summary(f: WorkerFailure) -> str:
    """What a node publishes for the others (`Rendezvous.publish_failure`): JSON with the text of
    `failure_text` and the failure itself, so that every node chooses the same root cause."""
    import json  # only when a node fails

    record = {name: getattr(f, name) for name in _FIELDS}
    for name in ("traceback", "error_message", "note"):  # bounded: the record goes through the store
        if record[name]:
            record[name] = clip_text(record[name], SUMMARY_CHARS)
    record.update(kind=f.kind.value, last_lines=list(f.last_lines[-5:]), repeated=f.repeated)
    return json.dumps({"schema": PUBLISHED, "text": failure_text(f), "failure": record})


def remote_failure(published: str) -> tuple[str, WorkerFailure | None]:
    """A published failure -> (its text, the failure); a plain text (an older elaunch) -> (text, None)."""
    import json

    try:
        doc = json.loads(published)
        if not isinstance(doc, dict) or doc.get("schema") != PUBLISHED:
            return published, None
        r = doc["failure"]
        f = WorkerFailure(
            **{name: r.get(name) for name in _FIELDS},
            last_lines=tuple(r.get("last_lines") or ()),
            kind=kind_of(r.get("kind")),
            repeated=bool(r.get("repeated")),
        )
        return str(doc.get("text", "")), f
    except (ValueError, KeyError, TypeError):
        return published, None


def failure_detail(f: WorkerFailure, indent: str = "  ") -> list[str]:
    """The root-cause block of the report, one string per line (not indented as a whole):
    who and how, when, the error file's message, then the traceback or else the last lines."""
    how = how_it_ended(f) + (OOM_HINT if f.signal == 9 and f.kind != Kind.OOM else "")
    if f.kind == Kind.NODE_LOST:
        lines = [f"root cause: node {f.host} was lost"]
    else:
        lines = [f"root cause: rank {f.global_rank} (local rank {f.local_rank}) on {f.host}, pid {f.pid}, {how}"]
    lines.append(f"{indent}at {clock_text(f.timestamp)}, restart {f.restart}")
    lines.append(f"{indent}kind: {kind_text(f)}")
    if f.note:
        lines.append(f"{indent}{f.note}")
    if f.error_message:
        lines.append(f"{indent}error: {f.error_message}")
    if f.traceback and f.kind == Kind.HANG:
        lines.append(f"{indent}last line: {f.last_lines[-1] if f.last_lines else '(none)'}")
        lines.append(f"{indent}stack:")
        lines += [indent * 2 + x for x in f.traceback.splitlines()]
    elif f.traceback:
        lines.append(f"{indent}traceback:")
        lines += [indent * 2 + x for x in f.traceback.splitlines()]
    elif f.last_lines:
        lines.append(f"{indent}last lines:")
        lines += [indent * 2 + x for x in f.last_lines]
    return lines
