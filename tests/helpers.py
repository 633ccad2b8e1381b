"""Shared test helpers: deadlines instead of sleeps, running the real CLI, finding leftovers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import psutil

T = TypeVar("T")
ELAUNCH = [sys.executable, "-m", "elaunch"]
ROOT = Path(__file__).resolve().parent.parent


def wait_until(cond: Callable[[], T], timeout: float, what: str, interval: float = 0.02) -> T:
    """Return cond()'s first truthy value; fail with `what` if none comes before the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def run_elaunch(
    args: Sequence[str], timeout: float = 60, env: dict[str, str] | None = None, cwd: str | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [*ELAUNCH, *args], capture_output=True, text=True, timeout=timeout, env=full_env, cwd=cwd, check=False
    )


def start_elaunch(args: Sequence[str], env: dict[str, str] | None = None, **kw: object) -> subprocess.Popen[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.Popen(  # type: ignore[call-overload]
        [*ELAUNCH, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env, **kw
    )


def procs_with(token: str) -> list[psutil.Process]:
    """Live processes whose command line mentions `token` (zombies excluded)."""
    out = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if p.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if any(token in part for part in (p.info["cmdline"] or [])):
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def kill_all(procs: list[psutil.Process]) -> None:
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=5)


def write_script(dir_: Path, name: str, body: str) -> Path:
    path = dir_ / name
    path.write_text(body)
    return path
