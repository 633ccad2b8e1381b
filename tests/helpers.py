"""Shared test helpers: running the real CLI, writing worker scripts (waiting and processes: scripts.testbed)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ELAUNCH = [sys.executable, "-m", "elaunch"]
ROOT = Path(__file__).resolve().parent.parent


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


def write_script(dir_: Path, name: str, body: str) -> Path:
    path = dir_ / name
    path.write_text(body)
    return path
