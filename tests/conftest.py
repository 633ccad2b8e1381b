"""Every test gets a private directory as its process marker, and must leave nothing behind."""

from __future__ import annotations

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


@pytest.fixture(autouse=True)
def no_leftovers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Workers are started from scripts in tmp_path: any process naming it afterwards is a leak.

    elaunch (and torch) make their temporary directories under TMPDIR, pointed here at a private
    directory that must be empty again at the end.
    """
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    yield
    # A SIGKILLed process needs a moment to die: wait for it, bounded, before calling it a leak.
    deadline = time.monotonic() + 5
    left = procs_with(str(tmp_path))
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = procs_with(str(tmp_path))
    kill_all(left)
    assert not left, f"processes left behind: {[(p.pid, p.info.get('cmdline')) for p in left]}"
    # torch's compile cache (torchinductor_<user>) belongs to the worker, not to elaunch.
    leftover = sorted(p.name for p in tmpdir.iterdir() if not p.name.startswith("torchinductor_"))
    assert not leftover, f"temporary files left behind in TMPDIR: {leftover}"
