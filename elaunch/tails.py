"""The last lines each worker printed, kept to explain a failure: traceback and context.

A sink on the bus; the agent asks it for a worker's traceback (from stderr, no `@record`
needed) and last lines when it builds a `WorkerFailure`. Also reads torch's error file.
"""

from __future__ import annotations

import re
from collections import deque

from elaunch.events import Event, WorkerOutput

TAIL_LINES = 400
LAST_LINES = 12
_RANK_PREFIX = re.compile(r"^\[rank\d+\]: ?")
"""torch.distributed's excepthook prefixes every traceback line with `[rankN]: ` once a process
group exists (distributed_c10d.py), so a DDP worker's traceback starts `[rank0]: Traceback ...`."""


class OutputTails:
    """Keeps the last `TAIL_LINES` lines of each local rank's stderr and of its combined output."""

    def __init__(self) -> None:
        self._err: dict[int, deque[bytes]] = {}
        self._all: dict[int, deque[bytes]] = {}

    def reset(self) -> None:
        self._err.clear()
        self._all.clear()

    def handle(self, event: Event) -> None:
        if not isinstance(event, WorkerOutput):
            return
        lines = event.data.splitlines()
        if len(lines) > TAIL_LINES:
            lines = lines[-TAIL_LINES:]
        self._all.setdefault(event.local_rank, deque(maxlen=TAIL_LINES)).extend(lines)
        if event.stream == 2:
            self._err.setdefault(event.local_rank, deque(maxlen=TAIL_LINES)).extend(lines)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def last_lines(self, local_rank: int, n: int = LAST_LINES) -> tuple[str, ...]:
        lines = list(self._all.get(local_rank, ()))[-n:]
        return tuple(x.decode(errors="replace") for x in lines)

    def traceback(self, local_rank: int) -> str | None:
        lines = [_RANK_PREFIX.sub("", x.decode(errors="replace")) for x in self._err.get(local_rank, ())]
        return extract_traceback(lines)


def extract_traceback(lines: list[str]) -> str | None:
    """The last Python traceback in `lines`, through its exception line(s), or None."""
    start = None
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("Traceback (most recent call last):"):
            start = i
            break
    if start is None:
        return None
    # Chained exceptions: include the earlier tracebacks joined by "During handling..." lines.
    while start >= 2:
        prev = lines[start - 2]
        if prev.startswith(("During handling of the above exception", "The above exception was the direct cause")):
            j = start - 3
            while j >= 0 and not lines[j].startswith("Traceback (most recent call last):"):
                j -= 1
            if j < 0:
                break
            start = j
        else:
            break
    out = [lines[start]]
    i = start + 1
    chain = ("During handling of the above exception", "The above exception was the direct cause")
    while i < len(lines):
        line = lines[i]
        i += 1
        out.append(line)
        if line.startswith((" ", "\t", "Traceback (most recent call last):", *chain)) or not line.strip():
            continue
        # The exception line: go on only if another traceback of the chain follows.
        if i + 1 < len(lines) and not lines[i].strip() and lines[i + 1].startswith(chain):
            continue
        break
    return "\n".join(out).rstrip()


def read_error_file(path: str) -> tuple[str | None, str | None]:
    """(message, traceback) from torch's `@record` error file, or (None, None)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            import json  # only when a worker left an error file

            data = json.load(f)
    except (OSError, ValueError):
        return None, None
    msg = data.get("message") if isinstance(data, dict) else None
    if isinstance(msg, dict):
        extra = msg.get("extraInfo") or {}
        tb = extra.get("py_callstack") if isinstance(extra, dict) else None
        return (str(msg.get("message")) if msg.get("message") else None), (str(tb).rstrip() if tb else None)
    if isinstance(msg, str):
        return msg, None
    return None, None
