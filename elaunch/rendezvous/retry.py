"""Connect-with-backoff: one loop for every store client that may start before its server."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

FIRST_DELAY = 0.05
"""Seconds before the second attempt; doubled after each failure..."""
MAX_DELAY = 1.0
"""...up to this many seconds between attempts."""


class Retry(Exception):
    """Raised by an attempt that may succeed later (nothing answers yet); `reason` is one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def retry_until(
    attempt: Callable[[float], T],
    timeout: float,
    give_up: Callable[[float, str], BaseException],
) -> T:
    """`attempt(seconds_left)` until it returns, for at most `timeout` seconds.

    An attempt that raises `Retry` is tried again after a back-off (50 ms doubling to 1 s,
    never past the deadline); any other exception ends the loop at once (it cannot help to
    try again: e.g. something that is not the expected server answers). `seconds_left` is
    at least 50 ms; the first attempt is always made, none starts after the deadline. Then
    raises `give_up(elapsed_seconds, last_reason)`, `last_reason` being the last `Retry`'s.
    This is a connection back-off, not protocol polling: nothing here waits on store keys.
    """
    start = time.monotonic()
    deadline = start + timeout
    delay = FIRST_DELAY
    last = ""
    left = max(timeout, FIRST_DELAY)
    while True:
        try:
            return attempt(max(left, FIRST_DELAY))
        except Retry as e:
            last = e.reason
        left = deadline - time.monotonic()
        if left > 0:
            time.sleep(min(delay, left))
            delay = min(delay * 2, MAX_DELAY)
            left = deadline - time.monotonic()
        if left <= 0:
            raise give_up(time.monotonic() - start, last)


__all__ = ["Retry", "retry_until"]
