"""Per-worker log files for `--redirects`/`--tee`: torchrun's layout, every line kept.

Lines are written as the console gets them: bytes as the worker wrote them, except that a line
redrawn with `\r` (a progress bar) is kept in its final state only, not as every redraw.
"""

from __future__ import annotations

from typing import BinaryIO

from elaunch import events as ev
from elaunch.config import StdSpec
from elaunch.rundir import RunDir

NAMES = {1: "stdout.log", 2: "stderr.log"}


class LogFiles:
    """Writes each worker's streams to `attempt_<k>/<local_rank>/{stdout,stderr}.log` when asked to."""

    def __init__(self, run_dir: RunDir, redirects: StdSpec, tee: StdSpec) -> None:
        self._dir = run_dir
        self._redirects = redirects
        self._tee = tee
        self._attempt = 0
        self._files: dict[tuple[int, int], BinaryIO] = {}

    def _wanted(self, local_rank: int) -> int:
        return self._redirects.for_rank(local_rank) | self._tee.for_rank(local_rank)

    def handle(self, e: ev.Event) -> None:
        if isinstance(e, ev.WorkerOutput):
            f = self._files.get((e.local_rank, e.stream))
            if f is not None:
                f.write(e.data)
        elif isinstance(e, ev.RendezvousStarted):
            self._close_all()
            self._attempt = e.attempt
        elif isinstance(e, ev.WorkerStarted):
            mask = self._wanted(e.local_rank)
            for stream, name in NAMES.items():
                if mask & stream:
                    path = f"{self._dir.worker_dir(self._attempt, e.local_rank)}/{name}"
                    self._files[(e.local_rank, stream)] = open(path, "ab")  # noqa: SIM115 - closed in close()

    def _close_all(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def flush(self) -> None:
        for f in self._files.values():
            f.flush()

    def close(self) -> None:
        self._close_all()
