"""Per-worker log files for `--redirects`/`--tee`: torchrun's layout, byte-exact.

Each file holds exactly the bytes the worker wrote on that stream (`WorkerBytes`, as read from its
pipe or terminal): `\r` redraws, escape codes, invalid UTF-8, lines of any length and a missing
final newline included, as torchrun's files. Only the console renders. The `filtered_*.log`
duplicates are whole lines of the rendered text. The attempt (which `attempt_<k>` directory) is
read from the run's view, not tracked here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import BinaryIO

from elaunch import events as ev
from elaunch.config import StdSpec
from elaunch.rundir import RunDir
from elaunch.runview import ViewSource

NAMES = {1: "stdout.log", 2: "stderr.log"}


class LogFiles:
    """Writes each worker's streams to `attempt_<k>/<local_rank>/{stdout,stderr}.log` when asked to."""

    def __init__(
        self,
        run_dir: RunDir,
        redirects: StdSpec,
        tee: StdSpec,
        filters: Mapping[int, tuple[str, ...]] | None = None,
        *,
        views: ViewSource,
    ) -> None:
        """`filters`: per stream, teed lines containing any of these strings also go, with a
        `[rank]` prefix, to `attempt_<k>/filtered_{stdout,stderr}.log` (all ranks, as torchrun).
        `views`: the run's tracker, subscribed before this sink."""
        self._dir = run_dir
        self._redirects = redirects
        self._tee = tee
        self._needles = {s: tuple(n.encode() for n in ns) for s, ns in (filters or {}).items() if ns}
        self._views = views
        self._files: dict[tuple[int, int], BinaryIO] = {}
        self._filtered: dict[int, BinaryIO] = {}

    def _wanted(self, local_rank: int) -> int:
        return self._redirects.for_rank(local_rank) | self._tee.for_rank(local_rank)

    def handle(self, e: ev.Event) -> None:
        if isinstance(e, ev.WorkerBytes):
            f = self._files.get((e.local_rank, e.stream))
            if f is not None:
                f.write(e.data)
        elif isinstance(e, ev.WorkerOutput):
            needles = self._needles.get(e.stream)
            if needles and self._tee.for_rank(e.local_rank) & e.stream:
                self._duplicate(e, needles)
        elif isinstance(e, ev.RendezvousStarted):
            self._close_all()  # a new attempt: its files are opened as its workers start
        elif isinstance(e, ev.WorkerStarted):
            mask = self._wanted(e.local_rank)
            attempt = self._views.view.attempt
            for stream, name in NAMES.items():
                if mask & stream:
                    path = f"{self._dir.worker_dir(attempt, e.local_rank)}/{name}"
                    self._files[(e.local_rank, stream)] = open(path, "ab")  # noqa: SIM115 - closed in close()

    def _duplicate(self, e: ev.WorkerOutput, needles: tuple[bytes, ...]) -> None:
        lines = [line for line in e.data.splitlines(keepends=True) if any(n in line for n in needles)]
        if not lines:
            return
        f = self._filtered.get(e.stream)
        if f is None:
            os.makedirs(self._attempt_dir(), exist_ok=True)
            path = os.path.join(self._attempt_dir(), f"filtered_{NAMES[e.stream]}")
            f = self._filtered[e.stream] = open(path, "ab")  # noqa: SIM115 - closed in close()
        prefix = f"[{e.global_rank}] ".encode()
        f.write(b"".join(prefix + line for line in lines))

    def _attempt_dir(self) -> str:
        return os.path.join(self._dir.path, f"attempt_{self._views.view.attempt}")

    def _close_all(self) -> None:
        """Close every file, even when one fails (a full disk); then raise the first error."""
        first: OSError | None = None
        for f in [*self._files.values(), *self._filtered.values()]:
            try:
                f.close()
            except OSError as e:
                first = first or e
        self._files.clear()
        self._filtered.clear()
        if first is not None:
            raise first

    def flush(self) -> None:
        for f in [*self._files.values(), *self._filtered.values()]:
            f.flush()

    def close(self) -> None:
        self._close_all()
