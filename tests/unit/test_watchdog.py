"""The hang watch's edge on a fake clock: output and heartbeat files as progress, who is hung."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from elaunch import events as ev
from elaunch.hangs import Supervision
from elaunch.ranks import worker_plans
from elaunch.rendezvous.api import NodeInfo, RendezvousInfo
from elaunch.spec import WorkerSpec
from elaunch.watchdog import NO_PY_SPY, Watchdog, process_state, python_stacks
from scripts.testbed import wait_until

pytestmark = pytest.mark.timeout(20)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def plans(tmp_path: Path):  # type: ignore[no-untyped-def]
    spec = WorkerSpec(role="r", local_world_size=2, entrypoint="/bin/true")
    info = RendezvousInfo(run_id="t", round=0, group_rank=0, master_addr="h", master_port=1,
                          nodes=(NodeInfo(host="h", role="r", local_world_size=2),))  # fmt: skip
    return worker_plans(spec, info, restart_count=0, error_file=lambda lr: str(tmp_path / str(lr) / "error.json"))


def out(lr: int, data: bytes, stream: int = 1) -> ev.WorkerOutput:
    return ev.WorkerOutput(local_rank=lr, global_rank=lr, stream=stream, data=data)


def test_output_and_heartbeats_are_progress(tmp_path: Path) -> None:
    clock = Clock()
    w = Watchdog(Supervision(hang_timeout=5.0, startup_timeout=20.0), clock=clock)
    ps = w.prepare(plans(tmp_path))
    assert [p.env["ELAUNCH_HEARTBEAT_FILE"] for p in ps] == [
        str(tmp_path / "0" / "heartbeat"),
        str(tmp_path / "1" / "heartbeat"),
    ]
    w.started({0: 11, 1: 12})
    assert w.timeout([0, 1]) == 20.0  # both in their start-up
    clock.t += 1
    w.handle(out(0, b"loading\nstep 1\n", stream=2))
    assert w.timeout([0, 1]) == 5.0 and not w.progressed()  # a stderr line: alive, not progress of the job
    clock.t += 5
    (hang,) = w.check([0, 1])
    assert (hang.local_rank, hang.silent, hang.last_line) == (0, 5.0, "step 1")
    assert "no progress for 5.0s (--hang-timeout 5s)" in hang.reason
    (tmp_path / "0").mkdir(exist_ok=True)
    (tmp_path / "0" / "heartbeat").touch()  # the worker touches its file: progress, seen at the deadline
    assert w.check([0, 1]) == [] and w.progressed()
    clock.t += 14
    (late,) = w.check([1])  # rank 0, silent since its heartbeat, is hung again too
    assert late.local_rank == 1 and "no progress since it started 20.0s ago (--startup-timeout 20s)" in late.reason
    assert late.last_line is None


def test_a_pattern_decides_what_progress_is(tmp_path: Path) -> None:
    clock = Clock()
    w = Watchdog(Supervision(hang_timeout=5.0, progress_pattern=r"step (?P<step>\d+)"), clock=clock)
    w.prepare(plans(tmp_path))
    w.started({0: 11})
    w.handle(out(0, b"step 1\n"))
    clock.t += 4
    w.handle(out(0, b"waiting\n"))
    clock.t += 1
    (hang,) = w.check([0])
    assert hang.last_line == "waiting" and hang.silent == 5.0


def test_nothing_watched_nothing_hung(tmp_path: Path) -> None:
    w = Watchdog(Supervision(), clock=Clock())
    w.prepare(plans(tmp_path))
    w.started({0: 11, 1: 12})
    assert w.timeout([0, 1]) is None and w.check([0, 1]) == []


def test_process_state_and_stacks_without_py_spy(monkeypatch: pytest.MonkeyPatch) -> None:
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert process_state(p.pid) is None
        os.kill(p.pid, signal.SIGSTOP)
        wait_until(lambda: process_state(p.pid) is not None, 10, "the child to stop")
        assert process_state(p.pid) == "stopped (SIGSTOP)"
        monkeypatch.setattr("shutil.which", lambda name: None)
        assert python_stacks({0: p.pid}) == {0: NO_PY_SPY}
    finally:
        p.kill()
        p.wait(10)
    assert "pip install 'elaunch[debug]'" in NO_PY_SPY
