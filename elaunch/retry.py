"""Whether a failed attempt is worth restarting, and how long to wait first. Pure: no I/O, no clock.

A failure that fails the same way on every retry is not retried (issue #11, as NVIDIA
ft_launcher's "no progress" rule): a start-up error (kinds.NOT_RESTARTABLE), a worker that
exited with the no-requeue code, or the same failure signature before any progress on two
consecutive attempts. elaunch then stops with the no-requeue exit code (93).
"""

from __future__ import annotations

from elaunch.kinds import Kind
from elaunch.spec import WorkerFailure

Signature = tuple[object, ...]
CONSEQUENCES = frozenset({Kind.LOST_PEER, Kind.HANG, Kind.STOPPED, Kind.NODE_LOST})
"""Kinds whose repetition says nothing about their cause (a peer that died for its own reasons,
a hang on a network that may come back, a node lost twice): never refused for being the same twice."""


def signature(f: WorkerFailure) -> Signature:
    """What makes two failures "the same": the kind and exception (type and message), else the
    exit code or signal. Ranks, pids and times are not part of it."""
    if f.exception is not None:
        message = ""
        if f.traceback:
            message = f.traceback.strip().splitlines()[-1]
        elif f.error_message:
            message = f.error_message
        return f.kind.value, f.exception, message
    return f.kind.value, f.exitcode, f.signal


def what(f: WorkerFailure) -> str:
    """`ModuleNotFoundError`, `exit code 3`, `SIGSEGV`: the failure in a word or two."""
    if f.exception is not None:
        return f.exception
    if f.signal is not None:
        return f.signal_name or f"signal {f.signal}"
    return f"exit code {f.exitcode}"


def refusal(
    cause: WorkerFailure, attempt: int, previous: Signature | None, progressed: bool, no_requeue_code: int
) -> str | None:
    """Why `cause` (the root cause of attempt `attempt`, counted from 1) must not be retried, or None.

    `previous` is the signature of the attempt before when that attempt, too, failed before any
    progress (else None); `progressed` says whether this attempt made progress.
    """
    if cause.kind == Kind.NO_RESTART:
        return f"rank {cause.global_rank} exited with code {no_requeue_code} (do not restart); not restarting"
    if cause.kind == Kind.STARTUP:
        return f"{what(cause)} at start-up on rank {cause.global_rank}: a restart cannot fix it; not restarting"
    if cause.kind in CONSEQUENCES:
        return None
    if not progressed and previous is not None and previous == signature(cause):
        return f"the same {what(cause)} before any progress on attempts {attempt - 1} and {attempt}; not restarting"
    return None


def backoff_delay(restart: int, base: float, cap: float) -> float:
    """Seconds to wait before failure restart number `restart` (1, 2, ...): `base`, doubled each
    time, at most `cap`; 0 when back-off is off (`base` 0)."""
    if base <= 0 or restart <= 0:
        return 0.0
    return float(min(cap, base * 2.0 ** min(restart - 1, 60)))
