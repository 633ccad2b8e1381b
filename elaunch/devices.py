"""Count this node's accelerators and CPUs for `--nproc-per-node gpu|xpu|cpu|auto`, without torch where possible."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping


def count_cuda(env: Mapping[str, str]) -> int | None:
    """CUDA_VISIBLE_DEVICES when set (it is what the workers will see), else the driver's list."""
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [x.strip() for x in visible.split(",") if x.strip()]
        if ids and ids[0].startswith("-"):
            return 0
        return len(ids)
    try:
        n = len(os.listdir("/proc/driver/nvidia/gpus"))
        if n:
            return n
    except OSError:
        pass
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=False).stdout
        except (OSError, subprocess.TimeoutExpired):
            return None
        return sum(1 for line in out.splitlines() if line.startswith("GPU "))
    return 0


def count_xpu() -> int | None:
    """Intel XPUs can only be counted through torch: import it only for this rare request."""
    from elaunch.torchimport import import_quietly

    try:
        torch = import_quietly("torch")
    except ImportError:
        return 0
    xpu = getattr(torch, "xpu", None)
    if xpu is None or not xpu.is_available():
        return 0
    return int(xpu.device_count())


def device_counts(kind: str, env: Mapping[str, str]) -> dict[str, int | None]:
    """Counts needed to resolve `--nproc-per-node kind`; only what that kind needs is probed."""
    counts: dict[str, int | None] = {"cpu": os.cpu_count() or 1}
    k = kind.strip().lower()
    if k in ("gpu", "auto"):
        counts["gpu"] = count_cuda(env)
    if k == "xpu" or (k == "auto" and not counts.get("gpu")):
        counts["xpu"] = count_xpu() if k == "xpu" else 0
    return counts
