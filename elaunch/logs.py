"""Worker pipes -> whole lines. Pure byte handling: no line is lost, cut or duplicated.

A `LineBuffer` per stream keeps the partial last line between reads. Output is handed on as
chunks of complete lines so that the console writes each line in one piece. Carriage-return
updates (progress bars) are split off: the complete line keeps only its final state, and the
pending partial line is reported as progress so a view can redraw it in place.
"""

from __future__ import annotations

MAX_LINE = 1 << 20
"""A line longer than this without a newline is passed on in pieces of this size."""
COMPACT_AT = 1 << 12
"""An unfinished `\\r`-redrawn line longer than this keeps only what its redraws still show: a bar
redrawn 50 times a second would otherwise grow by 3 KB/s and be split whole at every redraw."""


class LineBuffer:
    """Accumulates bytes of one stream; returns complete lines and the latest progress text."""

    __slots__ = ("_partial",)

    def __init__(self) -> None:
        self._partial = b""

    def feed(self, data: bytes) -> tuple[bytes, bytes | None]:
        """Returns (complete lines ending in b"\\n", progress text or None)."""
        nl = data.rfind(b"\n")
        if nl < 0:
            self._partial += data
            if len(self._partial) > COMPACT_AT and b"\r" in data:
                self._partial = compact_cr(self._partial)
            if len(self._partial) >= MAX_LINE:
                out, self._partial = self._partial + b"\n", b""
                return collapse_cr(out), None
            return b"", self._progress()
        head = self._partial + data[: nl + 1] if self._partial else data[: nl + 1]
        self._partial = data[nl + 1 :]
        if b"\r" in head:
            head = collapse_cr(head)
        return head, self._progress()

    def pending(self) -> bytes:
        """The unfinished last line when it is not a `\\r`-redrawn bar (a prompt), else b""."""
        p = self._partial
        return b"" if b"\r" in p else p

    def take_partial(self) -> bytes:
        """The unfinished last line as received (a `\\r`-redrawn one compacted past COMPACT_AT),
        leaving the buffer empty (to hand the stream on)."""
        p, self._partial = self._partial, b""
        return p

    def _progress(self) -> bytes | None:
        p = self._partial
        if b"\r" not in p:
            return None
        return last_segment(p)

    def flush(self) -> bytes:
        """The unfinished last line, newline-terminated (at EOF), or b""."""
        if not self._partial:
            return b""
        out, self._partial = self._partial, b""
        return collapse_cr(out + b"\n")


def last_segment(text: bytes) -> bytes:
    """The text a terminal would show after `\\r` redraws: the last non-empty segment. Found from
    the end (a bar redrawn 50 times a second holds up to COMPACT_AT bytes of redraws: not split)."""
    end = len(text)
    while True:
        i = text.rfind(b"\r", 0, end)
        seg = text[i + 1 : end]
        if seg.strip():
            return seg
        if i < 0:
            return b""
        end = i


def compact_cr(line: bytes) -> bytes:
    """An unfinished line with `\r` redraws, shortened to `\r<last drawn segment>\r<tail>`: the
    same `last_segment` now and after anything appended to it."""
    i = line.rfind(b"\r")
    return b"\r" + last_segment(line[:i]) + line[i:]


def collapse_cr(lines: bytes) -> bytes:
    """Reduce every `\\r`-redrawn line to its final state; `\\r\\n` endings become `\\n`."""
    if b"\r" not in lines:
        return lines
    out = []
    for line in lines.split(b"\n")[:-1]:
        if b"\r" in line:
            line = last_segment(line)
        out.append(line)
    return b"\n".join(out) + b"\n"


def prefix_lines(data: bytes, prefix: bytes) -> bytes:
    """Put `prefix` before every line of `data` (complete lines): a C-speed replace, not a loop."""
    if not prefix:
        return data
    return prefix + data[:-1].replace(b"\n", b"\n" + prefix) + b"\n"
