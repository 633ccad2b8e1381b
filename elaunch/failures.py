"""How a worker failure is told, written once: one line, a cross-node summary, the report block."""

from __future__ import annotations

import time

from elaunch.spec import WorkerFailure
from elaunch.tails import clip_text

OOM_HINT = " (the kernel's OOM killer is a common cause: check `dmesg`)"


def clock_text(ts: float) -> str:
    """Wall-clock seconds -> local `HH:MM:SS.mmm` (the stamp of elaunch's lines)."""
    return time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int(ts * 1000) % 1000:03d}"


def how_it_ended(f: WorkerFailure) -> str:
    """`exited with code 1` / `was killed by SIGKILL`."""
    if f.signal is not None:
        return f"was killed by {f.signal_name}"
    return f"exited with code {f.exitcode}"


def cause_text(f: WorkerFailure) -> str:
    """`rank 3 (pid 123) exited with code 1` / `... was killed by SIGKILL`."""
    return f"rank {f.global_rank} (pid {f.pid}) {how_it_ended(f)}"


SUMMARY_CHARS = 16 * 1024
"""The most a failure summary published for other nodes (through the store) holds, in characters."""


def failure_summary(f: WorkerFailure) -> str:
    """A short text for other nodes' reports: host, rank, code or signal, and the traceback
    (head and tail kept within `SUMMARY_CHARS`: it goes through the rendezvous store)."""
    head = f"{f.host}: {cause_text(f)}"
    body = f.traceback or "\n".join(f.last_lines[-5:])
    return clip_text(f"{head}\n{body}" if body else head, SUMMARY_CHARS)


def failure_detail(f: WorkerFailure, indent: str = "  ") -> list[str]:
    """The root-cause block of the report, one string per line (not indented as a whole):
    who and how, when, the error file's message, then the traceback or else the last lines."""
    how = how_it_ended(f) + (OOM_HINT if f.signal == 9 else "")
    lines = [f"root cause: rank {f.global_rank} (local rank {f.local_rank}) on {f.host}, pid {f.pid}, {how}"]
    lines.append(f"{indent}at {clock_text(f.timestamp)}, restart {f.restart}")
    if f.error_message:
        lines.append(f"{indent}error: {f.error_message}")
    if f.traceback:
        lines.append(f"{indent}traceback:")
        lines += [indent * 2 + x for x in f.traceback.splitlines()]
    elif f.last_lines:
        lines.append(f"{indent}last lines:")
        lines += [indent * 2 + x for x in f.last_lines]
    return lines
