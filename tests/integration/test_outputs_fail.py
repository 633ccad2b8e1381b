"""Outputs that fail (a pipe closed early, a full file system, a failing events file) and closed
standard descriptors: reported once, dropped, the rest goes on; never a traceback or a silent 0."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.testbed.procs import stop_popen
from tests.helpers import ELAUNCH, write_script

FOREVER = """
import itertools, os, sys
r = os.environ["RANK"]
for i in itertools.count():
    print("rank", r, "line", i, flush=(i % 100 == 0))
"""
LINES = """
import os, sys
r = os.environ["RANK"]
n = int(sys.argv[1])
sys.stdout.write("".join(f"rank {r} line {i}\\n" for i in range(n)))
"""


@contextlib.contextmanager
def tiny_tmpfs(where: Path, size: str = "64k") -> Iterator[Path]:
    """A real tmpfs of `size` mounted at `where` for the test; always unmounted."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        timeout=30,
        check=False,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30, check=False)


@pytest.mark.timeout(90)
def test_stdout_pipe_closed_early_stops_the_job_with_141_and_a_summary(tmp_path: Path) -> None:
    """`elaunch ... | head -1`: a real pipe whose reader leaves; the workers would print forever."""
    script = write_script(tmp_path, "forever.py", FOREVER)
    summary = tmp_path / "summary.json"
    proc = subprocess.Popen(
        [*ELAUNCH, "--standalone", "--nproc-per-node", "2", "--summary-file", str(summary), str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline().startswith(b"[")
        proc.stdout.close()  # the reader goes away, as `head -1` does
        err = proc.stderr.read().decode()
        rc = proc.wait(60)
    finally:
        stop_popen(proc)
    assert rc == 141, err
    assert "Traceback" not in err
    lost = [line for line in err.splitlines() if "output lost" in line]
    assert len(lost) == 1 and "stdout: broken pipe" in lost[0] and "stopping the job" in lost[0], err
    assert "job STOPPED by SIGPIPE: exit code 141" in err
    doc = json.loads(summary.read_text())
    assert (doc["state"], doc["exit_code"], doc["interrupted_by"]) == ("STOPPED", 141, "SIGPIPE")


@pytest.mark.timeout(90)
def test_console_gone_but_log_files_keep_the_output_the_job_goes_on(tmp_path: Path) -> None:
    script = write_script(tmp_path, "lines.py", LINES)
    logs = tmp_path / "logs"
    proc = subprocess.Popen(
        [*ELAUNCH, "--standalone", "--nproc-per-node", "2", "--log-dir", str(logs), "-t", "3", str(script), "100000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.readline()
        proc.stdout.close()
        err = proc.stderr.read().decode()
        rc = proc.wait(60)
    finally:
        stop_popen(proc)
    assert rc == 0, err
    assert "the log files keep the workers' output" in err
    for rank in (0, 1):
        (log,) = logs.glob(f"*/attempt_0/{rank}/stdout.log")
        assert log.read_bytes().count(b"\n") == 100000


@pytest.mark.timeout(120)
def test_log_dir_on_a_full_tmpfs_is_reported_once_and_the_console_keeps_everything(tmp_path: Path) -> None:
    script = write_script(tmp_path, "lines.py", LINES)
    summary = tmp_path / "summary.json"
    with tiny_tmpfs(tmp_path / "small") as small:
        r = subprocess.run(
            [*ELAUNCH, "--standalone", "--nproc-per-node", "2", "--log-dir", str(small), "-t", "3",
             "--summary-file", str(summary), str(script), "100000"],
            capture_output=True, timeout=100, check=False,
        )  # fmt: skip
    err = r.stderr.decode()
    assert r.returncode == 0, err
    assert "Traceback" not in err
    lost = [line for line in err.splitlines() if "output lost" in line]
    assert len(lost) == 1 and "--log-dir files" in lost[0] and "No space left on device" in lost[0], err
    assert r.stdout.count(b"\n") == 200000  # not a line lost on the console
    assert json.loads(summary.read_text())["state"] == "SUCCEEDED"


@pytest.mark.timeout(90)
def test_failing_events_file_is_reported_once_and_dropped(tmp_path: Path) -> None:
    script = write_script(tmp_path, "lines.py", LINES)
    summary = tmp_path / "summary.json"
    r = subprocess.run(
        [*ELAUNCH, "--standalone", "--nproc-per-node", "2", "--events-file", "/dev/full",
         "--summary-file", str(summary), str(script), "20000"],
        capture_output=True, timeout=80, check=False,
    )  # fmt: skip
    err = r.stderr.decode()
    assert r.returncode == 0, err
    assert "Traceback" not in err
    lost = [line for line in err.splitlines() if "output lost" in line]
    assert len(lost) == 1 and "--events-file /dev/full: No space left on device" in lost[0], err
    assert r.stdout.count(b"\n") == 40000
    assert json.loads(summary.read_text())["state"] == "SUCCEEDED"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("redirect", [">&-", "2>&-", "<&-", ">&- 2>&-"])
def test_closed_standard_descriptors(tmp_path: Path, redirect: str) -> None:
    """Started with fd 0, 1 or 2 closed: they are opened on /dev/null and the job runs as usual."""
    marker = tmp_path / "ran"
    script = write_script(tmp_path, "w.py", f"print('hello'); open({str(marker)!r}, 'w').close()\n")
    summary = tmp_path / "summary.json"
    cmd = " ".join([*ELAUNCH, "--standalone", "--nproc-per-node", "2", "--summary-file", str(summary), str(script)])
    r = subprocess.run(["bash", "-c", f"exec {cmd} {redirect}"], capture_output=True, timeout=50, check=False)
    assert r.returncode == 0, r.stderr
    assert marker.exists()
    assert json.loads(summary.read_text())["state"] == "SUCCEEDED"
    if "2>&-" not in redirect:
        assert b"job SUCCEEDED" in r.stderr and b"Traceback" not in r.stderr
    if ">&-" not in redirect.replace("2>&-", ""):
        assert r.stdout.count(b"hello") == 2


@pytest.mark.timeout(90)
def test_summary_file_on_a_full_tmpfs_is_reported_once(tmp_path: Path) -> None:
    script = write_script(tmp_path, "lines.py", LINES)
    with tiny_tmpfs(tmp_path / "small") as small:
        filler = small / "filler"
        with contextlib.suppress(OSError), open(filler, "wb") as f:
            f.write(b"x" * (1 << 20))  # fills it: ENOSPC, the part written stays
        r = subprocess.run(
            [*ELAUNCH, "--standalone", "--summary-file", str(small / "summary.json"), str(script), "10"],
            capture_output=True, timeout=80, check=False,
        )  # fmt: skip
        assert not (small / "summary.json").exists()
        assert [p.name for p in small.iterdir()] == ["filler"]  # no temp file left behind
    err = r.stderr.decode()
    assert r.returncode == 0, err
    lost = [line for line in err.splitlines() if "output lost" in line]
    assert len(lost) == 1 and "--summary-file" in lost[0] and "No space left on device" in lost[0], err
    assert "Traceback" not in err and "job SUCCEEDED" in err
