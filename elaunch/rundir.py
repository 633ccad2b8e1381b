"""Where a run keeps per-attempt, per-worker files (torchrun's layout), and their cleanup.

With `--log-dir` the files stay: `<log_dir>/<run_id>_<rand>/attempt_<k>/<local_rank>/`; so do
the files of `-r`/`-t` without `--log-dir` (in a temp dir whose path is printed, as torchrun).
Without it, error files still need a home: a private temp dir that is removed at exit, and by
the reaper if the agent is killed, so no run leaves anything in /tmp.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from elaunch.reaper import Reaper


class RunDir:
    def __init__(self, log_dir: str | None, run_id: str, reaper: Reaper | None = None, keep: bool = False) -> None:
        """`keep`: the user asked for files (-r/-t) without --log-dir; like torchrun, they go to
        a temp dir that is kept (and its path shown), not removed with the run."""
        self.keep = log_dir is not None or keep
        if log_dir is not None:
            os.makedirs(log_dir, exist_ok=True)
            self.path = tempfile.mkdtemp(prefix=f"{run_id}_", dir=log_dir)
        elif keep:
            self.path = tempfile.mkdtemp(prefix=f"elaunch-{run_id}_")
        else:
            self.path = tempfile.mkdtemp(prefix="elaunch-")
            if reaper is not None:
                reaper.watch_dir(self.path)

    def worker_dir(self, attempt: int, local_rank: int) -> str:
        d = os.path.join(self.path, f"attempt_{attempt}", str(local_rank))
        os.makedirs(d, exist_ok=True)
        return d

    def error_file(self, attempt: int, local_rank: int) -> str:
        """The worker's TORCHELASTIC_ERROR_FILE; its directory is made if it can be (on a full disk
        it cannot: the worker still starts, and torch's `@record` only logs that it could not write)."""
        try:
            d = self.worker_dir(attempt, local_rank)
        except OSError:
            d = os.path.join(self.path, f"attempt_{attempt}", str(local_rank))
        return os.path.join(d, "error.json")

    def cleanup(self) -> None:
        if not self.keep:
            shutil.rmtree(self.path, ignore_errors=True)
