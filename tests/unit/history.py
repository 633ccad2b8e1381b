"""Scripted event histories with fixed timestamps, in the order the agent publishes them."""

from __future__ import annotations

from typing import Any

from elaunch import events as ev
from elaunch.spec import RunResult, WorkerState

T0 = 1_767_225_600.0
"""2026-01-01 00:00:00 UTC: every history starts here (tests render in UTC). Offsets are binary
fractions of a second (1/8 s...), so that stamps in milliseconds are exact."""

S = WorkerState
TRACEBACK = 'Traceback (most recent call last):\n  File "t.py", line 3, in <module>\nValueError: boom'


def run_started(nproc: int = 2, max_restarts: int = 1, nodes: tuple[int, int] = (1, 1)) -> ev.RunStarted:
    lo, hi = nodes
    return ev.RunStarted(
        ts=T0, run_id="r1", host="vm", role="trainer", nproc_per_node=nproc, min_nodes=lo, max_nodes=hi,
        max_restarts=max_restarts,
    )  # fmt: skip


def attempt(ts: float, n: int, *, round_: int, restart: int, first_pid: int, world: int = 2) -> list[ev.Event]:
    """A rendezvous round, then `n` workers started and HEALTHY (as `Agent._initialize_workers`)."""
    done = ev.RendezvousDone(
        ts=ts + 1 / 16, round=round_, group_rank=0, group_world_size=1, world_size=world, master_addr="127.0.0.1",
        master_port=29500, hosts=("vm",), duration=0.25,
    )  # fmt: skip
    out: list[ev.Event] = [ev.RendezvousStarted(ts=ts, attempt=round_), done]
    out += [
        ev.WorkerStarted(ts=ts + 1 / 8, local_rank=r, global_rank=r, role_rank=r, pid=first_pid + r, restart=restart,
                         argv=("python", "t.py"))
        for r in range(n)
    ]  # fmt: skip
    out += [
        ev.WorkerStateChanged(ts=ts + 1 / 4, local_rank=r, global_rank=r, pid=first_pid + r, old=S.INIT,
                              new=S.HEALTHY, restart=restart)
        for r in range(n)
    ]  # fmt: skip
    out.append(ev.GroupStateChanged(ts=ts + 3 / 8, old=S.INIT, new=S.HEALTHY, restart=restart))
    return out


def ended(ts: float, rank: int, pid: int, new: WorkerState, restart: int, **how: Any) -> ev.WorkerStateChanged:
    """Worker `rank` (local = global) left HEALTHY for `new`; `how`: exitcode, signal, stopped_by_agent."""
    return ev.WorkerStateChanged(
        ts=ts,
        local_rank=rank,
        global_rank=rank,
        pid=pid,
        old=S.HEALTHY,
        new=new,
        restart=restart,
        **how,
    )


def fail_then_succeed() -> list[ev.Event]:
    """Two workers; rank 1 fails, the group restarts once (rank 0 stopped), then both succeed."""
    h: list[ev.Event] = [run_started()]
    h += attempt(T0 + 0.5, 2, round_=0, restart=0, first_pid=100)
    h += [
        ev.WorkerBytes(ts=T0 + 1.0, local_rank=0, global_rank=0, stream=1, data=b"step 1\nstep 2\n"),
        ev.WorkerOutput(ts=T0 + 1.0, local_rank=0, global_rank=0, stream=1, data=b"step 1\nstep 2\n"),
        ev.WorkerProgress(ts=T0 + 1.125, local_rank=0, global_rank=0, stream=2, text=b" 40%|####  |"),
        ev.WorkerBytes(ts=T0 + 1.25, local_rank=1, global_rank=1, stream=2, data=(TRACEBACK + "\n").encode()),
        ev.WorkerOutput(ts=T0 + 1.25, local_rank=1, global_rank=1, stream=2, data=(TRACEBACK + "\n").encode()),
        ended(T0 + 1.5, 1, 101, S.FAILED, 0, exitcode=1),
        ev.GroupStateChanged(ts=T0 + 1.625, old=S.HEALTHY, new=S.FAILED, restart=0),
        ev.RestartDecided(
            ts=T0 + 1.75,
            reason="rank 1 (pid 101) exited with code 1",
            membership=False,
            restarts_used=1,
            restarts_left=0,
            membership_restarts=0,
        ),
        ended(T0 + 1.875, 0, 100, S.STOPPED, 1, signal=15, stopped_by_agent=True),
        ev.GroupStateChanged(ts=T0 + 2.0, old=S.FAILED, new=S.INIT, restart=1),
    ]
    h += attempt(T0 + 2.5, 2, round_=1, restart=1, first_pid=102)
    h += [
        ev.WorkerBytes(ts=T0 + 3.0, local_rank=1, global_rank=1, stream=1, data=b"hello\n"),
        ev.WorkerOutput(ts=T0 + 3.0, local_rank=1, global_rank=1, stream=1, data=b"hello\n"),
        ended(T0 + 3.25, 0, 102, S.SUCCEEDED, 1, exitcode=0),
        ended(T0 + 3.375, 1, 103, S.SUCCEEDED, 1, exitcode=0),
        ev.GroupStateChanged(ts=T0 + 3.5, old=S.HEALTHY, new=S.SUCCEEDED, restart=1),
        ev.RunFinished(ts=T0 + 3.75, result=RunResult(state=S.SUCCEEDED, return_values={0: 0, 1: 0})),
    ]
    return h


def until(history: list[ev.Event], kind: type[ev.Event], nth: int = 1) -> list[ev.Event]:
    """`history` up to and including its `nth` event of type `kind`."""
    seen = 0
    for i, e in enumerate(history):
        if isinstance(e, kind):
            seen += 1
            if seen == nth:
                return history[: i + 1]
    raise AssertionError(f"no {nth}th {kind.__name__} in the history")
