"""Several agents as plain processes on 127.0.0.1 (no namespaces, no torch in the workers): ranks
across nodes with different --nproc-per-node, --node-rank as a preference under c10d, the static
backend with two nodes, and an unreachable endpoint. The agents import torch for the c10d store."""

from __future__ import annotations

import importlib.util
import json
import re
import signal
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from scripts.testbed import free_port, wait_until
from tests.helpers import ELAUNCH, ROOT, run_elaunch, write_script

needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="the c10d store needs torch")
CONF = "join_timeout=60,last_call_timeout=1,heartbeat_timeout=3,keep_alive_interval=0.5,close_timeout=5"
KEYS = (
    "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK",
    "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_USE_AGENT_STORE",
    "TORCHELASTIC_RESTART_COUNT",
)  # fmt: skip
ENV_SCRIPT = f"""
import json, os
print("ENV " + json.dumps({{k: os.environ.get(k) for k in {KEYS!r}}}), flush=True)
"""
ENV_LINE = re.compile(r"ENV (\{.*\})$", re.MULTILINE)


class Agents:
    """Agents started as plain processes, output in files; whatever still runs at the end is killed."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, args: Sequence[str]) -> subprocess.Popen[bytes]:
        with open(self.tmp / f"{name}.out", "wb") as out, open(self.tmp / f"{name}.err", "wb") as err:
            p = subprocess.Popen([*ELAUNCH, *args], stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=ROOT)
        self.procs[name] = p
        return p

    def err(self, name: str) -> str:
        return (self.tmp / f"{name}.err").read_text(errors="replace")

    def envs(self, name: str) -> list[dict[str, str]]:
        """What each worker of this agent printed, in local-rank order."""
        found = [json.loads(m) for m in ENV_LINE.findall((self.tmp / f"{name}.out").read_text())]
        return sorted(found, key=lambda e: int(e["LOCAL_RANK"]))

    def wait(self, name: str, timeout: float = 60) -> int:
        try:
            return self.procs[name].wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"agent {name} still running after {timeout} s:\n{self.err(name)}") from None

    def close(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(10)


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[Agents]:
    a = Agents(tmp_path)
    yield a
    a.close()


def c10d(port: int, nnodes: str = "2") -> list[str]:
    return [
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--nnodes", nnodes,
        "--rdzv-id", f"lo-{uuid.uuid4().hex[:8]}", "--rdzv-conf", CONF, "--shutdown-timeout", "3",
    ]  # fmt: skip


@needs_torch
@pytest.mark.torch
@pytest.mark.timeout(120)
def test_ranks_across_nodes_with_different_nproc(agents: Agents, tmp_path: Path) -> None:
    script = write_script(tmp_path, "env.py", ENV_SCRIPT)
    common = c10d(free_port())
    agents.start("a", [*common, "--nproc-per-node", "2", str(script)])
    agents.start("b", [*common, "--nproc-per-node", "3", str(script)])
    for name in ("a", "b"):
        assert agents.wait(name) == 0, agents.err(name)
    a, b = agents.envs("a"), agents.envs("b")
    assert [e["LOCAL_RANK"] for e in a] == ["0", "1"] and [e["LOCAL_RANK"] for e in b] == ["0", "1", "2"]
    assert {e["LOCAL_WORLD_SIZE"] for e in a} == {"2"} and {e["LOCAL_WORLD_SIZE"] for e in b} == {"3"}
    everyone = a + b
    assert sorted(int(e["RANK"]) for e in everyone) == [0, 1, 2, 3, 4]
    for key, value in [("WORLD_SIZE", "5"), ("GROUP_WORLD_SIZE", "2"), ("ROLE_WORLD_SIZE", "5")]:
        assert {e[key] for e in everyone} == {value}, key
    assert all(e["ROLE_RANK"] == e["RANK"] for e in everyone)
    assert len({e["MASTER_PORT"] for e in everyone}) == 1 and len({e["TORCHELASTIC_RUN_ID"] for e in everyone}) == 1
    # One group rank per node; global ranks are running sums in group-rank order.
    (ga,), (gb,) = {e["GROUP_RANK"] for e in a}, {e["GROUP_RANK"] for e in b}
    assert {ga, gb} == {"0", "1"}
    first, second = (a, b) if ga == "0" else (b, a)
    assert [int(e["RANK"]) for e in first] == list(range(len(first)))
    assert [int(e["RANK"]) for e in second] == list(range(len(first), 5))


@needs_torch
@pytest.mark.torch
@pytest.mark.timeout(120)
def test_node_rank_is_a_preference_under_c10d(agents: Agents, tmp_path: Path) -> None:
    script = write_script(tmp_path, "env.py", ENV_SCRIPT)
    common = c10d(free_port())
    # "a" starts first and hosts the store, which would make it group rank 0 without a preference.
    agents.start("a", [*common, "--node-rank", "1", str(script)])
    wait_until(lambda: "run lo-" in agents.err("a"), 60, "agent a to host the store and start")
    agents.start("b", [*common, "--node-rank", "0", str(script)])
    for name in ("a", "b"):
        assert agents.wait(name) == 0, agents.err(name)
    (a,), (b,) = agents.envs("a"), agents.envs("b")
    assert (b["GROUP_RANK"], b["RANK"]) == ("0", "0")
    assert (a["GROUP_RANK"], a["RANK"]) == ("1", "1")
    assert "node 1 of 2" in agents.err("a") and "node 0 of 2" in agents.err("b")


@needs_torch
@pytest.mark.torch
@pytest.mark.timeout(120)
def test_static_backend_two_nodes(agents: Agents, tmp_path: Path) -> None:
    script = write_script(tmp_path, "env.py", ENV_SCRIPT)
    port = free_port()
    common = ["--rdzv-backend", "static", "--nnodes", "2", "--master-addr", "127.0.0.1", "--master-port", str(port),
              "--rdzv-id", "static-job", "--nproc-per-node", "2"]  # fmt: skip
    agents.start("n1", [*common, "--node-rank", "1", str(script)])  # waits for node 0's store
    agents.start("n0", [*common, "--node-rank", "0", str(script)])
    for name in ("n0", "n1"):
        assert agents.wait(name) == 0, agents.err(name)
    n0, n1 = agents.envs("n0"), agents.envs("n1")
    assert [e["RANK"] for e in n0] == ["0", "1"] and [e["RANK"] for e in n1] == ["2", "3"]
    assert {e["GROUP_RANK"] for e in n0} == {"0"} and {e["GROUP_RANK"] for e in n1} == {"1"}
    for e in n0 + n1:
        assert (e["WORLD_SIZE"], e["GROUP_WORLD_SIZE"]) == ("4", "2")
        assert (e["MASTER_ADDR"], e["MASTER_PORT"]) == ("127.0.0.1", str(port))
        assert e["TORCHELASTIC_USE_AGENT_STORE"] == "True"  # workers use node 0's agent store, as torchrun's
        assert e["TORCHELASTIC_RUN_ID"] == "static-job"


@pytest.mark.timeout(60)
def test_unreachable_endpoint_fails_within_join_timeout(tmp_path: Path) -> None:
    """Nobody serves the endpoint (is_host=false: this node must not host it itself)."""
    script = write_script(tmp_path, "hello.py", "print('never runs')\n")
    port = free_port()
    args = ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--nnodes", "2",
            "--rdzv-id", "nobody", "--rdzv-conf", "join_timeout=3,is_host=false", str(script)]  # fmt: skip
    r = run_elaunch(args, timeout=3 + 12)  # the deadline: join_timeout and a margin
    assert r.returncode == 1, r.stderr
    assert f"could not reach the rendezvous store at 127.0.0.1:{port}" in r.stderr
    assert r.stderr.count(f"127.0.0.1:{port}") == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert "never runs" not in r.stdout


# Rank "now" finishes at once; rank "wait" only once the test creates the file `go` next to the script.
FINISH = """
import os, sys, time
go = os.path.join(os.path.dirname(os.path.abspath(__file__)), "go")
while sys.argv[1] == "wait" and not os.path.exists(go):
    time.sleep(0.05)
print("finished", os.environ["RANK"], flush=True)
"""
STAMP = re.compile(r"^\[elaunch (\d\d):(\d\d):(\d\d\.\d{3})\] (.*)$", re.MULTILINE)


def _stamp(err: str, text: str) -> float:
    """Seconds into the day of the first agent line containing `text`."""
    for h, m, s, line in STAMP.findall(err):
        if text in line:
            return int(h) * 3600 + int(m) * 60 + float(s)
    raise AssertionError(f"no line with {text!r} in:\n{err}")


def _exit_barrier_times_out(agents: Agents, tmp_path: Path) -> None:
    """Node "slow" (the store's host) keeps its worker running; node "fast" finishes and leaves."""
    script = write_script(tmp_path, "finish.py", FINISH)
    common = [*c10d(free_port()), "--exit-barrier-timeout", "2"]
    agents.start("slow", [*common, str(script), "wait"])
    wait_until(lambda: "run lo-" in agents.err("slow"), 60, "agent slow to host the store and start")
    agents.start("fast", [*common, str(script), "now"])
    assert agents.wait("fast") == 0, agents.err("fast")


@needs_torch
@pytest.mark.torch
@pytest.mark.timeout(120)
def test_exit_barrier_timeout_lets_a_finished_node_leave(agents: Agents, tmp_path: Path) -> None:
    _exit_barrier_times_out(agents, tmp_path)
    fast = agents.err("fast")
    assert "1 of 2 nodes finished within 2 s" in fast and "job SUCCEEDED" in fast, fast
    waited = (_stamp(fast, "1 of 2 nodes finished") - _stamp(fast, "worker group HEALTHY -> SUCCEEDED")) % 86400
    assert 1.9 <= waited < 10, f"the exit barrier gave up after {waited:.3f}s, not 2 s"
    # The other node's worker is still running, and the early leaver does not disturb it.
    assert agents.procs["slow"].poll() is None, agents.err("slow")
    assert "finished" not in (tmp_path / "slow.out").read_text()
    (tmp_path / "go").touch()
    assert agents.wait("slow") == 0, agents.err("slow")
    slow = agents.err("slow")
    assert "job SUCCEEDED" in slow and "restarting" not in slow and "lost" not in slow, slow
    assert re.search(r"^\[[^]]+:([01])\] finished \1$", (tmp_path / "slow.out").read_text(), re.M)


@needs_torch
@pytest.mark.torch
@pytest.mark.timeout(120)
def test_exit_barrier_timeout_warning_names_the_barrier_once(agents: Agents, tmp_path: Path) -> None:
    _exit_barrier_times_out(agents, tmp_path)
    (tmp_path / "go").touch()
    assert agents.wait("slow") == 0, agents.err("slow")
    lines = [line for *_, line in STAMP.findall(agents.err("fast"))]
    assert "warning: exit barrier: 1 of 2 nodes finished within 2 s" in lines, lines


# Rank "now" finishes at once; rank "late" 12 s after it started: longer than the exit barrier's
# timeout (2 s), heartbeat_timeout (3 s) and close_timeout (5 s) together.
FINISH_LATE = """
import sys, time
if sys.argv[1] == "late":
    time.sleep(12)
print("finished", flush=True)
"""


@needs_torch
@pytest.mark.torch
@pytest.mark.timeout(120)
def test_the_store_host_finishing_first_keeps_serving_the_slower_node(agents: Agents, tmp_path: Path) -> None:
    # pytorch#118891: the node hosting the store finishes first; the other runs longer than every
    # timeout. The host stays (and says why) until the other finishes; nothing is "lost".
    script = write_script(tmp_path, "finish.py", FINISH_LATE)
    common = [*c10d(free_port()), "--exit-barrier-timeout", "2"]
    agents.start("host", [*common, str(script), "now"])
    wait_until(lambda: "run lo-" in agents.err("host"), 60, "agent host to host the store and start")
    agents.start("other", [*common, str(script), "late"])
    assert agents.wait("other", 90) == 0, agents.err("other")
    other = agents.err("other")
    assert "job SUCCEEDED" in other and "lost" not in other and "restarting" not in other, other
    assert "finished" in (tmp_path / "other.out").read_text()
    assert agents.wait("host", 30) == 0, agents.err("host")
    host = agents.err("host")
    assert "1 of 2 nodes finished within 2 s" in host, host
    assert "it keeps serving while the other 1 node(s) still run" in host, host
    assert _stamp(host, "keeps serving") < _stamp(other, "job SUCCEEDED") + 0.5  # said so while serving


def sigterm_the_second_node(agents: Agents, args: list[str]) -> None:
    """Agent a hosts the store, b joins it; once b's worker runs in a round of two, b gets SIGTERM."""
    agents.start("a", args)
    wait_until(lambda: "run lo-" in agents.err("a"), 60, "agent a to host the store and start")
    agents.start("b", args)
    wait_until(lambda: len(agents.envs("b")) == 1, 60, "b's worker to start in a round of two")
    agents.procs["b"].send_signal(signal.SIGTERM)
    assert agents.wait("b") == 128 + signal.SIGTERM, agents.err("b")


@needs_torch
@pytest.mark.torch
@pytest.mark.timeout(120)
def test_a_node_stopped_by_a_signal_leaves_an_elastic_job_that_goes_on(agents: Agents, tmp_path: Path) -> None:
    # Preemption, a Kubernetes scale-down or Ctrl-C on one host: with MIN < MAX the others re-form
    # without it (as torchrun does) instead of ending the job.
    script = write_script(
        tmp_path,
        "w.py",
        ENV_SCRIPT + "import time\nwhile os.environ['WORLD_SIZE'] != '1':\n    time.sleep(0.05)\n",
    )
    # A long last call: round 0 waits for b (it ends as soon as both joined, MAX = 2).
    common = [*c10d(free_port(), "1:2"), "--max-restarts", "0"]
    common[common.index(CONF)] = CONF.replace("last_call_timeout=1", "last_call_timeout=30")
    sigterm_the_second_node(agents, [*common, str(script)])
    assert "left the job; the other nodes go on without it" in agents.err("b")
    assert agents.wait("a") == 0, agents.err("a")
    assert re.search(r"lost node\(s\): \S+ \(group rank 1\)", agents.err("a"))  # hosts share a name here
    assert [e["WORLD_SIZE"] for e in agents.envs("a")] == ["2", "1"]  # the same job, re-formed without b
    assert "job SUCCEEDED" in agents.err("a")  # with --max-restarts 0: re-forming used no restart


@needs_torch
@pytest.mark.torch
@pytest.mark.timeout(120)
def test_a_node_stopped_by_a_signal_ends_a_job_that_cannot_go_on(agents: Agents, tmp_path: Path) -> None:
    # MIN = MAX: the others cannot go on without it, so the job is closed for all of them.
    script = write_script(tmp_path, "w.py", ENV_SCRIPT + "import time\ntime.sleep(60)\n")
    common = c10d(free_port(), "2")
    sigterm_the_second_node(agents, [*common, str(script)])
    assert agents.wait("a") == 1, agents.err("a")
    assert "was stopped by SIGTERM" in agents.err("a")


@needs_torch
@pytest.mark.torch
@pytest.mark.timeout(120)
def test_the_restart_count_is_the_same_on_every_node(agents: Agents, tmp_path: Path) -> None:
    # Node b's worker fails in the first round and both nodes restart: a script that resumes "if
    # restarted" must see it on every rank (torchrun gives 1 on b and 0 on a).
    # b's worker fails only once a's has printed its environment (else a's first worker may be
    # stopped before it printed anything).
    script = write_script(
        tmp_path,
        "w.py",
        ENV_SCRIPT
        + "import sys, time\nflag = os.path.join(sys.argv[1], 'a-printed')\n"
        + "if os.environ['TORCHELASTIC_RESTART_COUNT'] == '0':\n"
        + "    if os.environ['GROUP_RANK'] == '1':\n"
        + "        while not os.path.exists(flag):\n            time.sleep(0.02)\n"
        + "        raise SystemExit(1)\n"
        + "    open(flag, 'w').close()\n    time.sleep(60)\n",
    )
    common = [*c10d(free_port()), "--max-restarts", "1", str(script), str(tmp_path)]
    agents.start("a", common)
    wait_until(lambda: "run lo-" in agents.err("a"), 60, "agent a to host the store and start")
    agents.start("b", common)
    assert agents.wait("b") == 0, agents.err("b")
    assert agents.wait("a") == 0, agents.err("a")
    for name in ("a", "b"):
        assert [e["TORCHELASTIC_RESTART_COUNT"] for e in agents.envs(name)] == ["0", "1"], agents.err(name)


FAIL_ONCE_SCRIPT = (
    ENV_SCRIPT
    + """
import sys, time
me, flag = sys.argv[1], sys.argv[2]
if me == "a" and os.environ["TORCHELASTIC_RESTART_COUNT"] == "0":
    open(flag + ".a", "w").close()  # printed its environment: b may fail now
if me == "b":
    if os.environ["TORCHELASTIC_RESTART_COUNT"] == "0":
        while not os.path.exists(flag + ".a"):
            time.sleep(0.02)
        sys.exit(3)
    open(flag, "w").close()
while not os.path.exists(flag):  # node a runs until b's restarted worker did (not into the exit barrier)
    time.sleep(0.05)
"""
)


@needs_torch
@pytest.mark.torch
@pytest.mark.timeout(120)
def test_a_worker_failure_restarts_every_node_in_a_restart_round(agents: Agents, tmp_path: Path) -> None:
    # A beat every 5 s and a last call of 60 s: a full round would be seen in the agents' lines
    # ("waiting to join"); a restart round reaches node a through its blocking watch.
    script = write_script(tmp_path, "fail_once.py", FAIL_ONCE_SCRIPT)
    port = free_port()
    conf = "join_timeout=60,last_call_timeout=60,heartbeat_timeout=15,keep_alive_interval=5,close_timeout=5"
    common = [*c10d(port, "1:2"), "--rdzv-conf", conf, "--max-restarts", "1", "--nproc-per-node", "1"]
    flag = str(tmp_path / "b-restarted")
    agents.start("a", [*common, str(script), "a", flag])
    agents.start("b", [*common, str(script), "b", flag])
    for name in ("a", "b"):
        assert agents.wait(name) == 0, agents.err(name)
    a, b = agents.envs("a"), agents.envs("b")
    assert len(a) == len(b) == 2
    # The count is job-wide (the round), the same on both nodes; a's restart used none of a's budget.
    assert [e["TORCHELASTIC_RESTART_COUNT"] for e in b] == [e["TORCHELASTIC_RESTART_COUNT"] for e in a] == ["0", "1"]
    assert a[0]["GROUP_RANK"] == a[1]["GROUP_RANK"] and a[1]["MASTER_PORT"] == b[1]["MASTER_PORT"]
    assert "restarting the group: restart round: " in agents.err("a"), agents.err("a")
    assert "waiting to join" not in agents.err("a")


SPARE_SCRIPT = (
    ENV_SCRIPT
    + """
import sys, time
while not os.path.exists(sys.argv[1]):
    time.sleep(0.05)
"""
)


@needs_torch
@pytest.mark.torch
@pytest.mark.timeout(180)
def test_a_hot_spare_takes_the_group_rank_of_a_killed_node(agents: Agents, tmp_path: Path) -> None:
    script = write_script(tmp_path, "spare.py", SPARE_SCRIPT)
    stop = tmp_path / "stop"
    common = [*c10d(free_port()), "--standby", "1", "--max-restarts", "0", "--nproc-per-node", "1"]

    def start(name: str) -> None:
        agents.start(name, [*common, "--summary-file", str(tmp_path / f"{name}.json"), str(script), str(stop)])

    start("a")
    start("b")
    wait_until(lambda: len(agents.envs("a")) == len(agents.envs("b")) == 1, 60, "a and b to run their workers")
    start("c")
    wait_until(lambda: "stands by as a spare" in agents.err("c"), 60, "c to stand by")
    wait_until(lambda: "spare(s) standing by: " in agents.err("a"), 30, "a to see the spare")
    assert agents.envs("c") == []
    # kill group rank 1: rank 0 hosts the store (a or b, whichever bound the port first)
    victim, survivor = ("a", "b") if agents.envs("a")[0]["GROUP_RANK"] == "1" else ("b", "a")
    agents.procs[victim].kill()
    wait_until(lambda: agents.envs("c"), 60, "the spare's worker to run")
    (spare,) = agents.envs("c")
    assert spare["GROUP_RANK"] == "1" and spare["GROUP_WORLD_SIZE"] == "2"
    assert agents.envs(survivor)[-1]["GROUP_RANK"] == "0"
    stop.touch()
    for name in (survivor, "c"):
        assert agents.wait(name) == 0, agents.err(name)  # --max-restarts 0: the take-over used none
    summary = json.loads((tmp_path / "c.json").read_text())
    assert summary["stood_by_as_spare"] is True and summary["state"] == "SUCCEEDED"
    assert json.loads((tmp_path / f"{survivor}.json").read_text())["stood_by_as_spare"] is False


HEALTH_SCRIPT = (
    ENV_SCRIPT
    + """
import sys, time
tmp, me = sys.argv[1], sys.argv[2]
while not os.path.exists(os.path.join(tmp, "stop")):
    if os.environ["TORCHELASTIC_RESTART_COUNT"] == "0" and os.path.exists(os.path.join(tmp, "crash-" + me)):
        sys.exit(1)
    time.sleep(0.05)
"""
)


@needs_torch
@pytest.mark.torch
@pytest.mark.timeout(180)
def test_a_node_failing_its_health_check_leaves_and_a_spare_fills_in(agents: Agents, tmp_path: Path) -> None:
    script = write_script(tmp_path, "health.py", HEALTH_SCRIPT)
    common = [*c10d(free_port()), "--standby", "1", "--max-restarts", "1", "--nproc-per-node", "1"]

    def start(name: str) -> None:
        check = f"echo checking node {name}; test ! -e {tmp_path}/bad-{name}"
        agents.start(name, [*common, "--health-check", check, str(script), str(tmp_path), name])

    start("a")
    start("b")
    wait_until(lambda: len(agents.envs("a")) == len(agents.envs("b")) == 1, 60, "a and b to run their workers")
    start("c")
    wait_until(lambda: "stands by as a spare" in agents.err("c"), 60, "c to stand by")
    # group rank 1 does not host the store: it can leave. Its check will fail before the next round.
    victim, survivor = ("a", "b") if agents.envs("a")[0]["GROUP_RANK"] == "1" else ("b", "a")
    (tmp_path / f"bad-{victim}").touch()
    (tmp_path / f"crash-{victim}").touch()
    assert agents.wait(victim) == 1
    wait_until(lambda: agents.envs("c"), 60, "the spare's worker to run")
    assert agents.envs("c")[0]["GROUP_RANK"] == "1" and agents.envs("c")[0]["GROUP_WORLD_SIZE"] == "2"
    (tmp_path / "stop").touch()
    for name in (survivor, "c"):
        assert agents.wait(name) == 0, agents.err(name)
    failed = agents.err(victim)
    assert "health check FAILED" in failed and f"checking node {victim}" in failed
    assert "left the job; the other nodes go on without it" in failed
    for name in (survivor, "c"):  # every node's report names the host and the check's last lines
        report = agents.err(name).split("job SUCCEEDED", 1)[1]
        assert "health check failed" in report and f"checking node {victim}" in report, report


@needs_torch
@pytest.mark.torch
@pytest.mark.timeout(120)
def test_a_node_failing_its_first_health_check_does_not_join_and_the_job_shrinks(
    agents: Agents, tmp_path: Path
) -> None:
    script = write_script(tmp_path, "spare.py", SPARE_SCRIPT)  # runs until the stop file exists
    stop = tmp_path / "stop"
    common = [*c10d(free_port(), "2:3"), "--nproc-per-node", "1"]
    for name in ("a", "b", "c"):
        check = f"echo checking node {name}; echo no space left on device >&2; test {name} != c"
        agents.start(name, [*common, "--health-check", check, str(script), str(stop)])
        if name == "a":  # a hosts the store (c's leaving must not take it away): its check runs after
            wait_until(lambda: "health check passed" in agents.err("a"), 60, "a to host the store")
    assert agents.wait("c") == 1
    stop.touch()
    for name in ("a", "b"):
        assert agents.wait(name) == 0, agents.err(name)
        assert {e["WORLD_SIZE"] for e in agents.envs(name)} == {"2"}
        report = agents.err(name).split("job SUCCEEDED", 1)[1]
        assert "health check failed" in report and "no space left on device" in report, report
    assert agents.envs("c") == []
    assert "the other nodes go on without it if they can" in agents.err("c")
