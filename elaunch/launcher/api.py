"""A thin adapter with torch's names (`torch/distributed/launcher/api.py`) over `elaunch.api.run`.

`LaunchConfig` has torch's fields, order and defaults; `elastic_launch(config, entrypoint)(*args)`
returns `{global rank: return value}` for a function, `{global rank: None}` for a command
(`[entrypoint, *args]` run as it is, e.g. `sys.executable` then the script), and raises `elaunch.ChildFailedError` (torch's
`ChildFailedError` shape: `failures`, `get_first_failure()`) when the job fails. Every field goes
through `options.build_config`, so it is checked as the CLI option of the same meaning.

Differences: `logs_specs` is read for its log directory, redirects, tee and rank filter (torch's
`DefaultLogsSpecs`); another LogsSpecs class, `metrics_cfg` and an event handler other than
`null` are refused (NotSupportedError). `numa_options` takes torch's `NumaOptions` (its
`affinity_mode`, and `should_fall_back_if_binding_fails`) or a mode name. torch turns on NUMA binding by itself when every GPU has a
worker; elaunch binds only when asked.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

from elaunch.errors import ConfigError, NotSupportedError
from elaunch.values import Record, field, record


@record
class LaunchConfig(Record):
    """torch's `LaunchConfig` (same fields, order and defaults; mutable, as torch's dataclass)."""

    min_nodes: int
    max_nodes: int
    nproc_per_node: int
    logs_specs: Any = None
    run_id: str = ""
    role: str = "default_role"
    rdzv_endpoint: str = ""
    rdzv_backend: str = "etcd"
    rdzv_configs: dict[str, Any] = field(default_factory=dict)
    rdzv_timeout: int = -1
    max_restarts: int = 3
    monitor_interval: float = 0.1
    start_method: str = "spawn"
    log_line_prefix_template: str | None = None
    metrics_cfg: dict[str, str] = field(default_factory=dict)
    local_addr: str | None = None
    event_log_handler: str = "null"
    numa_options: Any = None
    signals_to_handle: str = "SIGTERM,SIGINT,SIGHUP,SIGQUIT"
    duplicate_stdout_filters: list[str] | None = None
    duplicate_stderr_filters: list[str] | None = None
    virtual_local_rank: bool = False
    shutdown_timeout: int | None = None

    def __post_init__(self) -> None:
        # torch: rdzv_timeout (legacy) becomes rdzv_configs["timeout"], 900 s unless given.
        if self.rdzv_timeout != -1:
            self.rdzv_configs["timeout"] = self.rdzv_timeout
        elif "timeout" not in self.rdzv_configs:
            self.rdzv_configs["timeout"] = 900
        if self.shutdown_timeout is not None and self.shutdown_timeout < 0:
            raise ValueError(f"shutdown_timeout must be non-negative, got {self.shutdown_timeout}")


def _std(v: Any) -> str:
    """torch's Std (an IntEnum) or {local_rank: Std} -> the CLI's `3` / `0:3,1:1`."""
    if isinstance(v, Mapping):
        return ",".join(f"{k}:{int(x)}" for k, x in sorted(v.items()))
    return str(int(v))


def _filters(v: list[str] | None) -> str | None:
    return None if not v else ",".join(x.replace(",", ",,") for x in v)


def _logs_options(specs: Any) -> dict[str, Any]:
    """torch's `DefaultLogsSpecs(log_dir, redirects, tee, local_ranks_filter)` as CLI options."""
    if specs is None:
        return {}
    if type(specs).__name__ != "DefaultLogsSpecs":
        raise NotSupportedError(f"logs_specs {type(specs).__name__}: only torch's DefaultLogsSpecs is read")
    ranks = getattr(specs, "_local_ranks_filter", None)
    return {
        "log_dir": getattr(specs, "_root_log_dir", None),
        "redirects": _std(getattr(specs, "_redirects", 0)),
        "tee": _std(getattr(specs, "_tee", 0)),
        "local_ranks_filter": ",".join(str(r) for r in sorted(ranks)) if ranks else None,
    }


def config_options(config: LaunchConfig) -> dict[str, Any]:
    """`config` as `elaunch.run` options (the CLI's Python names)."""
    if config.metrics_cfg:
        raise NotSupportedError("metrics_cfg: torch's metrics handlers are not supported (see --events-file)")
    numa = config.numa_options
    if numa is not None and not isinstance(numa, str):
        mode = numa.affinity_mode
        numa = str(getattr(mode, "value", mode))
    opts: dict[str, Any] = {
        "nnodes": f"{config.min_nodes}:{config.max_nodes}",
        "rdzv_id": config.run_id or None,
        "role": config.role,
        "rdzv_endpoint": config.rdzv_endpoint,
        "rdzv_backend": config.rdzv_backend,
        "rdzv_conf": ",".join(f"{k}={v}" for k, v in config.rdzv_configs.items()),
        "max_restarts": config.max_restarts,
        "monitor_interval": config.monitor_interval,
        "start_method": config.start_method,
        "log_line_prefix": config.log_line_prefix_template,
        "local_addr": config.local_addr,
        "event_log_handler": config.event_log_handler,
        "numa_binding": numa,
        "signals_to_handle": config.signals_to_handle,
        "duplicate_stdout_filters": _filters(config.duplicate_stdout_filters),
        "duplicate_stderr_filters": _filters(config.duplicate_stderr_filters),
        "virtual_local_rank": config.virtual_local_rank,
        "shutdown_timeout": config.shutdown_timeout,
        **_logs_options(config.logs_specs),
    }
    if not config.run_id:
        from elaunch.options import random_run_id

        opts["rdzv_id"] = random_run_id()  # torch: a random id when none is given
    return opts


def launch_agent(config: LaunchConfig, entrypoint: Callable[..., Any] | str | None, args: list[Any]) -> dict[int, Any]:
    """Run `entrypoint` under elaunch's agent on this node: torch's `launch_agent` (return values by rank).

    With torch's `NumaOptions(should_fall_back_if_binding_fails=True)`, a binding that cannot be
    made (refused before anything starts) is reported on stderr and the job runs unbound, as torch's.
    """
    from elaunch.api import run, run_command

    opts = config_options(config)
    if not callable(entrypoint) and (not isinstance(entrypoint, str) or not entrypoint):
        raise NotSupportedError(f"entrypoint must be a function or a command, got {entrypoint!r}")

    def go(o: dict[str, Any]) -> dict[int, Any]:
        if callable(entrypoint):
            return run(entrypoint, *args, nproc_per_node=config.nproc_per_node, **o).return_values
        # torch runs `[entrypoint, *args]` as it is (`sys.executable` with `-u script.py ...` included).
        command = [str(entrypoint), *(str(a) for a in args)]
        return run_command(command, nproc_per_node=config.nproc_per_node, no_python=True, **o).return_values

    try:
        return go(opts)
    except ConfigError as e:
        fallback = getattr(config.numa_options, "should_fall_back_if_binding_fails", False)
        if not (fallback and e.message.startswith("--numa-binding")):
            raise
        sys.stderr.write(f"elaunch: warning: {e.message}; running without NUMA binding\n")
        return go({**opts, "numa_binding": None})


class elastic_launch:
    """`elastic_launch(config, entrypoint)(*args)` -> {global rank: return value} (torch's shape)."""

    def __init__(self, config: LaunchConfig, entrypoint: Callable[..., Any] | str | None) -> None:
        self._config = config
        self._entrypoint = entrypoint

    def __call__(self, *args: Any) -> dict[int, Any]:
        return launch_agent(self._config, self._entrypoint, list(args))
