"""An agent process for the multi-process rendezvous tests (tests/rendezvous/agent_proc.py),
driven by commands on its stdin; its JSON events arrive on a queue."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
AGENT = Path(__file__).with_name("agent_proc.py")
Event = dict[str, Any]


class Agent:
    """An agent process; its JSON events arrive on a queue read by a thread. `backend` "c10d"
    hosts or joins a TCPStore at 127.0.0.1:`port` (0: host one on a free port); "etcd" meets in
    the etcd at 127.0.0.1:`port`."""

    def __init__(
        self,
        name: str,
        port: int,
        conf: dict[str, float],
        nnodes: str = "2:3",
        run_id: str = "job",
        backend: str = "c10d",
        standby: int = 0,
    ) -> None:
        self.name = name
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            # the sandbox's DNS sometimes drops the reverse lookups c10d makes per connection:
            # bound each to 1 s instead of glibc's 5
            "RES_OPTIONS": "timeout:1 attempts:1",
        }
        cmd = [sys.executable, str(AGENT), "--name", name, "--port", str(port), "--nnodes", nnodes]
        cmd += ["--conf", json.dumps(conf), "--run-id", run_id, "--backend", backend, "--standby", str(standby)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        self.events: queue.Queue[Event] = queue.Queue()
        self.seen: list[Event] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                self.events.put(json.loads(line))
        self.events.put({"event": "eof"})

    def send(self, cmd: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()

    def expect(self, pred: Callable[[Event], bool], timeout: float, what: str) -> Event:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.name}: no {what} within {timeout} s; saw {self.seen}")
            try:
                ev = self.events.get(timeout=left)
            except queue.Empty:
                continue
            self.seen.append(ev)
            if ev["event"] == "eof":
                raise AssertionError(f"{self.name} exited (rc {self.proc.poll()}) before {what}; saw {self.seen}")
            if pred(ev):
                return ev

    def drain(self) -> list[Event]:
        """Every event seen so far, those still queued included (without blocking)."""
        while True:
            try:
                self.seen.append(self.events.get_nowait())
            except queue.Empty:
                return self.seen

    def ready(self, timeout: float = 60) -> Event:
        """Wait for the agent's rendezvous to be built; its `ready` event (fails on `error`)."""
        ev = self.expect(lambda e: e["event"] in ("ready", "error"), timeout, "ready")
        assert ev["event"] == "ready", ev
        return ev

    def round(self, timeout: float = 20) -> Event:
        return self.expect(lambda e: e["event"] in ("round", "error"), timeout, "round")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("exit")
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(10)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()
        self._reader.join(5)


def close_all(agents: list[Agent]) -> None:
    """Close every agent, the first started last (it may host the store), and check none is left."""
    for a in reversed(agents):
        a.close()
    assert all(a.proc.poll() is not None for a in agents)


def lost_of(e: Event) -> bool:
    return e["event"] == "membership" and bool(e["lost"])
