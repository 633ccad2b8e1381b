"""Real workers on one node: environment, entry-point forms, exit codes, output, files."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from elaunch.tails import LAST_LINES
from scripts.testbed import free_port
from tests.helpers import ELAUNCH, run_elaunch, start_elaunch, write_script

ENV_KEYS = [
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "ROLE_RANK",
    "ROLE_NAME",
    "ROLE_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RESTART_COUNT",
    "TORCHELASTIC_MAX_RESTARTS",
    "TORCHELASTIC_RUN_ID",
    "TORCHELASTIC_USE_AGENT_STORE",
    "TORCHELASTIC_ERROR_FILE",
    "TORCHELASTIC_SIGNALS_TO_HANDLE",
    "TORCH_NCCL_ASYNC_ERROR_HANDLING",
    "OMP_NUM_THREADS",
    "PYTHONUNBUFFERED",
]

DUMP_ENV = f"""
import json, os, sys
keys = {ENV_KEYS!r}
out = {{k: os.environ.get(k) for k in keys}}
out["argv"] = sys.argv[1:]
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "env-%s.json" % os.environ["RANK"])
with open(path, "w") as f:
    json.dump(out, f)
"""


def _envs(tmp_path: Path, n: int) -> list[dict[str, object]]:
    return [json.loads((tmp_path / f"env-{r}.json").read_text()) for r in range(n)]


@pytest.mark.timeout(60)
def test_worker_environment_standalone(tmp_path: Path) -> None:
    script = write_script(tmp_path, "dump.py", DUMP_ENV)
    r = run_elaunch(["--standalone", "--nproc-per-node", "3", "--max-restarts", "2", str(script), "--x=${local_rank}"])
    assert r.returncode == 0, r.stderr
    envs = _envs(tmp_path, 3)
    run_ids = {e["TORCHELASTIC_RUN_ID"] for e in envs}
    assert len(run_ids) == 1 and run_ids != {"none"}
    ports = {e["MASTER_PORT"] for e in envs}
    assert len(ports) == 1
    for rank, e in enumerate(envs):
        assert e["RANK"] == e["LOCAL_RANK"] == e["ROLE_RANK"] == str(rank)
        assert e["WORLD_SIZE"] == e["LOCAL_WORLD_SIZE"] == e["ROLE_WORLD_SIZE"] == "3"
        assert e["GROUP_RANK"] == "0" and e["GROUP_WORLD_SIZE"] == "1"
        assert e["ROLE_NAME"] == "default"
        assert e["MASTER_ADDR"] == "127.0.0.1"
        assert e["TORCHELASTIC_RESTART_COUNT"] == "0" and e["TORCHELASTIC_MAX_RESTARTS"] == "2"
        assert e["TORCHELASTIC_USE_AGENT_STORE"] == "False"
        assert str(e["TORCHELASTIC_ERROR_FILE"]).endswith(f"attempt_0/{rank}/error.json")
        assert e["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
        assert e["TORCHELASTIC_SIGNALS_TO_HANDLE"] == "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1,SIGUSR2"
        assert e["OMP_NUM_THREADS"] == "1"
        assert e["PYTHONUNBUFFERED"] == "1"
        assert e["argv"] == [f"--x={rank}"]


@pytest.mark.timeout(60)
def test_pet_variables_and_static_master(tmp_path: Path) -> None:
    script = write_script(tmp_path, "dump.py", DUMP_ENV)
    env = {"PET_NPROC_PER_NODE": "2", "PET_MASTER_PORT": "29517", "PET_RDZV_ID": "job7", "OMP_NUM_THREADS": "3"}
    r = run_elaunch(["--role", "trainer", "--master-addr", "localhost", str(script)], env=env)
    assert r.returncode == 0, r.stderr
    envs = _envs(tmp_path, 2)
    for e in envs:
        assert e["MASTER_ADDR"] == "localhost" and e["MASTER_PORT"] == "29517"
        assert e["TORCHELASTIC_RUN_ID"] == "job7"
        assert e["ROLE_NAME"] == "trainer"
        assert e["OMP_NUM_THREADS"] == "3"


@pytest.mark.timeout(60)
def test_command_line_beats_pet(tmp_path: Path) -> None:
    script = write_script(tmp_path, "dump.py", DUMP_ENV)
    r = run_elaunch(["--nproc_per_node", "1", str(script)], env={"PET_NPROC_PER_NODE": "3"})
    assert r.returncode == 0, r.stderr
    assert [p.name for p in sorted(tmp_path.glob("env-*.json"))] == ["env-0.json"]


@pytest.mark.timeout(60)
def test_module_mode(tmp_path: Path) -> None:
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "train.py").write_text("import os, sys\nprint('module rank', os.environ['RANK'], sys.argv[1:])\n")
    r = run_elaunch(["--nproc-per-node", "2", "-m", "mypkg.train", "a"], env={"PYTHONPATH": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert "[0] module rank 0 ['a']" in r.stdout
    assert "[1] module rank 1 ['a']" in r.stdout


@pytest.mark.timeout(60)
def test_no_python_program(tmp_path: Path) -> None:
    prog = write_script(
        tmp_path, "prog.sh", '#!/bin/sh\necho "shell rank $RANK arg $1 unbuf=${PYTHONUNBUFFERED:-unset}"\n'
    )
    prog.chmod(0o755)
    r = run_elaunch(["--nproc-per-node", "2", "--no-python", str(prog), "${local_rank}"], env={"PYTHONUNBUFFERED": ""})
    assert r.returncode == 0, r.stderr
    assert "shell rank 1 arg 1" in r.stdout


@pytest.mark.timeout(60)
def test_run_path(tmp_path: Path) -> None:
    script = write_script(
        tmp_path, "rp.py", "import sys, os\nprint('runpath', __name__, sys.argv[1:], os.environ['LOCAL_RANK'])\n"
    )
    r = run_elaunch(["--nproc-per-node", "1", "--run-path", str(script), "q"])
    assert r.returncode == 0, r.stderr
    assert "runpath __main__ ['q'] 0" in r.stdout


@pytest.mark.timeout(60)
def test_virtual_local_rank(tmp_path: Path) -> None:
    script = write_script(
        tmp_path, "v.py", "import os\nprint('v', os.environ['LOCAL_RANK'], os.environ['CUDA_VISIBLE_DEVICES'])\n"
    )
    r = run_elaunch(["--nproc-per-node", "2", "--virtual-local-rank", str(script)], env={"CUDA_VISIBLE_DEVICES": "6,7"})
    assert r.returncode == 0, r.stderr
    assert "[0] v 0 6" in r.stdout and "[1] v 0 7" in r.stdout


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("body", "code"),
    [
        ("import sys\nsys.exit(3)", 3),
        ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", 128 + 9),
        ("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)", 128 + 11),
        ("raise SystemExit(0)", 0),
    ],
)
def test_exit_codes_follow_the_shell(tmp_path: Path, body: str, code: int) -> None:
    script = write_script(tmp_path, "x.py", body + "\n")
    r = run_elaunch(["--nproc-per-node", "1", str(script)])
    assert r.returncode == code, r.stderr
    assert "Traceback" not in r.stderr.replace("traceback:", "")


@pytest.mark.timeout(60)
def test_failure_report_names_root_cause_with_traceback(tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        "crash.py",
        "import os, time\n"
        "if os.environ['RANK'] == '1':\n"
        "    print('about to fail', flush=True)\n"
        "    raise ValueError('bad batch 42')\n"
        "time.sleep(60)\n",
    )
    r = run_elaunch(["--nproc-per-node", "3", str(script)])
    assert r.returncode == 1
    err = r.stderr
    assert "root cause: rank 1 (local rank 1)" in err
    assert "exited with code 1" in err
    assert "ValueError: bad batch 42" in err
    assert "stopped by elaunch: rank(s) 0,2" in err
    # The traceback is shown once as the worker printed it and once in the report, not more.
    assert err.count("ValueError: bad batch 42") == 2


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGABRT])
def test_failure_report_hints_at_the_oom_killer_for_sigkill_only(tmp_path: Path, sig: signal.Signals) -> None:
    script = write_script(tmp_path, "k.py", f"import os\nos.kill(os.getpid(), {int(sig)})\n")
    r = run_elaunch(["--nproc-per-node", "1", str(script)])
    assert r.returncode == 128 + sig, r.stderr
    assert f"root cause: rank 0 (local rank 0) on {os.uname().nodename}, pid " in r.stderr
    hint = "(the kernel's OOM killer is a common cause: check `dmesg`)"
    if sig == signal.SIGKILL:
        assert f"was killed by SIGKILL {hint}" in r.stderr, r.stderr
    else:
        assert f"was killed by {sig.name}\n" in r.stderr, r.stderr
        assert "OOM" not in r.stderr


@pytest.mark.timeout(60)
def test_failure_report_shows_the_last_lines_without_a_traceback(tmp_path: Path) -> None:
    # Rank 1 prints more lines than the report keeps, then dies without a traceback.
    script = write_script(
        tmp_path,
        "quiet.py",
        "import os, sys, time\n"
        "if os.environ['RANK'] == '0':\n"
        "    print('rank 0 is fine', flush=True)\n"
        "    time.sleep(60)\n"
        "for i in range(1, 16):\n"
        "    print('step %02d' % i, flush=True)\n"
        "os._exit(3)\n",
    )
    r = run_elaunch(["--nproc-per-node", "2", str(script)])
    assert r.returncode == 3, r.stderr
    report = r.stderr[r.stderr.index("job FAILED: exit code 3") :]
    assert "root cause: rank 1 (local rank 1)" in report and "exited with code 3" in report
    assert "traceback:" not in report
    lines = report.splitlines()
    start = lines.index("    last lines:") + 1
    shown = [f"      step {i:02d}" for i in range(16 - LAST_LINES, 16)]
    assert lines[start : start + LAST_LINES] == shown, report
    assert "step 03" not in report and "rank 0 is fine" not in report
    assert lines[start + LAST_LINES] == "  stopped by elaunch: rank(s) 0", report


@pytest.mark.timeout(60)
def test_error_file_from_record_is_used(tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        "rec.py",
        "import json, os\n"
        "with open(os.environ['TORCHELASTIC_ERROR_FILE'], 'w') as f:\n"
        "    json.dump({'message': {'message': 'RuntimeError: from record', 'extraInfo': "
        "{'py_callstack': 'Traceback (most recent call last):\\n  fake frame\\nRuntimeError: from record', "
        "'timestamp': '1'}}}, f)\n"
        "raise SystemExit(5)\n",
    )
    r = run_elaunch(["--nproc-per-node", "1", str(script)])
    assert r.returncode == 5
    assert "error: RuntimeError: from record" in r.stderr
    assert "fake frame" in r.stderr


@pytest.mark.timeout(60)
def test_last_line_without_newline_and_bad_utf8(tmp_path: Path) -> None:
    script = write_script(
        tmp_path, "p.py", "import sys\nsys.stdout.buffer.write(b'first\\n\\xff\\xfe raw\\nno newline at end')\n"
    )
    r = subprocess.run([*ELAUNCH, "--nproc-per-node", "1", str(script)], capture_output=True, timeout=60, check=False)
    assert r.returncode == 0
    assert r.stdout == b"[0] first\n[0] \xff\xfe raw\n[0] no newline at end\n"


@pytest.mark.timeout(60)
def test_dry_run_starts_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    script = write_script(tmp_path, "t.py", f"open({str(marker)!r}, 'w').close()\n")
    r = run_elaunch(["--dry-run", "--nproc-per-node", "2", "--max-restarts", "3", str(script), "--lr=${local_rank}"])
    assert r.returncode == 0, r.stderr
    assert not marker.exists()
    assert "worker local_rank=1 rank=1" in r.stdout
    assert "env:  RANK=1" in r.stdout
    assert "--lr=1" in r.stdout
    assert "max_restarts      3" in r.stdout and "(option)" in r.stdout


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "args",
    [
        ["--nnodes", "1", "--master-port", "29555", "--rdzv-id", "job7"],
        ["--nnodes", "1", "--master-port", "29556", "--rdzv-id", "job8", "--virtual-local-rank", "--role", "trainer"],
    ],
)
def test_dry_run_prints_the_environment_the_workers_get(tmp_path: Path, args: list[str]) -> None:
    # Both come from one function (ranks.worker_plans): what --dry-run shows is what runs.
    dump = tmp_path / "env"
    script = write_script(
        tmp_path,
        "e.py",
        "import json, os, sys\n"
        f"open({str(dump)!r} + os.environ['LOCAL_RANK'] + os.environ['RANK'], 'w').write(json.dumps(dict(os.environ)))\n",
    )
    common = [*args, "--nproc-per-node", "2", str(script), "--at=${local_rank}"]
    plan = run_elaunch(["--dry-run", *common])
    assert plan.returncode == 0, plan.stderr
    shown: dict[int, dict[str, str]] = {}
    argv: dict[int, str] = {}
    rank = -1
    for line in plan.stdout.splitlines():
        if line.startswith("worker "):
            rank = int(line.split("rank=")[2].split()[0])
            shown[rank] = {}
        elif line.startswith("  env:  "):
            key, _, value = line[len("  env:  ") :].partition("=")
            shown[rank][key] = value
        elif line.startswith("  argv: "):
            argv[rank] = line[len("  argv: ") :]
    assert sorted(shown) == [0, 1]
    r = run_elaunch(common)
    assert r.returncode == 0, r.stderr
    for rank, env in shown.items():
        (got_file,) = [p for p in tmp_path.iterdir() if p.name.startswith("env") and p.name.endswith(str(rank))]
        got = json.loads(got_file.read_text())
        assert argv[rank].endswith(f"--at={rank}")  # one node: local rank == rank
        for key, value in env.items():
            if key in ("TORCHELASTIC_ERROR_FILE", "ELAUNCH_HEARTBEAT_FILE"):  # the run dir is made at run time
                assert value.startswith("<run dir>/attempt_0/") and got[key].endswith(value[len("<run dir>") :])
            else:
                assert got[key] == value, key
        added = {k for k, v in got.items() if os.environ.get(k) != v}
        assert added - set(env) <= {"TORCHELASTIC_ERROR_FILE"}, added - set(env)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("args", "warning"),
    [
        (["--standalone", "--rdzv-id", "mine"], "--standalone: --rdzv-id ignored"),
        (
            ["--rdzv-conf", "join_timout=3"],
            "--rdzv-conf join_timout: no backend reads this key; ignored (did you mean join_timeout?)",
        ),
        (
            ["--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint", "h:1", "--rdzv-conf", "cacert=/x"],
            "--rdzv-conf cacert: etcd settings, ignored by --rdzv-backend c10d",
        ),
    ],
)
def test_options_without_effect_are_named(tmp_path: Path, args: list[str], warning: str) -> None:
    script = write_script(tmp_path, "t.py", "pass\n")
    r = run_elaunch(["--dry-run", *args, str(script)])
    assert r.returncode == 0, r.stderr
    assert f"warning: {warning}" in r.stdout


@pytest.mark.timeout(60)
def test_dry_run_of_a_store_backend_says_master_is_chosen_at_rendezvous(tmp_path: Path) -> None:
    script = write_script(tmp_path, "t.py", "pass\n")
    for backend in ("c10d", "etcd-v2"):
        r = run_elaunch(["--dry-run", "--nnodes", "2", "--rdzv-backend", backend, "--rdzv-endpoint", "h", str(script)])
        assert r.returncode == 0, r.stderr
        assert "<rank 0's node>:<free port>" in r.stdout and "MASTER_PORT=<chosen at rendezvous>" in r.stdout


@pytest.mark.timeout(60)
def test_log_dir_layout_redirects_and_tee(tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        "l.py",
        "import os, sys\nprint('out', os.environ['RANK'])\nprint('err', os.environ['RANK'], file=sys.stderr)\n",
    )
    logs = tmp_path / "logs"
    r = run_elaunch(
        ["--nproc-per-node", "2", "--log-dir", str(logs), "--rdzv-id", "myjob", "-r", "0:1", "-t", "1:3", str(script)]
    )
    assert r.returncode == 0, r.stderr
    (run_dir,) = list(logs.iterdir())
    assert run_dir.name.startswith("myjob_")
    a0 = run_dir / "attempt_0"
    assert (a0 / "0" / "stdout.log").read_text() == "out 0\n"
    assert not (a0 / "0" / "stderr.log").exists()
    assert (a0 / "1" / "stdout.log").read_text() == "out 1\n"
    assert (a0 / "1" / "stderr.log").read_text() == "err 1\n"
    # rank 0's stdout was redirected (not shown); rank 1's was teed (shown).
    assert "out 0" not in r.stdout and "[1] out 1" in r.stdout
    assert "[0] err 0" in r.stderr


@pytest.mark.timeout(60)
def test_duplicate_filters_copy_matching_teed_lines(tmp_path: Path) -> None:
    script = write_script(
        tmp_path, "d.py", "import os\nprint('loss', os.environ['RANK'])\nprint('other')\nprint('a,b')\n"
    )
    logs = tmp_path / "logs"
    args = ["--nproc-per-node", "2", "--log-dir", str(logs), "-t", "1", "--duplicate-stdout-filters", "loss,a,,b"]
    r = run_elaunch([*args, str(script)])
    assert r.returncode == 0, r.stderr
    (run_dir,) = list(logs.iterdir())
    lines = sorted((run_dir / "attempt_0" / "filtered_stdout.log").read_text().splitlines())
    assert lines == ["[0] a,b", "[0] loss 0", "[1] a,b", "[1] loss 1"]
    assert not (run_dir / "attempt_0" / "filtered_stderr.log").exists()


@pytest.mark.timeout(60)
def test_redirects_without_log_dir_keep_the_files_and_say_where(tmp_path: Path) -> None:
    # torchrun keeps -r/-t files in a temp dir; elaunch too, and prints its path (else the output is lost).
    script = write_script(tmp_path, "r.py", "print('kept')\n")
    r = run_elaunch(["-r", "3", str(script)])
    assert r.returncode == 0, r.stderr
    assert "kept" not in r.stdout
    m = re.search(r"worker output files are kept in (\S+)", r.stderr)
    assert m, r.stderr
    kept = Path(m.group(1))
    try:
        assert (kept / "attempt_0" / "0" / "stdout.log").read_text() == "kept\n"
    finally:
        shutil.rmtree(kept, ignore_errors=True)


@pytest.mark.timeout(60)
def test_filters_and_prefix_template(tmp_path: Path) -> None:
    script = write_script(tmp_path, "f.py", "import os\nprint('hi', os.environ['RANK'])\n")
    r = run_elaunch(["--nproc-per-node", "4", "--local-ranks-filter", "1,2", "--ranks-filter", "2-3", str(script)])
    assert r.returncode == 0
    assert [line for line in r.stdout.splitlines()] == ["[2] hi 2"]
    r = run_elaunch(
        ["--nproc-per-node", "2", str(script)],
        env={"TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE": "<${role_name}${local_rank}|${rank}@${restart}> "},
    )
    assert "<default1|1@0> hi 1" in r.stdout


@pytest.mark.timeout(60)
def test_no_torch_import_in_agent(tmp_path: Path) -> None:
    probe = (
        "import sys, runpy\n"
        "sys.argv = ['elaunch', '--standalone', '--nproc-per-node', '2', sys.argv[1]]\n"
        "from elaunch.cli import run\n"
        "code = run(sys.argv[1:])\n"
        "print('TORCH_LOADED=' + str('torch' in sys.modules), file=sys.stderr)\n"
        "raise SystemExit(code)\n"
    )
    script = write_script(tmp_path, "t.py", "print('ok')\n")
    probe_file = write_script(tmp_path, "probe.py", probe)
    r = subprocess.run(
        [sys.executable, str(probe_file), str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ.copy(),
    )
    assert r.returncode == 0, r.stderr
    assert "TORCH_LOADED=False" in r.stderr


@pytest.mark.timeout(60)
def test_nproc_gpu_counts_visible_devices_without_torch(tmp_path: Path) -> None:
    script = write_script(tmp_path, "dump.py", DUMP_ENV)
    r = run_elaunch(["--nproc-per-node", "gpu", str(script)], env={"CUDA_VISIBLE_DEVICES": "0,1"})
    assert r.returncode == 0, r.stderr
    assert {e["WORLD_SIZE"] for e in _envs(tmp_path, 2)} == {"2"}
    r = run_elaunch(["--nproc-per-node", "gpu", str(script)], env={"CUDA_VISIBLE_DEVICES": ""})
    assert r.returncode == 2 and "no CUDA GPUs" in r.stderr


@pytest.mark.timeout(60)
def test_local_addr_is_master_addr_standalone(tmp_path: Path) -> None:
    script = write_script(tmp_path, "dump.py", DUMP_ENV)
    r = run_elaunch(["--standalone", "--local-addr", "localhost", str(script)])
    assert r.returncode == 0, r.stderr
    assert _envs(tmp_path, 1)[0]["MASTER_ADDR"] == "localhost"


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    "args",
    [
        ["--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0"],
        ["--nnodes", "1:1", "--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0"],
        ["--rdzv-backend", "etcd", "--rdzv-endpoint", "localhost:2379"],
        ["--standalone"],
    ],
)
def test_one_node_jobs_started_together_get_their_own_port(tmp_path: Path, args: list[str]) -> None:
    # torchrun's recipe for several jobs on one host; a shared MASTER_PORT made the second fail or,
    # worse, join the first one's process group.
    script = write_script(tmp_path, "p.py", "import os\nprint('port', os.environ['MASTER_PORT'])\n")
    jobs = [start_elaunch(["--nnodes", "1", "--nproc-per-node", "2", *args, str(script)]) for _ in range(2)]
    ports = []
    for p in jobs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        (port,) = set(re.findall(r"port (\d+)", out))  # both workers of a job agree
        ports.append(int(port))
    assert ports[0] != ports[1] and not {29500, 2379} & set(ports), ports


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["c10d", "static"])
def test_one_node_uses_the_endpoint_port_the_user_named(tmp_path: Path, backend: str) -> None:
    port = free_port()
    script = write_script(tmp_path, "p.py", "import os\nprint('port', os.environ['MASTER_PORT'])\n")
    r = run_elaunch(["--rdzv-backend", backend, "--rdzv-endpoint", f"127.0.0.1:{port}", str(script)])
    assert r.returncode == 0, r.stderr
    assert f"port {port}" in r.stdout


@pytest.mark.timeout(60)
def test_an_empty_log_line_prefix_means_no_prefix(tmp_path: Path) -> None:
    script = write_script(tmp_path, "h.py", "print('hello')\n")
    r = run_elaunch(["--nproc-per-node", "2", "--log-line-prefix", "", str(script)])
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hello\nhello\n"
