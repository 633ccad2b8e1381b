"""torch.distributed with gloo under elaunch: what training scripts actually call."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ELAUNCH, run_elaunch, write_script

pytest.importorskip("torch")

GLOO = """
import os, sys
import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record

@record
def main():
    assert dist.is_torchelastic_launched(), "not seen as a torchelastic launch"
    method = sys.argv[1]
    if method == "env":
        dist.init_process_group("gloo")
    else:
        url = "tcp://%s:%s" % (os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"])
        dist.init_process_group("gloo", init_method=url, rank=int(os.environ["RANK"]),
                                world_size=int(os.environ["WORLD_SIZE"]))
    t = torch.tensor([float(dist.get_rank() + 1)])
    dist.all_reduce(t)
    n = dist.get_world_size()
    assert t.item() == n * (n + 1) / 2, t
    print("allreduce ok", dist.get_rank(), n, method, flush=True)
    if os.environ.get("FAIL_RANK") == os.environ["RANK"]:
        raise RuntimeError("deliberate failure in rank %s" % os.environ["RANK"])
    dist.barrier()
    dist.destroy_process_group()

# torch 2.13's gloo sometimes aborts (SIGABRT) during interpreter teardown, which would turn the
# worker's real exit status into 134: report the outcome, then leave without the teardown.
try:
    main()
except BaseException:
    import traceback
    traceback.print_exc()
    sys.stderr.flush()
    os._exit(1)
sys.stdout.flush()
os._exit(0)
"""


@pytest.mark.torch
@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["env", "tcp"])
def test_gloo_allreduce_four_workers(tmp_path: Path, method: str) -> None:
    script = write_script(tmp_path, "gloo.py", GLOO)
    r = run_elaunch(["--standalone", "--nproc-per-node", "4", str(script), method], timeout=110)
    assert r.returncode == 0, r.stderr
    for rank in range(4):
        assert f"[{rank}] allreduce ok {rank} 4 {method}" in r.stdout


@pytest.mark.torch
@pytest.mark.timeout(120)
def test_record_error_file_reaches_report(tmp_path: Path) -> None:
    script = write_script(tmp_path, "gloo.py", GLOO)
    r = run_elaunch(["--nproc-per-node", "2", str(script), "env"], env={"FAIL_RANK": "1"}, timeout=110)
    assert r.returncode == 1
    assert "root cause: rank 1" in r.stderr
    assert "deliberate failure in rank 1" in r.stderr
    assert "error: " in r.stderr  # the message from torch's error file, written by @record


@pytest.mark.torch
@pytest.mark.timeout(120)
def test_readme_demo_trains(tmp_path: Path) -> None:
    demo = Path(__file__).resolve().parents[2] / "examples" / "ddp_demo.py"
    r = run_elaunch(["--standalone", "--nproc-per-node", "2", str(demo), "--epochs", "1"], timeout=110)
    assert r.returncode == 0, r.stderr
    assert "[0] done: final loss" in r.stdout


# Every difference between the environment torchrun gives a worker and elaunch's, with its reason
# (docs/environment.md). Anything else that differs fails the test.
DUMP_ALL_ENV = """
import json, os, sys
with open(sys.argv[1] + "-" + os.environ["RANK"] + ".json", "w") as f:
    json.dump(dict(os.environ), f)
"""
DIFFERENT_VALUES = {
    "TORCHELASTIC_RUN_ID": "a random id per job, as torchrun's --standalone",
    "MASTER_PORT": "a free port per job",
    "MASTER_ADDR": "127.0.0.1 on one node, where the free port was picked (torchrun: localhost)",
    "TORCHELASTIC_ERROR_FILE": "elaunch's own run directory",
    "TORCHELASTIC_USE_AGENT_STORE": "False: elaunch's agent hosts no TCPStore at MASTER_PORT",
    "TORCHELASTIC_SIGNALS_TO_HANDLE": "elaunch also handles SIGUSR1/SIGUSR2 by default (passed on)",
    "PYTHONUNBUFFERED": "1 so that output arrives line by line through the pipes",
    "ELAUNCH_HEARTBEAT_FILE": "elaunch's own: a file the worker may touch to show progress (hang detection)",
}


@pytest.mark.torch
@pytest.mark.timeout(120)
def test_worker_environment_is_torchruns(tmp_path: Path) -> None:
    script = write_script(tmp_path, "dump_all.py", DUMP_ALL_ENV)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # the same base for both
    env["TMPDIR"] = str(tmp_path / "tmp")  # torchrun leaves a torchelastic_* dir in it
    os.mkdir(env["TMPDIR"])
    args = ["--standalone", "--nproc-per-node", "2", str(script)]
    for launcher, out in (([sys.executable, "-m", "torch.distributed.run"], "t"), (ELAUNCH, "e")):
        p = subprocess.run([*launcher, *args, str(tmp_path / out)], env=env, capture_output=True, timeout=100)
        assert p.returncode == 0, p.stderr.decode(errors="replace")
    for rank in (0, 1):
        theirs = json.loads((tmp_path / f"t-{rank}.json").read_text())
        ours = json.loads((tmp_path / f"e-{rank}.json").read_text())
        differ = {k for k in theirs.keys() | ours.keys() if theirs.get(k) != ours.get(k)}
        assert differ <= DIFFERENT_VALUES.keys(), {k: (theirs.get(k), ours.get(k)) for k in differ}
        assert theirs.keys() <= ours.keys()  # nothing torchrun sets is missing
