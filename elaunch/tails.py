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
LINE_BYTES = 4096
"""A kept line longer than this keeps its head and its tail around a `[... N bytes cut ...]` marker."""
TAIL_BYTES = 256 * 1024
"""What one tail (a worker's stderr, or its combined output) keeps at most, in bytes."""
TEXT_CHARS = 64 * 1024
"""A traceback or error message kept for the report, the summary and the store, in characters."""
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


def clip_line(line: bytes, limit: int = LINE_BYTES) -> bytes:
    """`line` if it is at most `limit` bytes, else its head and tail around a marker saying how
    much was cut (the result is at most `limit` + the marker's ~30 bytes)."""
    if len(line) <= limit:
        return line
    half = limit // 2
    return line[:half] + b" [... %d bytes cut ...] " % (len(line) - 2 * half) + line[-half:]


def clip_text(text: str, limit: int = TEXT_CHARS) -> str:
    """`clip_line` for text: head and tail of `text` around a marker, at most `limit` characters
    plus the marker. Used for everything a failure carries to the report, summary and store."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[... {len(text) - 2 * half} characters cut ...]\n{text[-half:]}"


class _Lines:
    """The last lines of a stream, bounded in count (`TAIL_LINES`) and bytes (`TAIL_BYTES`)."""

    __slots__ = ("lines", "size")

    def __init__(self) -> None:
        self.lines: deque[bytes] = deque()
        self.size = 0

    def extend(self, lines: list[bytes]) -> None:
        q = self.lines
        for line in lines:
            q.append(line)
            self.size += len(line)
        while q and (len(q) > TAIL_LINES or self.size > TAIL_BYTES):
            self.size -= len(q.popleft())


class OutputTail:
    """The last lines of one worker's stderr and of its combined output: at most `TAIL_LINES`
    lines and `TAIL_BYTES` bytes each, every line clipped to `LINE_BYTES` (head and tail kept),
    so that what the agent keeps does not grow with what the worker prints."""

    def __init__(self) -> None:
        self._err = _Lines()
        self._all = _Lines()

    def feed(self, stream: int, data: bytes) -> None:
        """Whole lines `data` (one or more, newline-terminated) read from `stream` (1 or 2)."""
        lines = data.splitlines()
        if len(lines) > TAIL_LINES:
            lines = lines[-TAIL_LINES:]
        lines = [clip_line(x) for x in lines]
        self._all.extend(lines)
        if stream == 2:
            self._err.extend(lines)

    def last_lines(self, n: int = LAST_LINES) -> tuple[str, ...]:
        return tuple(x.decode(errors="replace") for x in list(self._all.lines)[-n:])

    def traceback(self) -> str | None:
        return extract_traceback([_RANK_PREFIX.sub("", x.decode(errors="replace")) for x in self._err.lines])

    def explain(self, error_file: str | None) -> Explanation:
        """The error file's message and traceback when there is one, else the traceback on stderr;
        each text clipped to `TEXT_CHARS` (head and tail kept)."""
        message, tb = read_error_file(error_file) if error_file else (None, None)
        tb = tb or self.traceback()
        return Explanation(
            traceback=clip_text(tb) if tb else None,
            error_message=clip_text(message) if message else None,
            last_lines=self.last_lines(),
        )


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


ERROR_FILE_CHARS = 16 << 20
"""An error file larger than this is not parsed (the agent's memory stays bounded)."""


def read_error_file(path: str) -> tuple[str | None, str | None]:
    """(message, traceback) from torch's `@record` error file, or (None, None)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            import json  # only when a worker left an error file

            text = f.read(ERROR_FILE_CHARS + 1)
            if len(text) > ERROR_FILE_CHARS:
                return f"(error file {path} is larger than {ERROR_FILE_CHARS} characters: not read)", None
            data = json.loads(text)
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
