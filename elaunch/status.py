"""What the HTTP endpoint answers, as pure functions of the run's view: /status, /readyz, exit kinds.

`status_doc` is the `/status` document (schema `elaunch.status/1`, documented in
docs/output.md); `readiness` says whether every local worker is HEALTHY (and why not);
`exit_kind` names how a worker ended, for `elaunch_worker_exits_total`. Times are wall-clock
seconds; `now` is given, never read here.
"""

from __future__ import annotations

from typing import Any

from elaunch.progress import Progress
from elaunch.runview import RunView, WorkerRow
from elaunch.signals import signal_name
from elaunch.spec import WorkerState

STATUS_SCHEMA = "elaunch.status/1"
EXIT_KINDS = ("succeeded", "exited", "signaled", "stopped")
"""How a worker ended: exit code 0, another exit code, killed by a signal it did not get from
elaunch, stopped by elaunch (a restart or a shutdown)."""


def exit_kind(w: WorkerRow) -> str | None:
    """One of EXIT_KINDS for a worker that ended, None while it runs."""
    if w.ended is None:
        return None
    if w.stopped_by_agent:
        return "stopped"
    if w.signal is not None:
        return "signaled"
    return "succeeded" if w.exitcode == 0 else "exited"


def readiness(view: RunView) -> tuple[bool, str]:
    """(ready, reason): ready while the group runs and every local worker is HEALTHY; not during
    rendezvous, restarts, stops, or once the run has finished."""
    if view.finished is not None:
        return False, f"the run has finished: {view.finished.result.state.value}"
    if view.run is None or view.rendezvous_pending or not view.rounds:
        return False, "rendezvous in progress"
    if view.group_state != WorkerState.HEALTHY:
        return False, f"worker group is {view.group_state.value}"
    if not view.workers:
        return False, "no workers started yet"
    for w in view.workers:
        if w.state != WorkerState.HEALTHY:
            return False, f"rank {w.global_rank} is {w.state.value}"
    return True, f"{len(view.workers)} worker(s) HEALTHY"


def progress_record(p: Progress | None, now: float) -> dict[str, Any] | None:
    """A worker's `progress` object in /status, or None when it reported none."""
    if p is None:
        return None
    return {
        "step": p.step,
        "total": p.total,
        "percent": round(100.0 * p.step / p.total, 2) if p.total else None,
        "steps_per_s": p.rate_at(now),
        "eta_s": p.eta(now),
        "last_step_at": p.advanced,
        "since_last_step_s": max(0.0, now - p.advanced),
    }


def worker_status(w: WorkerRow, steps: Progress | None, now: float) -> dict[str, Any]:
    """One worker of the current attempt in /status; `steps`: its progress (`RunView.progress_of`)."""
    end = w.ended if w.ended is not None else now
    return {
        "local_rank": w.local_rank,
        "global_rank": w.global_rank,
        "role_rank": w.role_rank,
        "pid": w.pid,
        "state": w.state.value,
        "restarts": w.restart,
        "started_at": w.started,
        "uptime_s": max(0.0, end - w.started),
        "last_output_at": w.last_output,
        "exit_code": w.exitcode,
        "signal": signal_name(w.signal) if w.signal is not None else None,
        "progress": progress_record(steps, end),
        "straggler": w.straggler,
    }


def status_doc(view: RunView, now: float) -> dict[str, Any]:
    """The /status document of `view` at `now`."""
    run = view.run
    m = view.membership
    ready, why = readiness(view)
    master = view.master
    return {
        "schema": STATUS_SCHEMA,
        "time": now,
        "run_id": run.run_id if run else None,
        "host": run.host if run else None,
        "role": run.role if run else None,
        "started_at": run.started_at if run else None,
        "state": view.group_state.value,
        "ready": ready,
        "ready_reason": why,
        "rendezvous_pending": view.rendezvous_pending,
        "round": view.round,
        "attempt": view.attempt,
        "restarts": {
            "used": view.restart_count,
            "left": view.restarts_left,
            "max": view.max_restarts,
            "membership": view.membership_restarts,
        },
        "group_rank": view.group_rank,
        "group_world_size": view.group_world_size,
        "world_size": view.world_size,
        "master": f"{master[0]}:{master[1]}" if master else None,
        "membership": {"waiting": m.waiting, "lost": list(m.lost), "closed": m.closed, "reason": m.reason},
        "finished": (
            {"state": view.finished.result.state.value, "exit_code": view.finished.result.exit_code}
            if view.finished is not None
            else None
        ),
        "workers": [
            worker_status(w, view.progress_of(w), now) for w in sorted(view.workers, key=lambda w: w.global_rank)
        ],
    }
