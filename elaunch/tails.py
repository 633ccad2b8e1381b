"""What explains a worker's end: the last lines it printed, its traceback and torch's error file.

Kept at the process edge (workers.py feeds each worker's `OutputTail` as it reads the pipes) so
that an `Exit` reaches the agent already explained; no `@record` is needed for a traceback.
"""

from __future__ import annotations

import re
from collections import deque

from elaunch.values import Value, value

TAIL_LINES = 400
LAST_LINES = 12
_RANK_PREFIX = re.compile(r"^\[rank\d+\]: ?")
"""torch.distributed's excepthook prefixes every traceback line with `[rankN]: ` once a process
group exists (distributed_c10d.py), so a DDP worker's traceback starts `[rank0]: Traceback ...`."""


@value
class Explanation(Value):
    """Why a worker ended as it did, in its own words: torch's error file first, else its output."""

    traceback: str | None = None
    error_message: str | None = None
    """The error file's message (`Type: msg`), when the worker wrote one."""
    last_lines: tuple[str, ...] = ()


class OutputTail:
    """The last `TAIL_LINES` lines of one worker's stderr and of its combined output."""

    def __init__(self) -> None:
        self._err: deque[bytes] = deque(maxlen=TAIL_LINES)
        self._all: deque[bytes] = deque(maxlen=TAIL_LINES)

    def feed(self, stream: int, data: bytes) -> None:
        """Whole lines `data` (one or more, newline-terminated) read from `stream` (1 or 2)."""
        lines = data.splitlines()
        if len(lines) > TAIL_LINES:
            lines = lines[-TAIL_LINES:]
        self._all.extend(lines)
        if stream == 2:
            self._err.extend(lines)

    def last_lines(self, n: int = LAST_LINES) -> tuple[str, ...]:
        return tuple(x.decode(errors="replace") for x in list(self._all)[-n:])

    def traceback(self) -> str | None:
        return extract_traceback([_RANK_PREFIX.sub("", x.decode(errors="replace")) for x in self._err])

    def explain(self, error_file: str | None) -> Explanation:
        """The error file's message and traceback when there is one, else the traceback on stderr."""
        message, tb = read_error_file(error_file) if error_file else (None, None)
        return Explanation(traceback=tb or self.traceback(), error_message=message, last_lines=self.last_lines())


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
