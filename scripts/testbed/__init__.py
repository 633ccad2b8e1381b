"""Test bed for elaunch: fake hosts (network namespaces), a real etcd, a real SLURM.

Tests import ``testbed.netns``, ``testbed.etcd``, ``testbed.slurm`` and the pytest
fixtures in ``testbed.fixtures``.  Everything here is bounded in time and kills only
processes it started, by PID; see /work/shared/testbed.md for why it is built so.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Self, TypeVar

__all__ = ["TestbedError", "WaitTimeout", "wait_until"]

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
    interval: float = 0.05,
    max_interval: float = 0.5,
) -> T:
    """Poll ``cond`` until it returns a truthy value and return that value.

    Tests must never sleep a fixed time: this waits only as long as needed and
    raises ``WaitTimeout`` naming ``what`` (and the last exception ``cond``
    raised, if any) once ``timeout`` seconds have passed.  Other exceptions from
    ``cond`` count as "not yet", except ``TestbedError``, which gives up at once
    (e.g. the daemon being waited for has exited).  The poll interval grows
    from ``interval`` to ``max_interval`` so long waits stay cheap.
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    delay = interval
    while True:
        try:
            value = cond()
        except TestbedError:
            raise
        except Exception as exc:  # reported in the timeout message
            last_exc = exc
            value = None
        if value:
            return value
        now = time.monotonic()
        if now >= deadline:
            detail = f" (last error: {last_exc!r})" if last_exc is not None else ""
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what}{detail}")
        time.sleep(min(delay, max(0.0, deadline - now)))
        delay = min(delay * 1.5, max_interval)


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
