"""When a worker counts as hung: its progress clock and the settings. Pure: times are passed in.

Progress (issue #11) is any of: a line of output (with `--progress-pattern`, only a matching
line), a touch of the worker's `ELAUNCH_HEARTBEAT_FILE`, a request on torch's FileTimer pipe.
A worker is hung when it shows none for `--hang-timeout` seconds, or, before its first
progress, for `--startup-timeout` seconds (model loading is silent). The edge that feeds the
clock and acts on a hang is `elaunch/watchdog.py`.

A second, stricter notion serves the restart rule (`retry.refusal`: the same failure before any
progress): without a pattern, stderr lines (warnings, logging, the traceback itself) are signs
of life for the hang watch but not progress of the job; stdout lines, matches, heartbeats and
timer requests are.
"""

from __future__ import annotations

from collections.abc import Iterable

from elaunch.kinds import DEFAULT_NO_REQUEUE_EXIT_CODE
from elaunch.values import Value, value

DEFAULT_STARTUP_TIMEOUT = 600.0
"""`--startup-timeout` when only `--hang-timeout` is given: the larger of it and 10 minutes."""
DEFAULT_BACKOFF_MAX = 300.0


@value
class Supervision(Value):
    """How the agent watches workers and restarts them (seconds; None = off)."""

    hang_timeout: float | None = None
    startup_timeout: float | None = None
    progress_pattern: str | None = None
    no_requeue_code: int = DEFAULT_NO_REQUEUE_EXIT_CODE
    restart_backoff: float = 0.0
    """First back-off before a failure restart (doubled each restart); 0 = restart at once."""
    restart_backoff_max: float = DEFAULT_BACKOFF_MAX
    file_timer: bool = False
    """Serve torch's FileTimer pipe (the agent's env has TORCHELASTIC_ENABLE_FILE_TIMER=1)."""

    @property
    def startup_limit(self) -> float | None:
        """Seconds a worker may show no progress after it started: `--startup-timeout`, else the
        larger of `--hang-timeout` and DEFAULT_STARTUP_TIMEOUT, else None (not watched)."""
        if self.startup_timeout is not None:
            return self.startup_timeout
        if self.hang_timeout is not None:
            return max(self.hang_timeout, DEFAULT_STARTUP_TIMEOUT)
        return None


@value
class Overdue(Value):
    """A worker without progress past its limit: `silent` seconds since its last progress (or start)."""

    local_rank: int
    silent: float
    limit: float
    starting: bool
    """True when it never showed progress (the start-up limit applied)."""


class ProgressClock:
    """One attempt's progress per local rank, on a monotonic clock (seconds)."""

    def __init__(self, started: float, local_ranks: Iterable[int]) -> None:
        self.started = started
        self.last: dict[int, float | None] = dict.fromkeys(local_ranks)
        self.first_at: float | None = None
        """When any worker of the attempt first showed progress."""
        self.progressed = False
        """Progress in the restart rule's stricter sense (see the module docstring)."""
        self.last_line: dict[int, str] = {}

    def alive(self, local_rank: int, now: float, *, strict: bool) -> bool:
        """A sign of life of `local_rank` at `now`; `strict` when it is progress of the job too.
        True when it is that worker's first: its limit changes from the start-up to the hang one."""
        if local_rank not in self.last:
            return False
        first = self.last[local_rank] is None
        self.last[local_rank] = now
        if self.first_at is None:
            self.first_at = now
        self.progressed = self.progressed or strict
        return first

    def overdue(self, now: float, hang: float | None, startup: float | None, ranks: Iterable[int]) -> list[Overdue]:
        """The workers among `ranks` (those still running) past their limit at `now`."""
        out = []
        for lr in ranks:
            last = self.last.get(lr)
            limit = startup if last is None else hang
            if limit is None:
                continue
            silent = now - (self.started if last is None else last)
            if silent >= limit:
                out.append(Overdue(local_rank=lr, silent=silent, limit=limit, starting=last is None))
        return out

    def next_deadline(self, hang: float | None, startup: float | None, ranks: Iterable[int]) -> float | None:
        """The earliest time one of `ranks` can become overdue, or None when nothing is watched."""
        times = []
        for lr in ranks:
            last = self.last.get(lr)
            limit = startup if last is None else hang
            if limit is not None:
                times.append((self.started if last is None else last) + limit)
        return min(times) if times else None


def timer_request(line: bytes) -> tuple[int, str, float] | None:
    """One line of torch's FileTimer protocol -> (pid, scope_id, expiration_time), or None if malformed.

    The client (torch.distributed.elastic.timer.FileTimerClient) writes JSON lines
    `{"version": 1, "pid": P, "scope_id": S, "expiration_time": T, "signal": N}` into a FIFO;
    T is wall-clock seconds, and a negative T releases the timer (file_based_local_timer.py).
    """
    import json  # only when the FileTimer pipe is served

    try:
        req = json.loads(line)
        return int(req["pid"]), str(req["scope_id"]), float(req["expiration_time"])
    except (ValueError, KeyError, TypeError):
        return None
