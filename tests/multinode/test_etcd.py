"""`--rdzv-backend etcd-v2` / `etcd`: elaunch agents as plain processes on 127.0.0.1 meeting in a
real etcd (no torch anywhere: no node hosts a store), and an unreachable etcd."""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from scripts.testbed import free_port, wait_until
from tests.helpers import run_elaunch, write_script
from tests.multinode.test_loopback import CONF, ENV_SCRIPT, Agents, agents

__all__ = ["agents"]  # the fixture, shared with test_loopback

pytest.importorskip("etcd3gw")


def etcd_args(backend: str, port: int, nnodes: str = "2") -> list[str]:
    return [
        "--rdzv-backend", backend, "--rdzv-endpoint", f"127.0.0.1:{port}", "--nnodes", nnodes,
        "--rdzv-id", f"etcd-{uuid.uuid4().hex[:8]}", "--rdzv-conf", CONF, "--shutdown-timeout", "3",
    ]  # fmt: skip


@pytest.mark.etcd
@pytest.mark.timeout(90)
@pytest.mark.parametrize("backend", ["etcd-v2", "etcd"])
def test_two_agents_meet_in_etcd(backend: str, etcd_server: Any, agents: Agents, tmp_path: Path) -> None:
    script = write_script(tmp_path, "env.py", ENV_SCRIPT)
    common = etcd_args(backend, etcd_server.port)
    agents.start("a", [*common, "--nproc-per-node", "2", str(script)])
    agents.start("b", [*common, "--nproc-per-node", "1", str(script)])
    for name in ("a", "b"):
        assert agents.wait(name) == 0, agents.err(name)
    a, b = agents.envs("a"), agents.envs("b")
    assert [e["LOCAL_RANK"] for e in a] == ["0", "1"] and [e["LOCAL_RANK"] for e in b] == ["0"]
    everyone = a + b
    assert sorted(int(e["RANK"]) for e in everyone) == [0, 1, 2]
    assert {e["WORLD_SIZE"] for e in everyone} == {"3"} and {e["GROUP_WORLD_SIZE"] for e in everyone} == {"2"}
    (ga,), (gb,) = {e["GROUP_RANK"] for e in a}, {e["GROUP_RANK"] for e in b}
    assert {ga, gb} == {"0", "1"}
    first, second = (a, b) if ga == "0" else (b, a)
    assert [int(e["RANK"]) for e in first + second] == [0, 1, 2]  # running sums in group-rank order
    assert len({(e["MASTER_ADDR"], e["MASTER_PORT"]) for e in everyone}) == 1
    assert {e["TORCHELASTIC_RUN_ID"] for e in everyone} == {common[common.index("--rdzv-id") + 1]}
    assert "Traceback" not in agents.err("a") + agents.err("b")


@pytest.mark.etcd
@pytest.mark.timeout(120)
def test_a_sigkilled_node_is_found_lost_and_the_others_go_on(etcd_server: Any, agents: Agents, tmp_path: Path) -> None:
    # Its lease is renewed no more: etcd deletes its alive key, and its ring neighbour finds it lost.
    script = write_script(
        tmp_path, "w.py", ENV_SCRIPT + "import time\nwhile os.environ['WORLD_SIZE'] != '2':\n    time.sleep(0.05)\n"
    )
    common = etcd_args("etcd", etcd_server.port, "2:3")
    common[common.index(CONF)] = CONF.replace("last_call_timeout=1", "last_call_timeout=30")  # round 0: all 3
    for name in "abc":
        agents.start(name, [*common, "--max-restarts", "0", str(script)])
    wait_until(lambda: all(len(agents.envs(n)) == 1 for n in "abc"), 60, "three nodes to run their workers")
    agents.procs["b"].kill()
    for name in "ac":
        assert agents.wait(name) == 0, agents.err(name)  # --max-restarts 0: re-forming used none
        assert [e["WORLD_SIZE"] for e in agents.envs(name)] == ["3", "2"]
        assert re.search(r"membership: .*lost \S+ \(group rank \d\)", agents.err(name)), agents.err(name)


@pytest.mark.timeout(60)
def test_unreachable_etcd_fails_within_join_timeout(tmp_path: Path) -> None:
    script = write_script(tmp_path, "hello.py", "print('never runs')\n")
    port = free_port()
    args = ["--rdzv-backend", "etcd-v2", "--rdzv-endpoint", f"127.0.0.1:{port}", "--nnodes", "2",
            "--rdzv-id", "nobody", "--rdzv-conf", "join_timeout=3", str(script)]  # fmt: skip
    t0 = time.monotonic()
    r = run_elaunch(args, timeout=3 + 12)  # the deadline: join_timeout and a margin
    assert time.monotonic() - t0 >= 3  # it did wait for etcd to come up
    assert r.returncode == 1, r.stderr
    assert f"could not reach etcd at 127.0.0.1:{port}" in r.stderr
    assert r.stderr.count(f"127.0.0.1:{port}") == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert "never runs" not in r.stdout


@pytest.mark.timeout(30)
def test_dry_run_uses_etcds_default_port(tmp_path: Path) -> None:
    script = write_script(tmp_path, "t.py", "")
    r = run_elaunch(
        ["--dry-run", "--nnodes", "2", "--rdzv-backend", "etcd-v2", "--rdzv-endpoint", "etcd-host", str(script)]
    )
    assert r.returncode == 0, r.stderr
    assert "etcd-host:2379" in r.stdout
