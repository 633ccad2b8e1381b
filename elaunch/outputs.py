"""Outputs that fail one at a time: each is reported once, dropped, and the others go on.

The console's two streams, the live view, the `--log-dir` files, the `--events-file` and the
`--summary-file` are independent outputs. A write that fails (a pipe whose reader left, a full
disk, a terminal that went away) must neither be ignored (`| head -1` must not let a job run on
for hours printing into nothing and exit 0) nor take the run down with a traceback. Here:

* `GuardedSink` wraps a sink: the first OSError/ValueError it raises (ValueError: a closed file)
  drops it; `GuardedStream` wraps a console stream the same way (the console still sees the
  error, so it stops writing there).
* `Outputs` reports each loss once, as an error `Message` on the bus (so on whatever still
  works), and decides (`output_lost`, pure) when the workers' output has nowhere left to go: a
  console stream is lost and no log files keep the output. Then it asks the agent to stop, as
  if SIGPIPE had been caught (`stop`): the job ends as STOPPED with exit code 141 (128+SIGPIPE,
  the code a shell gives a pipeline stage killed by a broken pipe), its summary written.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

from elaunch import events as ev

STOP_SIGNAL = int(signal.SIGPIPE)
"""The signal a job stopped for want of an output is reported as (exit code 141)."""

ERRORS = (OSError, ValueError)
"""What a failing output raises: OSError (EPIPE, ENOSPC, EIO...), ValueError (a closed file)."""


def why(e: BaseException) -> str:
    """`Broken pipe` / `No space left on device` / the message of a ValueError."""
    if isinstance(e, BrokenPipeError):
        return "broken pipe"
    if isinstance(e, OSError):
        return e.strerror or str(e) or type(e).__name__
    return str(e) or type(e).__name__


def output_lost(console_lost: bool, files_alive: bool) -> bool:
    """True when the workers' output has nowhere left to go: the console lost a stream (its
    stdout or stderr: some worker lines can no longer be shown) and no log files keep them."""
    return console_lost and not files_alive


class Outputs:
    """Which outputs still work; reports losses once and stops the job when nothing is left.

    `publish` reaches the sinks still alive (the bus); `stop` asks the agent to end the job
    (see `SignalTrap.interrupt`). Build the guards with `sink` and `stream`.
    """

    def __init__(self, publish: Callable[[ev.Event], None], stop: Callable[[int], None], *, files: bool) -> None:
        """`files`: -r/-t will keep the workers' output in files (alive until their sink fails)."""
        self._publish = publish
        self._stop = stop
        self._lost: list[str] = []
        self.console_lost = False
        self.files_alive = files
        self.stopped = False

    def sink(self, inner: Any, name: str, *, console: bool = False, files: bool = False) -> GuardedSink:
        return GuardedSink(inner, name, self, console=console, files=files)

    def stream(self, inner: Any, name: str) -> GuardedStream:
        return GuardedStream(inner, name, self)

    @property
    def lost(self) -> tuple[str, ...]:
        """Names of the outputs lost so far, in order."""
        return tuple(self._lost)

    def failed(self, name: str, e: BaseException, *, console: bool = False, files: bool = False) -> None:
        """Output `name` failed with `e`: report it once; stop the job if nothing carries the output."""
        if name in self._lost:
            return
        self._lost.append(name)
        self.console_lost = self.console_lost or console
        self.files_alive = self.files_alive and not files
        files_alive = self.files_alive
        if self.stopped or not output_lost(self.console_lost, files_alive):
            keep = "the log files keep the workers' output" if files_alive else "the other outputs go on"
            self._publish(ev.Message(level="error", text=f"output lost: {name}: {why(e)}; dropped, {keep}"))
            return
        self.stopped = True
        self._publish(
            ev.Message(
                level="error",
                text=f"output lost: {name}: {why(e)}; nothing can carry the workers' output any more (the "
                "console is gone and no --log-dir files keep it): stopping the job (exit code 141)",
            )
        )
        self._stop(STOP_SIGNAL)


class GuardedSink:
    """A sink that drops itself on its first failing write (see `Outputs.failed`)."""

    def __init__(self, inner: Any, name: str, outputs: Outputs, *, console: bool = False, files: bool = False) -> None:
        """`console`: it shows the workers' output (the console, the live view); `files`: it keeps it."""
        self.inner = inner
        self.name = name
        self._outputs = outputs
        self._console = console
        self._files = files
        self.dead = False

    def _guard(self, fn: Callable[[], None]) -> None:
        if self.dead:
            return
        try:
            fn()
        except ERRORS as e:
            self._failed(e)

    def _failed(self, e: BaseException) -> None:
        self.dead = True
        self._outputs.failed(self.name, e, console=self._console, files=self._files)

    def handle(self, e: ev.Event) -> None:
        if self.dead:
            return
        try:  # written out, not through _guard: this runs for every event (no closure per event)
            self.inner.handle(e)
        except ERRORS as err:
            self._failed(err)

    def flush(self) -> None:
        self._guard(self.inner.flush)

    def close(self) -> None:
        if self.dead:  # its files may hold unwritten data that fails again: close without a word
            try:
                self.inner.close()
            except ERRORS:
                pass
            return
        self._guard(self.inner.close)


class GuardedStream:
    """A binary stream of the console: a failing write or flush is reported (`Outputs.failed`)
    and re-raised, so that the console stops writing there."""

    def __init__(self, inner: Any, name: str, outputs: Outputs) -> None:
        self._inner = inner
        self.name = name
        self._outputs = outputs

    def write(self, data: bytes) -> int:
        try:
            return int(self._inner.write(data) or 0)
        except ERRORS as e:
            self._outputs.failed(self.name, e, console=True)
            raise

    def flush(self) -> None:
        try:
            self._inner.flush()
        except ERRORS as e:
            self._outputs.failed(self.name, e, console=True)
            raise

    def isatty(self) -> bool:
        try:
            return bool(self._inner.isatty())
        except ERRORS:
            return False

    def fileno(self) -> int:
        return int(self._inner.fileno())
