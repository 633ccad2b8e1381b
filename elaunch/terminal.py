"""Workers on a terminal: a pty per worker stream, and a terminal emulator per stream to read it.

Under torchrun a worker writes straight to the user's terminal, so rich draws its live progress
and tqdm its nested bars. elaunch reads the workers' output to prefix it, so on a terminal each
worker stream gets a pty of its own (`PtyPlan`, `open_pty`): the worker sees a terminal of the
user's size, minus the prefix, and draws as under torchrun. What it draws is then read back as a
terminal would show it: `StreamDecoder` splits plain output into lines (`logs.LineBuffer`, the
fast path) until the first cursor-control escape, then hands the stream to a `TerminalBuffer`, a
pyte screen (imported then, only then) that turns cursor movements into finished lines and the
rows still being redrawn (the bars). Files never see any of this: they get the bytes (logfiles.py).

Which rows are finished: a program that redraws moves the cursor up at most so many rows (its
*reach*: rich's live area, tqdm's nested bars) from where it rests; rows further up are final and
leave the screen as lines, the rest are the bars. A program that stops redrawing for `REACH_TTL`
seconds is treated as a line printer again.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import struct
import termios
from typing import Any

from elaunch.config import StdSpec
from elaunch.logs import LineBuffer
from elaunch.values import Value, field, value

CURSOR_CONTROL = re.compile(rb"\x1b(?:\[[0-9;?]*[ABCDEFGHJKSTdf]|[78M])")
"""Escapes that move the cursor or erase (CSI A-H, J, K, S, T, d, f; ESC 7, 8, M): a stream that
sends one is drawing, and is read with a terminal emulator from then on. Colours (SGR) are not."""

CURSOR_UP = re.compile(rb"\x1b(?:\[[0-9;]*[AFHdf]|[8M])")
"""Escapes that may move the cursor up: a program sending one may come back up a row after a newline."""

COLUMNS = 4000
"""The emulator's width: wide enough that plain lines are not wrapped into several (the worker
draws to the width its pty reports, not to this)."""

REACH_TTL = 5.0
"""Seconds without a redraw after which the rows above the cursor are final again."""

MAX_BARS = 8
"""Rows of bars kept per stream (the lowest, nearest the cursor); more are dropped from the view."""


@value
class PtyPlan(Value):
    """Which worker streams get a pty, and its size: stream 1 (2) when elaunch's stdout (stderr) is a
    terminal and the stream is not only redirected to a file (-r without -t; torchrun's workers then
    write to the file, not to the terminal)."""

    streams: int = 0
    """Bit 1: stdout, bit 2: stderr (as StdSpec)."""
    columns: int = 80
    lines: int = 24
    redirects: StdSpec = field(default_factory=StdSpec)
    tee: StdSpec = field(default_factory=StdSpec)

    def wants(self, local_rank: int, stream: int) -> bool:
        if not self.streams & stream:
            return False
        return not (self.redirects.for_rank(local_rank) & stream) or bool(self.tee.for_rank(local_rank) & stream)


def pty_plan(stdout: Any, stderr: Any, redirects: StdSpec, tee: StdSpec, margin: int) -> PtyPlan | None:
    """The plan for this process's own `stdout`/`stderr` (None when neither is a terminal). The pty's
    width is the terminal's less `margin` columns (the rank prefix)."""
    streams = 0
    size = None
    for bit, f in ((1, stdout), (2, stderr)):
        try:
            fd = f.fileno()
            if os.isatty(fd):
                streams |= bit
                size = size or os.get_terminal_size(fd)
        except (AttributeError, OSError, ValueError):
            continue
    if not streams or size is None:
        return None
    return PtyPlan(
        streams=streams,
        columns=max(20, size.columns - margin),
        lines=max(5, size.lines),
        redirects=redirects,
        tee=tee,
    )


def open_pty(columns: int, lines: int) -> tuple[int, int]:
    """(master, slave) of a new pty of that size whose output is passed on untouched (no `\\n` ->
    `\\r\\n`: the bytes read are the bytes written) and that does not echo. Raises OSError."""
    master, slave = os.openpty()
    try:
        attrs = termios.tcgetattr(slave)
        attrs[1] &= ~termios.OPOST  # oflag
        attrs[3] &= ~(termios.ECHO | termios.ICANON)  # lflag
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
    except OSError:
        os.close(master)
        os.close(slave)
        raise
    return master, slave


@contextlib.contextmanager
def terminal_restored(fd: int = 0) -> Any:
    """Put the terminal on `fd` back as it was on leaving: a worker killed inside `input()` (readline,
    pdb) leaves it without echo otherwise. Nothing happens when `fd` is not a terminal."""
    try:
        saved = termios.tcgetattr(fd)
    except (termios.error, OSError):
        saved = None
    try:
        yield
    finally:
        if saved is not None:
            with contextlib.suppress(termios.error, OSError):
                termios.tcsetattr(fd, termios.TCSADRAIN, saved)


Decoded = tuple[bytes, bytes | None, bytes | None]
"""What a read (or the passing of time) made of a stream: (complete lines, b"" or ending in b"\\n";
the current bars, None: unchanged, b"": cleared; a prompt to show, None: none). A tuple: it is
made for every read of every worker."""

PARTIAL_IDLE = 0.15
"""Seconds an unfinished line waits for its end before it is shown as it is (a prompt)."""


class StreamDecoder:
    """One worker stream -> complete lines, the current bars, and a prompt left waiting.

    Plain text goes through `LineBuffer` (bytes as written, `\\r` redraws collapsed); from the first
    cursor-control escape on, through a `TerminalBuffer`. `feed` and `tick` return `Decoded`. An
    unfinished line that is not a bar is passed on as `partial` once it has waited `PARTIAL_IDLE`
    seconds (`due` says when `tick` should be called), then at each change until it ends.
    """

    __slots__ = ("_changed_at", "_last", "_lines", "_open", "_screen", "_seen", "missing_emulator")

    def __init__(self) -> None:
        self._lines: LineBuffer | None = LineBuffer()
        self._screen: TerminalBuffer | None = None
        self._last = b""
        """The last bytes fed, for the row above the cursor when the emulator takes over."""
        self._seen = b""
        """The unfinished line after the last feed, and when it last changed."""
        self._changed_at = 0.0
        self._open: bytes | None = None
        """The unfinished line as last passed on (shown), until it ends."""
        self.missing_emulator = False
        """The stream draws but pyte is not installed: its escape codes are passed on."""

    @property
    def emulated(self) -> bool:
        return self._screen is not None

    def feed(self, data: bytes, now: float) -> Decoded:
        lb = self._lines
        if lb is not None and (self.missing_emulator or not self._draws(data) or not self._switch(data)):
            # The line above, should the emulator take over: a reference to a big read (no copy).
            self._last = data if len(data) >= 512 else self._last[-512:] + data
            lines, bars = lb.feed(data)
            pending = lb.pending()
        elif self._screen is not None and self._screen.idle() and b"\x1b" not in data and b"\r" not in data:
            # Nothing drawn is left on the screen: plain lines again, at the fast path's speed (pyte
            # reads about 0.3 MB/s).
            self._screen, lb = None, LineBuffer()
            self._lines, self._last = lb, data
            lines, bars = lb.feed(data)
            pending = lb.pending()
        else:
            assert self._screen is not None
            lines, bars = self._screen.feed(data, now)
            pending = self._screen.pending()
        partial = None
        if lines:
            self._open = None  # the line that was shown ended (its bytes are in `lines`)
        if pending != self._seen:
            self._seen, self._changed_at = pending, now
            if self._open is not None and pending:
                self._open = partial = pending  # shown already: each change at once
        return lines, bars, partial

    def _draws(self, data: bytes) -> bool:
        last = self._last
        if last.find(b"\x1b", len(last) - 16) >= 0:  # an escape may have been cut between reads
            data = last[-16:] + data
        elif b"\x1b" not in data:
            return False
        return CURSOR_CONTROL.search(data) is not None

    def _switch(self, data: bytes) -> bool:
        """Hand the stream to a terminal emulator; False when pyte is not installed (then its
        lines pass on as written, escape codes included, as before the emulator existed)."""
        assert self._lines is not None
        try:
            screen = TerminalBuffer(reach=1 if CURSOR_UP.search(self._last[-16:] + data) else 0)
        except ImportError:
            self.missing_emulator = True
            return False
        partial = self._lines.take_partial()
        self._lines = None
        self._screen = screen
        done = self._last[: len(self._last) - len(partial)] if len(partial) < len(self._last) else b""
        if done.endswith(b"\n"):  # the line above, already passed on: the screen needs it
            screen.seed(done[:-1].rsplit(b"\n", 1)[-1])
        screen.start(partial)
        return True

    def due(self) -> float | None:
        """When `tick` has something to do (monotonic seconds), or None."""
        times = []
        if self._seen and self._seen != self._open:
            times.append(self._changed_at + PARTIAL_IDLE)
        if self._screen is not None and self._screen.expires is not None:
            times.append(self._screen.expires)
        return min(times, default=None)

    def tick(self, now: float) -> Decoded:
        """What time alone makes ready: a prompt idle long enough, rows that stopped being redrawn."""
        lines, bars = (self._screen.expire(now)) if self._screen is not None else (b"", None)
        partial = None
        if lines:
            self._open = None
        pending = self.pending()
        if pending != self._seen:
            self._seen, self._changed_at = pending, now
        if pending and pending != self._open and now >= self._changed_at + PARTIAL_IDLE:
            self._open = partial = pending
        return lines, bars, partial

    def pending(self) -> bytes:
        """The unfinished line when it is not a bar, else b""."""
        if self._lines is not None:
            return self._lines.pending()
        assert self._screen is not None
        return self._screen.pending()

    def flush(self) -> bytes:
        """What is left, as newline-terminated lines, at the end of the stream."""
        self._open = None
        self._seen = b""
        if self._lines is not None:
            return self._lines.flush()
        assert self._screen is not None
        return self._screen.flush()


def _make_screen(columns: int, lines: int) -> Any:
    import pyte  # only for a worker that draws (see module docstring)

    class Screen(pyte.Screen):
        """A pyte screen that keeps the rows scrolled off its top (they are finished lines)."""

        def __init__(self, columns: int, lines: int) -> None:
            super().__init__(columns, lines)
            self.scrolled: list[str] = []
            self.beyond_top = 0
            self.set_mode(pyte.modes.LNM)  # "\n" is CR LF, as a terminal's ONLCR makes it

        def index(self) -> None:
            top, bottom = self.margins or pyte.screens.Margins(0, self.lines - 1)
            if self.cursor.y == bottom and top == 0:
                self.scrolled.append(row_text(self.buffer, 0))
            super().index()

        def cursor_up(self, count: int | None = None) -> None:
            # Rows the program moves up to that already left as lines: it redraws further up
            # than was known; the reach grows by that much (the lines left are stale, once).
            self.beyond_top = max(self.beyond_top, (count or 1) - self.cursor.y)
            super().cursor_up(count)

        def cursor_up1(self, count: int | None = None) -> None:
            self.beyond_top = max(self.beyond_top, (count or 1) - self.cursor.y)
            super().cursor_up1(count)

    return Screen(columns, lines)


def row_text(buffer: Any, y: int) -> str:
    """The text of screen row `y`, without trailing blanks."""
    if y not in buffer:
        return ""
    row = buffer[y]
    if not row:
        return ""
    return "".join(row[x].data for x in range(max(row) + 1)).rstrip()


class TerminalBuffer:
    """A worker stream as a terminal shows it (a pyte screen): finished lines and the current bars.

    After each `feed`, rows above the redrawn area (see the module docstring) leave the screen as
    lines; what remains, up to the last row with text, is the bars. Colours are not kept.
    """

    def __init__(self, columns: int = COLUMNS, lines: int = 200, reach: int = 0) -> None:
        """`reach`: rows the program is known to move back up (1 for a program that just sent its
        first cursor-control escape: a newline it sends may be followed by a move back up);
        redraws raise it."""
        import pyte

        self._screen = _make_screen(columns, lines)
        self._stream = pyte.ByteStream(self._screen)
        self._reach = reach
        self._redrawn_at: float | None = None
        self._drawing = False
        """The rows left are a redrawn area (bars), not a plain unfinished line."""
        self._bars_shown = False
        self._seed: str | None = None
        self._low = 0
        """The lowest row the cursor rested on (after a read) since the rows above it were cut."""

    def seed(self, line: bytes) -> None:
        """Put `line`, already passed on as a finished line, above the cursor: a program that
        starts drawing may move up to it. It is passed on again only if it is redrawn."""
        self._stream.feed(line + b"\n")
        self._seed = row_text(self._screen.buffer, 0)

    def start(self, partial: bytes) -> None:
        """The unfinished line the stream had before it started drawing."""
        self._stream.feed(partial)

    @property
    def expires(self) -> float | None:
        """When the rows above the cursor become final if nothing is redrawn (monotonic), or None."""
        return self._redrawn_at + REACH_TTL if self._reach and self._redrawn_at is not None else None

    def expire(self, now: float) -> tuple[bytes, bytes | None]:
        """Nothing was redrawn for REACH_TTL: the rows above the cursor are finished lines."""
        if self.expires is None or now < self.expires:
            return b"", None
        self._reach = 0
        return self.feed(b"", now)

    def feed(self, data: bytes, now: float) -> tuple[bytes, bytes | None]:
        s = self._screen
        self._low = max(self._low, s.cursor.y)
        s.dirty.clear()
        s.scrolled.clear()
        s.beyond_top = 0
        self._stream.feed(data)
        if self._redrawn_at is None:
            self._redrawn_at = now
        top = min(min(s.dirty, default=s.cursor.y), s.cursor.y)
        if b"\r" in data or self._reach:
            self._drawing = True  # the rows left are redrawn bars, not a line being written
        if not s.scrolled and self._low - top + s.beyond_top > 0:
            # Moved back up from where it rested (a redraw may come in several reads: from the lowest).
            self._reach = max(self._reach, self._low - top + s.beyond_top)
            self._redrawn_at = now
        self._low = max(self._low, s.cursor.y)
        finished = list(s.scrolled)
        # Rows more than `reach` above the cursor are final (the rows this read redrew are within
        # reach: it was raised above to cover them).
        cut = max(0, s.cursor.y - self._reach)
        if cut:
            finished += [row_text(s.buffer, y) for y in range(cut)]
            self._drop(cut)
        if self._seed is not None and finished:
            if finished[0] == self._seed:
                del finished[0]
            self._seed = None
        lines = "".join(line + "\n" for line in finished).encode(errors="replace")
        bars = self._rows()
        if not bars:
            cleared, self._bars_shown, self._drawing = self._bars_shown, False, False
            return lines, b"" if cleared else None  # b"": the bars were erased
        if not self._drawing:
            return lines, None
        self._bars_shown = True
        return lines, "\n".join(bars[-MAX_BARS:]).encode(errors="replace")

    def _rows(self) -> list[str]:
        s = self._screen
        last = max((y for y, row in s.buffer.items() if row), default=-1)
        texts = [row_text(s.buffer, y) for y in range(last + 1)]
        while texts and not texts[-1]:
            texts.pop()
        return [t for t in texts if t]

    def _drop(self, k: int) -> None:
        """Remove the top `k` rows; the rest move up (the cursor with them)."""
        s = self._screen
        kept = {y - k: row for y, row in s.buffer.items() if y >= k}
        s.buffer.clear()
        s.buffer.update(kept)
        s.cursor.y = max(0, s.cursor.y - k)
        self._low = max(0, self._low - k)
        s.dirty.clear()

    def idle(self) -> bool:
        """Nothing is drawn nor may be redrawn: the cursor at the start of an empty screen."""
        s = self._screen
        return self._reach == 0 and s.cursor.x == 0 and s.cursor.y == 0 and not self._rows()

    def pending(self) -> bytes:
        """The cursor's row when it is a plain unfinished line (no bars drawn), else b""."""
        if self._drawing:
            return b""
        return row_text(self._screen.buffer, self._screen.cursor.y).encode(errors="replace")

    def flush(self) -> bytes:
        """Every row left, as lines (the bars' final state), at the end of the stream."""
        rows = self._rows_all()
        self._drop(self._screen.lines)
        self._screen.cursor.x = 0
        self._drawing = False
        return "".join(r + "\n" for r in rows).encode(errors="replace")

    def _rows_all(self) -> list[str]:
        s = self._screen
        last = max((y for y, row in s.buffer.items() if row and row_text(s.buffer, y)), default=-1)
        return [row_text(s.buffer, y) for y in range(last + 1)]
