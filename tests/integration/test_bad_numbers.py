"""Every number elaunch reads, in every spelling (option, PET_*/ELAUNCH_* variable, torch's own
variables, --rdzv-conf), is finite and in range, else one line and exit 2 before anything starts (#10 item 3)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import run_elaunch

MULTI = ["--nnodes", "2", "--master-port", "29999"]
CASES = [
    # (environment, extra args, words in the message)
    ({"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "inf"}, [], "--shutdown-timeout: expected a finite"),
    ({"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "nan"}, [], "--shutdown-timeout: expected a finite"),
    ({"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "1e400"}, [], "--shutdown-timeout: expected a finite"),
    ({"PET_SHUTDOWN_TIMEOUT": "-inf"}, [], "--shutdown-timeout"),
    ({"PET_SHUTDOWN_TIMEOUT": "1e-9"}, [], "at least 0.001"),
    ({"PET_MONITOR_INTERVAL": "1e400"}, [], "--monitor-interval: expected a finite"),
    ({"PET_MONITOR_INTERVAL": "1e-300"}, [], "--monitor-interval: must be at least 0.001"),
    ({"ELAUNCH_EXIT_BARRIER_TIMEOUT": "inf"}, [], "--exit-barrier-timeout: expected a finite"),
    ({"PET_MAX_RESTARTS": "1e3"}, [], "--max-restarts: expected a whole number"),
    ({"PET_MAX_RESTARTS": "99999999999999"}, [], "--max-restarts: must be between"),
    ({"PET_NPROC_PER_NODE": "99999999999"}, [], "--nproc-per-node: at most 65536"),
    ({"PET_NNODES": "99999999999999999999"}, [], "--nnodes: at most"),
    ({"PET_NODE_RANK": "1e400"}, MULTI, "--node-rank: expected a whole number"),
    ({"PET_MASTER_PORT": "1e5"}, ["--nnodes", "2"], "--master-port"),
    ({"PET_RDZV_CONF": "join_timeout=nan"}, MULTI, "--rdzv-conf join_timeout: expected a finite"),
    ({"PET_RDZV_CONF": "last_call_timeout=inf"}, MULTI, "--rdzv-conf last_call_timeout: expected a finite"),
    ({"PET_RDZV_CONF": "keep_alive_max_attempt=inf"}, MULTI, "--rdzv-conf keep_alive_max_attempt"),
    ({"PET_RDZV_CONF": "read_timeout=1e-300"}, MULTI, "--rdzv-conf read_timeout: must be at least 0.001"),
    ({}, ["--rdzv-conf", "heartbeat_timeout=1e-7", *MULTI], "--rdzv-conf heartbeat_timeout: must be at least"),
    ({}, ["--rdzv-conf", "timeout=-1", *MULTI], "--rdzv-conf timeout"),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("env", "args", "words"), CASES, ids=[" ".join([*(f"{k}={v}" for k, v in c[0].items()), *c[1]]) for c in CASES]
)
def test_numbers_out_of_range_in_any_spelling(tmp_path: Path, env: dict[str, str], args: list[str], words: str) -> None:
    marker = tmp_path / "started"
    script = tmp_path / "train.py"
    script.write_text(f"open({str(marker)!r}, 'w').close()\n")
    r = run_elaunch([*args, str(script)], env=env)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("elaunch: error: "), r.stderr
    assert words in lines[0], lines[0]
    assert not marker.exists() and "Traceback" not in r.stderr
