"""Health checks before each round (elaunch/healthcheck.py): the pure rules, and the edge with real
commands (tiny shell commands, a real directory)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from elaunch import events as ev
from elaunch.console import describe
from elaunch.healthcheck import (
    BUILTIN,
    HealthCheck,
    HealthReport,
    busy_gpus,
    exit_detail,
    failure_text,
    last_lines,
    script_path,
    visible_gpus,
)
from elaunch.runview import fold
from scripts.testbed import wait_until
from scripts.testbed.procs import alive

pytestmark = pytest.mark.timeout(30)

APPS = "GPU-aaa, 4242, python\nGPU-bbb, 77, other, with comma\n"
GPUS = "0, GPU-aaa\n1, GPU-bbb\n"


def test_busy_gpus_are_the_visible_ones_with_a_compute_process() -> None:
    assert busy_gpus(APPS, GPUS, None) == ["GPU 0: pid 4242 (python)", "GPU 1: pid 77 (other, with comma)"]
    assert busy_gpus(APPS, GPUS, {"1"}) == ["GPU 1: pid 77 (other, with comma)"]
    assert busy_gpus(APPS, GPUS, {"GPU-aaa"}) == ["GPU 0: pid 4242 (python)"]
    assert busy_gpus("", GPUS, None) == []
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "0, 2,"}) == {"0", "2"} and visible_gpus({}) is None


def test_exit_details_and_last_lines() -> None:
    assert exit_detail(0, False, 5) == "passed"
    assert exit_detail(3, False, 5) == "exit code 3"
    assert exit_detail(-9, False, 5) == "killed by SIGKILL"
    assert exit_detail(None, True, 2.5) == "timed out after 2.5 s (--health-check-timeout)"
    assert last_lines(b"a\n\nb\n" + b"x\n" * 20, 3) == ("x", "x", "x")
    r = HealthReport(False, "node7", "check.sh", "exit code 1", ("disk full",))
    assert (
        failure_text(r)
        == "node7: health check failed (check.sh): exit code 1; it did not join the round\n  | disk full"
    )


def test_script_path_by_entry_kind() -> None:
    assert script_path(("py", "t.py", "--x"), "python") == "t.py"
    assert script_path(("py", "-c", "code", "t.py"), "run_path") == "t.py"
    assert script_path(("py", "-m", "pkg"), "module") is None
    assert script_path(("./prog",), "program") == "./prog" and script_path(("prog",), "program") is None


def _check(tmp_path: Path, command: str, timeout: float = 20, **kw: object) -> HealthReport:
    script = tmp_path / "t.py"
    script.touch()
    args = {"script": str(script), "log_dir": None, **kw}
    env = {"PATH": os.environ["PATH"]}  # no nvidia-smi here
    return HealthCheck(command, timeout, "h1", env=env, **args)()  # type: ignore[arg-type]


def test_a_command_passes_with_exit_0_and_fails_otherwise_with_its_last_lines(tmp_path: Path) -> None:
    assert _check(tmp_path, BUILTIN).ok
    assert _check(tmp_path, "echo fine").ok
    r = _check(tmp_path, "echo one; echo two >&2; exit 4")
    assert (r.ok, r.detail, r.last_lines, r.host) == (False, "exit code 4", ("one", "two"), "h1")


def test_a_command_that_hangs_is_killed_at_the_timeout(tmp_path: Path) -> None:
    r = _check(tmp_path, f"echo started; sleep 30 & echo $! > {tmp_path}/child; wait", timeout=1.0)
    assert (r.ok, r.detail, r.last_lines) == (False, "timed out after 1 s (--health-check-timeout)", ("started",))
    child = int((tmp_path / "child").read_text())
    assert wait_until(lambda: not alive(child), 10, "the check's child to be killed with its group")


def test_builtin_checks_the_script_and_the_log_dir(tmp_path: Path) -> None:
    gone = _check(tmp_path, BUILTIN, script=str(tmp_path / "missing.py"))
    assert not gone.ok and gone.check == "built-in checks" and "missing.py: no such file" in gone.detail
    assert _check(tmp_path, BUILTIN, log_dir=str(tmp_path / "logs" / "new")).ok  # creatable is fine
    (tmp_path / "file").touch()
    bad = _check(tmp_path, BUILTIN, log_dir=str(tmp_path / "file" / "x"))
    assert not bad.ok and "is not a directory" in bad.detail
    assert not list(tmp_path.glob(".elaunch-health-*"))


def test_the_console_and_the_view_show_a_check() -> None:
    ok = ev.HealthChecked(ok=True, check="builtin", detail="passed", duration=0.25)
    bad = ev.HealthChecked(ok=False, check="c.sh", detail="exit code 1", last_lines=("GPU 3 busy",))
    assert describe(ok, fold([ok])) == "health check passed (builtin, 0.25s)"
    assert describe(bad, fold([bad])) == (
        "health check FAILED (c.sh): exit code 1; this node does not join the round\n  | GPU 3 busy"
    )
    v = fold([ok, bad])
    assert v.health_checks == 2 and v.health_failed is bad
