"""The command lines of torchrun's own launcher tests (pytorch test/distributed/launcher/test_run.py),
run unchanged under elaunch: option spellings, `=` forms, prefixes (`--redirect=3`), quoted
`--rdzv-conf`, PET_* variables, --no-python / --run-path, c10d with MIN < MAX, several agents.

The scripts are small equivalents of torchrun's `bin/test_script.py` (touches a file named after
its RANK in --touch-file-dir, or fails with --fail) and `bin/test_script.sh` (the same in bash).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import stat
import subprocess
import uuid
from pathlib import Path

import pytest

from scripts.testbed import free_port
from tests.helpers import ELAUNCH, run_elaunch, write_script

needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="c10d needs torch")

TEST_SCRIPT = """
import argparse, os
p = argparse.ArgumentParser()
p.add_argument("--fail", action="store_true")
p.add_argument("--touch-file-dir", "--touch_file_dir", dest="touch_file_dir")
args = p.parse_args()
for k in ("LOCAL_RANK", "RANK", "GROUP_RANK", "ROLE_RANK", "ROLE_NAME", "LOCAL_WORLD_SIZE", "WORLD_SIZE",
          "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT",
          "TORCHELASTIC_MAX_RESTARTS", "TORCHELASTIC_RUN_ID", "OMP_NUM_THREADS", "TORCHELASTIC_ERROR_FILE"):
    print(k, "=", os.environ.get(k))
if args.fail:
    raise RuntimeError("raising exception since --fail flag was set")
open(os.path.join(args.touch_file_dir, os.environ["RANK"]), "w").close()
"""
TEST_SCRIPT_SH = """#!/bin/bash
FILE="$1/$RANK"
echo "creating $FILE"
touch "$FILE"
"""
INIT_METHOD_SCRIPT = """
import argparse, os
import torch, torch.distributed as dist
p = argparse.ArgumentParser()
p.add_argument("--init-method")
args = p.parse_args()
dist.init_process_group("gloo", init_method=args.init_method, rank=int(os.environ["RANK"]),
                        world_size=int(os.environ["WORLD_SIZE"]))
t = torch.ones(1)
dist.all_reduce(t)
assert t.item() == dist.get_world_size()
dist.destroy_process_group()
os._exit(0)  # not through interpreter teardown, where gloo may abort
"""


@pytest.fixture
def touched(tmp_path: Path) -> Path:
    d = tmp_path / "touched"
    d.mkdir()
    return d


def scripts(tmp_path: Path) -> tuple[str, str]:
    py = write_script(tmp_path, "test_script.py", TEST_SCRIPT)
    sh = tmp_path / "test_script.sh"
    sh.write_text(TEST_SCRIPT_SH)
    sh.chmod(sh.stat().st_mode | stat.S_IXUSR)
    return str(py), str(sh)


def ranks(d: Path) -> set[str]:
    return set(os.listdir(d))


def run_id() -> str:
    return str(uuid.uuid4().int)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "extra",
    [
        [f"--rdzv-id={run_id()}"],  # test_launch_user_script_python
        ["--master-addr=localhost", "--master-port=PORT", "--node-rank=0"],  # ..._caffe2_bc
        ["--standalone"],  # test_launch_standalone
        ["--run-path"],  # test_launch_run_path
    ],
    ids=["rdzv-id", "master-addr-port", "standalone", "run-path"],
)
def test_python_script(tmp_path: Path, touched: Path, extra: list[str]) -> None:
    py, _ = scripts(tmp_path)
    extra = [a.replace("PORT", str(free_port())) for a in extra]
    args = ["--nnodes=1", "--nproc-per-node=4", *extra, "--monitor-interval=1", "--start-method=spawn"]
    r = run_elaunch([*args, py, f"--touch-file-dir={touched}"])
    assert r.returncode == 0, r.stderr
    assert ranks(touched) == {"0", "1", "2", "3"}


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("nproc", "expected"), [(["--nproc-per-node=4"], 4), ([], 1)], ids=["4", "default"])
def test_bash_script_and_no_python_with_module_refused(
    tmp_path: Path, touched: Path, nproc: list[str], expected: int
) -> None:
    # test_launch_user_script_bash / _default_nproc: --module with --no-python is an error.
    _, sh = scripts(tmp_path)
    args = ["--nnodes=1", *nproc, f"--rdzv-id={run_id()}", "--monitor-interval=1", "--start-method=spawn"]
    refused = run_elaunch([*args, "--no-python", "--module", sh, str(touched)])
    assert refused.returncode == 2 and "cannot be used together" in refused.stderr
    assert ranks(touched) == set()
    r = run_elaunch([*args, "--no-python", sh, str(touched)])
    assert r.returncode == 0, r.stderr
    assert ranks(touched) == {str(i) for i in range(expected)}


@pytest.mark.timeout(60)
def test_launch_with_env_vars(tmp_path: Path, touched: Path) -> None:
    _, sh = scripts(tmp_path)
    env = {
        "PET_NNODES": "1",
        "PET_NPROC_PER_NODE": "4",
        "PET_RDZV_ID": run_id(),
        "PET_MONITOR_INTERVAL": "1",
        "PET_START_METHOD": "spawn",
        "PET_NO_PYTHON": "1",
    }
    refused = run_elaunch([sh, str(touched)], env={**env, "PET_MODULE": "1"})
    assert refused.returncode == 2 and "cannot be used together" in refused.stderr
    r = run_elaunch([sh, str(touched)], env={**env, "PET_MODULE": "0"})
    assert r.returncode == 0, r.stderr
    assert ranks(touched) == {"0", "1", "2", "3"}


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("nproc", "expected"), [("4", 4), ("auto", os.cpu_count()), ("unknown", None)])
def test_nproc_launch_configurations(tmp_path: Path, touched: Path, nproc: str, expected: int | None) -> None:
    _, sh = scripts(tmp_path)
    args = ["--nnodes=1", f"--nproc-per-node={nproc}", f"--rdzv-id={run_id()}", "--monitor-interval=1"]
    r = run_elaunch([*args, "--start-method=spawn", "--no-python", sh, str(touched)])
    if expected is None:  # torchrun: ValueError
        assert r.returncode == 2 and "--nproc-per-node" in r.stderr
    else:
        assert r.returncode == 0, r.stderr
        assert ranks(touched) == {str(i) for i in range(expected)}


@pytest.mark.timeout(60)
def test_capture_logs_with_redirect_tee_and_prefix_template(tmp_path: Path, touched: Path) -> None:
    # `--redirect=3` is a prefix of --redirects, accepted by torchrun's argparse.
    _, sh = scripts(tmp_path)
    args = ["--nnodes=1", "--nproc-per-node=4", f"--rdzv-id={run_id()}", "--redirect=3", "--tee=3"]
    r = run_elaunch(
        [*args, "--monitor-interval=1", "--start-method=spawn", "--no-python", sh, str(touched)],
        env={"TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE": "[rank${rank}]: "},
    )
    assert r.returncode == 0, r.stderr
    for i in range(4):
        assert f"[rank{i}]: creating " in r.stdout
    # Without --log-dir the files are kept in a temp dir whose path is printed (as torchrun keeps them).
    kept = [p for p in Path(os.environ["TMPDIR"]).iterdir() if p.name.startswith("elaunch-")]
    assert len(kept) == 1 and str(kept[0]) in r.stderr
    shutil.rmtree(kept[0])


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("spec", "ok"), [("default", True), ("DOESNOT_EXIST", False)])
def test_logs_specs(tmp_path: Path, touched: Path, spec: str, ok: bool) -> None:
    py, _ = scripts(tmp_path)
    args = ["--run-path", "--nnodes=1", "--nproc-per-node=1", "--monitor-interval=1", f"--logs_specs={spec}"]
    r = run_elaunch([*args, py, f"--touch-file-dir={touched}"])
    assert r.returncode == (0 if ok else 2), r.stderr
    assert ranks(touched) == ({"0"} if ok else set())


def c10d_args(port: int) -> list[str]:
    return ["--nnodes=1:2", "--nproc-per-node=4", "--rdzv-backend=c10d", f"--rdzv-endpoint=localhost:{port}"]


@needs_torch
@pytest.mark.torch
@pytest.mark.timeout(90)
def test_launch_elastic_with_quoted_rdzv_conf(tmp_path: Path, touched: Path) -> None:
    py, _ = scripts(tmp_path)
    conf = "--rdzv-conf='join_timeout=5,last_call_timeout=1,timeout=5'"
    args = [*c10d_args(free_port()), conf, f"--rdzv-id={run_id()}", "--monitor-interval=1", "--start-method=spawn"]
    r = run_elaunch([*args, py, f"--touch-file-dir={touched}"], timeout=80)
    assert r.returncode == 0, r.stderr
    assert ranks(touched) == {"0", "1", "2", "3"}
    failed = run_elaunch([*args[:4], conf, f"--rdzv-id={run_id()}", "--max-restarts=0", py, "--fail"], timeout=80)
    assert failed.returncode == 1 and "raising exception since --fail flag was set" in failed.stderr


@needs_torch
@pytest.mark.torch
@pytest.mark.timeout(120)
def test_launch_elastic_multiple_agents(tmp_path: Path, touched: Path) -> None:
    py, _ = scripts(tmp_path)
    args = [*c10d_args(free_port()), "--rdzv_conf=timeout=5", f"--rdzv-id={run_id()}", "--monitor-interval=1"]
    argv = [*ELAUNCH, *args, "--start-method=spawn", py, f"--touch-file-dir={touched}"]
    with open(tmp_path / "other.err", "wb") as err:
        other = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=100)
        assert other.wait(100) == 0, (tmp_path / "other.err").read_text()
    finally:
        if other.poll() is None:
            other.kill()
            other.wait(10)
    assert r.returncode == 0, r.stderr
    assert ranks(touched) == {str(i) for i in range(8)}


@needs_torch
@pytest.mark.torch
@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["tcp", "env"])
def test_init_method_with_master_port(tmp_path: Path, method: str) -> None:
    # test_init_method_{tcp,env}_with_torchelastic: --master-port is where the workers meet.
    script = write_script(tmp_path, "test_script_init_method.py", INIT_METHOD_SCRIPT)
    port = free_port()
    init = f"tcp://localhost:{port}" if method == "tcp" else "env://"
    args = ["--run-path", "--nnodes=1", "--nproc-per-node=4", "--master-addr=localhost", f"--master-port={port}"]
    r = run_elaunch([*args, "--monitor-interval=1", str(script), f"--init-method={init}"], timeout=100)
    assert r.returncode == 0, r.stderr
