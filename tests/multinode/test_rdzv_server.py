"""`elaunch rdzv-server` with real agents on 127.0.0.1: every agent is a client (the server holds the
port, so an agent on its machine cannot host), a SIGKILLed training node does not take the store
down, two jobs share the server, each job's keys go when it ends (its run id works again), and
SIGTERM stops the server cleanly."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.testbed import free_port, wait_until
from tests.helpers import run_elaunch, write_script
from tests.multinode.test_loopback import CONF, Agents, needs_torch

# The worker runs until the test creates `go` next to it.
UNTIL_GO = """
import os, time
go = os.path.join(os.path.dirname(os.path.abspath(__file__)), "go")
print("running", os.environ["WORLD_SIZE"], flush=True)
while not os.path.exists(go):
    time.sleep(0.05)
print("done", flush=True)
"""


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[Agents]:
    a = Agents(tmp_path)
    yield a
    a.close()


def job(port: int, run_id: str, nnodes: str) -> list[str]:
    return [
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--nnodes", nnodes, "--no-live",
        "--rdzv-id", run_id, "--rdzv-conf", CONF, "--shutdown-timeout", "3",
    ]  # fmt: skip


@needs_torch
@pytest.mark.torch
@pytest.mark.timeout(240)
def test_the_rdzv_server_outlives_training_nodes_and_serves_several_jobs(agents: Agents, tmp_path: Path) -> None:
    port = free_port()
    server = agents.start("server", ["rdzv-server", "--port", str(port), "--poll-interval", "0.2", "--linger", "3"])
    wait_until(lambda: "serving the rendezvous store" in (tmp_path / "server.out").read_text(), 60, "the server")
    script = write_script(tmp_path, "w.py", UNTIL_GO)
    long_id, short_id = f"long-{uuid.uuid4().hex[:6]}", f"short-{uuid.uuid4().hex[:6]}"

    # Job "long": two nodes, elastic (1:2). Node a started first, on the endpoint's machine: without
    # the server it would host the store. SIGKILL it: b re-forms alone and finishes.
    agents.start("a", [*job(port, long_id, "1:2"), str(script)])
    wait_until(lambda: "run long-" in agents.err("a"), 60, "agent a to start")
    agents.start("b", [*job(port, long_id, "1:2"), str(script)])
    wait_until(lambda: "running 2" in (tmp_path / "b.out").read_text(), 60, "b's worker in a round of two")

    # Meanwhile job "short" (two nodes, done at once) shares the server.
    go_short = write_script(tmp_path, "s.py", "print('short done', flush=True)\n")

    def ended(run_id: str) -> int:
        return (tmp_path / "server.out").read_text().count(f"job '{run_id}' ended")

    for times in (1, 2):  # the same run id twice: the first job's keys are gone once it ended
        agents.start("s1", [*job(port, short_id, "2"), str(go_short)])
        agents.start("s2", [*job(port, short_id, "2"), str(go_short)])
        assert agents.wait("s1", 90) == 0 and agents.wait("s2", 90) == 0, agents.err("s1") + agents.err("s2")
        wait_until(lambda n=times: ended(short_id) == n, 60, "the short job's end")

    agents.procs["a"].send_signal(signal.SIGKILL)
    agents.wait("a", 30)
    wait_until(lambda: "running 1" in (tmp_path / "b.out").read_text(), 90, "b re-formed alone after a was lost")
    (tmp_path / "go").touch()
    assert agents.wait("b", 60) == 0, agents.err("b")
    b = agents.err("b")
    assert "lost the rendezvous store" not in b and "job SUCCEEDED" in b, b

    wait_until(lambda: f"job '{long_id}' ended" in (tmp_path / "server.out").read_text(), 60, "the long job's end")
    out = (tmp_path / "server.out").read_text()
    assert out.count(f"job '{long_id}' started") == 1 and out.count(f"job '{short_id}' started") == 2, out
    assert server.poll() is None, out
    server.send_signal(signal.SIGTERM)
    assert agents.wait("server", 30) == 0, agents.err("server")
    assert (tmp_path / "server.out").read_text().rstrip().endswith("stopping"), out
    assert "Traceback" not in agents.err("server")


def test_rdzv_server_usage_errors_are_one_line_and_exit_2() -> None:
    r = run_elaunch(["rdzv-server", "--port", "nope"])
    assert r.returncode == 2 and r.stderr.strip() == "elaunch: error: --port 'nope': expected a port number (0-65535)"
