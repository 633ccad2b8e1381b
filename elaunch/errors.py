"""One family of errors, carrying structured fields; only cli.py turns them into text and exit codes."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from elaunch.spec import RunResult, WorkerFailure


class ElaunchError(Exception):
    """Base of every error elaunch raises on purpose; `exit_code` is what the CLI returns."""

    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(ElaunchError):
    """Bad input from the user (options, environment): nothing was started."""

    exit_code = 2


class NotSupportedError(ConfigError):
    """A valid option whose behaviour is not implemented yet: refused, never ignored."""


class RendezvousError(ElaunchError):
    """The nodes could not agree on a group (timeout, closed, store unreachable)."""


class RendezvousTimeoutError(RendezvousError):
    """Not enough nodes joined within the join timeout."""


class RendezvousClosedError(RendezvousError):
    """Another node closed the job: it finished, failed or was stopped."""


class RendezvousRefusedError(RendezvousError):
    """This node is not let into the job (a job with the same run id is already running whole):
    it ends without closing or leaving the job of the others."""


class StoreError(RendezvousError):
    """The key-value store behind the rendezvous failed or is unreachable."""


class WorkerStartError(ElaunchError):
    """A worker process could not be started (e.g. exec failed)."""


class ChildFailedError(ElaunchError):
    """`elaunch.run` / `elastic_launch`: the job failed (torch raises its `ChildFailedError` there).

    `result` is the run's `RunResult`; `failures` (this node's) are keyed by global rank; the
    message is the CLI's report (root cause first, with its traceback; other nodes' root causes)
    followed by the traceback of every other rank that failed on its own.
    """

    def __init__(self, message: str, result: RunResult, remote_failures: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.result = result
        self.remote_failures = remote_failures
        """Root causes other nodes published (host, rank, traceback), as the CLI report shows them."""

    @property
    def failures(self) -> dict[int, WorkerFailure]:
        return self.result.failures

    @property
    def root_cause(self) -> WorkerFailure | None:
        return self.result.root_cause

    def get_first_failure(self) -> tuple[int, WorkerFailure]:
        """(global rank, failure) of the root cause, as torch's `ChildFailedError.get_first_failure`."""
        cause = self.root_cause or next(iter(self.failures.values()))
        return cause.global_rank, cause
