"""Workers' descendants that leave their process group with setsid() end with the job (#10 item 8):
on a normal end, on a restart (without waiting for the pipe they hold), and when the agent is SIGKILLed."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from scripts.testbed import wait_until
from scripts.testbed.procs import alive, kill_pids
from tests.helpers import ELAUNCH, start_elaunch, write_script

# The worker starts a child in a new session (it inherits the worker's stdout pipe and environment),
# records its pid, then exits (`exit`), fails on its first attempt (`crash0`) or waits (`wait`).
ESCAPE = """
import os, subprocess, sys, time
here = os.path.dirname(os.path.abspath(__file__))
mode = sys.argv[1]
restart = os.environ["TORCHELASTIC_RESTART_COUNT"]
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", here], start_new_session=True)
with open(os.path.join(here, "escapee-%s-%s" % (os.environ["RANK"], restart)), "w") as f:
    f.write(str(child.pid))
print("started", child.pid, flush=True)
if mode == "crash0" and restart == "0":
    sys.exit(3)
if mode == "wait":
    time.sleep(120)
"""


def _escapee(tmp: Path, rank: int = 0, restart: int = 0) -> int:
    path = tmp / f"escapee-{rank}-{restart}"
    return int(wait_until(lambda: path.exists() and path.read_text(), 60, f"{path.name} to be written"))


@pytest.mark.timeout(90)
def test_a_setsid_descendant_is_stopped_at_a_normal_end(tmp_path: Path) -> None:
    script = write_script(tmp_path, "esc.py", ESCAPE)
    r = subprocess.run([*ELAUNCH, "--standalone", str(script), "exit"], capture_output=True, text=True, timeout=60)
    pid = _escapee(tmp_path)
    try:
        assert r.returncode == 0, r.stderr
        wait_until(lambda: not alive(pid), 10, "the escaped descendant to be stopped with the job")
    finally:
        kill_pids([pid])


@pytest.mark.timeout(90)
def test_a_setsid_descendant_holding_the_pipe_does_not_survive_a_restart(tmp_path: Path) -> None:
    script = write_script(tmp_path, "esc.py", ESCAPE)
    r = subprocess.run(
        [*ELAUNCH, "--standalone", "--max-restarts", "1", str(script), "crash0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    first, second = _escapee(tmp_path, 0, 0), _escapee(tmp_path, 0, 1)
    try:
        assert r.returncode == 0, r.stderr
        assert "restart 1 of 1" in r.stderr
        wait_until(lambda: not alive(first) and not alive(second), 10, "both escaped descendants to be stopped")
    finally:
        kill_pids([first, second])


@pytest.mark.timeout(90)
def test_a_setsid_descendant_dies_with_a_sigkilled_agent(tmp_path: Path) -> None:
    script = write_script(tmp_path, "esc.py", ESCAPE)
    p = start_elaunch(["--standalone", "--nproc-per-node", "2", str(script), "wait"])
    pids = [_escapee(tmp_path, 0), _escapee(tmp_path, 1)]
    try:
        p.kill()
        p.wait(10)
        wait_until(lambda: not any(alive(x) for x in pids), 30, "the escaped descendants to die with the agent")
    finally:
        kill_pids(pids)
        p.communicate()


SUBREAPER = """
import os, subprocess, sys, time
sys.path.insert(0, sys.argv[1])
from elaunch.cgroup import become_subreaper, children, stop_adopted
assert become_subreaper()
env = {**os.environ, "TORCHELASTIC_ERROR_FILE": "/run-x/attempt_0/0/error.json"}
# A "worker" that starts a setsid() child and exits: the child is re-parented to us.
worker = subprocess.Popen([sys.executable, "-c",
    "import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'],"
    " start_new_session=True); print(p.pid)"], env=env, stdout=subprocess.PIPE, text=True)
pid = int(worker.stdout.readline())
worker.wait()
deadline = time.time() + 30
while pid not in children() and time.time() < deadline:
    time.sleep(0.01)
print(pid, pid in children(), stop_adopted(b"TORCHELASTIC_ERROR_FILE=/run-x/", set()) == [pid], flush=True)
"""


@pytest.mark.timeout(60)
def test_without_a_cgroup_the_subreaper_finds_and_stops_adopted_descendants(tmp_path: Path) -> None:
    """The fallback where no cgroup can be made: real processes, a real PR_SET_CHILD_SUBREAPER."""
    script = write_script(tmp_path, "sub.py", SUBREAPER)
    root = str(Path(__file__).resolve().parents[2])
    r = subprocess.run([sys.executable, str(script), root], capture_output=True, text=True, timeout=50)
    assert r.returncode == 0, r.stderr
    pid, adopted, stopped = r.stdout.split()
    try:
        assert (adopted, stopped) == ("True", "True")
        assert not alive(int(pid))
    finally:
        kill_pids([int(pid)])


@pytest.mark.timeout(90)
def test_a_cgroup_left_by_an_agent_killed_with_its_reaper_is_removed_by_the_next_agent(tmp_path: Path) -> None:
    # As a scheduler ends a job step: every process SIGKILLed at once, the reaper included, so
    # nothing removes the agent's cgroup. The next agent under the same cgroup does.
    from elaunch.cgroup import cgroup2_mount, own_cgroup

    mount, own = cgroup2_mount(), own_cgroup()
    if mount is None or own is None:
        pytest.skip("no cgroup v2 here")
    script = write_script(tmp_path, "esc.py", ESCAPE)
    p = start_elaunch(["--standalone", str(script), "wait"])
    left = Path(mount, own.lstrip("/"), f"elaunch-{p.pid}")
    try:
        _escapee(tmp_path, 0)
        if not left.is_dir():
            pytest.skip("the agent could not make a cgroup here")
        everyone = [p.pid, *(c.pid for c in psutil.Process(p.pid).children(recursive=True))]
        kill_pids(everyone, timeout=0, sig=signal.SIGSTOP)  # first frozen: none can clean up after another
        kill_pids(everyone)
        p.wait(10)
        wait_until(lambda: not any(alive(x) for x in everyone), 10, "every process of the job to be gone")
        assert left.is_dir()  # nobody was left to remove it
        # Nor its run directory (as torchrun's after any run): the test's TMPDIR must end empty.
        for run_dir in Path(os.environ["TMPDIR"]).glob("elaunch-*"):
            shutil.rmtree(run_dir)
        r = subprocess.run([*ELAUNCH, "--standalone", str(script), "exit"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert not left.exists()
    finally:
        kill_pids([p.pid])
        p.communicate()


def test_no_cgroup_is_left_behind() -> None:
    from elaunch.cgroup import cgroup2_mount, own_cgroup

    mount, own = cgroup2_mount(), own_cgroup()
    if mount is None or own is None:
        pytest.skip("no cgroup v2 here")
    base = os.path.join(mount, own.lstrip("/"))
    mine = [d for d in os.listdir(base) if d.startswith("elaunch-") and not os.path.exists(f"/proc/{d[8:]}")]
    assert mine == []
