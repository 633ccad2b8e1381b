"""Every test gets a private directory as its process marker, and must leave nothing behind."""

from __future__ import annotations

import glob
import importlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import kill_all, procs_with

# The test bed (fake hosts, etcd, SLURM) lives in scripts/testbed; its fixtures serve every test.
_SCRIPTS = str(Path(__file__).resolve().parents[1] / "scripts")
if _SCRIPTS not in sys.path:
    sys.path.insert(0, _SCRIPTS)
_fixtures = importlib.import_module("testbed.fixtures")
netns_cluster = _fixtures.netns_cluster
etcd_factory = _fixtures.etcd_factory
etcd_server = _fixtures.etcd_server
slurm_cluster = _fixtures.slurm_cluster


def _tmp_dirs() -> set[str]:
    return set(glob.glob("/tmp/elaunch-*")) | set(glob.glob("/tmp/torchelastic_*"))


@pytest.fixture(autouse=True)
def no_leftovers(tmp_path: Path) -> Iterator[None]:
    """Workers are started from scripts in tmp_path: any process naming it afterwards is a leak."""
    before = _tmp_dirs()
    yield
    # A SIGKILLed process needs a moment to die: wait for it, bounded, before calling it a leak.
    deadline = time.monotonic() + 5
    left = procs_with(str(tmp_path))
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = procs_with(str(tmp_path))
    kill_all(left)
    assert not left, f"processes left behind: {[(p.pid, p.info.get('cmdline')) for p in left]}"
    new_dirs = _tmp_dirs() - before
    assert not new_dirs, f"temporary directories left behind: {sorted(new_dirs)}"
