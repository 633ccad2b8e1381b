"""The elastic agent: one state machine driving a rendezvous, local processes and the bus.

The loop (torch's `_invoke_run`, without sleeping): rendezvous, plan and start the workers; then
block until something happens (a worker exits, a signal, a membership change), record it, ask
`policy.decide` what to do and do it:

* every worker exited 0 -> SUCCEEDED: wait for the other nodes (exit barrier) and return;
* a worker failed -> restart the group if restarts remain (stop, rendezvous, start),
  else stop the others, close the job for every node and return FAILED;
* nodes wait to join or were lost -> restart to re-form the group; not counted as a failure,
  also when workers failed first with only a lost peer's connection error (the lost node is then
  the root cause: see policy.py);
* the job was closed by another node -> stop and return;
* a shutdown signal -> forward it, wait `shutdown_timeout`, SIGKILL; a second one kills at once.

Decisions are pure (policy.py, ranks.py); acting is done by `procs` (workers.py) and the
rendezvous; output and state reach the user only as events.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

from elaunch import events as ev
from elaunch.errors import RendezvousClosedError, RendezvousError, RendezvousRefusedError, WorkerStartError
from elaunch.failures import cause_text, failure_summary, node_lost_failure, remote_failure
from elaunch.hangs import Supervision
from elaunch.kinds import ECHOES, Kind, classify
from elaunch.policy import (
    Action,
    Decision,
    SignalPolicy,
    decide,
    may_follow,
    reform_reason,
    stopped_by_agent,
    worker_exit_state,
)
from elaunch.ranks import worker_plans
from elaunch.rendezvous.api import Membership, NodeInfo, Rendezvous
from elaunch.rendezvous.rounds import node_label
from elaunch.retry import Signature, backoff_delay, refusal, signature
from elaunch.signals import signal_name
from elaunch.spec import RunResult, Worker, WorkerFailure, WorkerGroup, WorkerPlan, WorkerSpec, WorkerState, root_cause
from elaunch.values import replace
from elaunch.watchdog import Hang, Watchdog, cgroup_oom_kills, python_stacks
from elaunch.workers import Exit, Wakeup

if TYPE_CHECKING:
    from elaunch.healthcheck import HealthReport

T = TypeVar("T")
KILL_WAIT = 5.0
"""Bounded wait for SIGKILLed workers to be reaped."""
REMOTE_CAUSE_WAIT = 5.0
"""How long a node whose own failures are only consequences (lost peers, stopped workers) waits
for the other nodes to publish a real cause, so that every node names the same one."""

__all__ = ["Agent", "ErrorFiles", "SignalPolicy", "WorkerProcesses", "cause_text", "failure_summary"]


class WorkerProcesses(Protocol):
    """What the agent needs from local process management (see workers.LocalProcesses)."""

    def start(self, plans: list[WorkerPlan]) -> dict[int, int]: ...

    def wait(self, timeout: float | None) -> Wakeup: ...

    def wake(self) -> None: ...

    def send(self, sig: int, local_ranks: list[int] | None = None, *, group: bool = True) -> None: ...

    def running(self) -> list[int]: ...

    def release(self, timeout: float = KILL_WAIT) -> list[Exit]: ...


class ErrorFiles(Protocol):
    """Where each worker's TORCHELASTIC_ERROR_FILE goes (see rundir.RunDir)."""

    def error_file(self, attempt: int, local_rank: int) -> str: ...


class _Unhealthy(Exception):
    """This node's health check failed before a round: it does not join."""

    def __init__(self, report: HealthReport) -> None:
        from elaunch.healthcheck import failure_text  # only when --health-check is on

        super().__init__(failure_text(report))
        self.report = report


class _Interrupted(Exception):
    def __init__(self, sig: int) -> None:
        super().__init__(signal_name(sig))
        self.sig = sig


class Agent:
    """Runs one WorkerSpec on this node until success, failure or shutdown.

    `node_rank` is this node's preferred group rank (`--node-rank`), or None.
    """

    def __init__(
        self,
        spec: WorkerSpec,
        rdzv: Rendezvous,
        procs: WorkerProcesses,
        bus: ev.Bus,
        *,
        host: str,
        error_files: ErrorFiles,
        signals: SignalPolicy,
        node_rank: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        supervision: Supervision | None = None,
        watch: Watchdog | None = None,
        health: Callable[[], HealthReport] | None = None,
    ) -> None:
        """`supervision`: restart rules and hang settings (defaults: no watch, restarts at once);
        `watch`: the hang watch and progress source (None: no hang detection, and the rule of the
        same failure on consecutive attempts is not applied, progress being unknown)."""
        self.spec = spec
        self._rdzv = rdzv
        self._procs = procs
        self._bus = bus
        self._host = host
        self._error_files = error_files
        self._signals = signals
        self._node_rank = node_rank
        self._clock = clock
        self._group = WorkerGroup(spec=spec, workers=[])
        self._restarts_left = spec.max_restarts
        self._membership_restarts = 0
        self._attempt = -1
        self._shutdown_signals: list[int] = []
        self._stopping = False
        self._stop_signal: int | None = None
        self._last_membership = Membership()
        self._published: str | None = None
        self._sup = supervision or Supervision()
        self._watch = watch
        self._previous: Signature | None = None
        """The root cause's signature of the attempt before, when it failed before any progress."""
        self._oom_base: int | None = None
        self._decided: float | None = None
        """When the current failure was decided (monotonic): the `stop` phase runs from there."""
        self._spawned: float | None = None
        """When this attempt's workers were all started (monotonic), until its first progress is told."""
        self._health = health
        self._lost_causes: tuple[WorkerFailure, ...] = ()
        """Nodes found lost since this node's workers last started (kind node_lost): the root cause
        of the run when it ends before they start again (e.g. the survivors cannot go on)."""
        rdzv.set_wakeup(procs.wake)

    # -- public ---------------------------------------------------------------------------
    @property
    def group(self) -> WorkerGroup:
        return self._group

    @property
    def restart_count(self) -> int:
        return self.spec.max_restarts - self._restarts_left

    def run(self) -> RunResult:
        s = self.spec
        self._bus.publish(
            ev.RunStarted(
                run_id=self._rdzv.run_id,
                host=self._host,
                role=s.role,
                nproc_per_node=s.local_world_size,
                min_nodes=self._rdzv.min_nodes,
                max_nodes=self._rdzv.max_nodes,
                max_restarts=s.max_restarts,
            )
        )
        try:
            result = self._invoke_run()
        except _Interrupted as intr:
            self._stop_workers(intr.sig)
            note = self._leave(f"{self._node_name} was stopped by {signal_name(intr.sig)}")
            result = self._result(WorkerState.STOPPED, interrupted_by=intr.sig, message=note)
        except _Unhealthy as bad:
            result = self._result(WorkerState.FAILED, message=self._leave_unhealthy(bad))
        except RendezvousClosedError as e:
            self._stop_workers(signal.SIGTERM)
            result = self._result(WorkerState.FAILED, message=f"the job was closed: {e.message}")
        except RendezvousRefusedError as e:  # not in the others' job: nothing of theirs to close
            self._stop_workers(signal.SIGTERM)
            result = self._result(WorkerState.FAILED, message=e.message)
        except (RendezvousError, WorkerStartError) as e:
            self._stop_workers(signal.SIGTERM)
            self._close(f"{self._host}: {e.message}")
            result = self._result(WorkerState.FAILED, message=e.message)
        remote: tuple[str, ...] = ()
        if result.state != WorkerState.SUCCEEDED or self._health is not None:  # (a node that left unhealthy)
            remote, causes = self._remote_failures(result)
            if causes and result.state != WorkerState.SUCCEEDED:
                result = replace(result, remote_causes=(*result.remote_causes, *causes))
            cause = result.root_cause
            if cause is not None and not cause.restartable and result.interrupted_by is None:
                result = replace(result, no_requeue_code=self._sup.no_requeue_code)  # the same code on every node
        self._bus.publish(ev.RunFinished(result=result, remote_failures=remote))
        self._bus.flush()
        return result

    # -- the loop -------------------------------------------------------------------------
    def _invoke_run(self) -> RunResult:
        self._initialize_workers()
        while True:
            woke = self._procs.wait(self._wait_timeout())
            self._record_exits(woke.exits)
            self._handle_signals(woke.signals)
            if self._spawned is not None and self._watch is not None and self._watch.first_progress is not None:
                self._downtime("first_progress", max(0.0, self._watch.first_progress - self._spawned))
                self._spawned = None
            if self._watch is not None and not self._shutdown_signals:
                hangs = self._watch.check(self._procs.running())
                if hangs:
                    self._record_hangs(hangs)
            m = self._note_membership()
            d = decide(
                [w.state for w in self._group.workers],
                self._group.failures.values(),
                m,
                self._restarts_left,
                self._shutdown_signals,
                lost_may_follow=may_follow(self._first_echo(), time.time(), self._rdzv.lost_within),
            )
            if d.action == Action.WAIT:
                continue
            result = self._act(d)
            if result is not None:
                return result

    def _wait_timeout(self) -> float | None:
        """How long the loop may block: until the hang watch's next check, and while a failure
        made only of echoes waits for a lost node (`policy.may_follow`), until that wait ends."""
        timeout = self._watch.timeout(self._procs.running()) if self._watch is not None else None
        first, within = self._first_echo(), self._rdzv.lost_within
        if first is not None and within is not None:
            left = max(0.0, first + within - time.time())
            timeout = left if timeout is None else min(timeout, left)
        return timeout

    def _first_echo(self) -> float | None:
        """When this generation's first echo failure (a lost peer) happened (wall clock), or None;
        None too when this node is alone in its group (no other node to lose)."""
        if (self._group.group_world_size or 1) < 2:
            return None
        echoes = [f.timestamp for f in self._group.failures.values() if f.kind in ECHOES and not f.stopped_by_agent]
        return min(echoes, default=None)

    def _act(self, d: Decision) -> RunResult | None:
        """Carry out a decision; a RunResult ends the run."""
        if d.action == Action.SHUTDOWN:
            raise _Interrupted(d.signal or signal.SIGTERM)
        if d.action == Action.SUCCEED:
            self._set_group_state(WorkerState.SUCCEEDED)
            self._procs.release()
            self._exit_barrier()
            return self._result(WorkerState.SUCCEEDED)
        if d.action in (Action.RESTART, Action.FAIL):
            self._decided = self._clock()
            if d.cause is not None:
                self._downtime("detect", max(0.0, time.time() - d.cause.timestamp))
            self._set_group_state(WorkerState.FAILED)
            reason = cause_text(d.cause) if d.cause else "workers unhealthy"
            refused = self._refusal(d.cause, retrying=d.action == Action.RESTART)
            if d.action == Action.RESTART and refused is None:
                self._restarts_left -= 1
                self._request_restart_round(reason)
                self._publish_restart(reason, membership=False)
                self._restart_workers(
                    backoff_delay(self.restart_count, self._sup.restart_backoff, self._sup.restart_backoff_max)
                )
                return None
            if refused is not None:
                self._message("error", refused)
            self._stop_workers(signal.SIGTERM)
            if d.cause is not None:
                self._publish_failure(d.cause)
            mine = f"{self._host} failed: {reason}; " + ("not restartable" if refused else "no restarts left")
            note = self._close(mine)
            closed = self._rdzv.membership()
            if note is None and closed.closed and closed.reason and closed.reason != mine:
                note = f"the job was closed: {closed.reason}"  # another node gave up first: say why
            if refused is not None:
                note = refused if note is None else f"{refused}\n  {note}"
            return replace(
                self._result(WorkerState.FAILED, message=note),
                no_requeue_code=self._sup.no_requeue_code if refused is not None else None,
            )
        m = d.membership or Membership()
        if d.action == Action.CLOSED:
            self._stop_workers(signal.SIGTERM)
            return self._result(WorkerState.FAILED, message=f"the job was closed: {m.reason or 'by another node'}")
        self._membership_restarts += 1  # Action.REFORM
        self._previous = None
        reason = reform_reason(m)
        if m.lost:  # the lost nodes are this attempt's root cause, the echoes of them consequences
            felt = d.cause.timestamp if d.cause is not None else time.time()
            self._lost_causes = tuple(node_lost_failure(x, felt, self.spec.role, self.restart_count) for x in m.lost)
            if d.cause is not None:
                self._downtime("detect", max(0.0, time.time() - felt))
                reason += f"; {cause_text(d.cause)}, a consequence ({d.cause.kind.value})"
        self._publish_restart(reason, membership=True)
        self._restart_workers()
        return None

    def _check_health(self) -> None:
        """Run `--health-check` (in a thread: signals are still handled); raise `_Unhealthy` if it failed."""
        check = self._health
        if check is None:
            return
        r = self._blocking(check)
        self._bus.publish(
            ev.HealthChecked(ok=r.ok, check=r.check, detail=r.detail, last_lines=r.last_lines, duration=r.duration)
        )
        if not r.ok:
            raise _Unhealthy(r)

    def _leave_unhealthy(self, bad: _Unhealthy) -> str:
        """This node failed its health check: tell every node (their reports name it), then leave
        the job (the others go on: a spare fills in, or the group shrinks within MIN) or, when
        they cannot go on without it, close it. Before its first round it just does not join."""
        text = str(bad)
        try:
            self._rdzv.publish_failure(text)
            self._published = text
        except RendezvousError:
            pass
        if self._attempt == 0:
            return text if self._rdzv.max_nodes == 1 else f"{text}\nthe other nodes go on without it if they can"
        note = self._leave(text)
        return f"{text}\n{note}" if note else f"{text}\nthe job was closed: the other nodes cannot go on without it"

    def _request_restart_round(self, reason: str) -> None:
        """Ask the other nodes to restart with us at once (a restart round, when membership is
        unchanged: see rendezvous/restarts.py); if the store cannot be told, a full round follows."""
        try:
            self._rdzv.request_restart(f"{self._host}: {reason}")
        except RendezvousError:
            pass

    def _initialize_workers(self) -> None:
        self._attempt += 1
        self._set_group_state(WorkerState.INIT)
        self._bus.publish(ev.RendezvousStarted(attempt=self._attempt))
        self._check_health()
        t0 = self._clock()
        me = NodeInfo(
            host=self._host, role=self.spec.role, local_world_size=self.spec.local_world_size, node_rank=self._node_rank
        )
        info = self._blocking(lambda: self._rdzv.next_rendezvous(me))
        attempt = self._attempt
        plans = worker_plans(
            self.spec,
            info,
            restart_count=info.round,
            error_file=lambda lr: self._error_files.error_file(attempt, lr),
        )
        if self._watch is not None:
            plans = self._watch.prepare(plans)
        self._group = WorkerGroup(
            spec=self.spec,
            workers=[Worker.of(p.ranks) for p in plans],
            group_rank=info.group_rank,
            group_world_size=info.group_world_size,
            master_addr=info.master_addr,
            master_port=info.master_port,
            state=WorkerState.INIT,
            round=info.round,
            store=self._rdzv.store,
        )
        self._bus.publish(
            ev.RendezvousDone(
                round=info.round,
                group_rank=info.group_rank,
                group_world_size=info.group_world_size,
                world_size=plans[0].ranks.world_size if plans else 0,
                master_addr=info.master_addr,
                master_port=info.master_port,
                hosts=tuple(n.host for n in info.nodes),
                duration=self._clock() - t0,
            )
        )
        self._downtime("rendezvous", self._clock() - t0)
        self._start_workers(plans)

    def _start_workers(self, plans: list[WorkerPlan]) -> None:
        self._stopping = False
        self._lost_causes = ()
        self._oom_base = cgroup_oom_kills()
        t0 = self._clock()
        pids = self._procs.start(plans)
        self._spawned = self._clock()
        self._downtime("spawn", self._spawned - t0)
        if self._watch is not None:
            self._watch.started(pids)
        for w, plan in zip(self._group.workers, plans, strict=True):
            w.id = pids[w.local_rank]
            self._bus.publish(
                ev.WorkerStarted(
                    local_rank=w.local_rank,
                    global_rank=w.global_rank,
                    role_rank=w.role_rank,
                    pid=pids[w.local_rank],
                    restart=self.restart_count,
                    argv=plan.argv,
                )
            )
        for w in self._group.workers:
            self._set_worker_state(w, WorkerState.HEALTHY)
        self._set_group_state(WorkerState.HEALTHY)

    def _restart_workers(self, backoff: float = 0.0) -> None:
        self._stop_workers(signal.SIGTERM)
        if backoff > 0:
            self._message("info", f"waiting {backoff:g}s before restarting (--restart-backoff)")
            deadline = self._clock() + backoff
            while not self._shutdown_signals and self._clock() < deadline:
                woke = self._procs.wait(max(0.0, deadline - self._clock()))
                self._handle_signals(woke.signals)
        if self._shutdown_signals:  # asked to stop while the old workers were stopping: no new ones
            raise _Interrupted(self._shutdown_signals[0])
        self._initialize_workers()

    # -- what a failure means ---------------------------------------------------------------
    def _refusal(self, cause: WorkerFailure | None, retrying: bool) -> str | None:
        """Why this generation's failure must not be retried (retry.refusal), or None; keeps the
        signature for the next attempt's comparison. Without restarts left (`retrying` False) only
        a failure that can never succeed is refused: the run ends with the no-requeue code."""
        if cause is None:
            return None
        progressed = self._watch.progressed() if self._watch is not None else True
        previous = self._previous if retrying else None
        why = refusal(cause, self._attempt + 1, previous, progressed, self._sup.no_requeue_code)
        self._previous = None if progressed else signature(cause)
        if why is not None and cause.kind not in (Kind.STARTUP, Kind.NO_RESTART):
            w = self._group.worker(cause.local_rank)
            if w is not None and w.failure is cause:
                w.failure = replace(cause, repeated=True)
        return why

    def _record_hangs(self, hangs: list[Hang]) -> None:
        """Hung workers are failures (kind `hang`): the report, with every local worker's Python
        stack taken before anything is killed, then FAILED so that `decide` restarts or gives up."""
        running = {w.local_rank: w for w in self._group.workers if w.state.running and w.id is not None}
        now = time.time()  # the failure's time: the `detect` phase includes taking the stacks
        stacks = python_stacks({lr: w.id for lr, w in running.items() if w.id is not None})
        for h in hangs:
            w = running.get(h.local_rank)
            if w is None:
                continue
            note = h.reason + (f"; the process is {h.process_state}" if h.process_state else "")
            self._bus.publish(
                ev.HangDetected(
                    local_rank=w.local_rank,
                    global_rank=w.global_rank,
                    host=self._host,
                    pid=w.id or 0,
                    silent_s=h.silent,
                    reason=note,
                    last_line=h.last_line,
                    stacks=tuple((x.global_rank, x.id or 0, stacks.get(lr, "")) for lr, x in running.items()),
                )
            )
            w.failure = WorkerFailure(
                local_rank=w.local_rank,
                global_rank=w.global_rank,
                role=self.spec.role,
                host=self._host,
                pid=w.id or 0,
                exitcode=None,
                signal=None,
                timestamp=now,
                restart=self.restart_count,
                traceback=stacks.get(w.local_rank),
                last_lines=(h.last_line,) if h.last_line is not None else (),
                kind=Kind.HANG,
                note=note,
            )
            self._set_worker_state(w, WorkerState.FAILED)

    # -- stopping ---------------------------------------------------------------------------
    def _stop_workers(self, sig: int) -> None:
        """Signal every worker group, wait one grace period, then SIGKILL and reap (bounded).

        Exits that already happened are recorded first, as the workers' own: a worker that failed
        while another's failure was being handled is a failure too, not "stopped by elaunch"."""
        woke = self._procs.wait(0)
        self._record_exits(woke.exits)
        self._handle_signals(woke.signals)
        if sig == signal.SIGPIPE:  # the job's output is gone (outputs.py): the workers get a plain SIGTERM
            sig = signal.SIGTERM
        self._stopping, self._stop_signal = True, sig
        running = self._procs.running()
        if running:
            self._procs.send(sig)
            if any(w.failure is not None and w.failure.kind == Kind.HANG for w in self._group.workers):
                self._procs.send(signal.SIGCONT)  # a SIGSTOPped worker gets the stop signal too
            deadline = self._clock() + self.spec.shutdown_timeout
            killed = False
            while self._procs.running() and not killed:
                remaining = deadline - self._clock()
                if remaining <= 0:
                    n = len(self._procs.running())
                    self._message(
                        "warning",
                        f"{n} worker(s) still running {self.spec.shutdown_timeout:g}s after {signal_name(sig)}: sending SIGKILL",
                    )
                    break
                woke = self._procs.wait(remaining)
                self._record_exits(woke.exits)
                killed = self._handle_signals(woke.signals)
        self._record_exits(self._procs.release())
        if self._group.state.running:
            self._set_group_state(WorkerState.STOPPED)
        if self._decided is not None:
            self._downtime("stop", self._clock() - self._decided)
            self._decided = None

    def _handle_signals(self, sigs: list[int]) -> bool:
        """Forward or act on caught signals; True when a repeated shutdown signal asks to kill now."""
        kill_now = False
        for sig in sigs:
            action = self._signals.action(sig, len(self._shutdown_signals))
            if action == "forward":
                self._procs.send(sig, group=False)
            elif sig in self._signals.shutdown:
                self._shutdown_signals.append(sig)
            self._bus.publish(ev.SignalReceived(signal=sig, action=action))
            if action == "shutdown" and self._stopping and self._procs.running():
                self._procs.send(signal.SIGTERM if sig == signal.SIGPIPE else sig)
            kill_now = kill_now or action == "kill"
        if kill_now:
            self._procs.send(signal.SIGKILL)
        return kill_now

    # -- bookkeeping ------------------------------------------------------------------------
    def _record_exits(self, exits: list[Exit]) -> None:
        for ex in exits:
            w = self._group.worker(ex.local_rank)
            if w is None or w.state.terminal:
                continue
            by_agent = stopped_by_agent(self._stopping, ex.signal, self._stop_signal)
            new = worker_exit_state(ex.ok, by_agent)
            if new != WorkerState.SUCCEEDED:
                w.failure = self._failure(ex, by_agent)
            self._set_worker_state(w, new, ex, by_agent)

    def _failure(self, ex: Exit, by_agent: bool) -> WorkerFailure:
        why = ex.why
        oom = ex.signal == signal.SIGKILL and not by_agent and _oom_killed(self._oom_base)
        kind, exception = classify(
            exitcode=ex.exitcode,
            signal=ex.signal,
            traceback=why.traceback,
            error_message=why.error_message,
            last_lines=why.last_lines,
            stopped_by_agent=by_agent,
            oom_killed=oom,
            no_requeue_code=self._sup.no_requeue_code,
        )
        note = None
        if exception is not None and ex.signal is not None:
            note = f"{signal_name(ex.signal)} came after the {exception}, while the interpreter shut down"
        return WorkerFailure(
            local_rank=ex.local_rank,
            global_rank=ex.global_rank,
            role=self.spec.role,
            host=self._host,
            pid=ex.pid,
            exitcode=ex.exitcode,
            signal=ex.signal,
            timestamp=ex.ts,
            restart=self.restart_count,
            traceback=ex.why.traceback,
            error_message=ex.why.error_message,
            last_lines=ex.why.last_lines,
            stopped_by_agent=by_agent,
            kind=kind,
            exception=exception,
            note=note,
        )

    def _set_worker_state(self, w: Worker, new: WorkerState, ex: Exit | None = None, by_agent: bool = False) -> None:
        old, w.state = w.state, new
        self._bus.publish(
            ev.WorkerStateChanged(
                local_rank=w.local_rank,
                global_rank=w.global_rank,
                pid=w.id or 0,
                old=old,
                new=new,
                restart=self.restart_count,
                exitcode=ex.exitcode if ex else None,
                signal=ex.signal if ex else None,
                stopped_by_agent=by_agent,
                ts=ex.ts if ex else time.time(),
            )
        )

    def _set_group_state(self, new: WorkerState) -> None:
        old = self._group.state
        if old == new:
            return
        self._group.state = new
        self._bus.publish(ev.GroupStateChanged(old=old, new=new, restart=self.restart_count))

    def _publish_restart(self, reason: str, membership: bool) -> None:
        self._bus.publish(
            ev.RestartDecided(
                reason=reason,
                membership=membership,
                restarts_used=self.restart_count,
                restarts_left=self._restarts_left,
                membership_restarts=self._membership_restarts,
            )
        )

    def _remote_failures(self, result: RunResult) -> tuple[tuple[str, ...], tuple[WorkerFailure, ...]]:
        """Other nodes' published failures: their texts, and those that can be the job's root cause.

        When this node's own root cause is only a consequence (a lost peer), the node that caused
        it may not have published yet: wait for a real cause, at most REMOTE_CAUSE_WAIT seconds."""
        deadline = self._clock() + REMOTE_CAUSE_WAIT
        while True:
            try:
                published = [f for f in self._rdzv.failures() if f != self._published]
            except RendezvousError:
                return (), ()
            decoded = [remote_failure(text) for text in published]
            texts = tuple(text for text, _ in decoded)
            causes = tuple(f for _, f in decoded if f is not None)
            mine = result.root_cause
            best = root_cause([*result.failures.values(), *causes])
            alone = (self._group.group_world_size or 1) <= 1  # no other node to hear from
            settled = alone or mine is None or mine.kind not in ECHOES or (best is not None and best.kind not in ECHOES)
            if settled or result.interrupted_by is not None or self._clock() >= deadline:
                return texts, causes
            woke = self._procs.wait(0.2)
            self._handle_signals(woke.signals)
            if self._shutdown_signals:
                return texts, causes

    def _publish_failure(self, cause: WorkerFailure) -> None:
        summary = failure_summary(cause)
        try:
            self._rdzv.publish_failure(summary)
            self._published = summary
        except RendezvousError:
            pass

    @property
    def _node_name(self) -> str:
        """This node in reports: `host (group rank R)` once it had a rank in a round of several."""
        g = self._group
        if g.group_rank is None or not g.group_world_size or g.group_world_size < 2:
            return self._host
        return node_label(self._host, g.group_rank)

    def _leave(self, reason: str) -> str | None:
        """Leave the job (an elastic one goes on without this node) or close it; says which, or why
        the other nodes could not be told."""
        try:
            if self._rdzv.leave(reason):
                return f"{self._node_name} left the job; the other nodes go on without it"
        except RendezvousError as e:
            return f"could not tell the other nodes: {e.message}"
        return None

    def _close(self, reason: str) -> str | None:
        """Close the job for every node; returns why the other nodes could not be told, if so."""
        try:
            self._rdzv.set_closed(reason)
        except RendezvousError as e:
            return f"could not close the job for the other nodes: {e.message}"
        return None

    def _downtime(self, phase: str, seconds: float) -> None:
        self._bus.publish(ev.Downtime(attempt=self._attempt, phase=phase, seconds=seconds))

    def _message(self, level: str, text: str) -> None:
        self._bus.publish(ev.Message(level=level, text=text))

    def _result(self, state: WorkerState, interrupted_by: int | None = None, message: str | None = None) -> RunResult:
        return RunResult(
            state=state,
            return_values=self._group.return_values,
            failures=self._group.failures,
            interrupted_by=interrupted_by,
            message=message,
            remote_causes=self._lost_causes,
        )

    def _exit_barrier(self) -> None:
        try:
            self._blocking(lambda: self._rdzv.exit_barrier(self.spec.exit_barrier_timeout))
        except RendezvousError as e:
            self._message("warning", e.message)  # the rendezvous says "exit barrier: ..." itself
            why = self._rdzv.serving_others()  # the store's host must not pull it from under the others
            if why is not None:
                self._message("info", why)
                self._blocking(self._rdzv.keep_serving)

    def _note_membership(self) -> Membership:
        """The rendezvous' membership view, published as an event when it changed."""
        m = self._rdzv.membership()
        if m != self._last_membership:
            self._last_membership = m
            self._bus.publish(
                ev.MembershipChanged(
                    waiting=m.waiting, lost=m.lost, closed=m.closed, reason=m.reason, spare=m.spare, spares=m.spares
                )
            )
        return m

    def _blocking(self, fn: Callable[[], T]) -> T:
        """Run a blocking rendezvous call in a thread so that signals are still handled."""
        box: dict[str, object] = {}

        def target() -> None:
            try:
                box["value"] = fn()
            except BaseException as e:  # handed over to the agent's thread below
                box["error"] = e
            finally:
                box["done"] = True
                self._procs.wake()

        t = threading.Thread(target=target, name="elaunch-rendezvous", daemon=True)
        t.start()
        while "done" not in box:
            woke = self._procs.wait(None)
            self._handle_signals(woke.signals)
            if self._shutdown_signals:
                raise _Interrupted(self._shutdown_signals[0])
            if "done" not in box:
                self._note_membership()  # e.g. this node now stands by as a spare
        t.join()
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        return box["value"]  # type: ignore[return-value]


def _oom_killed(before: int | None) -> bool:
    """The cgroup's OOM-kill count went up since the attempt started (False where unreadable)."""
    if before is None:
        return False
    now = cgroup_oom_kills()
    return now is not None and now > before


def host_name(local_addr: str | None) -> str:
    return local_addr or os.uname().nodename
