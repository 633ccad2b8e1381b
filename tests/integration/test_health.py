"""The endpoint and progress with real processes: a real HTTP client, real tqdm bars, a real straggler."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from scripts.testbed import free_port, wait_until
from tests.helpers import ELAUNCH, run_elaunch, write_script

# Each worker counts steps with a real tqdm bar until the test creates `stop`; rank 0 sleeps
# ten times longer per step: a straggler.
BAR = """
import os, sys, time
from tqdm import tqdm
stop = sys.argv[1]
slow = os.environ["RANK"] == "0"
for i in tqdm(range(100000), mininterval=0, ascii=True):
    if os.path.exists(stop):
        break
    time.sleep(0.2 if slow else 0.02)
"""
PATTERN = """
import os, sys, time
stop = sys.argv[1]
i = 0
while not os.path.exists(stop):
    i += 1
    print(f"step {i}/5000 loss {1 / i:.3f}", flush=True)
    time.sleep(0.05)
"""


def get(url: str) -> tuple[int, str, str]:
    """(status, content type, body) of a GET, 4xx/5xx included."""
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


def status(base: str) -> dict[str, Any]:
    code, ctype, body = get(base + "status")
    assert code == 200 and ctype == "application/json"
    doc: dict[str, Any] = json.loads(body)
    return doc


class Job:
    """elaunch in the background, its stderr in a file (where the endpoint's URL is printed)."""

    def __init__(self, tmp: Path, args: list[str], env: dict[str, str] | None = None) -> None:
        import os

        self.err_path = tmp / "stderr.txt"
        self.stop = tmp / "stop"
        self._err = open(self.err_path, "w")  # noqa: SIM115 - closed in finish()
        self.proc = subprocess.Popen(
            [*ELAUNCH, *args, str(self.stop)],
            stdout=subprocess.DEVNULL,
            stderr=self._err,
            env={**os.environ, **(env or {})},
        )

    def stderr(self) -> str:
        return self.err_path.read_text()

    def url(self) -> str:
        def found() -> str | None:
            m = re.search(r"health endpoint: (http://\S+/)", self.stderr())
            if m is None and self.proc.poll() is not None:
                raise AssertionError(f"elaunch exited: {self.stderr()}")
            return m.group(1) if m else None

        return wait_until(found, 30, "the endpoint's URL on stderr")

    def finish(self) -> int:
        self.stop.touch()
        try:
            return self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._err.close()


@pytest.mark.timeout(120)
def test_endpoint_progress_and_a_straggler_with_real_tqdm_bars(tmp_path: Path) -> None:
    script = write_script(tmp_path, "bar.py", BAR)
    events = tmp_path / "events.jsonl"
    job = Job(
        tmp_path,
        ["--nproc-per-node", "3", "--health-port", "0", "--progress-interval", "1", "--straggler-window", "1",
         "--events-file", str(events), str(script)],
    )  # fmt: skip
    try:
        base = job.url()
        assert base.startswith("http://127.0.0.1:")
        code, _, body = get(base + "healthz")
        assert code == 200 and body.startswith("ok")
        wait_until(lambda: get(base + "readyz")[0] == 200, 30, "/readyz 200")

        def straggling() -> dict[str, Any] | None:
            doc = status(base)
            return doc if [w["straggler"] for w in doc["workers"]] == [True, False, False] else None

        doc = wait_until(straggling, 60, "rank 0 marked a straggler in /status", interval=0.2)
        assert doc["state"] == "HEALTHY" and doc["world_size"] == 3 and doc["ready"] is True
        slow, fast = doc["workers"][0]["progress"], doc["workers"][1]["progress"]
        assert slow["total"] == fast["total"] == 100000
        assert 0 < slow["step"] < fast["step"]
        assert slow["steps_per_s"] < fast["steps_per_s"] and slow["eta_s"] > fast["eta_s"]

        code, ctype, text = get(base + "metrics")
        assert code == 200 and ctype.startswith("text/plain")
        samples = {
            (s.name, s.labels.get("rank")): s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if "state" not in s.labels
        }
        assert samples[("elaunch_worker_straggler", "0")] == 1 and samples[("elaunch_worker_straggler", "1")] == 0
        assert samples[("elaunch_worker_step", "1")] > 0 and samples[("elaunch_worker_total_steps", "1")] == 100000
        assert samples[("elaunch_worker_steps_per_second", "1")] > samples[("elaunch_worker_steps_per_second", "0")]
        assert samples[("elaunch_world_size", None)] == 3
        assert 0 < samples[("process_resident_memory_bytes", None)] < 200 * 2**20
        assert get(base + "nope")[0] == 404
        # The plain console's periodic line says how far the job is, and who is slow.
        wait_until(lambda: "straggler(s): rank 0" in job.stderr(), 30, "a progress line naming the straggler")
    finally:
        rc = job.finish()
    assert rc == 0, job.stderr()
    err = job.stderr()
    assert "rank 0 is a straggler" in err and re.search(r"progress: steps \d+-\d+/100000 \(\d+%\) on 3 rank", err), err
    recs = [json.loads(line) for line in events.read_text().splitlines()]
    marks = [r for r in recs if r["event"] == "StragglerChanged"]
    assert marks and marks[0]["global_rank"] == 0 and marks[0]["straggler"] is True
    reports = [r for r in recs if r["event"] == "ProgressReported"]
    assert reports and reports[-1]["ranks"] == [0, 1, 2] and reports[-1]["totals"] == [100000] * 3
    with pytest.raises(urllib.error.URLError):  # the endpoint is gone with the run
        urllib.request.urlopen(base + "healthz", timeout=5)


@pytest.mark.timeout(90)
def test_progress_pattern_and_torchrun_port_variable(tmp_path: Path) -> None:
    script = write_script(tmp_path, "steps.py", PATTERN)
    port = free_port()
    job = Job(
        tmp_path,
        ["--nproc-per-node", "2", "--progress-pattern", r"^step (?P<step>\d+)/(?P<total>\d+)", str(script)],
        env={"TORCHELASTIC_HEALTH_CHECK_PORT": str(port)},
    )
    try:
        base = job.url()
        assert base == f"http://127.0.0.1:{port}/"

        def counting() -> dict[str, Any] | None:
            doc = status(base)
            ps = [w["progress"] for w in doc["workers"]]
            return doc if all(p and p["step"] >= 5 and p["steps_per_s"] for p in ps) else None

        doc = wait_until(counting, 60, "both workers' steps in /status", interval=0.2)
        for w in doc["workers"]:
            assert w["progress"]["total"] == 5000 and w["progress"]["eta_s"] > 0
    finally:
        rc = job.finish()
    assert rc == 0, job.stderr()


@pytest.mark.timeout(30)
def test_a_port_in_use_is_a_usage_error(tmp_path: Path) -> None:
    marker = tmp_path / "started"
    script = write_script(tmp_path, "t.py", f"open({str(marker)!r}, 'w').close()\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = run_elaunch(["--health-port", str(port), str(script)])
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"elaunch: error: --health-addr 127.0.0.1 --health-port {port}: port {port} is in use"
    ]
    assert not marker.exists() and r.stdout == ""


@pytest.mark.timeout(90)
def test_waiting_in_rendezvous_is_alive_but_not_ready(tmp_path: Path) -> None:
    # Node 0 of 2 waits for node 1, which never comes: the agent's loop is blocked on the
    # rendezvous thread, yet answers wake-ups; no worker runs, so it is not ready.
    script = write_script(tmp_path, "t.py", "print('never')\n")
    job = Job(
        tmp_path,
        ["--nnodes", "2", "--node-rank", "0", "--master-port", str(free_port()), "--health-port", "0",
         "--rdzv-conf", "join_timeout=60", str(script)],
    )  # fmt: skip
    try:
        base = job.url()
        wait_until(lambda: status(base)["rendezvous_pending"], 60, "the rendezvous to begin", interval=0.2)
        code, _, body = get(base + "readyz")
        assert (code, body) == (503, "not ready: rendezvous in progress\n")
        code, _, body = get(base + "healthz")
        assert code == 200 and body == "ok: agent loop responsive\n"
        doc = status(base)
        assert doc["workers"] == [] and doc["state"] == "INIT" and doc["ready"] is False
    finally:
        job.proc.terminate()
        rc = job.finish()
    assert rc == 143, job.stderr()
