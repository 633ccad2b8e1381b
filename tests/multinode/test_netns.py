"""Several nodes for real: one elaunch agent per fake host (a network namespace with its own
hostname), the c10d rendezvous hosted on host1, a gloo DDP job (ddp_worker.py), and faults while
it trains: a late node, kill -9 of an agent, a cut link, SIGTERM, the store's host lost, a node
whose worker keeps failing.

Timings come from a short --rdzv-conf (heartbeat 3 s, close 5 s) and --shutdown-timeout 3; every
wait is a deadline on something observable (the workers' progress file, an agent's exit), never a
fixed sleep. Each test ends with nothing left on any host.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from scripts.testbed import WaitTimeout, wait_until
from scripts.testbed.netns import Cluster
from scripts.testbed.procs import cmdline
from tests.helpers import ELAUNCH, ROOT

needs_torch = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None, reason="the c10d store and the DDP workers need torch"
)
pytestmark = pytest.mark.netns

WORKER = Path(__file__).with_name("ddp_worker.py")
PORT = 29400  # every fake host has a network stack of its own: nothing else listens there
HEARTBEAT, CLOSE, SHUTDOWN = 3, 5, 3
CONF = (
    f"join_timeout=60,last_call_timeout=1,heartbeat_timeout={HEARTBEAT},keep_alive_interval=0.5,close_timeout={CLOSE}"
)
START = 90
"""Seconds from starting agents to their workers training: agents and workers import torch on 2 cores."""
RECOVER = 45
"""Seconds from a fault to the re-formed group training (detection, rendezvous, workers importing torch)."""
STOP = HEARTBEAT + CLOSE + SHUTDOWN + 10
"""Seconds for an agent to stop once the job is closed or its store is gone."""


class Job:
    """One DDP job over the fake hosts: an agent per host, their output in files, the progress file."""

    def __init__(
        self,
        cluster: Cluster,
        tmp: Path,
        nnodes: str,
        *,
        max_restarts: int,
        release: bool,
        fail_on: str | None,
        extra: Sequence[str] = (),
    ) -> None:
        self.cluster = cluster
        self.tmp = tmp
        self.nnodes = nnodes
        self.max_restarts = max_restarts
        self.run_id = f"netns-{uuid.uuid4().hex[:8]}"
        self.progress = tmp / "progress.log"
        self.release_file = tmp / "release" if release else None
        self.fail_on = fail_on
        self.extra = list(extra)
        """More elaunch options for every agent (--standby, --health-check, ...)."""
        self.agents: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, *hosts: int) -> None:
        # Without a release file the job is a fixed 100 steps; with one it trains until released,
        # then stops at step 30 of its group or at once if past it.
        worker = [
            str(WORKER),
            "--progress",
            str(self.progress),
            "--steps",
            "100" if self.release_file is None else "30",
        ]
        if self.release_file is not None:
            worker += ["--release", str(self.release_file)]
        if self.fail_on:
            worker += ["--fail-on", self.fail_on]
        for i in hosts:
            argv = [
                *ELAUNCH,
                "--rdzv-backend", "c10d", "--rdzv-endpoint", f"host1:{PORT}", "--rdzv-id", self.run_id,
                "--nnodes", self.nnodes, "--nproc-per-node", "1", "--rdzv-conf", CONF,
                "--shutdown-timeout", str(SHUTDOWN), "--max-restarts", str(self.max_restarts),
                *self.extra, *worker,
            ]  # fmt: skip
            with open(self.tmp / f"host{i}.out", "wb") as out, open(self.tmp / f"host{i}.err", "wb") as err:
                self.agents[i] = self.cluster.popen(i, argv, stdout=out, stderr=err, cwd=ROOT)

    # -- what happened ------------------------------------------------------------------------
    def err(self, i: int) -> str:
        return (self.tmp / f"host{i}.err").read_text(errors="replace")

    def records(self, event: str) -> list[dict[str, str]]:
        """The workers' progress lines of one kind (start, step, done) as dicts."""
        try:
            text = self.progress.read_text()
        except FileNotFoundError:
            return []
        recs = [dict(kv.split("=", 1) for kv in line.split() if "=" in kv) for line in text.splitlines()]
        return [r for r in recs if r.get("event") == event]

    def training(self, world: int, hosts: Sequence[int]) -> bool:
        """Each of `hosts` has a worker that made steps in a group of `world` workers."""
        seen = {r.get("host") for r in self.records("step") if r.get("world") == str(world)}
        return {f"host{i}" for i in hosts} <= seen

    def diagnostics(self) -> str:
        """The agents' own lines (not the workers'), for failure messages."""
        parts = []
        for i in sorted(self.agents):
            lines = [x for x in self.err(i).splitlines() if not x.startswith(f"[host{i}:")]
            parts.append(f"--- host{i} (rc {self.agents[i].poll()}):\n" + "\n".join(lines[-25:]))
        return "\n".join(parts)

    # -- waiting ------------------------------------------------------------------------------
    def wait(self, cond: Callable[[], object], timeout: float, what: str) -> None:
        try:
            wait_until(cond, timeout, what, max_interval=0.5)
        except WaitTimeout as e:
            raise AssertionError(f"{e}\n{self.diagnostics()}") from None

    def wait_training(self, world: int, hosts: Sequence[int], timeout: float) -> None:
        names = ", ".join(f"host{i}" for i in hosts)
        self.wait(lambda: self.training(world, hosts), timeout, f"{names} training with world size {world}")

    def exit_code(self, i: int, timeout: float) -> int:
        self.wait(lambda: self.agents[i].poll() is not None, timeout, f"host{i}'s agent to exit")
        rc = self.agents[i].returncode
        assert rc is not None
        return rc

    def release(self) -> None:
        assert self.release_file is not None
        self.release_file.touch()

    def assert_nothing_left(self) -> None:
        hosts = range(1, self.cluster.n + 1)
        self.wait(lambda: not any(self.cluster.pids(i) for i in hosts), 15, "every host to be empty")

    def close(self) -> None:
        """Stop what is still running the way a user would (SIGTERM, then SIGKILL of the agent,
        whose reaper still kills its workers and removes its temp dirs), before the cluster goes."""
        running = [p for p in self.agents.values() if p.poll() is None]
        for p in running:
            p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + SHUTDOWN + 2
        for p in running:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        for i in range(1, self.cluster.n + 1):
            self.cluster.link_up(i)
        try:
            wait_until(
                lambda: not any(self.cluster.pids(i) for i in range(1, self.cluster.n + 1)),
                15,
                "empty hosts",
                max_interval=0.5,
            )
        except WaitTimeout:
            pass  # the cluster's teardown kills what is left; the test has failed already


@pytest.fixture
def make_job(netns_cluster: Callable[..., Cluster], tmp_path: Path) -> Iterator[Callable[..., Job]]:
    """`make_job(nnodes, hosts=3, max_restarts=0, release=True, fail_on=None)`: a Job on fresh fake hosts."""
    jobs: list[Job] = []

    def make(
        nnodes: str,
        hosts: int = 3,
        *,
        max_restarts: int = 0,
        release: bool = True,
        fail_on: str | None = None,
        extra: Sequence[str] = (),
    ) -> Job:
        job = Job(
            netns_cluster(n=hosts),
            tmp_path,
            nnodes,
            max_restarts=max_restarts,
            release=release,
            fail_on=fail_on,
            extra=extra,
        )
        jobs.append(job)
        return job

    yield make
    for job in jobs:
        job.close()


def hosts_of(records: list[dict[str, str]]) -> list[str]:
    return sorted(r["host"] for r in records)


# -- the scenarios ----------------------------------------------------------------------------------
@needs_torch
@pytest.mark.torch
@pytest.mark.timeout(180)
def test_three_nodes_train_and_finish(make_job: Callable[..., Job]) -> None:
    job = make_job("3", release=False)
    job.start(1, 2, 3)
    for i in (1, 2, 3):
        assert job.exit_code(i, START + 60) == 0, job.diagnostics()
    done = job.records("done")
    assert hosts_of(done) == ["host1", "host2", "host3"]
    assert {r["world"] for r in done} == {"3"} and {r["group_world"] for r in done} == {"3"}
    assert sorted(r["rank"] for r in done) == ["0", "1", "2"]
    assert [r["host"] for r in done if r["rank"] == "0"] == ["host1"]  # the endpoint's host is rank 0
    assert {r["master"].split(":")[0] for r in done} == {"host1"}
    assert {r["restart"] for r in done} == {"0"}
    assert "rendezvous round 0: node 0 of 3, world size 3, master host1:" in job.err(1)
    job.assert_nothing_left()


@needs_torch
@pytest.mark.torch
@pytest.mark.timeout(240)
def test_late_node_is_admitted(make_job: Callable[..., Job]) -> None:
    job = make_job("2:3", max_restarts=0)
    job.start(1, 2)
    job.wait_training(2, (1, 2), START)
    job.start(3)
    job.wait_training(3, (1, 2, 3), START)  # the running pair restarted to admit host3
    job.release()
    for i in (1, 2, 3):
        assert job.exit_code(i, 60) == 0, job.diagnostics()
    done = job.records("done")
    assert hosts_of(done) == ["host1", "host2", "host3"]
    assert {r["world"] for r in done} == {"3"}
    # TORCHELASTIC_RESTART_COUNT is job-wide: the re-formed group (round 1) sees 1 on every node, the
    # newcomer included, so all resume alike; the membership change used no restart of the budget.
    assert {r["restart"] for r in done} == {"1"}
    assert "waiting to join" in job.err(1)
    assert "no restart used" in job.err(1)
    job.assert_nothing_left()


@needs_torch
@pytest.mark.torch
@pytest.mark.timeout(240)
def test_kill9_of_an_agent_survivors_go_on(make_job: Callable[..., Job]) -> None:
    # Survivors' workers fail at once (gloo: connection reset by peer), as under torchrun; that is
    # only an echo: each survivor waits (a bounded time) for the heartbeat to find the lost node,
    # then re-forms the group without using a restart. With --max-restarts 0, torchrun's job ends
    # here on whichever rank's connection error came first.
    job = make_job("2:3", max_restarts=0)
    job.start(1, 2, 3)
    job.wait_training(3, (1, 2, 3), START)
    job.agents[2].kill()
    job.wait(lambda: not job.cluster.pids(2), 10, "host2's workers and reaper to die with its agent")
    job.wait_training(2, (1, 3), RECOVER)
    job.release()
    for i in (1, 3):
        assert job.exit_code(i, 60) == 0, job.diagnostics()
    assert job.exit_code(2, 10) == -signal.SIGKILL
    done = job.records("done")
    assert hosts_of(done) == ["host1", "host3"]
    assert {r["world"] for r in done} == {"2"}
    assert [r["host"] for r in done if r["rank"] == "0"] == ["host1"]
    for i in (1, 3):
        assert re.search(r"lost node\(s\): host2 \(group rank \d\)", job.err(i)), job.diagnostics()
    job.assert_nothing_left()


@needs_torch
@pytest.mark.torch
@pytest.mark.timeout(240)
def test_kill9_of_an_agent_the_lost_node_is_the_root_cause(make_job: Callable[..., Job]) -> None:
    # A fixed size: the survivor cannot go on without host2. It waits for a replacement (the join
    # timeout, short here), then fails; its report names the lost node, not its own rank's
    # connection error, which is only the echo of it.
    conf = CONF.replace("join_timeout=60", "join_timeout=6")
    job = make_job("2", hosts=2, max_restarts=0, extra=["--rdzv-conf", conf])
    job.start(1, 2)
    job.wait_training(2, (1, 2), START)
    job.agents[2].kill()
    assert job.exit_code(1, RECOVER) != 0, job.diagnostics()
    err = job.err(1)
    assert re.search(r"root cause: node host2 \(group rank 1\) was lost", err), job.diagnostics()
    assert "kind: node_lost, restartable" in err, job.diagnostics()
    job.assert_nothing_left()


@needs_torch
@pytest.mark.torch
@pytest.mark.timeout(240)
def test_cut_link_survivors_go_on_and_cut_node_exits(make_job: Callable[..., Job]) -> None:
    job = make_job("2:3", max_restarts=3)
    job.start(1, 2, 3)
    job.wait_training(3, (1, 2, 3), START)
    job.cluster.link_down(3)
    # host3 has lost the store: it must notice (heartbeat) and stop its worker, stuck in gloo.
    cut_node_deadline = time.monotonic() + STOP
    job.wait_training(2, (1, 2), RECOVER)
    job.release()
    for i in (1, 2):
        assert job.exit_code(i, 60) == 0, job.diagnostics()
    done = job.records("done")
    assert hosts_of(done) == ["host1", "host2"]
    assert {r["world"] for r in done} == {"2"}
    assert "lost host3" in job.err(1) + job.err(2)
    assert job.exit_code(3, max(1.0, cut_node_deadline - time.monotonic())) != 0
    assert f"lost the rendezvous store at host1:{PORT}" in job.err(3), job.diagnostics()
    job.cluster.link_up(3)
    job.assert_nothing_left()


@needs_torch
@pytest.mark.torch
@pytest.mark.timeout(180)
def test_sigterm_to_one_agent_stops_the_job(make_job: Callable[..., Job]) -> None:
    job = make_job("3", max_restarts=0)
    job.start(1, 2, 3)
    job.wait_training(3, (1, 2, 3), START)
    job.agents[2].send_signal(signal.SIGTERM)
    assert job.exit_code(2, SHUTDOWN + 10) == 128 + signal.SIGTERM
    assert "SIGTERM received: stopping the workers" in job.err(2)
    job.wait(lambda: not job.cluster.pids(2), 5, "nothing left on host2")
    for i in (1, 3):
        assert job.exit_code(i, STOP) != 0, job.diagnostics()
        assert re.search(r"host2 \(group rank \d\) was stopped by SIGTERM", job.err(i)), job.diagnostics()
    job.assert_nothing_left()


@needs_torch
@pytest.mark.torch
@pytest.mark.timeout(180)
@pytest.mark.parametrize("fault", ["kill9", "cut"])
def test_store_host_lost_every_node_stops(make_job: Callable[..., Job], fault: str) -> None:
    job = make_job("2:3", max_restarts=0)
    job.start(1, 2, 3)
    job.wait_training(3, (1, 2, 3), START)
    if fault == "kill9":
        job.agents[1].kill()
    else:
        job.cluster.link_down(1)
    deadline = time.monotonic() + STOP
    for i in (2, 3):
        assert job.exit_code(i, max(1.0, deadline - time.monotonic())) != 0
        # kill -9: the workers fail first (their peer is gone), then the store refuses the close;
        # cut: the workers hang in gloo, the agents notice the silent store.
        want = f"lost the rendezvous store at host1:{PORT}" if fault == "cut" else f"rendezvous store at host1:{PORT}"
        assert want in job.err(i), job.diagnostics()
        job.wait(lambda i=i: not job.cluster.pids(i), 5, f"nothing left on host{i}")
    if fault == "kill9":
        assert job.exit_code(1, 10) == -signal.SIGKILL
    else:
        # host1 was cut off from everybody: it waits for a quorum until join_timeout; a user stops it.
        job.cluster.link_up(1)
        job.agents[1].send_signal(signal.SIGTERM)
        assert job.exit_code(1, STOP) == 128 + signal.SIGTERM
    job.assert_nothing_left()


@needs_torch
@pytest.mark.torch
@pytest.mark.timeout(240)
def test_restarts_used_up_on_one_node_closes_the_job(make_job: Callable[..., Job]) -> None:
    job = make_job("3", max_restarts=1, fail_on="host3")
    job.start(1, 2, 3)
    assert job.exit_code(3, 2 * START) == 1, job.diagnostics()
    err3 = job.err(3)
    assert err3.count("ValueError: boom on host3") >= 2  # once per attempt, as the worker printed it
    assert re.search(r"root cause: rank \d \(local rank 0\) on host3", err3), err3
    assert "traceback:" in err3 and 'raise ValueError(f"boom on {host}")' in err3  # the real traceback
    for i in (1, 2):
        assert job.exit_code(i, STOP) != 0, job.diagnostics()
        err = job.err(i)
        report = err[err.rindex("job FAILED") :]
        assert "the job was closed: host3 failed: rank" in report, report
        # Every node names the same root cause: host3's exception, published by its agent.
        assert re.search(r"root cause: rank \d \(local rank 0\) on host3, pid \d+, exited with code 1", report), report
        assert "kind: exception ValueError" in report, report
        assert "Traceback (most recent call last):" in report and "ValueError: boom on host3" in report, report
    job.assert_nothing_left()


@pytest.mark.timeout(60)
def test_unreachable_endpoint_clear_error(netns_cluster: Callable[..., Cluster], tmp_path: Path) -> None:
    """No torch needed: the agent gives up before it would import torch for the store."""
    cluster = netns_cluster(n=2)
    script = tmp_path / "hello.py"
    script.write_text("print('never runs')\n")
    cluster.link_down(2)  # packets to host2 vanish: connects time out
    argv = [*ELAUNCH, "--rdzv-backend", "c10d", "--rdzv-endpoint", f"host2:{PORT}", "--nnodes", "2",
            "--rdzv-id", "unreachable", "--rdzv-conf", "join_timeout=3", str(script)]  # fmt: skip
    r = cluster.run(1, argv, timeout=3 + 12, cwd=ROOT)  # the deadline: join_timeout and a margin
    assert r.returncode == 1, r.stderr
    assert f"could not reach the rendezvous store at host2:{PORT}" in r.stderr
    assert r.stderr.count(f"host2:{PORT}") == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert "never runs" not in r.stdout


@needs_torch
@pytest.mark.torch
@pytest.mark.timeout(300)
def test_a_node_failing_its_health_check_is_replaced_by_a_hot_spare(
    make_job: Callable[..., Job], tmp_path: Path
) -> None:
    # host3 stands by as a spare; host2's worker is killed and host2's check fails before the next
    # round: host2 leaves, host3 takes group rank 1, and the job finishes at world size 2.
    check = f"echo checking $(hostname); test ! -e {tmp_path}/bad-$(hostname)"
    job = make_job("2", max_restarts=3, extra=["--standby", "1", "--health-check", check])
    job.start(1, 2)
    job.wait_training(2, (1, 2), START)
    job.start(3)
    job.wait(lambda: "stands by as a spare" in job.err(3), START, "host3 to stand by as a spare")
    job.wait(lambda: "spare(s) standing by: host3" in job.err(1), 30, "host1 to see the spare")
    (tmp_path / "bad-host2").touch()
    agent = job.agents[2].pid
    workers = [p for p in job.cluster.pids(2) if p != agent and (cmdline(p) or "").split()[1:2] == [str(WORKER)]]
    assert workers, job.diagnostics()
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    assert job.exit_code(2, RECOVER) != 0, job.diagnostics()  # 137: its worker was SIGKILLed first
    job.wait_training(2, (1, 3), RECOVER)
    job.release()
    for i in (1, 3):
        assert job.exit_code(i, 60) == 0, job.diagnostics()
    assert "health check FAILED" in job.err(2) and "checking host2" in job.err(2)
    assert [r["host"] for r in job.records("done") if r["rank"] == "1"] == ["host3"]
    for i in (1, 3):  # every node's report names the host and the check's last lines
        report = job.err(i).split("job SUCCEEDED", 1)[1]
        assert "host2: health check failed" in report and "checking host2" in report, report
    job.assert_nothing_left()
