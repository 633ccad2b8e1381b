"""Command-line options -> a validated LaunchConfig: every usage error is raised here, before anything starts.

One step, run before any sink, store or process exists: SLURM defaults are filled in, each
option is parsed once (config.py's pure parsers), settings that depend on each other are checked
together, and the paths elaunch will write or read are checked on the file system. A
`ConfigError` from here is a usage error (exit 2, one line, nothing started).
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from elaunch import config as cfg
from elaunch.config import LaunchConfig, OutputConfig
from elaunch.devices import device_counts
from elaunch.errors import ConfigError, NotSupportedError
from elaunch.hangs import Supervision
from elaunch.rendezvous.api import BackendName, Endpoint, RendezvousConfig

if TYPE_CHECKING:
    from elaunch.numa import CpuBinding, Topology

RUN_PATH_CODE = (
    "import runpy, sys; sys.argv = sys.argv[1:]; "
    "sys.path.insert(0, __import__('os').path.dirname(sys.argv[0])); "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)
START_METHODS = ("spawn", "fork", "forkserver")
"""torch's multiprocessing start methods: accepted for compatibility (scripts always run in new processes)."""
GIVEN = ("option", "environment", "SLURM")
"""Sources of a value the user (or the SLURM step) chose, as opposed to a default."""


def random_run_id() -> str:
    """A random version-4 UUID in its usual text form, as torchrun's --standalone run id (`uuid.uuid4()`).

    Written out because `import uuid` costs 2 ms of start-up (it imports `platform`).
    """
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40  # version 4
    b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _entry(opts: Mapping[str, Any], env: Mapping[str, str]) -> tuple[tuple[str, ...], cfg.EntryKind]:
    """(argv, kind) of the worker command; the program must exist (and be executable with --no-python)."""
    script: str = opts["training_script"]
    args = tuple(opts["training_script_args"])
    module, no_python, run_path = bool(opts["module"]), bool(opts["no_python"]), bool(opts["run_path"])
    if module and no_python:
        raise ConfigError("-m/--module and --no-python cannot be used together")
    if run_path and (module or no_python):
        raise ConfigError("--run-path cannot be used with -m/--module or --no-python")
    python = env.get("PYTHON_EXEC") or sys.executable
    if no_python:
        if "/" in script:
            if not os.path.exists(script):
                raise ConfigError(f"program not found: {script}")
            if os.path.isdir(script) or not os.access(script, os.X_OK):
                raise ConfigError(f"program is not executable: {script} (--no-python runs it directly)")
        elif shutil.which(script, path=env.get("PATH")) is None:
            raise ConfigError(f"program not found on PATH: {script}")
        return (script, *args), "program"
    if module:
        return (python, "-m", script, *args), "module"
    if not os.path.isfile(script):
        raise ConfigError(f"script not found: {script}")
    if run_path:
        return (python, "-c", RUN_PATH_CODE, script, *args), "run_path"
    return (python, script, *args), "python"


def _check_file_path(path: str | None, option: str) -> None:
    """A file elaunch will write at some point: refuse now what cannot work then."""
    if path is None:
        return
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ConfigError(f"{option} {path}: is a directory")
    if not os.path.isdir(parent):
        raise ConfigError(f"{option} {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise ConfigError(f"{option} {path}: not writable")


def _check_dir_path(path: str | None, option: str) -> None:
    """A directory elaunch will create if needed: its nearest existing ancestor must allow it."""
    if path is None:
        return
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ConfigError(f"{option} {path}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {path}: {probe} is not writable")


def _check_readable(path: str | None, what: str) -> None:
    if path is not None and not os.path.isfile(path):
        raise ConfigError(f"--rdzv-conf {what}: no such file: {path}")


def _one_node_port(backend: str, endpoint: Endpoint | None, master_port: int | None, standalone: bool) -> int:
    """MASTER_PORT when one node needs no rendezvous (0: a free port, picked each round).

    The port the user named wins: --master-port, else the c10d/static endpoint's port (torchrun's
    c10d shares its store with the workers there; `host:0` is torchrun's recipe for several jobs on
    one host, so each gets its own port). An etcd endpoint is etcd's own port: a free one instead.
    """
    if master_port is not None:
        return master_port
    if standalone or (endpoint is not None and backend in cfg.ETCD_BACKENDS):
        return 0
    if endpoint is not None:
        return endpoint.port
    return cfg.DEFAULT_MASTER_PORT


def _rendezvous(opts: Mapping[str, Any], sources: Mapping[str, str], warnings: list[str]) -> RendezvousConfig:
    """Where and how this node meets the others, every setting checked (torchrun's rules)."""
    min_n, max_n = cfg.parse_nnodes(opts["nnodes"])
    backend = str(opts["rdzv_backend"]).strip()
    if backend not in cfg.RDZV_BACKENDS:
        raise ConfigError(f"--rdzv-backend must be one of {', '.join(cfg.RDZV_BACKENDS)}, got {backend!r}")
    etcd = backend in cfg.ETCD_BACKENDS
    endpoint = cfg.parse_endpoint(opts["rdzv_endpoint"], cfg.DEFAULT_ETCD_PORT if etcd else cfg.DEFAULT_C10D_PORT)
    conf = cfg.parse_rdzv_conf(opts["rdzv_conf"], warnings)
    master_port = cfg.parse_count(opts["master_port"], "--master-port")
    if master_port is not None:
        cfg.check_port(master_port, "--master-port")
    master_addr = str(opts["master_addr"])
    local_addr: str | None = opts["local_addr"]
    run_id = str(opts["rdzv_id"]).strip()
    if not run_id:
        raise ConfigError("--rdzv-id must not be empty (it names the job in the rendezvous store)")
    node_rank_given = sources.get("node_rank", "default") in GIVEN
    node_rank = cfg.parse_count(opts["node_rank"], "--node-rank", default=0) or 0
    standalone = bool(opts["standalone"])
    if standalone:
        given = [f"--{k.replace('_', '-')}" for k in ("rdzv_backend", "rdzv_endpoint", "rdzv_id")
                 if sources.get(k, "default") in ("option", "environment")]  # fmt: skip
        if given:
            warnings.append(f"--standalone: {', '.join(given)} ignored (a local rendezvous on a free port)")
        if max_n > 1:
            raise ConfigError(f"--standalone runs one node, but --nnodes is {opts['nnodes']}")
        run_id = random_run_id()
    elif backend == "static" and endpoint is None and master_port is None and max_n == 1:
        # torchrun's quirk: one node with nothing to connect to behaves as --standalone
        # (but an id the user gave is kept: it names the log directory).
        standalone = True
        if sources.get("rdzv_id", "default") == "default":
            run_id = random_run_id()
    standby = cfg.parse_count(opts["standby"], "--standby", default=0) or 0
    if standby and (standalone or backend == "static"):
        raise ConfigError("--standby needs --rdzv-backend c10d or etcd (spares wait in the elastic rendezvous)")
    if max_n == 1 and not standby:
        return RendezvousConfig(
            backend="local",
            run_id=run_id,
            master_addr=(local_addr or "127.0.0.1") if standalone else master_addr,
            master_port=_one_node_port(backend, endpoint, master_port, standalone),
            local_addr=local_addr,
            standalone=standalone,
        )
    # Several nodes: every backend-specific setting is checked here, once.
    settings = cfg.parse_rdzv_settings(conf, backend)
    if backend in ("c10d", *cfg.ETCD_BACKENDS) and endpoint is None:
        raise ConfigError(f"--rdzv-endpoint host[:port] is required with --rdzv-backend {backend} and --nnodes > 1")
    if not etcd:
        unused = [k for k in cfg.ETCD_ONLY_KEYS if k in conf]
        if unused:
            warnings.append(f"--rdzv-conf {', '.join(unused)}: etcd settings, ignored by --rdzv-backend {backend}")
    etcd_options = None
    if etcd:
        etcd_options = cfg.parse_etcd_conf(conf, backend)
        _check_readable(etcd_options.ca_cert, "cacert")
        _check_readable(etcd_options.cert, "cert")
        _check_readable(etcd_options.key, "key")
    store_type = str(conf.get("store_type", "tcp")).strip().lower()
    if backend == "c10d" and store_type != "tcp":
        raise NotSupportedError(f"--rdzv-conf store_type={store_type}: only tcp is supported")
    if backend == "static":
        if min_n != max_n:
            raise ConfigError(f"--rdzv-backend static needs a fixed number of nodes, got --nnodes {opts['nnodes']}")
        if not 0 <= node_rank < max_n:
            raise ConfigError(f"--node-rank must be in 0..{max_n - 1} with --nnodes {max_n}, got {node_rank}")
        # The agent store of node 0: the endpoint when given, else MASTER_ADDR:MASTER_PORT.
        if endpoint is None:
            endpoint = Endpoint(master_addr, master_port or cfg.DEFAULT_MASTER_PORT)
    is_host = conf.get("is_host")
    return RendezvousConfig(
        backend=cast(BackendName, backend),
        run_id=run_id,
        min_nodes=min_n,
        max_nodes=max_n,
        endpoint=endpoint,
        node_rank=node_rank if (backend == "static" or node_rank_given) else None,
        master_addr=endpoint.host if backend == "static" and endpoint else master_addr,
        local_addr=local_addr,
        settings=settings,
        is_host=None if is_host is None else bool(is_host),
        use_libuv=bool(conf.get("use_libuv", True)),
        etcd=etcd_options,
        standby=standby,
    )


def _output(opts: Mapping[str, Any], env: Mapping[str, str], warnings: list[str]) -> OutputConfig:
    redirects = cfg.parse_std_spec(opts["redirects"], "--redirects")
    tee = cfg.parse_std_spec(opts["tee"], "--tee")
    dup = {
        stream: cfg.parse_filter_list(str(opts.get(f"duplicate_{name}_filters") or ""))
        for stream, name in ((1, "stdout"), (2, "stderr"))
    }
    for stream, name in ((1, "stdout"), (2, "stderr")):
        if dup[stream] and not tee.covers(stream):
            warnings.append(
                f"--duplicate-{name}-filters applies to teed streams (-t), and no {name} is teed: nothing duplicated"
            )
    _check_file_path(opts["summary_file"], "--summary-file")
    _check_file_path(opts["events_file"], "--events-file")
    _check_dir_path(opts["log_dir"], "--log-dir")
    return OutputConfig(
        log_dir=opts["log_dir"],
        redirects=redirects,
        tee=tee,
        duplicate_filters={k: v for k, v in dup.items() if v},
        local_ranks_filter=cfg.parse_rank_set(opts["local_ranks_filter"], "--local-ranks-filter"),
        ranks_filter=cfg.parse_rank_set(opts["ranks_filter"], "--ranks-filter"),
        # An empty template is a choice (no prefix), not a missing one.
        log_line_prefix=opts["log_line_prefix"]
        if opts["log_line_prefix"] is not None
        else env.get("TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE") or None,  # torch ignores it when empty
        live=False if opts["no_live"] else None,
        summary_file=opts["summary_file"],
        events_file=opts["events_file"],
    )


def _supervision(opts: Mapping[str, Any], env: Mapping[str, str], progress: str | None) -> Supervision:
    """--hang-timeout, --startup-timeout, --restart-backoff, --no-requeue-exit-code and torch's
    TORCHELASTIC_ENABLE_FILE_TIMER (the agent serves the FileTimer pipe, as torchrun's agent does)."""
    hang = cfg.parse_seconds(opts["hang_timeout"], "--hang-timeout") if opts.get("hang_timeout") else None
    startup = cfg.parse_seconds(opts["startup_timeout"], "--startup-timeout") if opts.get("startup_timeout") else None
    base, cap = cfg.parse_backoff(opts.get("restart_backoff"))
    code = cfg.parse_count(opts.get("no_requeue_exit_code"), "--no-requeue-exit-code", default=93, high=255)
    if code == 0:
        raise ConfigError("--no-requeue-exit-code: 0 means success; choose 1 to 255")
    file_timer = env.get("TORCHELASTIC_ENABLE_FILE_TIMER", "") == "1"
    timer_file = env.get("TORCHELASTIC_TIMER_FILE")
    if file_timer and timer_file and os.path.exists(timer_file) and not stat.S_ISFIFO(os.stat(timer_file).st_mode):
        raise ConfigError(
            f"TORCHELASTIC_TIMER_FILE={timer_file}: exists and is not a named pipe (elaunch makes the pipe)"
        )
    return Supervision(
        hang_timeout=hang,
        startup_timeout=startup,
        progress_pattern=progress,
        no_requeue_code=code if code is not None else 93,
        restart_backoff=base,
        restart_backoff_max=cap,
        file_timer=file_timer,
    )


def _watch(
    opts: Mapping[str, Any], sources: dict[str, str], env: Mapping[str, str], warnings: list[str]
) -> cfg.WatchConfig:
    """The health endpoint and progress settings; the endpoint's address and port are tried now
    (a port in use or an address that is not this host's is a usage error, before anything starts)."""
    raw_port = opts["health_port"]
    if raw_port is None and env.get("TORCHELASTIC_HEALTH_CHECK_PORT"):
        raw_port = env["TORCHELASTIC_HEALTH_CHECK_PORT"]  # torchrun's variable (its server is a stub)
        sources["health_port"] = "environment"
    port = cfg.parse_count(raw_port, "--health-port", high=65535)
    addr = str(opts["health_addr"] or "").strip().strip("[]")
    if port is None and sources.get("health_addr", "default") in GIVEN:
        warnings.append("--health-addr has no effect without --health-port (the endpoint is off)")
    if port is not None:
        from importlib.util import find_spec

        if find_spec("prometheus_client") is None:
            raise ConfigError("--health-port needs prometheus-client: pip install 'elaunch[health]'")
        from elaunch.health import check_endpoint  # imports socket: only when the endpoint is on

        check_endpoint(addr, port)
    return cfg.WatchConfig(
        health_port=port,
        health_addr=addr,
        progress_interval=cfg.parse_seconds(opts["progress_interval"], "--progress-interval"),
        straggler_factor=cfg.parse_factor(opts["straggler_factor"], "--straggler-factor"),
        straggler_window=cfg.parse_seconds(opts["straggler_window"], "--straggler-window", allow_zero=True),
    )


def build_config(
    opts: Mapping[str, Any], sources: Mapping[str, str], env: Mapping[str, str], *, topology: Topology | None = None
) -> LaunchConfig:
    """Validate every option (with SLURM's defaults filled in inside an `srun` step).

    `opts` maps the click parameter names to raw values, `sources` each name to "option",
    "environment" or "default". `topology` replaces this machine's for --numa-binding (tests,
    recorded machines). Raises ConfigError (exit 2) for any usage error; starts nothing.
    """
    opts, sources = dict(opts), dict(sources)
    if "SLURM_JOB_ID" in env:
        from elaunch.slurm import apply_slurm_defaults

        apply_slurm_defaults(opts, sources, env)
    warnings: list[str] = []
    nproc = cfg.parse_nproc(opts["nproc_per_node"], device_counts(opts["nproc_per_node"], env))
    rdzv = _rendezvous(opts, sources, warnings)
    monitor = cfg.parse_seconds(opts["monitor_interval"], "--monitor-interval")
    raw_shutdown = opts["shutdown_timeout"]
    if raw_shutdown is None:
        raw_shutdown = env.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "30")
    shutdown = cfg.parse_seconds(raw_shutdown, "--shutdown-timeout", allow_zero=True)
    barrier = cfg.parse_seconds(opts["exit_barrier_timeout"], "--exit-barrier-timeout")
    signals = cfg.parse_signals(opts["signals_to_handle"])
    progress = cfg.parse_progress_pattern(opts["progress_pattern"])
    entry_argv, kind = _entry(opts, env)
    output = _output(opts, env, warnings)
    watch = _watch(opts, sources, env, warnings)
    if str(opts.get("start_method") or "spawn") not in START_METHODS:
        raise ConfigError(f"--start-method must be one of {', '.join(START_METHODS)}, got {opts['start_method']!r}")
    # torch's one built-in logs spec, "default" (DefaultLogsSpecs), is what elaunch does anyway.
    if opts.get("logs_specs") and opts["logs_specs"] != "default":
        raise NotSupportedError(
            f"--logs-specs {opts['logs_specs']}: torchrun plugin entry points are not supported "
            f"(only 'default'); use --log-dir"
        )
    cpu_binding: tuple[CpuBinding, ...] = ()
    if opts["numa_binding"]:
        from elaunch.numa import bind_workers

        cpu_binding = bind_workers(str(opts["numa_binding"]).strip(), nproc, env, topology)
    if str(opts.get("event_log_handler") or "null") != "null":
        raise NotSupportedError(
            f"--event-log-handler {opts['event_log_handler']}: torch's event handlers are not supported; "
            f"elaunch writes its events with --events-file"
        )
    if opts["virtual_local_rank"]:
        visible = env.get("CUDA_VISIBLE_DEVICES")
        if visible is not None and nproc > len([g for g in visible.split(",") if g.strip()]):
            raise ConfigError(f"--virtual-local-rank: {nproc} workers but CUDA_VISIBLE_DEVICES={visible!r}")
    return LaunchConfig(
        nproc_per_node=nproc,
        entry_argv=entry_argv,
        entry_kind=kind,
        rdzv=rdzv,
        output=output,
        max_restarts=cfg.parse_count(opts["max_restarts"], "--max-restarts", default=0) or 0,
        monitor_interval=monitor,
        role=str(opts["role"]),
        signals_to_handle=signals,
        shutdown_timeout=shutdown,
        exit_barrier_timeout=barrier,
        virtual_local_rank=bool(opts["virtual_local_rank"]),
        progress_pattern=progress,
        supervision=_supervision(opts, env, progress),
        watch=watch,
        cpu_binding=cpu_binding,
        health_check=(opts["health_check"] or "").strip() or None,
        health_check_timeout=cfg.parse_seconds(opts["health_check_timeout"], "--health-check-timeout"),
        warnings=tuple(warnings),
        dry_run=bool(opts["dry_run"]),
        sources=sources,
    )
