"""Process supervision with real processes and real signals: nothing outlives the job."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from scripts.testbed import wait_until
from scripts.testbed.procs import alive
from tests.helpers import start_elaunch, write_script

# Each worker starts a grandchild (a sleeping python) and records both pids, then waits.
FAMILY = """
import os, signal, subprocess, sys, time
here = os.path.dirname(os.path.abspath(__file__))
mode = sys.argv[1] if len(sys.argv) > 1 else ""
if "ignore_term" in mode:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if "ignore_int" in mode:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
if "usr1" in mode:
    def on_usr1(sig, frame):
        open(os.path.join(here, "usr1-" + os.environ["RANK"]), "w").close()
    signal.signal(signal.SIGUSR1, on_usr1)
if "term_msg" in mode:
    def on_term(sig, frame):
        print("rank", os.environ["RANK"], "got", signal.Signals(sig).name, flush=True)
        sys.exit(0)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGQUIT, on_term)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", here])
# "ready" is printed before the pid file exists: the tests signal the worker once the file is there,
# and an unbuffered print() is several writes a signal handler could land between.
print("ready", os.environ["RANK"], flush=True)
with open(os.path.join(here, "pids-%s-%s" % (os.environ["RANK"], os.environ["TORCHELASTIC_RESTART_COUNT"])), "w") as f:
    f.write("%d %d" % (os.getpid(), child.pid))
if "crash0" in mode and os.environ["RANK"] == "0" and os.environ["TORCHELASTIC_RESTART_COUNT"] == "0":
    # Crash once the other ranks have started (their pid files exist), not before: the test
    # needs every first-attempt pid, and a busy machine can take longer than the grace period.
    world = int(os.environ["WORLD_SIZE"])
    others = [os.path.join(here, "pids-%d-0" % r) for r in range(1, world)]
    deadline = time.time() + 30
    while time.time() < deadline and not all(os.path.exists(p) and os.path.getsize(p) for p in others):
        time.sleep(0.01)
    sys.exit(4)
if "finish" in mode:
    if os.environ["TORCHELASTIC_RESTART_COUNT"] != "0" or "crash0" not in mode:
        sys.exit(0)
deadline = time.time() + 120
while time.time() < deadline:
    if "usr1" in mode and os.path.exists(os.path.join(here, "usr1-" + os.environ["RANK"])):
        sys.exit(0)
    time.sleep(0.05)
"""


def _pids(tmp_path: Path, n: int, restart: int = 0) -> list[int]:
    files = [tmp_path / f"pids-{r}-{restart}" for r in range(n)]
    wait_until(lambda: all(f.exists() and f.read_text() for f in files), 30, f"{n} workers to start")
    return [int(p) for f in files for p in f.read_text().split()]


def _all_gone(pids: list[int]) -> bool:
    return not any(alive(pid) for pid in pids)


def _own_traceback(err: str) -> bool:
    """A traceback of elaunch itself (workers' lines carry a rank prefix)."""
    return any(line.startswith("Traceback") for line in err.splitlines())


def _stamp(err: str, text: str) -> float:
    """Seconds into the day of the first `[elaunch HH:MM:SS.mmm]` line containing `text`."""
    m = re.search(r"^\[elaunch (\d\d):(\d\d):(\d\d\.\d{3})\] .*" + re.escape(text), err, re.M)
    assert m, f"no line with {text!r} in:\n{err}"
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))


def _finish(p: subprocess.Popen[str], timeout: float = 30) -> tuple[int, str, str]:
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


@pytest.mark.timeout(60)
def test_sigkill_of_agent_leaves_no_worker_or_grandchild(tmp_path: Path) -> None:
    script = write_script(tmp_path, "fam.py", FAMILY)
    p = start_elaunch(["--nproc-per-node", "2", str(script), "wait"])
    pids = _pids(tmp_path, 2)
    p.kill()
    p.wait(10)
    wait_until(lambda: _all_gone(pids), 10, "workers and their children to die with the agent")
    p.communicate()


@pytest.mark.timeout(60)
def test_agent_killed_by_unhandled_signal_leaves_nothing(tmp_path: Path) -> None:
    script = write_script(tmp_path, "fam.py", FAMILY)
    p = start_elaunch(["--nproc-per-node", "1", "--signals-to-handle", "SIGTERM", str(script), "wait"])
    pids = _pids(tmp_path, 1)
    p.send_signal(signal.SIGUSR2)  # not handled: the default action ends the agent
    p.wait(10)
    assert p.returncode == -signal.SIGUSR2
    wait_until(lambda: _all_gone(pids), 10, "workers to die with the agent")
    p.communicate()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129), (signal.SIGQUIT, 131)]
)
def test_shutdown_signal_is_forwarded(tmp_path: Path, sig: int, code: int) -> None:
    script = write_script(tmp_path, "fam.py", FAMILY)
    p = start_elaunch(["--nproc-per-node", "2", str(script), "term_msg"])
    pids = _pids(tmp_path, 2)
    p.send_signal(sig)
    rc, out, err = _finish(p)
    assert rc == code, err
    name = "SIGINT" if sig == signal.SIGINT else signal.Signals(sig).name
    if sig != signal.SIGHUP:  # the workers handle TERM, INT and QUIT; HUP's default action ends them
        assert f"[0] rank 0 got {name}" in out and f"[1] rank 1 got {name}" in out
    assert not _own_traceback(err)
    assert f"job STOPPED by {signal.Signals(sig).name}" in err
    wait_until(lambda: _all_gone(pids), 10, "workers and children gone")


@pytest.mark.timeout(60)
def test_worker_ignoring_sigterm_is_killed_after_shutdown_timeout(tmp_path: Path) -> None:
    script = write_script(tmp_path, "fam.py", FAMILY)
    p = start_elaunch(["--nproc-per-node", "1", "--shutdown-timeout", "1", str(script), "ignore_term"])
    pids = _pids(tmp_path, 1)
    p.send_signal(signal.SIGTERM)
    rc, _, err = _finish(p)
    assert rc == 143
    assert "still running 1s after SIGTERM: sending SIGKILL" in err
    wait_until(lambda: _all_gone(pids), 10, "stuck worker killed")


@pytest.mark.timeout(60)
def test_second_ctrl_c_kills_at_once_third_changes_nothing(tmp_path: Path) -> None:
    script = write_script(tmp_path, "fam.py", FAMILY)
    # The grace is far longer than the test's timeout: only the second Ctrl-C can end this in time.
    p = start_elaunch(["--nproc-per-node", "2", "--shutdown-timeout", "600", str(script), "ignore_term,ignore_int"])
    pids = _pids(tmp_path, 2)
    p.send_signal(signal.SIGINT)
    assert p.stderr is not None
    seen = []
    for line in p.stderr:
        seen.append(line)
        if "SIGINT received: stopping" in line:
            break
    p.send_signal(signal.SIGINT)
    try:
        p.send_signal(signal.SIGINT)
    except ProcessLookupError:
        pass
    rc, _, err = _finish(p)
    assert rc == 130, "".join(seen) + err
    assert "SIGINT received again: killing the workers now" in err
    assert not _own_traceback(err)
    wait_until(lambda: _all_gone(pids), 10, "workers killed")


@pytest.mark.timeout(60)
def test_usr1_reaches_workers_and_job_continues(tmp_path: Path) -> None:
    script = write_script(tmp_path, "fam.py", FAMILY)
    p = start_elaunch(["--nproc-per-node", "2", str(script), "usr1"])
    _pids(tmp_path, 2)
    p.send_signal(signal.SIGUSR1)
    rc, _, err = _finish(p)
    assert rc == 0, err
    assert (tmp_path / "usr1-0").exists() and (tmp_path / "usr1-1").exists()
    assert "SIGUSR1 received: passed on to the workers" in err


@pytest.mark.timeout(60)
def test_shutdown_timeout_is_honoured_on_restart(tmp_path: Path) -> None:
    # Rank 0 crashes; rank 1 ignores SIGTERM: the restart must SIGKILL it after 1 s, not 30.
    script = write_script(tmp_path, "fam.py", FAMILY)
    p = start_elaunch(
        [
            "--nproc-per-node",
            "2",
            "--max-restarts",
            "1",
            "--shutdown-timeout",
            "1",
            str(script),
            "ignore_term,crash0,finish",
        ]
    )
    first = _pids(tmp_path, 2, restart=0)
    rc, _, err = _finish(p, timeout=25)
    assert rc == 0, err
    assert "still running 1s after SIGTERM: sending SIGKILL" in err
    assert "restart 1 of 1, 0 left" in err
    assert _all_gone(first)


@pytest.mark.timeout(60)
def test_shutdown_timeout_is_honoured_when_no_restart_is_left(tmp_path: Path) -> None:
    # Rank 0 exits with 4, no restart is left; rank 1 ignores SIGTERM: stopping it takes 1 s, then SIGKILL.
    script = write_script(tmp_path, "fam.py", FAMILY)
    args = ["--nproc-per-node", "2", "--max-restarts", "0", "--shutdown-timeout", "1"]
    p = start_elaunch([*args, str(script), "ignore_term,crash0"])
    pids = _pids(tmp_path, 2)
    rc, _, err = _finish(p, timeout=25)  # the default grace (30 s) would overrun this
    assert rc == 4, err
    assert "1 worker(s) still running 1s after SIGTERM: sending SIGKILL" in err
    grace = (_stamp(err, "sending SIGKILL") - _stamp(err, "HEALTHY -> FAILED: exit code 4")) % 86400
    assert 0.9 <= grace < 10, f"SIGKILL came {grace:.3f}s after the failure, not about 1 s"
    assert f"rank 1 (pid {pids[2]}) HEALTHY -> STOPPED: killed by SIGKILL (stopped by elaunch)" in err
    assert "root cause: rank 0 (local rank 0)" in err and "exited with code 4" in err
    assert not list(tmp_path.glob("pids-*-1")), "a second attempt was started"
    assert not _own_traceback(err)
    wait_until(lambda: _all_gone(pids), 10, "the stuck worker and every child gone")


@pytest.mark.timeout(60)
def test_shutdown_signal_during_a_restart_starts_no_new_workers(tmp_path: Path) -> None:
    # Rank 0 crashes; rank 1 ignores SIGTERM, so the restart waits out its grace period. SIGTERM to
    # elaunch then, and again to cut the grace short: the job stops, no second attempt starts.
    script = write_script(tmp_path, "fam.py", FAMILY)
    events = tmp_path / "events.jsonl"
    args = ["--nproc-per-node", "2", "--max-restarts", "1", "--shutdown-timeout", "30", "--events-file", str(events)]
    p = start_elaunch([*args, str(script), "ignore_term,crash0,finish"])
    first = _pids(tmp_path, 2, restart=0)

    def logged(text: str) -> bool:
        return events.exists() and text in events.read_text()

    wait_until(lambda: logged('"event": "RestartDecided"'), 30, "the restart decision")
    p.send_signal(signal.SIGTERM)
    wait_until(lambda: logged('"event": "SignalReceived"'), 30, "elaunch to take the first SIGTERM")
    p.send_signal(signal.SIGTERM)
    rc, _, err = _finish(p)
    assert rc == 143, err
    assert "job STOPPED by SIGTERM" in err, err
    assert not list(tmp_path.glob("pids-*-1")), "a second attempt was started"
    assert _all_gone(first)


@pytest.mark.timeout(60)
def test_grandchildren_are_cleaned_after_success(tmp_path: Path) -> None:
    script = write_script(tmp_path, "fam.py", FAMILY)
    p = start_elaunch(["--nproc-per-node", "2", str(script), "finish"])
    pids = _pids(tmp_path, 2)
    rc, _, err = _finish(p)
    assert rc == 0, err
    wait_until(lambda: _all_gone(pids), 10, "the workers' children to be cleaned up")


@pytest.mark.timeout(60)
def test_workers_run_in_their_own_process_groups(tmp_path: Path) -> None:
    script = write_script(tmp_path, "fam.py", FAMILY)
    p = start_elaunch(["--nproc-per-node", "2", str(script), "wait"])
    pids = _pids(tmp_path, 2)
    workers = pids[0::2]
    assert [os.getpgid(w) for w in workers] == workers
    assert os.getpgid(pids[1]) == workers[0]
    p.send_signal(signal.SIGTERM)
    assert _finish(p)[0] == 143


@pytest.mark.timeout(30)
def test_reaper_kills_workers_started_but_not_yet_registered_when_the_agent_dies(tmp_path: Path) -> None:
    # setpriv sets the parent-death signal after the fork: an agent SIGKILLed in between would leave
    # that worker running. The reaper finds the generation's workers by their error-file path.
    import sys

    from elaunch.reaper import Reaper

    run = tmp_path / "run"
    reaper = Reaper()
    reaper.spawning(f"TORCHELASTIC_ERROR_FILE={run}/attempt_0/")
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    marked = subprocess.Popen(
        sleep, env={**os.environ, "TORCHELASTIC_ERROR_FILE": f"{run}/attempt_0/0/error.json"}, start_new_session=True
    )
    other = subprocess.Popen(
        sleep, env={**os.environ, "TORCHELASTIC_ERROR_FILE": f"{run}/attempt_1/0/error.json"}, start_new_session=True
    )
    try:
        assert reaper._w is not None
        os.close(reaper._w)  # the agent's end of the pipe closes as if it were SIGKILLed: no spawned()
        reaper._w = None
        os.waitpid(reaper.pid, 0)
        assert marked.wait(timeout=10) == -signal.SIGKILL
        assert other.poll() is None  # another generation's worker is not touched
    finally:
        for p in (marked, other):
            p.kill()
            p.wait(timeout=10)


@pytest.mark.timeout(30)
def test_a_worker_that_cannot_be_executed_is_a_start_failure(tmp_path: Path) -> None:
    from elaunch.workers import check_executable

    env = {"PATH": "/usr/bin:/bin"}
    ok = write_script(tmp_path, "ok.sh", "#!/bin/sh\nexit 0\n")
    ok.chmod(0o755)
    assert check_executable(str(ok), env) is None and check_executable("true", env) is None
    assert check_executable(str(tmp_path / "none"), env) == "No such file or directory"
    assert check_executable("no-such-program-xyz", env) == "No such file or directory"
    plain = write_script(tmp_path, "plain.sh", "exit 0\n")
    assert check_executable(str(plain), env) == "Permission denied"
    bad = write_script(tmp_path, "bad.sh", "#!/nonexistent/sh\n")
    bad.chmod(0o755)
    assert check_executable(str(bad), env) == "No such file or directory (interpreter /nonexistent/sh)"
