"""The true cause across nodes (issue #11): a rank on one node raises, the other node's rank then
fails inside gloo with "Connection closed by peer". Both nodes must name the same root cause, the
real exception, and call the echo a lost peer. Two agents on 127.0.0.1, gloo workers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts.testbed import free_port
from tests.helpers import write_script
from tests.multinode.test_loopback import Agents, agents, c10d, needs_torch

__all__ = ["agents"]  # the fixture, used by name

PEER = """
import os, sys, time, traceback
from datetime import timedelta
import torch
import torch.distributed as dist

def main():
    dist.init_process_group("gloo", timeout=timedelta(seconds=30))
    t = torch.ones(1)
    dist.all_reduce(t)
    print("step 1", flush=True)
    if dist.get_rank() == 1:
        raise ValueError("bad batch on rank 1")
    while True:
        dist.all_reduce(t)
        time.sleep(0.05)

# Report the outcome, then leave without the interpreter's teardown (torch 2.13's gloo may abort
# there, turning the exit status into 134): test workers must not depend on it.
try:
    main()
except BaseException:
    traceback.print_exc()
    sys.stderr.flush()
    os._exit(1)
"""


@needs_torch
@pytest.mark.torch
@pytest.mark.timeout(120)
def test_every_node_names_the_raising_rank_not_the_lost_peer(agents: Agents, tmp_path: Path) -> None:
    script = write_script(tmp_path, "peer.py", PEER)
    common = c10d(free_port())
    for name in ("a", "b"):
        agents.start(name, [*common, "--nproc-per-node", "1", "--summary-file", str(tmp_path / f"{name}.json"),
                            str(script)])  # fmt: skip
    for name in ("a", "b"):
        assert agents.wait(name, 100) == 1, agents.err(name)
    causes = {}
    for name in ("a", "b"):
        doc = json.loads((tmp_path / f"{name}.json").read_text())
        cause = doc["root_cause"]
        causes[name] = (cause["global_rank"], cause["kind"], cause["exception"])
        report = agents.err(name)[agents.err(name).rindex("job FAILED") :]
        assert "root cause: rank 1 (local rank 0)" in report, report
        assert "ValueError: bad batch on rank 1" in report, report
    assert causes["a"] == causes["b"] == (1, "exception", "ValueError"), causes
    # The node of rank 0 sees its rank fail too, as a consequence, unless the closed job stopped it first.
    for name in ("a", "b"):
        err = agents.err(name)
        if "Connection closed by peer" in err and "rank 0 (pid" in err and "HEALTHY -> FAILED" in err:
            assert "also failed after it: rank 0 (lost_peer: RuntimeError)" in err, err
