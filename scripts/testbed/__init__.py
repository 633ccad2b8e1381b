"""Test bed for elaunch: fake hosts, a real etcd, a real SLURM, and the helpers tests and benchmarks share.

Tests import ``scripts.testbed`` (``wait_until``, ``free_port``), ``scripts.testbed.procs``
(process trees), ``.netns``, ``.etcd``, ``.slurm`` and the pytest fixtures in ``.fixtures``;
benchmarks, run as ``python scripts/bench_x.py``, import the same modules as ``testbed``.
Everything here is bounded in time and kills only processes it started, by PID; see
/work/shared/testbed.md for why it is built so.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from types import TracebackType
from typing import Self, TypeVar

__all__ = ["Managed", "TestbedError", "WaitTimeout", "free_port", "wait_until"]

T = TypeVar("T")


class TestbedError(RuntimeError):
    """A piece of the test bed could not be set up or torn down."""

    __test__ = False  # not a pytest test class despite the name


class WaitTimeout(TestbedError, TimeoutError):
    """``wait_until`` ran out of time; the message names what it waited for."""


def wait_until(
    cond: Callable[[], T | None],
    timeout: float,
    what: str,
    *,
    interval: float = 0.02,
    max_interval: float | None = None,
) -> T:
    """Poll ``cond`` until it returns a truthy value and return that value.

    Tests and benchmarks never sleep a fixed time: this waits only as long as needed and raises
    ``WaitTimeout`` naming ``what`` once ``timeout`` seconds have passed.  It polls every
    ``interval`` seconds; with ``max_interval`` the gap grows by half each time up to it, so that
    long waits on a costly condition (one that runs a command) stay cheap.  An exception from
    ``cond`` propagates at once: a condition gives up early by raising (the test bed raises
    ``TestbedError``, e.g. when the daemon being waited for has exited).
    """
    deadline = time.monotonic() + timeout
    delay = interval
    while True:
        value = cond()
        if value:
            return value
        now = time.monotonic()
        if now >= deadline:
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(min(delay, deadline - now))
        if max_interval is not None:
            delay = min(delay * 1.5, max_interval)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (the caller must cope with the bind-to-0 race)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Managed:
    """A test-bed piece used as a context manager: `with X(...) as x` starts it, leaving closes it."""

    def start(self) -> Self:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
