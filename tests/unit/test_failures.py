"""Failure texts, written once: what the agent publishes and what the report shows."""

from __future__ import annotations

import pytest

from elaunch.failures import cause_text, failure_detail, failure_text
from elaunch.spec import WorkerFailure
from tests.unit.history import T0, TRACEBACK

pytestmark = pytest.mark.timeout(10)

EXITED = WorkerFailure(local_rank=1, global_rank=5, role="r", host="vm", pid=42, exitcode=3, signal=None,
                       timestamp=T0, traceback=TRACEBACK)  # fmt: skip
KILLED = WorkerFailure(local_rank=0, global_rank=4, role="r", host="vm", pid=41, exitcode=None, signal=9,
                       timestamp=T0, last_lines=tuple(f"line {i}" for i in range(8)))  # fmt: skip
SILENT = WorkerFailure(local_rank=0, global_rank=0, role="r", host="vm", pid=40, exitcode=1, signal=None, timestamp=T0)


def test_cause_text() -> None:
    assert cause_text(EXITED) == "rank 5 (pid 42) exited with code 3"
    assert cause_text(KILLED) == "rank 4 (pid 41) was killed by SIGKILL"


def test_failure_summary_for_other_nodes() -> None:
    assert failure_text(EXITED) == f"vm: rank 5 (pid 42) exited with code 3\n{TRACEBACK}"
    assert failure_text(KILLED) == "vm: rank 4 (pid 41) was killed by SIGKILL\n" + "\n".join(
        f"line {i}" for i in range(3, 8)
    )
    assert failure_text(SILENT) == "vm: rank 0 (pid 40) exited with code 1"


def test_failure_detail(utc: None) -> None:
    assert failure_detail(SILENT) == [
        "root cause: rank 0 (local rank 0) on vm, pid 40, exited with code 1",
        "  at 00:00:00.000, restart 0",
        "  kind: exit_code, restartable",
    ]
    assert failure_detail(KILLED, indent="-")[:3] == [
        "root cause: rank 4 (local rank 0) on vm, pid 41, was killed by SIGKILL (the kernel's OOM killer is a "
        "common cause: check `dmesg`)",
        "-at 00:00:00.000, restart 0",
        "-kind: exit_code, restartable",
    ]
