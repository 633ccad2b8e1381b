"""The summary file's bookkeeping, fed with events as the agent publishes them."""

from __future__ import annotations

import json
from pathlib import Path

from elaunch import events as ev
from elaunch.records import SummaryFile
from elaunch.runview import RunTracker
from elaunch.spec import RunResult, WorkerState


def _round(n: int) -> ev.RendezvousDone:
    return ev.RendezvousDone(
        round=n,
        group_rank=0,
        group_world_size=1,
        world_size=1,
        master_addr="h",
        master_port=1,
        hosts=("h",),
        duration=0,
    )


def _attempt(pid: int) -> list[ev.Event]:
    started = ev.WorkerStarted(local_rank=0, global_rank=0, role_rank=0, pid=pid, restart=0, argv=("x",))
    ended = ev.WorkerStateChanged(
        local_rank=0, global_rank=0, pid=pid, old=WorkerState.HEALTHY, new=WorkerState.STOPPED, restart=0,
        exitcode=-15, stopped_by_agent=True,
    )  # fmt: skip
    return [started, ended]


def test_membership_restart_keeps_every_attempt(tmp_path: Path) -> None:
    # A node joined: the group restarted without using up a restart (restart count stays 0).
    path = tmp_path / "summary.json"
    tracker = RunTracker()
    bus = ev.Bus([tracker, SummaryFile(str(path), tracker)])
    for e in [_round(0), *_attempt(101), _round(1), *_attempt(102)]:
        bus.publish(e)
    bus.publish(ev.RunFinished(result=RunResult(state=WorkerState.SUCCEEDED)))
    workers = json.loads(path.read_text())["workers"]
    assert [(w["attempt"], w["pid"], w["state"]) for w in workers] == [(0, 101, "STOPPED"), (1, 102, "STOPPED")]


def test_unwritable_summary_is_reported_not_raised(tmp_path: Path) -> None:
    class Err:
        data = b""

        def write(self, b: bytes) -> int:
            Err.data += b
            return len(b)

        def flush(self) -> None:
            pass

    tracker = RunTracker()
    bus = ev.Bus([tracker, SummaryFile(str(tmp_path / "gone" / "summary.json"), tracker, Err())])  # type: ignore[arg-type]
    bus.publish(ev.RunFinished(result=RunResult(state=WorkerState.FAILED)))
    assert Err.data.startswith(b"elaunch: error: cannot write --summary-file ")
    assert not list(tmp_path.rglob("summary.json*"))
