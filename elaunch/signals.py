"""Signals as events: handlers only record, a wake-up fd makes the agent's select return."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterable, Iterator
from types import FrameType


class SelfPipe:
    """A non-blocking pipe that makes a selector return: `poke()` from any thread, `drain()` in the loop.

    A pipe rather than a socket pair: same behaviour, and the agent never imports `socket` on one node.
    """

    def __init__(self) -> None:
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def fileno(self) -> int:
        return self.r

    def poke(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):  # full: a wake-up is pending anyway
            os.write(self.w, b"x")

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while os.read(self.r, 4096):
                pass

    def close(self) -> None:
        for fd in (self.r, self.w):
            with contextlib.suppress(OSError):
                os.close(fd)


class Interrupted(Exception):
    """Raised by a `SignalTrap` handler inside `interruptible()`: a shutdown signal ended a blocking call."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal_name(signum))
        self.signum = signum


class SignalTrap:
    """Catches `signals` while installed; `drain()` returns them in arrival order.

    Works only in the main thread (a Python rule); elsewhere it installs nothing and the
    process keeps its default signal behaviour.
    """

    def __init__(self) -> None:
        self._pipe = SelfPipe()
        self._pending: list[int] = []
        self._old: dict[int, object] = {}
        self._old_wakeup: int | None = None
        self._raise_on: frozenset[int] = frozenset()

    def fileno(self) -> int:
        return self._pipe.fileno()

    @property
    def active(self) -> bool:
        return bool(self._old)

    def install(self, signums: Iterable[int]) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in signums:
            self._old[sig] = signal.signal(sig, self._handler)
        self._old_wakeup = signal.set_wakeup_fd(self._pipe.w, warn_on_full_buffer=False)

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self._pending.append(signum)
        if signum in self._raise_on:
            self._raise_on = frozenset()
            raise Interrupted(signum)

    @contextlib.contextmanager
    def interruptible(self, signums: Iterable[int]) -> Iterator[None]:
        """Within the block, a caught signal among `signums` raises `Interrupted` in the main thread
        (so a blocking call made there, such as reaching the rendezvous store, ends at once);
        one caught before the block raises on entry. Outside it, signals are only recorded."""
        wanted = frozenset(signums)
        early = [s for s in self._pending if s in wanted]
        if early:
            raise Interrupted(early[0])
        self._raise_on = wanted if self.active else frozenset()
        try:
            yield
        finally:
            self._raise_on = frozenset()

    def interrupt(self, signum: int) -> None:
        """Act as if `signum` had been caught: the agent's next `drain` returns it (used to stop
        the job when its output has nowhere left to go, outputs.py). Call from the agent's thread."""
        self._pending.append(signum)
        self._pipe.poke()

    def drain(self) -> list[int]:
        self._pipe.drain()
        out, self._pending = self._pending, []
        return out

    def restore(self) -> None:
        if self._old_wakeup is not None:
            signal.set_wakeup_fd(self._old_wakeup)
            self._old_wakeup = None
        for sig, old in self._old.items():
            signal.signal(sig, old)  # type: ignore[arg-type]
        self._old.clear()

    def close(self) -> None:
        self.restore()
        self._pipe.close()


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def kill_group(pgid: int, sig: int) -> bool:
    """Signal a whole process group; False when nothing is left in it."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
