"""The dynamic rendezvous over a real TCPStore on 127.0.0.1, each agent a separate process
(tests/rendezvous/agent_proc.py): rounds, kill -9 of a node, late joiners, closing, failures,
the exit barrier, and the store's host dying."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ._agent import Agent, close_all, lost_of

pytest.importorskip("torch")

HB = 1.0
CONF = {
    "heartbeat_timeout": HB,
    "keep_alive_interval": 0.2,
    "last_call_timeout": 3.0,
    "join_timeout": 30.0,
    "close_timeout": 2.0,
    "read_timeout": 10.0,
}


@pytest.fixture
def agents() -> Iterator[list[Agent]]:
    started: list[Agent] = []
    yield started
    close_all(started)


def start_host(agents: list[Agent], name: str = "nodeH", **kw: Any) -> tuple[Agent, int]:
    # endpoint 127.0.0.1:0 is local: it hosts, on a free port
    host = Agent(name, 0, kw.pop("conf", CONF), **kw)
    agents.append(host)
    ready = host.ready()
    return host, int(ready["store"].rsplit(":", 1)[1])


def start(agents: list[Agent], name: str, port: int, **kw: Any) -> Agent:
    a = Agent(name, port, kw.pop("conf", CONF), **kw)
    agents.append(a)
    a.ready()
    return a


@pytest.mark.timeout(150)
def test_rounds_lost_node_late_joiner_failures_barrier_close(agents: list[Agent]) -> None:
    h, port = start_host(agents)
    a = start(agents, "nodeA", port)  # same machine, port taken: falls back to a client
    b = start(agents, "nodeB", port)
    for x in (h, a, b):
        x.send("join")
    r0 = [x.round() for x in (h, a, b)]
    assert all(r["event"] == "round" and r["round"] == 0 for r in r0), r0
    assert all(len(r["hosts"]) == 3 for r in r0)
    assert r0[0]["rank"] == 0 and all(r["master"] == "nodeH" for r in r0)  # the store's host leads

    t_kill = time.monotonic()
    b.kill()  # kill -9 while "training"
    for x in (h, a):
        ev = x.expect(lost_of, HB + 5, "nodeB reported lost")
        assert [re.sub(r" \(group rank \d+\)$", "", n) for n in ev["lost"]] == ["nodeB"]
    assert time.monotonic() - t_kill < HB + 5

    for x in (h, a):  # survivors restart without it
        x.send("join")
    r1 = [x.round() for x in (h, a)]
    assert all(r["event"] == "round" and r["round"] == 1 and sorted(r["hosts"]) == ["nodeA", "nodeH"] for r in r1), r1

    c = start(agents, "nodeC", port)  # a late joiner: waits, and the running nodes see it
    c.send("join")
    for x in (h, a):
        x.expect(lambda e: e["event"] == "membership" and e["waiting"] >= 1, 15, "a waiting node")
        x.send("join")
    r2 = [x.round() for x in (h, a, c)]
    assert all(r["event"] == "round" and r["round"] == 2 and len(r["hosts"]) == 3 for r in r2), r2

    a.send("fail nodeA rank 1 exited with code 3: ValueError: bad batch")
    a.expect(lambda e: e["event"] == "published", 10, "the failure published")
    h.send("failures")
    got = h.expect(lambda e: e["event"] == "failures", 10, "failures")
    assert got["items"] == ["nodeA rank 1 exited with code 3: ValueError: bad batch"]

    for x in (h, a, c):
        x.send("barrier 20")
    for x in (h, a, c):
        ev = x.expect(lambda e: e["event"] in ("barrier", "error"), 20, "barrier")
        assert ev["event"] == "barrier", ev

    c.send("close nodeC: stopped by SIGTERM")
    for x in (h, a):
        ev = x.expect(lambda e: e["event"] == "membership" and e["closed"], 10, "the job closed")
        assert ev["reason"] == "nodeC: stopped by SIGTERM"
    for x in (c, a, h):
        x.send("exit")
        x.expect(lambda e: e["event"] == "bye", 15, "bye")
        assert x.proc.wait(10) == 0


@pytest.mark.timeout(90)
def test_losing_the_store_host_closes_the_job_with_a_clear_reason(agents: list[Agent]) -> None:
    h, port = start_host(agents, nnodes="2:2")
    a = start(agents, "nodeA", port, nnodes="2:2")
    for x in (h, a):
        x.send("join")
    for x in (h, a):
        assert x.round()["event"] == "round"
    h.kill()
    ev = a.expect(lambda e: e["event"] == "membership" and e["closed"], 2 * HB + 5, "the job closed")
    assert ev["reason"].startswith(f"lost the rendezvous store at 127.0.0.1:{port}"), ev
    a.send("join")  # and nothing hangs afterwards
    err = a.round()
    assert err["event"] == "error" and err["type"] in ("RendezvousClosedError", "StoreError"), err
    a.send("exit")
    a.expect(lambda e: e["event"] == "bye", 15, "bye")
    assert a.proc.wait(10) == 0


@pytest.mark.timeout(60)
def test_a_second_job_on_the_same_store_is_independent(agents: list[Agent]) -> None:
    h, port = start_host(agents, nnodes="1:1", run_id="job1")
    x = start(agents, "nodeX", port, nnodes="1:1", run_id="job2")
    h.send("join")
    x.send("join")  # with a shared key space it would be late for job1's round 0 and hang
    assert h.round() == {"event": "round", "round": 0, "rank": 0, "hosts": ["nodeH"], "master": "nodeH"}
    assert x.round() == {"event": "round", "round": 0, "rank": 0, "hosts": ["nodeX"], "master": "nodeX"}
