"""Machine-readable records of a run: `--events-file` (JSON lines) and `--summary-file` (JSON).

Schemas are documented in docs/output.md. Both are written even when the job fails; the
summary is written when the run finishes (atomically: a temp file renamed into place).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import os
from typing import IO, Any

from elaunch import events as ev
from elaunch.signals import signal_name
from elaunch.spec import WorkerFailure, WorkerState

SUMMARY_SCHEMA = "elaunch.summary/1"
EVENTS_SCHEMA = "elaunch.events/1"


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def event_record(e: ev.Event) -> dict[str, Any]:
    """One JSON object per event; worker output is summarised (lines, bytes), not copied."""
    if isinstance(e, ev.WorkerOutput):
        return {
            "event": "WorkerOutput",
            "ts": e.ts,
            "local_rank": e.local_rank,
            "global_rank": e.global_rank,
            "stream": "stdout" if e.stream == 1 else "stderr",
            "lines": e.data.count(b"\n"),
            "bytes": len(e.data),
        }
    if isinstance(e, ev.RunFinished):
        return {"event": "RunFinished", "ts": e.ts, **summary_core(e)}
    rec: dict[str, Any] = {"event": type(e).__name__}
    for f in dataclasses.fields(e):
        rec[f.name] = _plain(getattr(e, f.name))
    if isinstance(e, ev.SignalReceived | ev.WorkerStateChanged) and getattr(e, "signal", None) is not None:
        rec["signal_name"] = signal_name(e.signal)  # type: ignore[arg-type]
    return rec


def failure_record(f: WorkerFailure | None) -> dict[str, Any] | None:
    if f is None:
        return None
    return {
        "global_rank": f.global_rank,
        "local_rank": f.local_rank,
        "role": f.role,
        "host": f.host,
        "pid": f.pid,
        "exit_code": f.exitcode,
        "signal": f.signal_name,
        "timestamp": f.timestamp,
        "restart": f.restart,
        "error_message": f.error_message,
        "traceback": f.traceback,
        "last_lines": list(f.last_lines),
        "stopped_by_agent": f.stopped_by_agent,
    }


def summary_core(e: ev.RunFinished) -> dict[str, Any]:
    r = e.result
    return {
        "state": r.state.value,
        "exit_code": r.exit_code,
        "interrupted_by": signal_name(r.interrupted_by) if r.interrupted_by is not None else None,
        "message": r.message,
        "root_cause": failure_record(r.root_cause),
        "remote_failures": list(e.remote_failures),
    }


class EventsFile:
    """Appends one JSON line per event, flushed whenever the agent goes idle."""

    def __init__(self, path: str) -> None:
        self._f: IO[str] = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._f.write(json.dumps({"event": "Schema", "schema": EVENTS_SCHEMA}) + "\n")

    def handle(self, e: ev.Event) -> None:
        self._f.write(json.dumps(event_record(e)) + "\n")

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()


class SummaryFile:
    """Follows the run and writes one JSON document at its end."""

    def __init__(self, path: str, err: IO[bytes] | None = None) -> None:
        self._path = path
        self._err = err
        self._run: dict[str, Any] = {}
        self._workers: dict[tuple[int, int], dict[str, Any]] = {}
        self._restarts = 0
        self._membership = 0
        self._rounds: list[dict[str, Any]] = []
        self._attempt = 0

    def handle(self, e: ev.Event) -> None:
        if isinstance(e, ev.RunStarted):
            self._run = {"run_id": e.run_id, "host": e.host, "role": e.role, "started_at": e.ts,
                         "nproc_per_node": e.nproc_per_node, "min_nodes": e.min_nodes, "max_nodes": e.max_nodes,
                         "max_restarts": e.max_restarts}  # fmt: skip
        elif isinstance(e, ev.RendezvousDone):
            self._rounds.append({"round": e.round, "group_rank": e.group_rank, "nodes": e.group_world_size,
                                 "world_size": e.world_size, "hosts": list(e.hosts), "duration_s": e.duration})  # fmt: skip
        elif isinstance(e, ev.WorkerStarted):
            # Keyed by attempt (rendezvous round on this node), not by restart count: membership
            # restarts start new workers without using up a restart.
            self._attempt = len(self._rounds) - 1
            self._workers[(self._attempt, e.local_rank)] = {
                "local_rank": e.local_rank,
                "global_rank": e.global_rank,
                "role_rank": e.role_rank,
                "pid": e.pid,
                "attempt": self._attempt,
                "restart": e.restart,
                "state": WorkerState.INIT.value,
                "exit_code": None,
                "signal": None,
                "stopped_by_elaunch": False,
                "started_at": e.ts,
                "ended_at": None,
                "duration_s": None,
            }
        elif isinstance(e, ev.WorkerStateChanged):
            w = self._workers.get((self._attempt, e.local_rank))
            if w is not None:
                w["state"] = e.new.value
                if e.new.terminal:
                    w.update(exit_code=e.exitcode, signal=signal_name(e.signal) if e.signal is not None else None,
                             stopped_by_elaunch=e.stopped_by_agent, ended_at=e.ts, duration_s=e.ts - w["started_at"])  # fmt: skip
        elif isinstance(e, ev.RestartDecided):
            self._restarts = e.restarts_used
            self._membership = e.membership_restarts
        elif isinstance(e, ev.RunFinished):
            self._write(e)

    def _write(self, e: ev.RunFinished) -> None:
        doc = {
            "schema": SUMMARY_SCHEMA,
            **self._run,
            "finished_at": e.ts,
            "duration_s": e.ts - self._run.get("started_at", e.ts),
            **summary_core(e),
            "restarts": self._restarts,
            "membership_restarts": self._membership,
            "rounds": self._rounds,
            "workers": sorted(self._workers.values(), key=lambda w: (w["attempt"], w["global_rank"])),
        }
        tmp = f"{self._path}.tmp{os.getpid()}"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(doc, f, indent=2)
                f.write("\n")
            os.replace(tmp, self._path)
        except OSError as err:  # checked at start, but the disk may fill or the dir go away
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if self._err is not None:
                self._err.write(
                    f"elaunch: error: cannot write --summary-file {self._path}: {err.strerror or err}\n".encode()
                )
                self._err.flush()

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
