"""`elaunch rdzv-server`: a process that only hosts the c10d rendezvous store, off the training nodes.

    elaunch rdzv-server --port 29400          # on a login or head node
    elaunch --rdzv-backend c10d --rdzv-endpoint head:29400 --nnodes 2 ... train.py   # on each node

Every agent is then a client: the death (or early finish) of any training node never takes the
store down (pytorch#118891, #168242). One server serves many jobs, each under its own
`/elaunch/<run id>/` keys (`rendezvous.keys`). It lists the store's keys every `--poll-interval`
seconds and prints one line per job as it starts and as it ends; when a job ends its keys are
removed, so its run id can be used again. An agent on the server's own machine finds the port taken
and becomes a client (`store.connect_store`); `is_host=false` in `--rdzv-conf` makes that explicit.
SIGTERM or SIGINT stops the server cleanly (exit 0). Decisions are the pure `job_*` functions below;
`serve` is the edge (the TCPStore, the clock, the console).

torch is imported for the TCPStore (CPU only); nothing else of elaunch's launch path is loaded.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TextIO
from urllib.parse import unquote

from elaunch.errors import ConfigError, StoreError
from elaunch.rendezvous.keys import KEY_ROOT, Keys
from elaunch.values import Value, value

SUBCOMMAND = "rdzv-server"
DEFAULT_PORT = 29400


@value
class ServerConfig(Value):
    port: int = DEFAULT_PORT
    poll_interval: float = 2.0
    """Seconds between two looks at the store's keys."""
    linger: float = 60.0
    """Seconds a closed job's keys stay when not every node said goodbye (a node died)."""
    abandon_after: float = 1200.0
    """Seconds without any heartbeat after which a job is taken as dead; above join_timeout (600 s by
    default), since nodes that wait for a round to form do not beat."""


@value
class JobSeen(Value):
    """What the server knows of one job (all times on its monotonic clock)."""

    run_id: str
    since: float
    beats: int = -1
    """Sum of the job's heartbeat counters at the last look (-1: not read yet)."""
    beat_at: float = 0.0
    """When that sum last changed."""
    closed_at: float | None = None


# -- decisions (pure) ---------------------------------------------------------------------------
def jobs_in(keys: Iterable[str]) -> dict[str, list[str]]:
    """The store's keys grouped by job: {run id: its keys} (keys outside `/elaunch/<id>/` are not ours)."""
    out: dict[str, list[str]] = {}
    root = KEY_ROOT + "/"
    for k in keys:
        if not k.startswith(root):
            continue
        quoted, sep, _ = k[len(root) :].partition("/")
        if sep and quoted:
            out.setdefault(unquote(quoted), []).append(k)
    return out


def job_ended(
    seen: JobSeen, closed: bool, goodbyes: int, expected: int | None, now: float, cfg: ServerConfig
) -> str | None:
    """Whether job `seen` is over, and how to say it (None: it still runs).

    Closed (`P/closed`) and every node of its last round said goodbye: ended. Closed, but some
    never said goodbye (killed): ended once `linger` has passed since the server saw it closed.
    Never closed, but no heartbeat moved for `abandon_after`: every agent is gone (SIGKILLed).
    """
    if closed:
        if expected is not None and goodbyes >= expected:
            return "ended"
        if seen.closed_at is not None and now - seen.closed_at >= cfg.linger:
            return "ended"
        return None
    if seen.beats >= 0 and now - seen.beat_at >= cfg.abandon_after:
        return f"abandoned (no heartbeat for {cfg.abandon_after:g} s)"
    return None


def end_line(run_id: str, how: str, reason: str | None, rounds: int, nodes: int | None, removed: int) -> str:
    why = f": {reason}" if reason else ""
    size = f", {nodes} node(s) in its last round" if nodes is not None else ""
    return f"job {run_id!r} {how}{why} ({rounds} round(s){size}); removed its {removed} key(s)"


# -- the edge ----------------------------------------------------------------------------------
class _Jobs:
    """Reads one job's state from the store (its keys, named by `Keys`)."""

    def __init__(self, store: Any) -> None:
        self._st = store

    def read(self, run_id: str, keys: Sequence[str]) -> tuple[bool, str | None, int, int | None, int, int]:
        """(closed, reason, goodbyes, last round's size, rounds, heartbeat sum)."""
        from elaunch.rendezvous import rounds

        k = Keys(run_id)
        present = set(keys)
        closed = k.closed in present
        reason = self._st.get(k.closed).decode(errors="replace") if closed else None
        goodbyes = int(self._st.get(k.bye)) if k.bye in present else 0
        opened = int(self._st.get(k.open_round)) if k.open_round in present else 0
        size: int | None = None
        last = opened - 1
        if last >= 0 and k.round(last).final in present:
            size = len(rounds.decode_group(self._st.get(k.round(last).final)))
        hb_prefix = k.hb("")
        hbs = [key for key in keys if key.startswith(hb_prefix)]
        beats = sum(int(v) for v in self._st.multi_get(hbs)) if hbs else 0
        return closed, reason, goodbyes, size, opened, beats

    def remove(self, keys: Sequence[str]) -> int:
        return sum(1 for key in keys if self._st.delete_key(key))


def serve(cfg: ServerConfig, out: TextIO, stop: threading.Event, clock: Callable[[], float] = time.monotonic) -> int:
    """Host the store on `cfg.port` until `stop` is set; print a line per job started and ended."""
    from datetime import timedelta

    from elaunch.rendezvous.store import _import_torch_distributed

    dist = _import_torch_distributed()
    try:
        srv = dist.TCPStore(
            "127.0.0.1",
            cfg.port,
            is_master=True,
            multi_tenant=False,
            wait_for_workers=False,
            timeout=timedelta(seconds=30),
        )
    except (RuntimeError, ValueError, OSError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise StoreError(f"rdzv-server: could not serve on port {cfg.port}: {first}") from None

    def say(text: str) -> None:
        out.write(f"[elaunch rdzv-server {time.strftime('%H:%M:%S')}] {text}\n")
        out.flush()

    say(
        f"serving the rendezvous store on port {srv.port}; agents: --rdzv-backend c10d "
        f"--rdzv-endpoint <this host>:{srv.port}"
    )
    jobs = _Jobs(srv)
    seen: dict[str, JobSeen] = {}

    def look() -> None:
        now = clock()
        by_job = jobs_in(srv.list_keys())
        for run_id in sorted(set(seen) - set(by_job)):
            del seen[run_id]  # removed by someone else (etcdctl-like manual cleanup)
        for run_id, keys in sorted(by_job.items()):
            if run_id not in seen:
                seen[run_id] = JobSeen(run_id, since=now, beat_at=now)
                say(f"job {run_id!r} started")
            try:
                closed, reason, byes, size, opened, beats = jobs.read(run_id, keys)
            except (RuntimeError, ValueError):  # a key removed between list and read
                continue
            js = seen[run_id]
            if beats != js.beats:
                js = JobSeen(run_id, js.since, beats, now, js.closed_at)
            if closed and js.closed_at is None:
                js = JobSeen(run_id, js.since, js.beats, js.beat_at, now)
            seen[run_id] = js
            how = job_ended(js, closed, byes, size, now, cfg)
            if how is not None:
                removed = jobs.remove(keys)
                say(end_line(run_id, how, reason, opened, size, removed))
                del seen[run_id]

    while not stop.wait(cfg.poll_interval):
        look()
    look()  # a last look: jobs that ended since the previous one are reported and removed
    say(f"stopping: {len(seen)} job(s) still served" if seen else "stopping")
    return 0


def _parser() -> argparse.ArgumentParser:
    from elaunch.cli import _Parser

    p = _Parser(
        prog=f"elaunch {SUBCOMMAND}",
        description="Host only the rendezvous store (c10d TCPStore) for the jobs whose agents use "
        "--rdzv-backend c10d --rdzv-endpoint <this host>:PORT. Stops on SIGTERM/SIGINT.",
    )
    p.add_argument("--port", default=str(DEFAULT_PORT), help=f"TCP port to serve on (default {DEFAULT_PORT}; 0: any).")
    p.add_argument("--poll-interval", default="2", help="Seconds between looks at the jobs (default 2).")
    p.add_argument(
        "--linger",
        default="60",
        help="Seconds a closed job's keys stay when some node never said goodbye (default 60).",
    )
    p.add_argument(
        "--abandon-after",
        default="1200",
        help="Seconds without any heartbeat after which a job is removed; keep it above join_timeout (default 1200).",
    )
    return p


def build_server_config(argv: Sequence[str]) -> ServerConfig:
    """Parse `elaunch rdzv-server` options; `ConfigError` (exit 2) names the bad one."""
    from elaunch.config import parse_seconds

    a = _parser().parse_args(list(argv))
    try:
        port = int(a.port)
    except ValueError:
        raise ConfigError(f"--port {a.port!r}: expected a port number (0-65535)") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port}: expected a port number (0-65535)")
    return ServerConfig(
        port=port,
        poll_interval=parse_seconds(a.poll_interval, "--poll-interval"),
        linger=parse_seconds(a.linger, "--linger"),
        abandon_after=parse_seconds(a.abandon_after, "--abandon-after"),
    )


def main(argv: Sequence[str], env: Mapping[str, str]) -> int:
    """`elaunch rdzv-server ...`: parse (usage errors: exit 2), then serve until SIGTERM/SIGINT."""
    cfg = build_server_config(argv)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    return serve(cfg, sys.stdout, stop)


__all__ = ["SUBCOMMAND", "ServerConfig", "build_server_config", "end_line", "job_ended", "jobs_in", "main", "serve"]
