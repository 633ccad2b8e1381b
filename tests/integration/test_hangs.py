"""Hangs and pointless restarts with real processes (issue #11): a worker that stops printing, one
stopped by SIGSTOP, one that touches its heartbeat file, torch's own FileTimer client, and failures
that a restart cannot fix. Workers are tiny Python scripts; only the FileTimer test imports torch."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import run_elaunch, write_script

HAS_PY_SPY = shutil.which("py-spy") is not None

# Rank 1 prints once and then sleeps (a deadlock, as far as anyone can tell); rank 0 keeps printing.
# On the restart both succeed at once.
HANG = """
import os, sys, time
if os.environ["TORCHELASTIC_RESTART_COUNT"] != "0":
    print("second attempt", flush=True)
    sys.exit(0)
print("started", os.environ["RANK"], flush=True)
if os.environ["RANK"] == "1":
    time.sleep(300)
while True:
    print("tick", flush=True)
    time.sleep(0.2)
"""


def starts(stderr: str) -> int:
    """How many generations of workers were started (one `INIT -> HEALTHY` line each)."""
    return stderr.count("INIT -> HEALTHY")


@pytest.mark.timeout(90)
def test_hung_worker_is_reported_with_every_stack_and_the_group_restarted(tmp_path: Path) -> None:
    script = write_script(tmp_path, "hang.py", HANG)
    summary = tmp_path / "summary.json"
    r = run_elaunch(
        ["--nproc-per-node", "2", "--max-restarts", "1", "--hang-timeout", "2", "--summary-file", str(summary),
         str(script)],
        timeout=80,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    err = r.stderr
    assert "rank 1 (pid " in err and "is hung: no progress for " in err and "(--hang-timeout 2s)" in err, err
    assert "last line: started 1" in err, err
    assert "stack of rank 0 (pid " in err and "stack of rank 1 (pid " in err, err
    if HAS_PY_SPY:
        assert "(hang.py:8)" in err, err  # where rank 1 sleeps, from py-spy
    else:
        assert "py-spy is not installed" in err
    assert "restarting the group: rank 1 (pid " in err and ") hung (restart 1 of 1" in err, err
    assert starts(err) == 2
    doc = json.loads(summary.read_text())
    assert doc["state"] == "SUCCEEDED" and doc["restarts"] == 1
    # Where the downtime went: the hung attempt's detection and stop, the next one's start.
    first, second = doc["attempts"]
    assert first["attempt"] == 0 and second["attempt"] == 1
    for key in ("rendezvous_s", "spawn_s", "first_progress_s", "detect_s", "stop_s"):
        assert isinstance(first[key], float) and first[key] >= 0, (key, first)
    assert isinstance(second["spawn_s"], float) and second["detect_s"] is None and second["stop_s"] is None


def run_without_restarts(script: Path, tmp_path: Path) -> tuple[str, dict[str, Any]]:
    """Two workers of `script`, `--hang-timeout 2`, no restart: the job must fail (exit 1); its
    stderr and the summary's root cause."""
    summary = tmp_path / "summary.json"
    r = run_elaunch(
        ["--nproc-per-node", "2", "--hang-timeout", "2", "--summary-file", str(summary), str(script)], timeout=80
    )
    assert r.returncode == 1, r.stderr
    cause: dict[str, Any] = json.loads(summary.read_text())["root_cause"]
    return r.stderr, cause


@pytest.mark.timeout(90)
def test_sigstopped_worker_is_hung_and_nothing_is_left(tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        "stop.py",
        "import os, signal, time\nprint('started', flush=True)\n"
        "if os.environ['RANK'] == '1':\n    os.kill(os.getpid(), signal.SIGSTOP)\n"
        "while True:\n    print('tick', flush=True)\n    time.sleep(0.2)\n",
    )
    stderr, cause = run_without_restarts(script, tmp_path)
    assert "the process is stopped (SIGSTOP)" in stderr, stderr
    assert cause["kind"] == "hang" and cause["restartable"] is True, cause
    assert cause["global_rank"] == 1 and "stopped (SIGSTOP)" in cause["note"]
    # The stopped worker still went away (SIGCONT after the stop signal): the fixture checks.


# Rank 1 goes into uninterruptible sleep (state D) for real: a vfork()ed parent waits, killable
# only by a fatal signal, until its child (which never execs) ends. The child pauses; both are in
# the worker's process group, so elaunch's stop reaches them.
D_STATE = """
import ctypes, os, time
print("started", flush=True)
if os.environ["RANK"] == "1":
    libc = ctypes.CDLL(None)
    if libc.vfork() == 0:
        libc.pause()
        libc._exit(0)
while True:
    print("tick", flush=True)
    time.sleep(0.2)
"""


@pytest.mark.timeout(90)
def test_a_worker_in_uninterruptible_sleep_is_hung_and_nothing_is_left(tmp_path: Path) -> None:
    stderr, cause = run_without_restarts(write_script(tmp_path, "dstate.py", D_STATE), tmp_path)
    assert "the process is in uninterruptible sleep (D)" in stderr, stderr
    assert cause["kind"] == "hang" and cause["global_rank"] == 1, cause
    assert "uninterruptible sleep (D)" in cause["note"], cause
    # The worker and its paused child went away with the group: the fixture checks.


@pytest.mark.timeout(60)
def test_a_worker_silent_for_less_than_the_timeout_is_not_hung(tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        "quiet.py",
        "import time\nfor i in range(3):\n    print('step', i, flush=True)\n    time.sleep(1)\n",
    )
    r = run_elaunch(["--nproc-per-node", "2", "--hang-timeout", "6", "--startup-timeout", "6", str(script)])
    assert r.returncode == 0, r.stderr
    assert "hung" not in r.stderr


@pytest.mark.timeout(60)
def test_heartbeat_file_touches_are_progress(tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        "beat.py",
        "import os, pathlib, time\np = pathlib.Path(os.environ['ELAUNCH_HEARTBEAT_FILE'])\n"
        "for i in range(12):\n    p.touch()\n    time.sleep(0.25)\n",
    )
    r = run_elaunch(["--hang-timeout", "2", "--startup-timeout", "2", str(script)])
    assert r.returncode == 0, r.stderr
    assert "hung" not in r.stderr


@pytest.mark.timeout(60)
def test_startup_timeout_applies_before_the_first_progress(tmp_path: Path) -> None:
    script = write_script(tmp_path, "silent.py", "import time\ntime.sleep(300)\n")
    r = run_elaunch(["--hang-timeout", "60", "--startup-timeout", "2", str(script)])
    assert r.returncode == 1, r.stderr
    assert "no progress since it started" in r.stderr and "(--startup-timeout 2s)" in r.stderr
    assert "last line: (it printed nothing)" in r.stderr


@pytest.mark.timeout(60)
def test_with_a_progress_pattern_only_matching_lines_are_progress(tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        "noise.py",
        "import time\nprint('step 1/9', flush=True)\nwhile True:\n    print('waiting for data', flush=True)\n"
        "    time.sleep(0.2)\n",
    )
    r = run_elaunch(["--hang-timeout", "2", "--progress-pattern", r"step (?P<step>\d+)", str(script)])
    assert r.returncode == 1, r.stderr
    assert "is hung: no progress for" in r.stderr and "last line: waiting for data" in r.stderr


@pytest.mark.torch
@pytest.mark.timeout(120)
@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch's FileTimerClient is the point")
def test_expired_torch_file_timer_is_a_hang_and_the_agent_survives(tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        "timer.py",
        "import os, time\n"
        "from torch.distributed.elastic.timer import FileTimerClient, configure, expires\n"
        "configure(FileTimerClient(os.environ['TORCHELASTIC_TIMER_FILE']))\n"
        "with expires(after=0.5, scope='step'):\n    pass\n"  # acquired and released in time
        "with expires(after=1, scope='load_batch'):\n    time.sleep(300)\n",
    )
    summary = tmp_path / "summary.json"
    r = run_elaunch(
        ["--summary-file", str(summary), str(script)], env={"TORCHELASTIC_ENABLE_FILE_TIMER": "1"}, timeout=110
    )
    assert r.returncode == 1, r.stderr
    assert "torch FileTimer scope 'load_batch' expired" in r.stderr, r.stderr
    assert "'step'" not in r.stderr
    assert json.loads(summary.read_text())["root_cause"]["kind"] == "hang"


def test_a_timer_file_that_is_not_a_pipe_is_one_clear_line(tmp_path: Path) -> None:
    script = write_script(tmp_path, "ok.py", "print('never runs')\n")
    taken = write_script(tmp_path, "taken.txt", "mine\n")
    r = run_elaunch([str(script)], env={"TORCHELASTIC_ENABLE_FILE_TIMER": "1", "TORCHELASTIC_TIMER_FILE": str(taken)})
    assert r.returncode == 2 and "exists and is not a named pipe" in r.stderr and "Traceback" not in r.stderr
    assert taken.read_text() == "mine\n" and "never runs" not in r.stdout


# -- no pointless restarts ------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_import_error_is_not_restarted_and_exits_93(tmp_path: Path) -> None:
    script = write_script(tmp_path, "imp.py", "import no_such_module_here\n")
    summary = tmp_path / "summary.json"
    r = run_elaunch(["--nproc-per-node", "2", "--max-restarts", "5", "--summary-file", str(summary), str(script)])
    assert r.returncode == 93, r.stderr
    assert starts(r.stderr) == 1
    assert "ModuleNotFoundError at start-up on rank " in r.stderr and "not restarting" in r.stderr
    cause = json.loads(summary.read_text())["root_cause"]
    assert (cause["kind"], cause["exception"], cause["restartable"]) == ("startup_error", "ModuleNotFoundError", False)


@pytest.mark.timeout(60)
def test_the_same_failure_before_any_progress_twice_stops(tmp_path: Path) -> None:
    script = write_script(tmp_path, "bad.py", "raise ValueError('bad config: lr=-1')\n")
    summary = tmp_path / "summary.json"
    r = run_elaunch(["--max-restarts", "50", "--no-requeue-exit-code", "77", "--summary-file", str(summary),
                     str(script)])  # fmt: skip
    assert r.returncode == 77, r.stderr
    assert starts(r.stderr) == 2
    assert "the same ValueError before any progress on attempts 1 and 2; not restarting" in r.stderr
    doc = json.loads(summary.read_text())
    assert doc["exit_code"] == 77 and doc["root_cause"]["restartable"] is False


@pytest.mark.timeout(60)
def test_a_failure_after_progress_uses_the_restarts_with_backoff(tmp_path: Path) -> None:
    script = write_script(tmp_path, "late.py", "print('step 1', flush=True)\nraise ValueError('diverged')\n")
    r = run_elaunch(["--max-restarts", "2", "--restart-backoff", "0.2:0.3", str(script)])
    assert r.returncode == 1, r.stderr
    assert starts(r.stderr) == 3
    assert "waiting 0.2s before restarting (--restart-backoff)" in r.stderr
    assert "waiting 0.3s before restarting (--restart-backoff)" in r.stderr  # doubled, capped


@pytest.mark.timeout(60)
def test_a_worker_exiting_93_asks_not_to_be_restarted(tmp_path: Path) -> None:
    script = write_script(tmp_path, "stop.py", "import sys\nprint('step 1', flush=True)\nsys.exit(93)\n")
    r = run_elaunch(["--max-restarts", "3", str(script)])
    assert r.returncode == 93, r.stderr
    assert starts(r.stderr) == 1 and "exited with code 93 (do not restart); not restarting" in r.stderr


@pytest.mark.timeout(60)
def test_a_traceback_then_a_teardown_abort_is_classified_by_its_exception(tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        "abort.py",
        "import os, sys, traceback\ntry:\n    raise KeyError('shard 7')\nexcept KeyError:\n"
        "    traceback.print_exc()\n    sys.stderr.flush()\n    os.abort()\n",  # as torch/gloo at teardown
    )
    summary = tmp_path / "summary.json"
    r = run_elaunch(["--summary-file", str(summary), str(script)])
    assert r.returncode == 134, r.stderr
    assert "kind: exception KeyError, restartable" in r.stderr
    assert "SIGABRT came after the KeyError, while the interpreter shut down" in r.stderr
    cause = json.loads(summary.read_text())["root_cause"]
    assert cause["kind"] == "exception" and cause["exception"] == "KeyError" and cause["signal"] == "SIGABRT"
