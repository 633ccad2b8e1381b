"""The agent's data model, in torch.distributed.elastic's vocabulary: pure values, no I/O."""

from __future__ import annotations

import enum
import signal as _signal
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from elaunch.values import Record, Value, field, record, value

if TYPE_CHECKING:
    from elaunch.config import EntryKind
    from elaunch.numa import CpuBinding


class WorkerState(str, enum.Enum):
    """State of a worker group (and of each worker), with torch's meanings.

    ::

        UNKNOWN --> INIT --(start)--> HEALTHY --(all exit 0)--> SUCCEEDED
                     ^                  |  \\--(a worker failed)--> FAILED
                     |                  \\--(unhealthy, e.g. hang)--> UNHEALTHY
                     +---(restart: stop, rendezvous, start)<--------+
        any running state --(stopped by the agent)--> STOPPED

    UNKNOWN: not yet started, or the state could not be read.
    INIT: the group is being set up (rendezvous, rank assignment); no worker runs yet.
    HEALTHY: workers are running.
    UNHEALTHY: workers run but something is wrong; handled like FAILED.
    STOPPED: the agent stopped the workers (restart or shutdown); not their fault.
    SUCCEEDED: every worker exited 0.
    FAILED: at least one worker exited non-zero or died of a signal.
    """

    UNKNOWN = "UNKNOWN"
    INIT = "INIT"
    HEALTHY = "HEALTHY"
    UNHEALTHY = "UNHEALTHY"
    STOPPED = "STOPPED"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"

    @staticmethod
    def is_running(state: WorkerState) -> bool:
        """True while workers are (supposed to be) alive: HEALTHY or UNHEALTHY."""
        return state in (WorkerState.HEALTHY, WorkerState.UNHEALTHY)

    @property
    def running(self) -> bool:
        return WorkerState.is_running(self)

    @property
    def terminal(self) -> bool:
        """A state a worker does not leave without a restart."""
        return self in (WorkerState.SUCCEEDED, WorkerState.FAILED, WorkerState.STOPPED)


@value
class WorkerSpec(Value):
    """What to run on this node: one per role; never mutated by the agent.

    `entrypoint` and `args` make the worker's command line (`${local_rank}` in `args` is
    replaced per worker); `env` is the agent's environment, the base of every worker's.
    """

    role: str
    local_world_size: int
    entrypoint: str
    args: tuple[str, ...] = ()
    kind: EntryKind = "program"
    """`program` runs as it is; the others are Python (they get PYTHONUNBUFFERED=1 unless set)."""
    max_restarts: int = 0
    shutdown_timeout: float = 30.0
    """Seconds between the stop signal and SIGKILL, on every stop path (torchrun's --shutdown-timeout)."""
    exit_barrier_timeout: float = 300.0
    virtual_local_rank: bool = False
    env: Mapping[str, str] = field(default_factory=dict)
    """Environment of the agent, captured once: the base every worker's environment starts from."""
    cpu_binding: tuple[CpuBinding, ...] = ()
    """`--numa-binding`: each local worker's CPUs (elaunch/numa.py), in local-rank order; empty: unbound."""

    def __post_init__(self) -> None:
        if self.local_world_size <= 0:
            raise ValueError(f"local_world_size must be > 0, got {self.local_world_size}")
        if self.max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {self.max_restarts}")

    @property
    def python(self) -> bool:
        return self.kind != "program"


@value
class WorkerRanks(Value):
    """One worker's place in the job: local, global and role rank, and the world sizes."""

    local_rank: int
    global_rank: int
    role_rank: int
    world_size: int
    role_world_size: int


@value
class WorkerPlan(Value):
    """How to start one worker: its ranks, argv, complete environment and error file (pure data)."""

    ranks: WorkerRanks
    argv: tuple[str, ...]
    env: Mapping[str, str]
    error_file: str
    """torch's TORCHELASTIC_ERROR_FILE for this worker (`@record` writes it)."""
    binding: CpuBinding | None = None
    """`--numa-binding`: its CPUs, and the command (numactl/taskset) that sets them before it runs."""

    @property
    def local_rank(self) -> int:
        return self.ranks.local_rank

    @property
    def global_rank(self) -> int:
        return self.ranks.global_rank


@record
class Worker(Record):
    """One worker process of this node, its ranks, and where it stands in this generation."""

    local_rank: int
    global_rank: int = -1
    role_rank: int = -1
    world_size: int = -1
    role_world_size: int = -1
    id: int | None = None
    """The pid once started."""
    state: WorkerState = WorkerState.INIT
    failure: WorkerFailure | None = None
    """Why it ended badly (exit code, signal, traceback), once it did; None while running or after exit 0."""

    @classmethod
    def of(cls, r: WorkerRanks) -> Worker:
        """A worker not yet started, at the place `r`."""
        return cls(r.local_rank, r.global_rank, r.role_rank, r.world_size, r.role_world_size)


@record
class WorkerGroup(Record):
    """This node's workers of one role, with the group's place in the job."""

    spec: WorkerSpec
    workers: list[Worker]
    group_rank: int | None = None
    group_world_size: int | None = None
    master_addr: str | None = None
    master_port: int | None = None
    state: WorkerState = WorkerState.INIT
    round: int = 0
    store: Any = None
    """The rendezvous store when the backend has one (c10d, etcd), as torch's `WorkerGroup.store`."""

    def worker(self, local_rank: int) -> Worker | None:
        for w in self.workers:
            if w.local_rank == local_rank:
                return w
        return None

    @property
    def failures(self) -> dict[int, WorkerFailure]:
        """Failures of this generation, keyed by global rank (workers the agent stopped included)."""
        return {w.global_rank: w.failure for w in self.workers if w.failure is not None}

    @property
    def return_values(self) -> dict[int, int]:
        """0 for every worker that exited 0, keyed by global rank."""
        return {w.global_rank: 0 for w in self.workers if w.state == WorkerState.SUCCEEDED}


@value
class WorkerFailure(Value):
    """Why one worker ended badly; `timestamp` (wall clock, seconds) orders failures in time."""

    local_rank: int
    global_rank: int
    role: str
    host: str
    pid: int
    exitcode: int | None
    signal: int | None
    timestamp: float
    restart: int = 0
    traceback: str | None = None
    error_message: str | None = None
    last_lines: tuple[str, ...] = ()
    stopped_by_agent: bool = False

    @property
    def signal_name(self) -> str | None:
        if self.signal is None:
            return None
        try:
            return _signal.Signals(self.signal).name
        except ValueError:
            return f"signal {self.signal}"

    @property
    def shell_code(self) -> int:
        """The worker's exit status as a shell reports it: the code, or 128 + N for signal N."""
        if self.signal is not None:
            return 128 + self.signal
        return self.exitcode if self.exitcode is not None else 1


@value
class RunResult(Value):
    """Outcome of a run; `failures` and `return_values` are keyed by global rank."""

    state: WorkerState
    return_values: dict[int, Any] = field(default_factory=dict)
    """0 per rank for scripts (their exit code); the function's return value with `elaunch.run`."""
    failures: dict[int, WorkerFailure] = field(default_factory=dict)
    interrupted_by: int | None = None
    """The signal that made the agent shut the job down, if any."""
    message: str | None = None
    """Why the run ended when no worker is to blame (rendezvous closed, timeout...)."""

    def is_failed(self) -> bool:
        return self.state == WorkerState.FAILED

    @property
    def root_cause(self) -> WorkerFailure | None:
        """The first failure in time that the agent did not cause itself."""
        return root_cause(self.failures.values())

    @property
    def exit_code(self) -> int:
        """Shell convention: 0; 128+N when interrupted by signal N; else the root cause's code."""
        if self.interrupted_by is not None:
            return 128 + self.interrupted_by
        if self.state == WorkerState.SUCCEEDED:
            return 0
        cause = self.root_cause
        if cause is not None:
            code = cause.shell_code
            return code if code != 0 else 1
        return 1


def root_cause(failures: Iterable[WorkerFailure]) -> WorkerFailure | None:
    """The first failure in time that the agent did not cause itself (ties: the lowest global rank)."""
    own = [f for f in failures if not f.stopped_by_agent]
    return min(own, key=lambda f: (f.timestamp, f.global_rank)) if own else None
