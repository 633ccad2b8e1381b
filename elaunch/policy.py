"""The agent's decisions as pure functions of values its loop already has. No I/O, no clock.

torch's `_invoke_run` decides inline; here `decide` takes one generation's worker states and
failures, the membership view, the restart budget and the shutdown signals caught, and returns
what to do. The agent carries the decision out (elaunch/agent.py). Precedence, as torch's loop:
a shutdown signal first; then SUCCEEDED; then a failure (restart while the budget lasts, else
give up); then a job closed by another node; then nodes waiting or lost (re-form the group
without using the failure budget); else keep waiting.

One exception to that order (issue #11, "the true cause"): a failure that is only an echo (a
worker's collective lost its peer, `kinds.ECHOES`) is not acted on while a lost node may still
explain it (`lost_may_follow`): a lost node re-forms the group without using a restart and is the
root cause, as it is when the heartbeat notices it before the workers do. torch counts a restart
there, or fails a job without restarts, on whichever rank's connection error came first.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence

from elaunch.kinds import ECHOES
from elaunch.rendezvous.api import Membership
from elaunch.spec import WorkerFailure, WorkerState, root_cause
from elaunch.values import Value, value


class Action(str, enum.Enum):
    """What the agent does next."""

    WAIT = "wait"
    """Nothing changed that needs acting on: block again."""
    SUCCEED = "succeed"
    """Every worker exited 0: wait for the other nodes (exit barrier), return SUCCEEDED."""
    RESTART = "restart"
    """A worker failed and restarts remain: stop, rendezvous again, start (uses one restart)."""
    FAIL = "fail"
    """A worker failed and no restart is left: stop the rest, close the job, return FAILED."""
    REFORM = "reform"
    """Nodes wait to join or were lost: restart to re-form the group (uses no restart)."""
    CLOSED = "closed"
    """Another node closed the job: stop, return FAILED."""
    SHUTDOWN = "shutdown"
    """A shutdown signal was caught: stop, close the job, return STOPPED (exit 128+N)."""


@value
class Decision(Value):
    action: Action
    cause: WorkerFailure | None = None
    """RESTART/FAIL: the root cause of this generation's failure (None for UNHEALTHY without one);
    REFORM: the echo failure a lost node explains (None when the heartbeat found the node first)."""
    signal: int | None = None
    """SHUTDOWN: the first shutdown signal caught."""
    membership: Membership | None = None
    """REFORM/CLOSED: the membership that asked for it."""


def group_state(states: Iterable[WorkerState]) -> WorkerState:
    """The group's state from its workers': FAILED if any failed, SUCCEEDED if all succeeded, else HEALTHY."""
    states = list(states)
    if any(st == WorkerState.FAILED for st in states):
        return WorkerState.FAILED
    if states and all(st == WorkerState.SUCCEEDED for st in states):
        return WorkerState.SUCCEEDED
    return WorkerState.HEALTHY


def decide(
    states: Sequence[WorkerState],
    failures: Iterable[WorkerFailure],
    membership: Membership,
    restarts_left: int,
    shutdown_signals: Sequence[int] = (),
    lost_may_follow: bool = False,
) -> Decision:
    """What to do after a wake-up (see the module docstring for the precedence).

    `lost_may_follow`: the rendezvous has not yet had the time it needs to find a lost node since
    this generation's first echo failure (`may_follow`). While it holds, a failure made only of
    echoes waits; a lost node found meanwhile re-forms the group (`REFORM`, with the echo as `cause`).
    """
    if shutdown_signals:
        return Decision(Action.SHUTDOWN, signal=shutdown_signals[0])
    state = group_state(states)
    if state == WorkerState.SUCCEEDED:
        return Decision(Action.SUCCEED)
    if state in (WorkerState.FAILED, WorkerState.UNHEALTHY):
        cause = root_cause(failures)
        if cause is not None and cause.kind in ECHOES and not membership.closed and not membership.restart:
            if membership.lost:
                return Decision(Action.REFORM, cause=cause, membership=membership)
            if lost_may_follow:
                return Decision(Action.WAIT)
        return Decision(Action.RESTART if restarts_left > 0 else Action.FAIL, cause=cause)
    if membership.closed:
        return Decision(Action.CLOSED, membership=membership)
    if membership.waiting > 0 or membership.lost or membership.restart:
        return Decision(Action.REFORM, membership=membership)
    return Decision(Action.WAIT)


def may_follow(first_echo: float | None, now: float, within: float | None) -> bool:
    """Whether a lost node may still be found to explain an echo failure (`decide`'s
    `lost_may_follow`): the generation's first echo happened at `first_echo` (wall-clock seconds,
    None: no echo), and the rendezvous finds a lost node within `within` seconds of its loss
    (None: it does not find lost nodes, e.g. a static or single-node rendezvous)."""
    return first_echo is not None and within is not None and now < first_echo + within


def reform_reason(m: Membership) -> str:
    """`lost node(s): host3, host4` / `2 node(s) waiting to join` (both, `; `-joined, lost first:
    the survivors of a lost node are often already waiting in the next round) / `restart round:
    host2: ...`."""
    parts = []
    if m.lost:
        parts.append(f"lost node(s): {', '.join(m.lost)}")
    if m.waiting:
        parts.append(f"{m.waiting} node(s) waiting to join")
    if parts:
        return "; ".join(parts)
    return f"restart round: {m.restart}" if m.restart else "membership changed"


def stopped_by_agent(stopping: bool, exit_signal: int | None, sent: int | None) -> bool:
    """Whether a worker that ended while the agent was stopping the group ended because of it:
    killed by the signal the agent sent or by SIGKILL, or exited with a code (a handler that
    exits on the stop signal). Killed by another signal (SIGSEGV, SIGABRT...) it failed on its own."""
    if not stopping:
        return False
    return exit_signal is None or exit_signal in (sent, 9)


def worker_exit_state(ok: bool, stopped_by_agent: bool) -> WorkerState:
    """A worker's state once it ended: exit 0 is SUCCEEDED; else STOPPED when the agent stopped it, FAILED otherwise."""
    if ok:
        return WorkerState.SUCCEEDED
    return WorkerState.STOPPED if stopped_by_agent else WorkerState.FAILED


@value
class SignalPolicy(Value):
    """Which caught signals stop the job and which are only passed on to the workers."""

    shutdown: frozenset[int]
    forward: frozenset[int]

    def action(self, sig: int, shutdowns_before: int) -> str:
        """`forward`, or for a shutdown signal `shutdown` (the first), `kill` (the second: SIGKILL
        now), `ignored` (any later one, as torchrun's third Ctrl-C must not orphan workers)."""
        if sig in self.forward:
            return "forward"
        if sig not in self.shutdown:
            return "ignored"
        return ("shutdown", "kill")[shutdowns_before] if shutdowns_before < 2 else "ignored"
