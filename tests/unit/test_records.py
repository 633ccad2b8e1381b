"""The summary file: its document from the run's view, and how it is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from elaunch import events as ev
from elaunch.records import SummaryFile, summary_doc
from elaunch.runview import RunTracker, fold
from elaunch.spec import RunResult, WorkerState
from tests.unit.history import T0, fail_then_succeed

pytestmark = pytest.mark.timeout(10)


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


def test_summary_of_a_restarted_run() -> None:
    doc = summary_doc(fold(fail_then_succeed()))
    assert {k: doc[k] for k in ("run_id", "host", "role", "nproc_per_node", "max_restarts", "started_at")} == {
        "run_id": "r1", "host": "vm", "role": "trainer", "nproc_per_node": 2, "max_restarts": 1, "started_at": T0,
    }  # fmt: skip
    assert (doc["state"], doc["exit_code"], doc["finished_at"], doc["duration_s"]) == ("SUCCEEDED", 0, T0 + 3.75, 3.75)
    assert (doc["restarts"], doc["membership_restarts"], doc["root_cause"]) == (1, 0, None)
    assert (doc["stood_by_as_spare"], doc["spares"]) == (False, [])
    assert doc["rounds"][1] == {"round": 1, "group_rank": 0, "nodes": 1, "world_size": 2, "hosts": ["vm"],
                                "duration_s": 0.25}  # fmt: skip
    assert doc["workers"][0] == {
        "local_rank": 0, "global_rank": 0, "role_rank": 0, "pid": 100, "attempt": 0, "restart": 0,
        "state": "STOPPED", "exit_code": None, "signal": "SIGTERM", "stopped_by_elaunch": True,
        "started_at": T0 + 0.625, "ended_at": T0 + 1.875, "duration_s": 1.25,
    }  # fmt: skip
    assert [(w["attempt"], w["pid"], w["state"], w["exit_code"]) for w in doc["workers"]] == [
        (0, 100, "STOPPED", None), (0, 101, "FAILED", 1), (1, 102, "SUCCEEDED", 0), (1, 103, "SUCCEEDED", 0),
    ]  # fmt: skip
    json.dumps(doc)  # plain JSON values only


def test_summary_of_a_run_that_never_started() -> None:
    finished = ev.RunFinished(ts=T0, result=RunResult(state=WorkerState.FAILED, message="no backend"))
    doc = summary_doc(fold([finished]))
    assert "run_id" not in doc and doc["duration_s"] == 0 and doc["message"] == "no backend"
    assert doc["workers"] == [] and doc["rounds"] == []
    with pytest.raises(ValueError):
        summary_doc(fold([]))


def test_attempts_say_where_the_downtime_went() -> None:
    from elaunch import events as ev
    from elaunch.records import attempt_records
    from elaunch.runview import fold

    view = fold(
        [
            ev.Downtime(attempt=0, phase="rendezvous", seconds=0.5),
            ev.Downtime(attempt=0, phase="spawn", seconds=0.1),
            ev.Downtime(attempt=0, phase="detect", seconds=0.01),
            ev.Downtime(attempt=0, phase="stop", seconds=2.0),
            ev.Downtime(attempt=1, phase="rendezvous", seconds=0.2),
        ]
    )
    assert attempt_records(view) == [
        {"attempt": 0, "rendezvous_s": 0.5, "spawn_s": 0.1, "first_progress_s": None, "detect_s": 0.01, "stop_s": 2.0},
        {
            "attempt": 1,
            "rendezvous_s": 0.2,
            "spawn_s": None,
            "first_progress_s": None,
            "detect_s": None,
            "stop_s": None,
        },
    ]


def test_the_summary_says_a_node_stood_by_as_a_spare() -> None:
    history = fail_then_succeed()
    spare = ev.MembershipChanged(waiting=0, lost=(), closed=False, reason=None, spare=True)
    back = ev.MembershipChanged(waiting=0, lost=(), closed=False, reason=None, spares=("h3",))
    doc = summary_doc(fold([*history[:1], spare, back, *history[1:]]))
    assert (doc["stood_by_as_spare"], doc["spares"]) == (True, ["h3"])
