"""elaunch: a light, torchrun-compatible launcher for distributed PyTorch training."""

from collections.abc import Callable
from typing import Any

from elaunch.config import LaunchConfig
from elaunch.errors import ChildFailedError, ConfigError, ElaunchError, NotSupportedError, RendezvousError
from elaunch.spec import RunResult, Worker, WorkerFailure, WorkerGroup, WorkerSpec, WorkerState

__all__ = [
    "ChildFailedError",
    "ConfigError",
    "ElaunchError",
    "LaunchConfig",
    "NotSupportedError",
    "RendezvousError",
    "RunResult",
    "Worker",
    "WorkerFailure",
    "WorkerGroup",
    "WorkerSpec",
    "WorkerState",
    "launch",
    "run",
]


def launch(config: LaunchConfig) -> RunResult:
    """Run `config` on this node (see `elaunch.launch.launch` for the options)."""
    from elaunch.launch import launch as _launch

    return _launch(config)


def run(fn: Callable[..., Any], *args: Any, nproc_per_node: int | str = 1, **options: Any) -> RunResult:
    """Run `fn(*args)` in `nproc_per_node` workers; `return_values` = {global rank: its return value}.

    Options are the CLI's by their Python names; see `elaunch.api.run` (ChildFailedError on failure).
    """
    from elaunch.api import run as _run

    return _run(fn, *args, nproc_per_node=nproc_per_node, **options)


__version__ = "0.1.0"
