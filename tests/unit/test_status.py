"""What the endpoint answers, from scripted views: /status, /readyz, /metrics, /healthz's heartbeat."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading

import pytest
from prometheus_client.parser import text_string_to_metric_families

from elaunch import events as ev
from elaunch.health import HealthServer
from elaunch.metrics import exposition, registry
from elaunch.runview import RunTracker, RunView, fold
from elaunch.status import STATUS_SCHEMA, exit_kind, readiness, status_doc
from tests.unit.history import T0, attempt, fail_then_succeed, run_started, until

pytestmark = pytest.mark.timeout(20)


def _running() -> list[ev.Event]:
    return [
        run_started(nproc=2),
        *attempt(T0, 2, round_=0, restart=0, first_pid=100),
        ev.WorkerProgress(ts=T0 + 1, local_rank=0, global_rank=0, stream=2, text=b" 10/100 [00:01<00:09, 10.0it/s]"),
        ev.WorkerProgress(ts=T0 + 2, local_rank=0, global_rank=0, stream=2, text=b" 30/100 [00:02<00:07, 10.0it/s]"),
        ev.WorkerOutput(ts=T0 + 2, local_rank=1, global_rank=1, stream=1, data=b"hello\n"),
        ev.StragglerChanged(ts=T0 + 2, local_rank=1, global_rank=1, straggler=True, rate=1.0, median_rate=5.0),
    ]


def test_status_document_of_a_running_job() -> None:
    doc = json.loads(json.dumps(status_doc(fold(_running()), T0 + 2.5)))
    assert doc["schema"] == STATUS_SCHEMA and doc["run_id"] == "r1" and doc["host"] == "vm" and doc["role"] == "trainer"
    assert (doc["state"], doc["ready"], doc["round"], doc["attempt"], doc["world_size"]) == ("HEALTHY", True, 0, 0, 2)
    assert doc["restarts"] == {"used": 0, "left": 1, "max": 1, "membership": 0}
    assert doc["membership"] == {"waiting": 0, "lost": [], "closed": False, "reason": None}
    w0, w1 = doc["workers"]
    assert (w0["global_rank"], w0["pid"], w0["state"], w0["straggler"]) == (0, 100, "HEALTHY", False)
    p = w0["progress"]
    assert (p["step"], p["total"], p["percent"]) == (30, 100, 30.0)
    assert p["steps_per_s"] == pytest.approx(10 + (1 - math.exp(-1 / 5)) * 10)  # 10/s seeded, 20/s smoothed in
    assert p["eta_s"] == pytest.approx(70 / p["steps_per_s"])
    assert p["since_last_step_s"] == pytest.approx(0.5)
    assert w1["progress"] is None and w1["straggler"] is True and w1["last_output_at"] == T0 + 2


def test_readiness_follows_the_group() -> None:
    history = fail_then_succeed()
    assert readiness(fold([run_started()])) == (False, "rendezvous in progress")
    assert readiness(fold(until(history, ev.GroupStateChanged, 1)))[0] is True
    ok, why = readiness(fold(until(history, ev.GroupStateChanged, 2)))  # rank 1 failed
    assert not ok and why == "worker group is FAILED"
    ok, why = readiness(fold(history))
    assert not ok and why.startswith("the run has finished: SUCCEEDED")
    kinds = sorted(str(exit_kind(w)) for w in fold(history).all_workers)
    assert kinds == ["exited", "stopped", "succeeded", "succeeded"]


def test_metrics_parse_as_prometheus_text() -> None:
    tracker = RunTracker(fold(_running()))
    families = {f.name: f for f in text_string_to_metric_families(exposition(registry(tracker)).decode())}
    # The parser names counters without their _total suffix.
    for name in ("elaunch_restarts", "elaunch_worker_exits", "elaunch_rendezvous_rounds"):
        assert families[name].type == "counter"
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("elaunch_restarts_total", (("reason", "failure"),))] == 0
    assert samples[("elaunch_worker_state", (("local_rank", "0"), ("rank", "0"), ("state", "HEALTHY")))] == 1
    assert samples[("elaunch_worker_state", (("local_rank", "0"), ("rank", "0"), ("state", "FAILED")))] == 0
    assert samples[("elaunch_worker_step", (("local_rank", "0"), ("rank", "0")))] == 30
    assert samples[("elaunch_worker_total_steps", (("local_rank", "0"), ("rank", "0")))] == 100
    assert samples[("elaunch_worker_straggler", (("local_rank", "1"), ("rank", "1")))] == 1
    assert ("elaunch_worker_steps_per_second", (("local_rank", "0"), ("rank", "0"))) in samples
    assert samples[("elaunch_ready", ())] == 1
    assert samples[("process_resident_memory_bytes", ())] > 0  # the agent's RSS


def test_healthz_wakes_the_agent_loop_and_waits_for_its_heartbeat() -> None:
    class Clock:
        t = 100.0

        def __call__(self) -> float:
            return self.t

    clock = Clock()
    server = HealthServer(RunTracker(), "127.0.0.1", 0, clock=clock)
    assert server.alive() == (True, "agent loop responsive")  # a fresh beat: no wake-up needed
    clock.t = 110.0
    assert server.alive() == (True, "agent starting")  # nothing to wake yet

    def responsive_wake() -> None:  # the agent's loop: a wake-up makes it flush the bus
        threading.Thread(target=server.flush).start()

    server.set_wake(responsive_wake)
    assert server.alive() == (True, "agent loop responsive")
    clock.t = 120.0
    server.set_wake(lambda: None)  # a loop that never comes back
    import elaunch.health as health

    old, health.LIVENESS_TIMEOUT = health.LIVENESS_TIMEOUT, 0.05
    try:
        ok, why = server.alive()
    finally:
        health.LIVENESS_TIMEOUT = old
    assert not ok and why == "agent loop has not answered a wake-up for 10.0s"
    code, _, body = server.answer("/nope")
    assert code == 404 and b"/healthz" in body


def test_the_launch_path_imports_no_http_or_prometheus() -> None:
    code = (
        "import sys, elaunch.cli, elaunch.options, elaunch.launch, elaunch.sinks; "
        "print([m for m in ('prometheus_client', 'http.server', 'elaunch.health', 'statistics') if m in sys.modules])"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert r.stdout.strip() == "[]"


def test_an_error_while_answering_is_a_500_not_a_traceback() -> None:
    import urllib.error
    import urllib.request

    class Broken:
        @property
        def view(self) -> RunView:
            raise RuntimeError("no view")

    server = HealthServer(Broken(), "127.0.0.1", 0)
    server.start()
    try:
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(server.url + "status", timeout=10)
        assert err.value.code == 500 and err.value.read() == b"internal error: RuntimeError: no view\n"
    finally:
        server.close()
