"""What kind of failure a worker's end was: a documented, deterministic table (no model, no service).

Pure: a failure's exit code or signal, its traceback (or last lines) and what the agent knows
(it stopped the worker, the worker hung, the kernel's OOM killer fired) in; a `Kind` out. The
same table orders root causes: a consequence (a peer lost in a collective, a worker elaunch
stopped) is never the root cause while a real cause exists, on any node (`rank_key`).
Documented in docs/output.md ("Failure kinds"); metrics may count exits by kind from `Kind`.
"""

from __future__ import annotations

import enum
import re

DEFAULT_NO_REQUEUE_EXIT_CODE = 93
"""The exit code meaning "a restart or a requeue cannot help" (NVIDIA ft_launcher's 93): elaunch
exits with it when it refuses to restart, and a worker that exits with it asks for the same."""


class Kind(str, enum.Enum):
    """A failure's kind; the value is what the console and the summary JSON show."""

    EXCEPTION = "exception"
    """A Python exception (its type is the failure's `exception`)."""
    STARTUP = "startup_error"
    """A fatal start-up error: SyntaxError, ImportError/ModuleNotFoundError, a missing script."""
    NO_RESTART = "no_restart"
    """The worker exited with the no-requeue code (93): it asks not to be restarted."""
    SIGNAL = "signal"
    """Killed by a signal elaunch did not send (SIGSEGV, SIGABRT, SIGKILL...)."""
    OOM = "oom_killed"
    """SIGKILL not sent by elaunch while the cgroup's `oom_kill` count went up: the kernel's OOM killer."""
    GPU_OOM = "gpu_oom"
    """Out of GPU memory (`torch.OutOfMemoryError` / `CUDA out of memory`)."""
    EXIT = "exit_code"
    """A non-zero exit with no traceback to say why."""
    LOST_PEER = "lost_peer"
    """A collective failed with a connection error: the consequence of another rank's end."""
    HANG = "hang"
    """No progress for `--hang-timeout` (or `--startup-timeout`), or an expired torch FileTimer."""
    STOPPED = "stopped"
    """Stopped by elaunch (a restart, a shutdown, another rank's failure): never a root cause."""
    NODE_LOST = "node_lost"
    """A node of the job was lost: its heartbeat stopped (its agent or its machine is gone). Not a
    worker's end: the surviving nodes record it, and their ranks' lost peers are its consequences."""


TIER: dict[Kind, int] = {
    Kind.STARTUP: 0,
    Kind.NO_RESTART: 0,
    Kind.EXCEPTION: 0,
    Kind.GPU_OOM: 0,
    Kind.OOM: 0,
    Kind.SIGNAL: 0,
    Kind.EXIT: 0,
    Kind.HANG: 1,
    Kind.NODE_LOST: 1,
    Kind.LOST_PEER: 2,
    Kind.STOPPED: 3,
}
"""Root-cause precedence: the lowest tier wins, then the earliest, then the lowest rank. A hang
comes before a lost peer: killing a hung rank makes its peers lose their connections; so does a
lost node, whose ranks vanish with it."""

ECHOES: frozenset[Kind] = frozenset({Kind.LOST_PEER})
"""Kinds that are the echo of a failure elsewhere: while only these are known, a node waits (a
bounded time) for the cause, a lost node or another node's failure, before it acts."""

NOT_RESTARTABLE: frozenset[Kind] = frozenset({Kind.STARTUP, Kind.NO_RESTART})
"""Kinds that fail the same way on every retry, whatever the budget."""

STARTUP_EXCEPTIONS = frozenset({"SyntaxError", "IndentationError", "TabError", "ImportError", "ModuleNotFoundError"})
_EXC_LINE = re.compile(r"^(?:\[rank\d+\]: ?)?([A-Za-z_][\w.]*)(?::\s?(.*))?$")
"""A traceback's last line: `ValueError: bad value`, `torch.OutOfMemoryError: ...`, `KeyboardInterrupt`."""
_STARTUP_TEXT = re.compile(
    r"can't open file .*No such file or directory|: No module named |^Error while finding module specification"
)
_GPU_OOM = re.compile(r"OutOfMemoryError|CUDA out of memory|CUDA error: out of memory|HIP out of memory")
_CONNECTION = re.compile(
    r"Connection (?:reset|closed) by peer|Broken pipe|ECONNRESET|EPIPE|Connection refused|"
    r"DistNetworkError|remote process exited|NCCL communicator was aborted|ncclRemoteError|"
    r"Socket Timeout|recvValue failed|Read error|Connection timed out|peer closed",
    re.IGNORECASE,
)
SIGKILL, SIGABRT = 9, 6


def exception_of(traceback: str | None, error_message: str | None = None) -> tuple[str, str] | None:
    """(type, message) of the exception a traceback ends with (or torch's error-file message, `Type: msg`)."""
    for text in (traceback, error_message):
        if not text:
            continue
        for line in reversed(text.strip().splitlines()):
            if not line.strip() or line.startswith((" ", "\t")):
                continue
            m = _EXC_LINE.match(line.strip())
            if m:
                return m.group(1), (m.group(2) or "").strip()
            break
    return None


def classify(
    *,
    exitcode: int | None,
    signal: int | None,
    traceback: str | None,
    error_message: str | None,
    last_lines: tuple[str, ...],
    stopped_by_agent: bool = False,
    oom_killed: bool = False,
    no_requeue_code: int = DEFAULT_NO_REQUEUE_EXIT_CODE,
) -> tuple[Kind, str | None]:
    """A worker's end -> (kind, exception type or None), by the first rule that applies:

    stopped by elaunch; exited with `no_requeue_code`; a start-up exception or Python's own
    start-up message (missing script or module); a GPU out-of-memory text; a connection error
    inside an exception or the last lines (lost peer); any other exception (also when a signal
    such as SIGABRT came after it, at interpreter teardown); SIGKILL with `oom_killed`; another
    signal; a bare exit code.
    """
    if stopped_by_agent:
        return Kind.STOPPED, None
    if exitcode is not None and exitcode == no_requeue_code:
        return Kind.NO_RESTART, None
    exc = exception_of(traceback, error_message)
    etype = exc[0] if exc else None
    text = "\n".join(x for x in (traceback, error_message, *last_lines) if x)
    short = etype.rsplit(".", 1)[-1] if etype else None
    if short in STARTUP_EXCEPTIONS:
        return Kind.STARTUP, etype
    if etype is None and any(_STARTUP_TEXT.search(x) for x in last_lines):
        return Kind.STARTUP, None
    if _GPU_OOM.search(text):
        return Kind.GPU_OOM, etype
    if _CONNECTION.search(traceback or error_message or "\n".join(last_lines)):
        return Kind.LOST_PEER, etype
    if etype is not None:
        return Kind.EXCEPTION, etype
    if signal is not None:
        return (Kind.OOM if signal == SIGKILL and oom_killed else Kind.SIGNAL), None
    return Kind.EXIT, None


def restartable(kind: Kind) -> bool:
    """False for kinds that fail the same way on every retry (`NOT_RESTARTABLE`)."""
    return kind not in NOT_RESTARTABLE


def rank_key(kind: Kind, timestamp: float, global_rank: int) -> tuple[int, float, int]:
    """Sort key of root-cause candidates: tier of the kind, then time, then rank (lowest first)."""
    return TIER[kind], timestamp, global_rank


def kind_of(name: str | None) -> Kind:
    """A kind from its value (a published failure's), EXIT for anything unknown."""
    try:
        return Kind(name or "")
    except ValueError:
        return Kind.EXIT
