"""Machine-readable records of a run: `--events-file` (JSON lines) and `--summary-file` (JSON).

Schemas are documented in docs/output.md. Both are written even when the job fails; the
summary is written when the run finishes (atomically: a temp file renamed into place), from
the run's view (`summary_doc`, pure): this module keeps no state of the run itself.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
from typing import IO, Any

from elaunch import events as ev
from elaunch.runview import RunView, ViewSource, WorkerRow
from elaunch.signals import signal_name
from elaunch.spec import RunResult, WorkerFailure
from elaunch.values import fields

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
        return {"event": "RunFinished", "ts": e.ts, **summary_core(e.result, e.remote_failures)}
    rec: dict[str, Any] = {"event": type(e).__name__}
    for name in fields(e):
        rec[name] = _plain(getattr(e, name))
    if isinstance(e, ev.SignalReceived | ev.WorkerStateChanged) and getattr(e, "signal", None) is not None:
        rec["signal_name"] = signal_name(e.signal)  # type: ignore[arg-type]
    return rec


def failure_record(f: WorkerFailure | None) -> dict[str, Any] | None:
    """A failure as the summary's `root_cause` object, or None."""
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


def summary_core(result: RunResult, remote_failures: tuple[str, ...]) -> dict[str, Any]:
    """How the run ended: the keys `RunFinished` records share with the summary."""
    r = result
    return {
        "state": r.state.value,
        "exit_code": r.exit_code,
        "interrupted_by": signal_name(r.interrupted_by) if r.interrupted_by is not None else None,
        "message": r.message,
        "root_cause": failure_record(r.root_cause),
        "remote_failures": list(remote_failures),
    }


def worker_record(w: WorkerRow) -> dict[str, Any]:
    """One worker of one attempt as in the summary's `workers` (times in wall-clock seconds)."""
    return {
        "local_rank": w.local_rank,
        "global_rank": w.global_rank,
        "role_rank": w.role_rank,
        "pid": w.pid,
        "attempt": w.attempt,
        "restart": w.restart,
        "state": w.state.value,
        "exit_code": w.exitcode,
        "signal": signal_name(w.signal) if w.signal is not None else None,
        "stopped_by_elaunch": w.stopped_by_agent,
        "started_at": w.started,
        "ended_at": w.ended,
        "duration_s": w.ended - w.started if w.ended is not None else None,
    }


def summary_doc(view: RunView) -> dict[str, Any]:
    """The `--summary-file` document (schema elaunch.summary/1) of a finished run's view.

    Raises ValueError if the view has no `RunFinished` yet. The run's own keys (run_id ...
    started_at) are absent when the run ended before it started (e.g. no rendezvous backend).
    """
    fin = view.finished
    if fin is None:
        raise ValueError("the run has not finished: no summary yet")
    run: dict[str, Any] = {}
    if view.run is not None:
        r = view.run
        run = {"run_id": r.run_id, "host": r.host, "role": r.role, "started_at": r.started_at,
               "nproc_per_node": r.nproc_per_node, "min_nodes": r.min_nodes, "max_nodes": r.max_nodes,
               "max_restarts": r.max_restarts}  # fmt: skip
    rounds = [
        {"round": x.round, "group_rank": x.group_rank, "nodes": x.group_world_size, "world_size": x.world_size,
         "hosts": list(x.hosts), "duration_s": x.duration}
        for x in view.rounds
    ]  # fmt: skip
    return {
        "schema": SUMMARY_SCHEMA,
        **run,
        "finished_at": fin.ts,
        "duration_s": fin.ts - run.get("started_at", fin.ts),
        **summary_core(fin.result, fin.remote_failures),
        "restarts": view.restart_count,
        "membership_restarts": view.membership_restarts,
        "rounds": rounds,
        "workers": [worker_record(w) for w in sorted(view.all_workers, key=lambda w: (w.attempt, w.global_rank))],
    }


class EventsFile:
    """Appends one JSON line per event, flushed whenever the agent goes idle."""

    def __init__(self, path: str) -> None:
        self._f: IO[str] = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._f.write(json.dumps({"event": "Schema", "schema": EVENTS_SCHEMA}) + "\n")

    def handle(self, e: ev.Event) -> None:
        if isinstance(e, ev.WorkerBytes | ev.WorkerPartialLine):
            return  # the output itself: summarised by WorkerOutput, kept by --log-dir
        self._f.write(json.dumps(event_record(e)) + "\n")

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()


class SummaryFile:
    """Writes `summary_doc` of the tracker's view when the run finishes."""

    def __init__(self, path: str, views: ViewSource, err: IO[bytes] | None = None) -> None:
        """`views`: the run's tracker, subscribed before this sink; `err` hears of a failed write
        (without it, the OSError is raised for the guard of outputs.py to report)."""
        self._path = path
        self._views = views
        self._err = err

    def handle(self, e: ev.Event) -> None:
        if isinstance(e, ev.RunFinished):
            self._write(summary_doc(self._views.view))

    def _write(self, doc: dict[str, Any]) -> None:
        tmp = f"{self._path}.tmp{os.getpid()}"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(doc, f, indent=2)
                f.write("\n")
            os.replace(tmp, self._path)
        except OSError as err:  # checked at start, but the disk may fill or the dir go away
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if self._err is None:
                raise  # guarded by outputs.py: reported as a lost output
            self._err.write(
                f"elaunch: error: cannot write --summary-file {self._path}: {err.strerror or err}\n".encode()
            )
            self._err.flush()

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
