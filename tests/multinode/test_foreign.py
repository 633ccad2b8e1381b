"""The world around a multi-node job: an unrelated server on the rendezvous port (#10 item 7)."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from scripts.testbed import free_port, wait_until
from scripts.testbed.procs import stop_popen
from tests.helpers import ELAUNCH, run_elaunch, write_script

needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="the c10d store needs torch")


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[int]:
    """`python3 -m http.server PORT` on loopback: accepts connections, never speaks c10d."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: _listening(proc.pid, port), 30, "http.server to listen")
        yield port
    finally:
        stop_popen(proc)


def _listening(pid: int, port: int) -> bool:
    return any(c.laddr and c.laddr.port == port and c.status == "LISTEN" for c in psutil.Process(pid).net_connections())


def _connected(pid: int, port: int) -> bool:
    return any(c.raddr and c.raddr.port == port for c in psutil.Process(pid).net_connections())


def _args(port: int, conf: str, script: Path) -> list[str]:
    return ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--nnodes", "2",
            "--rdzv-id", "foreign", "--rdzv-conf", conf, str(script)]  # fmt: skip


@needs_torch
@pytest.mark.torch
@pytest.mark.timeout(90)
def test_foreign_server_on_the_endpoint_is_named_within_read_timeout(tmp_path: Path, http_server: int) -> None:
    script = write_script(tmp_path, "w.py", "print('never runs')\n")
    r = run_elaunch(_args(http_server, "join_timeout=5,read_timeout=3", script), timeout=60)
    assert r.returncode == 1, r.stderr
    assert "did not answer as a rendezvous store" in r.stderr and f"127.0.0.1:{http_server}" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and "never runs" not in r.stdout


@needs_torch
@pytest.mark.torch
@pytest.mark.timeout(90)
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_ends_the_wait_for_a_foreign_server(tmp_path: Path, http_server: int, sig: int, code: int) -> None:
    """Time limits far away (read_timeout 300 s): only the signal can end the wait."""
    script = write_script(tmp_path, "w.py", "print('never runs')\n")
    summary = tmp_path / "summary.json"
    proc = subprocess.Popen(
        [*ELAUNCH, "--summary-file", str(summary), *_args(http_server, "join_timeout=300,read_timeout=300", script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: _connected(proc.pid, http_server), 60, "elaunch to connect to the foreign server")
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        stop_popen(proc)
    assert proc.returncode == code, err
    assert "job STOPPED by" in err and "Traceback" not in err
    assert summary.exists()


WAIT_FOR_GO = """
import os, time
go = os.path.join(os.path.dirname(os.path.abspath(__file__)), "go")
print("first job running", flush=True)
deadline = time.time() + 120
while not os.path.exists(go) and time.time() < deadline:
    time.sleep(0.05)
"""


@needs_torch
@pytest.mark.torch
@pytest.mark.timeout(150)
def test_a_second_job_with_the_same_run_id_is_told_at_once(tmp_path: Path) -> None:
    """#10 item 9: real agents, c10d on loopback. A two-node job runs; a third agent with the same
    run id is refused in one line, exit 1, and the job is not disturbed (neither closed nor left)."""
    script = write_script(tmp_path, "w.py", WAIT_FOR_GO)
    port = free_port()
    args = ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--nnodes", "2",
            "--rdzv-id", "same-id", "--rdzv-conf", "join_timeout=60,heartbeat_timeout=3,keep_alive_interval=0.5",
            str(script)]  # fmt: skip
    job = [subprocess.Popen([*ELAUNCH, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in "ab"]
    try:
        for p in job:
            assert p.stdout is not None
            assert "first job running" in p.stdout.readline()
        second = run_elaunch(args, timeout=60)
        assert second.returncode == 1, second.stderr
        told = [line for line in second.stderr.splitlines() if "already running" in line]
        assert len(told) == 1 and f"run id 'same-id' is already running on {os.uname().nodename}" in told[0], (
            second.stderr
        )
        assert "Failed to recv" not in second.stderr and "Traceback" not in second.stderr
        assert "first job running" not in second.stdout
        (tmp_path / "go").touch()
        for p in job:
            _, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
    finally:
        for p in job:
            stop_popen(p)


@needs_torch
@pytest.mark.torch
@pytest.mark.timeout(150)
def test_a_spare_of_an_elastic_job_says_it_stands_by(tmp_path: Path) -> None:
    """--nnodes 1:2 running with 2 nodes: a third stands by (spares are elastic), and says so at once."""
    script = write_script(tmp_path, "w.py", WAIT_FOR_GO)
    port = free_port()
    args = ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--nnodes", "1:2",
            "--rdzv-id", "spare-id", "--rdzv-conf", "join_timeout=60,last_call_timeout=30,heartbeat_timeout=3,keep_alive_interval=0.5",
            str(script)]  # fmt: skip
    job = [subprocess.Popen([*ELAUNCH, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in "ab"]
    spare = None
    try:
        for p in job:
            assert p.stdout is not None
            assert "first job running" in p.stdout.readline()
        spare = subprocess.Popen([*ELAUNCH, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert spare.stderr is not None
        line = spare.stderr.readline()
        while line and "run spare-id" in line:
            line = spare.stderr.readline()
        assert "is running on" in line and "stands by as a spare" in line, line
        spare.send_signal(signal.SIGTERM)
        _, err = spare.communicate(timeout=30)
        assert spare.returncode == 143, err
        (tmp_path / "go").touch()
        for p in job:
            _, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
    finally:
        for p in [*job, *([spare] if spare else [])]:
            stop_popen(p)
