"""elaunch: a light, torchrun-compatible launcher for distributed PyTorch training."""

from elaunch.config import LaunchConfig
from elaunch.errors import ConfigError, ElaunchError, NotSupportedError, RendezvousError
from elaunch.spec import RunResult, Worker, WorkerFailure, WorkerGroup, WorkerSpec, WorkerState

__all__ = [
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
]


def launch(config: LaunchConfig) -> RunResult:
    """Run `config` on this node (see `elaunch.launch.launch` for the options)."""
    from elaunch.launch import launch as _launch

    return _launch(config)


__version__ = "0.1.0"
