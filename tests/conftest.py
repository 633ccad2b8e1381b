"""Every test gets a private directory as its process marker, and must leave nothing behind."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.testbed import WaitTimeout, wait_until
from scripts.testbed.procs import cmdline, kill_pids, pids_mentioning

# The test bed's fixtures (fake hosts, etcd, SLURM) serve every test.
pytest_plugins = ["scripts.testbed.fixtures"]


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
    with contextlib.suppress(WaitTimeout):
        wait_until(lambda: not pids_mentioning(str(tmp_path)), 5, "the test's processes to exit", interval=0.05)
    left = pids_mentioning(str(tmp_path))
    described = [(pid, cmdline(pid)) for pid in left]
    kill_pids(left)
    assert not left, f"processes left behind: {described}"
    # torch's compile cache (torchinductor_<user>) belongs to the worker, not to elaunch.
    leftover = sorted(p.name for p in tmpdir.iterdir() if not p.name.startswith("torchinductor_"))
    assert not leftover, f"temporary files left behind in TMPDIR: {leftover}"
