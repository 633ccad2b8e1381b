"""The agent imports torch (for the c10d store) without printing torch's import-time warnings."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")

PROBE = """
import sys
sys.modules["numpy"] = None  # as if numpy were not installed: torch warns "Failed to initialize NumPy"
import warnings
warnings.simplefilter("default")
from elaunch.torchimport import import_quietly
dist = import_quietly("torch.distributed")
assert dist.is_available()
import os
assert "TORCH_CPP_LOG_LEVEL" not in os.environ  # not leaked into the workers' environment
print("imported")
"""


@pytest.mark.torch
@pytest.mark.timeout(60)
@pytest.mark.parametrize("quietly", [True, False])
def test_torchs_import_warnings_are_not_the_agents(quietly: bool) -> None:
    # Without numpy torch warns "Failed to initialize NumPy" on import: the plain import shows it
    # (so the test can fail), the agent's import does not.
    code = PROBE if quietly else PROBE.replace('import_quietly("torch.distributed")', "__import__('torch')")
    env = dict(os.environ)
    env.pop("TORCH_CPP_LOG_LEVEL", None)
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=50)
    assert "imported" in p.stdout or not quietly, p.stderr
    assert ("NumPy" in p.stderr) is not quietly, p.stderr
