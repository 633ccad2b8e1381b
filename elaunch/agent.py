"""The elastic agent: one state machine driving a rendezvous, local processes and the bus.

The loop (torch's `_invoke_run`, without sleeping): rendezvous, assign ranks, start; then block
until something happens (a worker exits, a signal, a membership change) and decide:

* every worker exited 0 -> SUCCEEDED: wait for the other nodes (exit barrier) and return;
* a worker failed -> restart the group if restarts remain (stop, rendezvous, start),
  else stop the others, close the job for every node and return FAILED;
* nodes wait to join or were lost -> restart to re-form the group; not counted as a failure;
* the job was closed by another node -> stop and return;
* a shutdown signal -> forward it, wait `shutdown_timeout`, SIGKILL; a second one kills at once.

The agent decides; `procs` (workers.py) acts. Output and state reach the user only as events.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from elaunch import events as ev
from elaunch.errors import RendezvousClosedError, RendezvousError, WorkerStartError
from elaunch.ranks import assign_ranks, worker_argv, worker_env
from elaunch.rendezvous.api import Membership, NodeInfo, Rendezvous, RendezvousInfo
from elaunch.rundir import RunDir
from elaunch.signals import signal_name
from elaunch.spec import RunResult, Worker, WorkerFailure, WorkerGroup, WorkerSpec, WorkerState
from elaunch.tails import OutputTails, read_error_file
from elaunch.workers import Exit, Wakeup, WorkerPlan

T = TypeVar("T")
KILL_WAIT = 5.0
"""Bounded wait for SIGKILLed workers to be reaped."""


class WorkerProcesses(Protocol):
    """What the agent needs from local process management (see workers.LocalProcesses)."""

    def start(self, plans: list[WorkerPlan]) -> dict[int, int]: ...

    def wait(self, timeout: float | None) -> Wakeup: ...

    def wake(self) -> None: ...

    def send(self, sig: int, local_ranks: list[int] | None = None, *, group: bool = True) -> None: ...

    def running(self) -> list[int]: ...

    def exits(self) -> dict[int, Exit]: ...

    def release(self, timeout: float = KILL_WAIT) -> list[Exit]: ...


@dataclass(frozen=True)
class SignalPolicy:
    """Which caught signals stop the job and which are only passed on to the workers."""

    shutdown: frozenset[int]
    forward: frozenset[int]


class _Interrupted(Exception):
    def __init__(self, sig: int) -> None:
        super().__init__(signal_name(sig))
        self.sig = sig


def free_port(host: str = "") -> int:
    """A port that is free now (the usual bind-to-0 race applies, as in torchrun)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Agent:
    """Runs one WorkerSpec on this node until success, failure or shutdown."""

    def __init__(
        self,
        spec: WorkerSpec,
        rdzv: Rendezvous,
        procs: WorkerProcesses,
        bus: ev.Bus,
        *,
        host: str,
        run_dir: RunDir,
        tails: OutputTails,
        signals: SignalPolicy,
        node_rank: int | None = None,
        python: bool = True,
        n_fixed_argv: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spec = spec
        self._rdzv = rdzv
        self._procs = procs
        self._bus = bus
        self._host = host
        self._run_dir = run_dir
        self._tails = tails
        self._signals = signals
        self._node_rank = node_rank
        self._python = python
        self._n_fixed = n_fixed_argv
        self._clock = clock
        self._group = WorkerGroup(spec=spec, workers=[])
        self._restarts_left = spec.max_restarts
        self._membership_restarts = 0
        self._attempt = -1
        self._shutdown_signals: list[int] = []
        self._stopping = False
        self._states: dict[int, WorkerState] = {}
        self._failures: dict[int, WorkerFailure] = {}
        self._returns: dict[int, int] = {}
        self._last_membership = Membership()
        self._published: str | None = None
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
            note = self._close(f"{self._host} was stopped by {signal_name(intr.sig)}")
            result = self._result(WorkerState.STOPPED, interrupted_by=intr.sig, message=note)
        except RendezvousClosedError as e:
            self._stop_workers(signal.SIGTERM)
            result = self._result(WorkerState.FAILED, message=f"the job was closed: {e.message}")
        except (RendezvousError, WorkerStartError) as e:
            self._stop_workers(signal.SIGTERM)
            self._close(f"{self._host}: {e.message}")
            result = self._result(WorkerState.FAILED, message=e.message)
        remote: tuple[str, ...] = ()
        if result.state != WorkerState.SUCCEEDED:
            try:
                remote = tuple(f for f in self._rdzv.failures() if f != self._published)
            except RendezvousError:
                remote = ()
        self._bus.publish(ev.RunFinished(result=result, remote_failures=remote))
        self._bus.flush()
        return result

    # -- the loop -------------------------------------------------------------------------
    def _invoke_run(self) -> RunResult:
        self._initialize_workers()
        while True:
            woke = self._procs.wait(None)
            self._record_exits(woke.exits)
            self._handle_signals(woke.signals)
            if self._shutdown_signals:
                raise _Interrupted(self._shutdown_signals[0])
            state = self._group_state()
            if state == WorkerState.SUCCEEDED:
                self._set_group_state(state)
                self._procs.release()
                self._exit_barrier()
                return self._result(WorkerState.SUCCEEDED)
            if state in (WorkerState.FAILED, WorkerState.UNHEALTHY):
                self._set_group_state(state)
                cause = self._first_failure()
                reason = cause_text(cause) if cause else "workers unhealthy"
                if self._restarts_left > 0:
                    self._restarts_left -= 1
                    self._publish_restart(reason, membership=False)
                    self._restart_workers()
                    continue
                self._stop_workers(signal.SIGTERM)
                if cause is not None:
                    self._publish_failure(cause)
                mine = f"{self._host} failed: {reason}; no restarts left"
                note = self._close(mine)
                closed = self._rdzv.membership()
                if note is None and closed.closed and closed.reason and closed.reason != mine:
                    note = f"the job was closed: {closed.reason}"  # another node gave up first: say why
                return self._result(WorkerState.FAILED, message=note)
            m = self._rdzv.membership()
            if m != self._last_membership:
                self._last_membership = m
                self._bus.publish(
                    ev.MembershipChanged(waiting=m.waiting, lost=m.lost, closed=m.closed, reason=m.reason)
                )
            if m.closed:
                self._stop_workers(signal.SIGTERM)
                return self._result(WorkerState.FAILED, message=f"the job was closed: {m.reason or 'by another node'}")
            if m.waiting > 0 or m.lost:
                self._membership_restarts += 1
                why = f"{m.waiting} node(s) waiting to join" if m.waiting else f"lost node(s): {', '.join(m.lost)}"
                self._publish_restart(why, membership=True)
                self._restart_workers()

    def _initialize_workers(self) -> None:
        self._attempt += 1
        self._set_group_state(WorkerState.INIT)
        self._bus.publish(ev.RendezvousStarted(attempt=self._attempt))
        t0 = self._clock()
        me = NodeInfo(
            host=self._host,
            role=self.spec.role,
            local_world_size=self.spec.local_world_size,
            master_port=free_port(),
            node_rank=self._node_rank,
        )
        info = self._blocking(lambda: self._rdzv.next_rendezvous(me))
        ranks = assign_ranks(info)
        self._group = WorkerGroup(
            spec=self.spec,
            workers=[
                Worker(
                    local_rank=r.local_rank,
                    global_rank=r.global_rank,
                    role_rank=r.role_rank,
                    world_size=r.world_size,
                    role_world_size=r.role_world_size,
                )
                for r in ranks
            ],
            group_rank=info.group_rank,
            group_world_size=info.group_world_size,
            master_addr=info.master_addr,
            master_port=info.master_port,
            state=WorkerState.INIT,
            round=info.round,
            store=getattr(self._rdzv, "store", None),
        )
        self._bus.publish(
            ev.RendezvousDone(
                round=info.round,
                group_rank=info.group_rank,
                group_world_size=info.group_world_size,
                world_size=ranks[0].world_size if ranks else 0,
                master_addr=info.master_addr,
                master_port=info.master_port,
                hosts=tuple(n.host for n in info.nodes),
                duration=self._clock() - t0,
            )
        )
        self._start_workers(info, ranks)

    def _start_workers(self, info: RendezvousInfo, ranks: list) -> None:
        s = self.spec
        plans = [
            WorkerPlan(
                local_rank=r.local_rank,
                global_rank=r.global_rank,
                argv=worker_argv((s.entrypoint, *s.args), self._n_fixed, r.local_rank),
                env=worker_env(
                    s.env,
                    r,
                    info,
                    role=s.role,
                    local_world_size=s.local_world_size,
                    restart_count=self.restart_count,
                    max_restarts=s.max_restarts,
                    error_file=self._run_dir.error_file(self._attempt, r.local_rank),
                    python=self._python,
                    virtual_local_rank=s.virtual_local_rank,
                ),
            )
            for r in ranks
        ]
        self._tails.reset()
        self._failures.clear()
        self._returns.clear()
        self._stopping = False
        pids = self._procs.start(plans)
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
        self._states = {w.local_rank: WorkerState.INIT for w in self._group.workers}
        for w in self._group.workers:
            self._set_worker_state(w, WorkerState.HEALTHY)
        self._set_group_state(WorkerState.HEALTHY)

    def _restart_workers(self) -> None:
        self._stop_workers(signal.SIGTERM)
        if self._shutdown_signals:  # asked to stop while the old workers were stopping: no new ones
            raise _Interrupted(self._shutdown_signals[0])
        self._initialize_workers()

    # -- stopping ---------------------------------------------------------------------------
    def _stop_workers(self, sig: int) -> None:
        """Signal every worker group, wait one grace period, then SIGKILL and reap (bounded)."""
        self._stopping = True
        running = self._procs.running()
        if running:
            self._procs.send(sig)
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

    def _handle_signals(self, sigs: list[int]) -> bool:
        """Forward or act on caught signals; True when a repeated shutdown signal asks to kill now."""
        kill_now = False
        for sig in sigs:
            if sig in self._signals.forward:
                self._procs.send(sig, group=False)
                self._bus.publish(ev.SignalReceived(signal=sig, action="forward"))
            elif sig in self._signals.shutdown:
                self._shutdown_signals.append(sig)
                n = len(self._shutdown_signals)
                if n == 1:
                    self._bus.publish(ev.SignalReceived(signal=sig, action="shutdown"))
                    if self._stopping and self._procs.running():
                        self._procs.send(sig)
                elif n == 2:
                    self._bus.publish(ev.SignalReceived(signal=sig, action="kill"))
                    kill_now = True
                else:
                    self._bus.publish(ev.SignalReceived(signal=sig, action="ignored"))
        if kill_now:
            self._procs.send(signal.SIGKILL)
        return kill_now

    # -- bookkeeping ------------------------------------------------------------------------
    def _record_exits(self, exits: list[Exit]) -> None:
        for ex in exits:
            worker = self._worker(ex.local_rank)
            if worker is None or self._states.get(ex.local_rank, WorkerState.INIT).terminal:
                continue
            by_agent = self._stopping
            if ex.ok:
                new = WorkerState.SUCCEEDED
                self._returns[ex.global_rank] = 0
            elif by_agent:
                new = WorkerState.STOPPED
            else:
                new = WorkerState.FAILED
            if new != WorkerState.SUCCEEDED:
                self._failures[ex.global_rank] = self._failure(ex, by_agent)
            self._set_worker_state(worker, new, ex, by_agent)

    def _failure(self, ex: Exit, by_agent: bool) -> WorkerFailure:
        message, tb = read_error_file(self._run_dir.error_file(self._attempt, ex.local_rank))
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
            traceback=tb or self._tails.traceback(ex.local_rank),
            error_message=message,
            last_lines=self._tails.last_lines(ex.local_rank),
            stopped_by_agent=by_agent,
        )

    def _worker(self, local_rank: int) -> Worker | None:
        for w in self._group.workers:
            if w.local_rank == local_rank:
                return w
        return None

    def _group_state(self) -> WorkerState:
        states = list(self._states.values())
        if any(st == WorkerState.FAILED for st in states):
            return WorkerState.FAILED
        if states and all(st == WorkerState.SUCCEEDED for st in states):
            return WorkerState.SUCCEEDED
        return WorkerState.HEALTHY

    def _first_failure(self) -> WorkerFailure | None:
        own = [f for f in self._failures.values() if not f.stopped_by_agent]
        return min(own, key=lambda f: (f.timestamp, f.global_rank)) if own else None

    def _set_worker_state(self, w: Worker, new: WorkerState, ex: Exit | None = None, by_agent: bool = False) -> None:
        old = self._states.get(w.local_rank, WorkerState.UNKNOWN)
        self._states[w.local_rank] = new
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

    def _publish_failure(self, cause: WorkerFailure) -> None:
        if self._rdzv.max_nodes <= 1:
            return
        summary = failure_summary(cause)
        try:
            self._rdzv.publish_failure(summary)
            self._published = summary
        except RendezvousError:
            pass

    def _close(self, reason: str) -> str | None:
        """Close the job for every node; returns why the other nodes could not be told, if so."""
        try:
            self._rdzv.set_closed(reason)
        except RendezvousError as e:
            return f"could not close the job for the other nodes: {e.message}"
        return None

    def _message(self, level: str, text: str) -> None:
        self._bus.publish(ev.Message(level=level, text=text))

    def _result(self, state: WorkerState, interrupted_by: int | None = None, message: str | None = None) -> RunResult:
        return RunResult(
            state=state,
            return_values=dict(self._returns),
            failures=dict(self._failures),
            interrupted_by=interrupted_by,
            message=message,
        )

    def _exit_barrier(self) -> None:
        if self._rdzv.max_nodes <= 1:
            return
        try:
            self._blocking(lambda: self._rdzv.exit_barrier(self.spec.exit_barrier_timeout))
        except RendezvousError as e:
            self._message("warning", e.message)  # the rendezvous says "exit barrier: ..." itself

    def _blocking(self, fn: Callable[[], T]) -> T:
        """Run a blocking rendezvous call in a thread so that signals are still handled."""
        if self._rdzv.max_nodes <= 1:
            return fn()
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
        t.join()
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        return box["value"]  # type: ignore[return-value]


def cause_text(f: WorkerFailure) -> str:
    """`rank 3 (pid 123) exited with code 1` / `... was killed by SIGKILL`."""
    if f.signal is not None:
        return f"rank {f.global_rank} (pid {f.pid}) was killed by {f.signal_name}"
    return f"rank {f.global_rank} (pid {f.pid}) exited with code {f.exitcode}"


def failure_summary(f: WorkerFailure) -> str:
    """A short text for other nodes' reports: host, rank, code or signal, and the traceback."""
    head = f"{f.host}: {cause_text(f)}"
    body = f.traceback or "\n".join(f.last_lines[-5:])
    return f"{head}\n{body}" if body else head


def host_name(local_addr: str | None) -> str:
    return local_addr or os.uname().nodename
