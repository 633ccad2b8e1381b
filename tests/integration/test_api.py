"""elaunch.run and the torch-style adapter with real workers: return values, failures, __main__, pickling."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import elaunch
from elaunch.api import failure_message
from elaunch.errors import ChildFailedError, ConfigError
from elaunch.numa import plan_binding, read_topology
from elaunch.spec import RunResult, WorkerFailure, WorkerState
from tests.helpers import ROOT, write_script

PREAMBLE = "import json, os, sys\nimport elaunch\n"


def run_main(
    tmp_path: Path, body: str, timeout: float = 90, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`body` as a script run as __main__ (so its functions are pickled by value)."""
    script = write_script(tmp_path, "main.py", PREAMBLE + body)
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp_path,
        env={**os.environ, **(env or {}), "PYTHONPATH": path},
        check=False,
    )


def last_json(out: str) -> object:
    return json.loads([line for line in out.splitlines() if line.startswith("RESULT ")][-1][7:])


def test_main_functions_lambdas_and_closures_return_values_by_rank(tmp_path: Path) -> None:
    proc = run_main(
        tmp_path,
        """
def work(x, *, scale):
    print("working", os.environ["RANK"], flush=True)
    return {"rank": int(os.environ["RANK"]), "value": x * scale, "world": os.environ["WORLD_SIZE"]}

def make_adder(k):
    return lambda y: y + k + int(os.environ["LOCAL_RANK"])

if __name__ == "__main__":
    a = elaunch.run(work, 7, nproc_per_node=3, kwargs={"scale": 2}, no_live=True)
    b = elaunch.run(make_adder(100), 5, nproc_per_node=2, no_live=True)
    c = elaunch.run(lambda: os.environ["TORCHELASTIC_RUN_ID"], nproc_per_node="2", rdzv_id="job-7", no_live=True)
    print("RESULT " + json.dumps([a.state, a.return_values, b.return_values, c.return_values]))
""",
    )
    assert proc.returncode == 0, proc.stderr
    state, a, b, c = last_json(proc.stdout)  # type: ignore[misc]
    assert state == "SUCCEEDED"
    assert a == {str(r): {"rank": r, "value": 14, "world": "3"} for r in range(3)}
    assert b == {"0": 105, "1": 106}
    assert c == {"0": "job-7", "1": "job-7"}
    # Worker output goes through the agent, prefixed by rank, as for scripts.
    assert "[1] working 1" in proc.stdout


def test_a_failure_raises_one_exception_with_the_real_tracebacks(tmp_path: Path) -> None:
    proc = run_main(
        tmp_path,
        """
def inner(rank):
    raise KeyError(f"missing shard {rank}")

def work():
    rank = int(os.environ["RANK"])
    if rank == 1:
        inner(rank)
    import time
    time.sleep(60)

if __name__ == "__main__":
    try:
        elaunch.run(work, nproc_per_node=3, no_live=True, shutdown_timeout=5)
    except elaunch.ChildFailedError as e:
        rank, cause = e.get_first_failure()
        print("RESULT " + json.dumps([type(e).__name__, str(e), rank, cause.error_message, sorted(e.failures)]))
""",
    )
    assert proc.returncode == 0, proc.stderr
    name, text, rank, message, failed = last_json(proc.stdout)  # type: ignore[misc]
    assert name == "ChildFailedError"
    assert rank == 1 and failed == [0, 1, 2]
    assert message == "KeyError: 'missing shard 1'"
    assert text.startswith("job FAILED: exit code 1")
    assert "root cause: rank 1 (local rank 1)" in text
    # The user's frames, from the script itself (elaunch's own frames are left out).
    assert 'main.py", line 5, in inner' in text and "in work" in text
    assert "fnworker.py" not in text
    assert "stopped by elaunch: rank(s) 0,2" in text


def test_failure_message_carries_every_rank_that_failed_on_its_own() -> None:
    def failure(rank: int, ts: float, tb: str | None, stopped: bool = False) -> WorkerFailure:
        return WorkerFailure(
            rank, rank, "default", "h", 100 + rank, 1, None, ts, traceback=tb, stopped_by_agent=stopped
        )

    result = RunResult(
        state=WorkerState.FAILED,
        failures={
            0: failure(0, 2.0, "Traceback (most recent call last):\nValueError: zero"),
            1: failure(1, 1.0, "Traceback (most recent call last):\nKeyError: one"),
            2: failure(2, 3.0, None, stopped=True),
        },
    )
    text = failure_message(result)
    assert text.index("root cause: rank 1") < text.index("KeyError: one") < text.index("rank 0 (local rank 0) on h:")
    assert "ValueError: zero" in text


def test_restarts_apply_to_functions(tmp_path: Path) -> None:
    proc = run_main(
        tmp_path,
        """
def flaky():
    if os.environ["TORCHELASTIC_RESTART_COUNT"] == "0" and os.environ["RANK"] == "0":
        sys.exit(3)
    return os.environ["TORCHELASTIC_RESTART_COUNT"]

if __name__ == "__main__":
    r = elaunch.run(flaky, nproc_per_node=2, max_restarts=1, no_live=True)
    print("RESULT " + json.dumps(r.return_values))
""",
    )
    assert proc.returncode == 0, proc.stderr
    assert last_json(proc.stdout) == {"0": "1", "1": "1"}


def test_values_that_cannot_be_pickled_name_rank_and_type(tmp_path: Path) -> None:
    proc = run_main(
        tmp_path,
        """
import threading

if __name__ == "__main__":
    out = []
    try:
        elaunch.run(print, "ok", threading.Lock(), nproc_per_node=2)
    except elaunch.ConfigError as e:
        out.append(str(e))
    try:
        elaunch.run(lambda: threading.Lock() if os.environ["RANK"] == "1" else 1, nproc_per_node=2, no_live=True)
    except elaunch.ChildFailedError as e:
        out.append(e.get_first_failure()[1].error_message)
    print("RESULT " + json.dumps(out))
""",
    )
    assert proc.returncode == 0, proc.stderr
    arg, ret = last_json(proc.stdout)  # type: ignore[misc]
    assert arg.startswith("argument 1 (type _thread.lock) cannot be pickled for the workers")
    assert ret.startswith("CallError: rank 1: the return value of <lambda> (type _thread.lock) cannot be pickled")


def test_options_are_checked_as_the_cli_checks_them() -> None:
    with pytest.raises(ConfigError, match="--nproc-per-node must be at least 1"):
        elaunch.run(print, nproc_per_node=0)
    with pytest.raises(ConfigError, match=r"max_restart: no such option \(did you mean max_restarts\?\)"):
        elaunch.run(print, max_restart=1)
    with pytest.raises(ConfigError, match=r"not an option of elaunch\.run"):
        elaunch.run(print, module=True)


def test_in_process_from_an_importable_module(tmp_path: Path) -> None:
    """Called from here (not __main__): the function is pickled by reference and found in the workers
    through the caller's sys.path."""
    result = elaunch.run(os.getcwd, nproc_per_node=2, no_live=True, env={**os.environ, "PWD": str(tmp_path)})
    assert result.return_values == {0: os.getcwd(), 1: os.getcwd()}
    with pytest.raises(ChildFailedError) as e:
        elaunch.run(os.listdir, str(tmp_path / "missing"), nproc_per_node=1, no_live=True)
    assert "FileNotFoundError" in str(e.value)


def test_torch_style_adapter(tmp_path: Path) -> None:
    proc = run_main(
        tmp_path,
        """
from elaunch.launcher import LaunchConfig, elastic_launch

def trainer(base):
    return base + int(os.environ["RANK"]), os.environ["ROLE_NAME"], os.environ["TORCHELASTIC_MAX_RESTARTS"]

if __name__ == "__main__":
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=2, run_id="adapter", rdzv_backend="c10d",
                          rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1)
    outputs = elastic_launch(config, trainer)(40)
    command = elastic_launch(config, sys.executable)("-c", "print('command ran')")
    failed = None
    try:
        elastic_launch(config, trainer)("not a number")
    except elaunch.ChildFailedError as e:
        failed = e.get_first_failure()[1].error_message
    print("RESULT " + json.dumps([outputs, command, failed]))
""",
    )
    assert proc.returncode == 0, proc.stderr
    outputs, command, failed = last_json(proc.stdout)  # type: ignore[misc]
    assert outputs == {"0": [40, "default_role", "0"], "1": [41, "default_role", "0"]}
    assert command == {"0": None, "1": None}
    assert "[0] command ran" in proc.stdout
    assert failed.startswith("TypeError: can only concatenate str")


def test_notebook_text_streams_get_the_output(monkeypatch: pytest.MonkeyPatch) -> None:
    """A notebook's sys.stdout is a text stream without `.buffer`: worker output still reaches it."""
    import io

    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    result = elaunch.run(print, "from the worker", nproc_per_node=2)
    assert result.return_values == {0: None, 1: None}
    assert "[0] from the worker" in out.getvalue() and "[1] from the worker" in out.getvalue()
    assert "job SUCCEEDED" in err.getvalue()


needs_torch = pytest.mark.skipif(
    not __import__("importlib").util.find_spec("torch"), reason="the c10d store needs torch"
)
CONF = "join_timeout=60,last_call_timeout=1,heartbeat_timeout=3,keep_alive_interval=0.5,close_timeout=5"


def two_nodes(tmp_path: Path, fn: str, after: str) -> list[subprocess.CompletedProcess[str]]:
    """Two callers (1 and 2 workers, node ranks 0 and 1) of `elaunch.run(<fn>)` forming one c10d job;
    `after` runs in each with `outcome` bound to the RunResult or the ChildFailedError."""
    from scripts.testbed import free_port

    body = f"""
{fn}

if __name__ == "__main__":
    try:
        outcome = elaunch.run(work, nproc_per_node=int(sys.argv[1]), nnodes="2", rdzv_backend="c10d",
                              rdzv_endpoint="127.0.0.1:{free_port()}", rdzv_id="api-two-nodes",
                              rdzv_conf="{CONF}", node_rank=sys.argv[2], no_live=True)
    except elaunch.ChildFailedError as e:
        outcome = e
    {after}
"""
    script = write_script(tmp_path, "node.py", PREAMBLE + body)
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), nproc, rank],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": path},
            cwd=tmp_path,
        )
        for nproc, rank in (("1", "0"), ("2", "1"))
    ]
    done = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=100)
            done.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return done


@needs_torch
def test_two_nodes_each_get_their_own_ranks(tmp_path: Path) -> None:
    """The rendezvous options work as on the CLI: two callers form one job of 3 workers over c10d."""
    fn = """
def work():
    return os.environ["RANK"], os.environ["GROUP_RANK"], os.environ["WORLD_SIZE"]
"""
    done = two_nodes(tmp_path, fn, 'print("RESULT " + json.dumps(outcome.return_values))')
    assert all(p.returncode == 0 for p in done), [p.stderr for p in done]
    assert last_json(done[0].stdout) == {"0": ["0", "0", "3"]}
    assert last_json(done[1].stdout) == {"1": ["1", "1", "3"], "2": ["2", "1", "3"]}


@needs_torch
def test_two_nodes_a_failure_on_the_other_node_is_in_the_exception(tmp_path: Path) -> None:
    fn = """
def work():
    import time
    if os.environ["RANK"] == "2":
        raise RuntimeError("disk full on the second node")
    time.sleep(60)
"""
    done = two_nodes(tmp_path, fn, 'print("RESULT " + json.dumps([str(outcome), list(outcome.remote_failures)]))')
    assert all(p.returncode == 0 for p in done), [p.stderr for p in done]
    text, remote = last_json(done[0].stdout)  # type: ignore[misc]
    assert "failures reported by other nodes" in text and "RuntimeError: disk full on the second node" in text
    assert any("rank 2" in r for r in remote)
    text, _ = last_json(done[1].stdout)  # type: ignore[misc]
    assert "root cause: rank 2 (local rank 1)" in text


@pytest.mark.torch
def test_same_code_under_torch_and_elaunch(tmp_path: Path) -> None:
    """Code written for torch.distributed.launcher.api gives the same outputs after changing the import."""
    body = """
from IMPORT import LaunchConfig, elastic_launch

def trainer(base, scale):
    return {"value": base + scale * int(os.environ["RANK"]), "world": os.environ["WORLD_SIZE"],
            "local": os.environ["LOCAL_RANK"], "run": os.environ["TORCHELASTIC_RUN_ID"]}

if __name__ == "__main__":
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=2, run_id="same", rdzv_backend="c10d",
                          rdzv_endpoint="localhost:0", max_restarts=0)
    print("RESULT " + json.dumps(elastic_launch(config, trainer)(100, 7)))
"""
    got = {}
    for name, module in (("torch", "torch.distributed.launcher.api"), ("elaunch", "elaunch.launcher")):
        d = tmp_path / name
        d.mkdir()
        # torch leaves its torchelastic_* log dir in TMPDIR: a private one, inside the test's dir.
        proc = run_main(d, body.replace("IMPORT", module), timeout=120, env={"TMPDIR": str(d)})
        assert proc.returncode == 0, proc.stderr
        got[name] = last_json(proc.stdout)
    assert (
        got["elaunch"]
        == got["torch"]
        == {str(r): {"value": 100 + 7 * r, "world": "2", "local": str(r), "run": "same"} for r in range(2)}
    )


def test_functions_of_modules_in_the_callers_cwd(tmp_path: Path) -> None:
    """A REPL or notebook has "" on sys.path (the cwd): its modules are found in the workers too."""
    write_script(tmp_path, "mymod.py", "import os\ndef where():\n    return os.environ['RANK'] + ':' + __name__\n")
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, "-c", "import json, elaunch, mymod; print('RESULT ' + json.dumps("
         "elaunch.run(mymod.where, nproc_per_node=2, no_live=True).return_values))"],
        capture_output=True, text=True, timeout=90, cwd=tmp_path, env={**os.environ, "PYTHONPATH": path}, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert last_json(proc.stdout) == {"0": "0:mymod", "1": "1:mymod"}


def test_adapter_numa_options_bind_and_fall_back(tmp_path: Path) -> None:
    """torch's NumaOptions: the mode binds each worker; should_fall_back_if_binding_fails runs unbound."""
    ncpu = len({read_topology().core[c] for c in os.sched_getaffinity(0)})  # physical cores: one worker each
    proc = run_main(
        tmp_path,
        f"""
from elaunch.launcher import LaunchConfig, elastic_launch

class NumaOptions:  # torch's fields (torch is not imported here)
    affinity_mode = "exclusive"
    should_fall_back_if_binding_fails = False

def affinity():
    return sorted(os.sched_getaffinity(0))

if __name__ == "__main__":
    bound = elastic_launch(LaunchConfig(1, 1, {ncpu}, numa_options=NumaOptions(), max_restarts=0), affinity)()
    NumaOptions.should_fall_back_if_binding_fails = True
    too_many = LaunchConfig(1, 1, {ncpu + 1}, numa_options=NumaOptions(), max_restarts=0)
    unbound = elastic_launch(too_many, affinity)()
    print("RESULT " + json.dumps([bound, unbound]))
""",
    )
    assert proc.returncode == 0, proc.stderr
    bound, unbound = last_json(proc.stdout)  # type: ignore[misc]
    cpus = sorted(os.sched_getaffinity(0))
    expected = plan_binding(read_topology(), "exclusive", ncpu, None)
    assert bound == {str(b.local_rank): sorted(b.cpus) for b in expected}
    assert unbound == {str(r): cpus for r in range(ncpu + 1)}
    assert "running without NUMA binding" in proc.stderr
