"""A worker that prints very long lines: the agent's memory, the report and the summary stay
bounded (#10 item 4). Memory is a resource bound, sampled with psutil, not a timing."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from scripts.bench_output_memory import WORKER as LONG_LINES
from scripts.testbed.procs import stop_popen
from tests.helpers import ELAUNCH, write_script

RSS_LIMIT = 120 << 20
"""Far above what the agent needs (~20 MiB) and far below what it kept before the bounds (~500 MiB)."""


@pytest.mark.timeout(180)
def test_agent_memory_report_and_summary_stay_bounded_with_200_mb_of_long_lines(tmp_path: Path) -> None:
    script = write_script(tmp_path, "long.py", LONG_LINES)
    summary = tmp_path / "summary.json"
    err_path = tmp_path / "stderr"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(
            [*ELAUNCH, "--standalone", "--summary-file", str(summary), str(script), str(50 << 20), "4"],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    peak = 0
    try:
        agent = psutil.Process(proc.pid)
        deadline = time.monotonic() + 150
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                peak = max(peak, agent.memory_info().rss)
            except psutil.Error:
                break
            time.sleep(0.01)
        rc = proc.wait(10)
    finally:
        stop_popen(proc)
    assert rc == 1
    assert 0 < peak < RSS_LIMIT, f"agent peak RSS {peak / 2**20:.1f} MiB"
    assert summary.stat().st_size < 200_000
    doc = json.loads(summary.read_text())
    tb = doc["root_cause"]["traceback"]
    assert tb.startswith("Traceback") and "RuntimeError: boom" in tb and "bytes cut" in tb
    with open(err_path, "rb") as f:
        f.seek(-300_000, 2)
        tail = f.read()
    report = tail[tail.index(b"job FAILED") :]
    assert len(report) < 100_000
