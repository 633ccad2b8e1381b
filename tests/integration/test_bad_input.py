"""Bad input: one clear line on stderr, exit code 2, no traceback, nothing started."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.helpers import run_elaunch

ETCD = ["--nnodes", "2", "--rdzv-backend", "etcd-v2", "--rdzv-endpoint", "127.0.0.1:2379", "--rdzv-conf"]
CASES = [
    # (args before the script, script kind, expected words in the message)
    (["--bogus"], "ok", "No such option '--bogus'"),
    (["--nnodes", "4:2"], "ok", "MIN must not exceed MAX"),
    (["--nnodes", "0"], "ok", "at least 1"),
    (["--nnodes", "a:b"], "ok", "--nnodes"),
    (["--nnodes", "1:2:3"], "ok", "--nnodes"),
    (["--nproc-per-node", "0"], "ok", "at least 1"),
    (["--nproc-per-node", "-1"], "ok", "at least 1"),
    (["--nproc-per-node", "abc"], "ok", "--nproc-per-node"),
    ([], "missing", "script not found"),
    (["--no-python"], "not_executable", "not executable"),
    (["--no-python"], "not_found_on_path", "not found on PATH"),
    (["-m", "--no-python"], "ok", "cannot be used together"),
    (["--max-restarts", "-1"], "ok", "--max-restarts"),
    (["--monitor-interval", "0"], "ok", "--monitor-interval"),
    (["--rdzv-conf", "join_timeout"], "ok", "--rdzv-conf"),
    (["--rdzv-endpoint", "host:port"], "ok", "--rdzv-endpoint"),
    (["--rdzv-endpoint", "::1:80"], "ok", "brackets"),
    (["--master-port", "70000"], "ok", "--master-port"),
    (["--rdzv-backend", "zookeeper"], "ok", "--rdzv-backend"),
    (["--signals-to-handle", "SIGNOPE"], "ok", "unknown signal"),
    (["--standalone", "--nnodes", "2"], "ok", "--standalone"),
    (["--numa-binding", "nodes"], "ok", "--numa-binding must be one of node, socket, exclusive, core-complex"),
    (["--redirects", "7"], "ok", "--redirects"),
    (["--ranks-filter", "x"], "ok", "--ranks-filter"),
    (["--shutdown-timeout", "soon"], "ok", "--shutdown-timeout"),
    (["--summary-file", "/nonexistent-elaunch/s.json"], "ok", "does not exist"),
    (["--events-file", "/nonexistent-elaunch/e.jsonl"], "ok", "does not exist"),
    (["--summary-file", "/"], "ok", "is a directory"),
    (["--log-dir", "/dev/null/logs"], "ok", "is not a directory"),
    (["--event-log-handler", "console"], "ok", "--events-file"),
    ([*ETCD, "protocol=ftp"], "ok", "must be http or https"),
    ([*ETCD, "cacert=/ca.pem"], "ok", "need protocol=https"),
    ([*ETCD, "protocol=https,key=/k.pem"], "ok", "needs its certificate"),
    ([*ETCD, "protocol=https,cacert=/a.pem,ca_cert=/b.pem"], "ok", "differ"),
    ([*ETCD, "is_host=true"], "ok", "only for --rdzv-backend c10d"),
    # Settings only a backend used to check arrive before anything starts (were "job FAILED", exit 1).
    ([*ETCD, "protocol=https,cacert=/nonexistent-elaunch.pem"], "ok", "no such file"),
    (["--nnodes", "2", "--node-rank", "5", "--master-addr", "127.0.0.1", "--master-port", "29999"], "ok", "0..1"),
    (
        ["--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint", "h:1", "--rdzv-conf", "store_type=file"],
        "ok",
        "only tcp",
    ),
    (["--nnodes", "2", "--rdzv-conf", "timeout=soon", "--master-port", "29999"], "ok", "--rdzv-conf timeout"),
    (["--rdzv-id", " "], "ok", "--rdzv-id must not be empty"),
    (["--n", "2"], "ok", "ambiguous option: --n could match --nnodes"),
    (["--max-restarts", "many"], "ok", "--max-restarts: expected a whole number"),
    (["--master-port", "x"], "ok", "--master-port: expected a whole number"),
    (["--node-rank", "-2", "--nnodes", "2", "--master-port", "29999"], "ok", "--node-rank"),
    (["--start-method", "thread"], "ok", "--start-method must be one of"),
    # Durations are finite and in range, whatever their spelling.
    (["--shutdown-timeout", "inf"], "ok", "finite"),
    (["--shutdown-timeout", "1e400"], "ok", "finite"),
    (["--shutdown-timeout", "nan"], "ok", "finite"),
    (["--shutdown-timeout", "-1"], "ok", "0 or more"),
    (["--exit-barrier-timeout", "inf"], "ok", "finite"),
    (["--monitor-interval", "nan"], "ok", "finite"),
    (["--rdzv-conf", "join_timeout=inf"], "ok", "finite"),
    (["--progress-pattern", "step (\\d+)"], "ok", "named group (?P<step>"),
    (["--progress-pattern", "step (?P<step>"], "ok", "not a regular expression"),
    # The health endpoint and progress settings (a port in use: tests/integration/test_health.py).
    (["--health-port", "0", "--health-addr", "192.0.2.1"], "ok", "not an address of this host"),
    (["--health-port", "0", "--health-addr", "no-such-host.invalid"], "ok", "not an address of this host"),
    (["--health-port", "70000"], "ok", "--health-port: must be between 0 and 65535"),
    (["--health-port", "http"], "ok", "--health-port: expected a whole number"),
    (["--straggler-factor", "1"], "ok", "--straggler-factor: expected a number greater than 1"),
    (["--straggler-window", "-5"], "ok", "--straggler-window"),
    (["--progress-interval", "0"], "ok", "--progress-interval"),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("args", "kind", "words"), CASES, ids=[" ".join(c[0]) + f" [{c[1]}]" for c in CASES])
def test_bad_input(tmp_path: Path, args: list[str], kind: str, words: str) -> None:
    marker = tmp_path / "started"
    script = tmp_path / "train.py"
    script.write_text(f"open({str(marker)!r}, 'w').close()\n")
    if kind == "missing":
        target = str(tmp_path / "nope.py")
    elif kind == "not_executable":
        target = str(script)
        os.chmod(script, stat.S_IRUSR | stat.S_IWUSR)
    elif kind == "not_found_on_path":
        target = "no-such-program-xyz"
    else:
        target = str(script)
    r = run_elaunch([*args, target])
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("elaunch: error: ")
    assert words in lines[0]
    assert "Traceback" not in r.stderr
    assert not marker.exists()
    assert r.stdout == ""


@pytest.mark.timeout(30)
def test_missing_script_argument(tmp_path: Path) -> None:
    r = run_elaunch(["--nproc-per-node", "2"])
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["elaunch: error: Missing argument 'TRAINING_SCRIPT'."]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--nnodes", "2", "--rdzv-backend", "c10d"], "--rdzv-endpoint host[:port] is required"),
        (["--nnodes", "2", "--rdzv-backend", "etcd-v2"], "--rdzv-endpoint host[:port] is required"),
        (["--nnodes", "1:2", "--rdzv-backend", "static"], "fixed number of nodes"),
    ],
)
def test_multi_node_option_errors(tmp_path: Path, args: list[str], words: str) -> None:
    script = tmp_path / "t.py"
    script.write_text("")
    r = run_elaunch([*args, str(script)])
    assert r.returncode == 2
    assert words in r.stderr
