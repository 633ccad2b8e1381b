"""Assembly at the edge: options -> LaunchConfig -> (agent, rendezvous, processes, sinks) -> RunResult."""

from __future__ import annotations

import functools
import os
import shutil
import sys
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

from elaunch import config as cfg
from elaunch.agent import Agent, SignalPolicy, host_name
from elaunch.config import LaunchConfig, OutputConfig
from elaunch.devices import device_counts
from elaunch.errors import ConfigError, ElaunchError, NotSupportedError
from elaunch.events import Bus, Message, RunFinished, Sink
from elaunch.ranks import assign_ranks, worker_argv, worker_env
from elaunch.reaper import Reaper
from elaunch.rendezvous.api import NodeInfo, Rendezvous, RendezvousInfo
from elaunch.rendezvous.local import LocalRendezvous
from elaunch.rundir import RunDir
from elaunch.runview import RunTracker
from elaunch.signals import SignalTrap
from elaunch.sinks import build_log_files, build_sinks
from elaunch.spec import RunResult, WorkerSpec, WorkerState
from elaunch.tails import OutputTails
from elaunch.workers import LocalProcesses

RUN_PATH_CODE = (
    "import runpy, sys; sys.argv = sys.argv[1:]; "
    "sys.path.insert(0, __import__('os').path.dirname(sys.argv[0])); "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)
FORWARD_SIGNALS = frozenset({10, 12})  # SIGUSR1, SIGUSR2: passed on, the job keeps running


def _entry(opts: Mapping[str, Any], env: Mapping[str, str]) -> tuple[tuple[str, ...], str, int]:
    """(argv, kind, number of leading argv items that are not the user's) for the worker command."""
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
        return (script, *args), "program", 1
    if module:
        return (python, "-m", script, *args), "module", 1
    if not os.path.isfile(script):
        raise ConfigError(f"script not found: {script}")
    if run_path:
        return (python, "-c", RUN_PATH_CODE, script, *args), "run_path", 1
    return (python, script, *args), "python", 1


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


def build_config(opts: Mapping[str, Any], sources: Mapping[str, str], env: Mapping[str, str]) -> LaunchConfig:
    """Validate every option; raises ConfigError (exit 2) before anything starts."""
    min_n, max_n = cfg.parse_nnodes(opts["nnodes"])
    nproc = cfg.parse_nproc(opts["nproc_per_node"], device_counts(opts["nproc_per_node"], env))
    backend = str(opts["rdzv_backend"]).strip()
    if backend not in cfg.RDZV_BACKENDS:
        raise ConfigError(f"--rdzv-backend must be one of {', '.join(cfg.RDZV_BACKENDS)}, got {backend!r}")
    etcd = backend in cfg.ETCD_BACKENDS
    endpoint = cfg.parse_endpoint(opts["rdzv_endpoint"], cfg.DEFAULT_ETCD_PORT if etcd else cfg.DEFAULT_C10D_PORT)
    conf = cfg.parse_rdzv_conf(opts["rdzv_conf"])
    monitor = cfg.parse_positive_float(opts["monitor_interval"], "--monitor-interval")
    master_port = opts["master_port"]
    if master_port is not None:
        cfg.check_port(master_port, "--master-port")
    raw_shutdown = opts["shutdown_timeout"]
    if raw_shutdown is None:
        raw_shutdown = env.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "30")
    try:
        shutdown = float(raw_shutdown)
    except ValueError:
        raise ConfigError(f"--shutdown-timeout: expected a number of seconds, got {raw_shutdown!r}") from None
    if shutdown < 0:
        raise ConfigError(f"--shutdown-timeout must be 0 or more seconds, got {raw_shutdown!r}")
    barrier = cfg.parse_positive_float(opts["exit_barrier_timeout"], "--exit-barrier-timeout")
    signals = cfg.parse_signals(opts["signals_to_handle"])
    redirects = cfg.parse_std_spec(opts["redirects"], "--redirects")
    tee = cfg.parse_std_spec(opts["tee"], "--tee")
    local_filter = cfg.parse_rank_set(opts["local_ranks_filter"], "--local-ranks-filter")
    ranks_filter = cfg.parse_rank_set(opts["ranks_filter"], "--ranks-filter")
    entry_argv, kind, _ = _entry(opts, env)
    _check_file_path(opts["summary_file"], "--summary-file")
    _check_file_path(opts["events_file"], "--events-file")
    _check_dir_path(opts["log_dir"], "--log-dir")
    if opts.get("logs_specs"):
        raise NotSupportedError("--logs-specs (torchrun plugin entry points) is not supported; use --log-dir")
    if opts["numa_binding"]:
        raise NotSupportedError("--numa-binding is not supported yet")
    if str(opts.get("event_log_handler") or "null") != "null":
        raise NotSupportedError(
            f"--event-log-handler {opts['event_log_handler']}: torch's event handlers are not supported; "
            f"elaunch writes its events with --events-file"
        )
    dup = {
        stream: cfg.parse_filter_list(str(opts.get(f"duplicate_{name}_filters") or ""))
        for stream, name in ((1, "stdout"), (2, "stderr"))
    }
    standalone = bool(opts["standalone"])
    run_id = str(opts["rdzv_id"])
    warnings: list[str] = []
    if standalone:
        given = [f"--{k.replace('_', '-')}" for k in ("rdzv_backend", "rdzv_endpoint", "rdzv_id")
                 if sources.get(k, "default") in ("option", "environment")]  # fmt: skip
        if given:
            warnings.append(f"--standalone: {', '.join(given)} ignored (a local rendezvous on a free port)")
        if max_n > 1:
            raise ConfigError(f"--standalone runs one node, but --nnodes is {opts['nnodes']}")
        backend, endpoint, run_id = "c10d", None, str(uuid.uuid4())
    elif backend == "static" and endpoint is None and master_port is None and max_n == 1:
        # torchrun's quirk: one node with nothing to connect to behaves as --standalone
        # (but an id the user gave is kept: it names the log directory).
        standalone, backend = True, "c10d"
        if sources.get("rdzv_id", "default") == "default":
            run_id = str(uuid.uuid4())
    if max_n > 1:
        if backend in ("c10d", *cfg.ETCD_BACKENDS) and endpoint is None:
            raise ConfigError(f"--rdzv-endpoint host[:port] is required with --rdzv-backend {backend} and --nnodes > 1")
        if etcd:
            cfg.parse_etcd_conf(conf, backend)
        if backend == "static" and min_n != max_n:
            raise ConfigError(f"--rdzv-backend static needs a fixed number of nodes, got --nnodes {opts['nnodes']}")
        if backend == "static" and endpoint is not None:
            master_addr_opt, master_port = endpoint.host, endpoint.port
            opts = {**opts, "master_addr": master_addr_opt}
    if max_n > 1 and backend not in cfg.ETCD_BACKENDS:
        unused = [k for k in cfg.ETCD_ONLY_KEYS if k in conf]
        if unused:
            warnings.append(f"--rdzv-conf {', '.join(unused)}: etcd settings, ignored by --rdzv-backend {backend}")
    if opts["virtual_local_rank"]:
        visible = env.get("CUDA_VISIBLE_DEVICES")
        if visible is not None and nproc > len([g for g in visible.split(",") if g.strip()]):
            raise ConfigError(f"--virtual-local-rank: {nproc} workers but CUDA_VISIBLE_DEVICES={visible!r}")
    return LaunchConfig(
        min_nodes=min_n,
        max_nodes=max_n,
        nproc_per_node=nproc,
        entry_argv=entry_argv,
        entry_kind=kind,  # type: ignore[arg-type]
        rdzv_backend=backend,
        rdzv_endpoint=endpoint,
        run_id=run_id,
        rdzv_conf=conf,
        standalone=standalone,
        max_restarts=int(opts["max_restarts"]),
        monitor_interval=monitor,
        role=str(opts["role"]),
        node_rank=int(opts["node_rank"] or 0),
        master_addr=str(opts["master_addr"]),
        master_port=master_port,
        local_addr=opts["local_addr"],
        signals_to_handle=signals,
        shutdown_timeout=shutdown,
        exit_barrier_timeout=barrier,
        virtual_local_rank=bool(opts["virtual_local_rank"]),
        log_dir=opts["log_dir"],
        redirects=redirects,
        tee=tee,
        local_ranks_filter=local_filter,
        ranks_filter=ranks_filter,
        duplicate_filters={k: v for k, v in dup.items() if v},
        warnings=tuple(warnings),
        log_line_prefix=opts["log_line_prefix"] or env.get("TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE") or None,
        live=False if opts["no_live"] else None,
        summary_file=opts["summary_file"],
        events_file=opts["events_file"],
        dry_run=bool(opts["dry_run"]),
        sources=dict(sources),
    )


def _master_addr(config: LaunchConfig) -> str:
    if config.standalone:
        return config.local_addr or "127.0.0.1"
    return config.master_addr


def make_rendezvous(config: LaunchConfig) -> Rendezvous:
    """The backend for this config; one node needs no store and never imports torch."""
    if config.single_node:
        return LocalRendezvous(
            run_id=config.run_id,
            master_addr=_master_addr(config),
            master_port=0 if config.standalone else (config.master_port or cfg.DEFAULT_MASTER_PORT),
        )
    if config.rdzv_backend == "static":
        from elaunch.rendezvous.static import create_static_rendezvous

        return create_static_rendezvous(
            config.master_addr,
            config.master_port or cfg.DEFAULT_MASTER_PORT,
            config.run_id,
            config.max_nodes,
            config.node_rank,
            config.rdzv_conf,
            config.local_addr,
        )
    if config.rdzv_endpoint is not None and config.rdzv_backend in ("c10d", *cfg.ETCD_BACKENDS):
        # The same protocol on either store; each module is imported only when used (torch, etcd3gw).
        if config.rdzv_backend == "c10d":
            from elaunch.rendezvous.dynamic import create_c10d_rendezvous as create
        else:
            from elaunch.rendezvous.etcd import create_etcd_rendezvous

            create = functools.partial(create_etcd_rendezvous, backend=config.rdzv_backend)
        ep = config.rdzv_endpoint
        return create(
            ep.host, ep.port, config.run_id, config.min_nodes, config.max_nodes, config.rdzv_conf, config.local_addr
        )
    raise NotSupportedError(f"--rdzv-backend {config.rdzv_backend} is not supported yet")


def make_spec(config: LaunchConfig, rdzv: Rendezvous, env: Mapping[str, str]) -> WorkerSpec:
    base_env = dict(env)
    return WorkerSpec(
        role=config.role,
        local_world_size=config.nproc_per_node,
        entrypoint=config.entry_argv[0],
        args=config.entry_argv[1:],
        kind=config.entry_kind,
        rdzv_handler=rdzv,
        max_restarts=config.max_restarts,
        monitor_interval=config.monitor_interval,
        master_addr=_master_addr(config),
        master_port=config.master_port,
        local_addr=config.local_addr,
        shutdown_timeout=config.shutdown_timeout,
        exit_barrier_timeout=config.exit_barrier_timeout,
        virtual_local_rank=config.virtual_local_rank,
        env=base_env,
    )


def _output(config: LaunchConfig) -> OutputConfig:
    return OutputConfig(
        log_dir=config.log_dir,
        redirects=config.redirects,
        tee=config.tee,
        duplicate_filters=config.duplicate_filters,
        local_ranks_filter=config.local_ranks_filter,
        ranks_filter=config.ranks_filter,
        log_line_prefix=config.log_line_prefix,
        live=config.live,
        summary_file=config.summary_file,
        events_file=config.events_file,
    )


def launch(
    config: LaunchConfig,
    *,
    env: Mapping[str, str] | None = None,
    stdout: Any = None,
    stderr: Any = None,
    sinks: Iterable[Sink] = (),
) -> RunResult:
    """Run the job on this node and return its result; never leaves a worker or temp dir behind."""
    env = dict(os.environ if env is None else env)
    out = stdout if stdout is not None else sys.stdout.buffer
    err = stderr if stderr is not None else sys.stderr.buffer
    reaper = Reaper()
    trap = SignalTrap()
    shutdown_sigs = frozenset(s for s in config.signals_to_handle if s not in FORWARD_SIGNALS)
    forward_sigs = frozenset(s for s in config.signals_to_handle if s in FORWARD_SIGNALS)
    trap.install(config.signals_to_handle)
    bus = Bus()
    run_dir: RunDir | None = None
    procs: LocalProcesses | None = None
    rdzv: Rendezvous | None = None
    host = host_name(config.local_addr)
    output = _output(config)
    tracker = RunTracker()  # first: every sink reads the view it keeps
    bus.subscribe(tracker)
    try:
        for s in build_sinks(
            output,
            host=host,
            role=config.role,
            multi_node=not config.single_node,
            out=out,
            err=err,
            terminal=stdout is None,
            env=env,
            views=tracker,
        ):
            bus.subscribe(s)
        for s in sinks:
            bus.subscribe(s)
        for text in config.warnings:
            bus.publish(Message(level="warning", text=text))
        tails = OutputTails()
        bus.subscribe(tails)
        try:
            rdzv = make_rendezvous(config)
            files = bool(
                config.redirects.default or config.redirects.per_rank or config.tee.default or config.tee.per_rank
            )
            try:
                run_dir = RunDir(config.log_dir, rdzv.run_id, reaper, keep=files)
            except OSError as e:
                raise ConfigError(f"--log-dir {config.log_dir}: {e.strerror or e}") from None
            if files and config.log_dir is None:
                bus.publish(Message(level="info", text=f"-r/-t: worker output files are kept in {run_dir.path}"))
        except ElaunchError as e:
            # Nothing ran, but the user (and --summary-file) still learn why.
            result = RunResult(state=WorkerState.FAILED, message=e.message)
            bus.publish(RunFinished(result=result))
            return result
        for stream, name in ((1, "stdout"), (2, "stderr")):
            teed = config.tee.default & stream or any(v & stream for v in config.tee.per_rank.values())
            if config.duplicate_filters.get(stream) and not teed:
                text = f"--duplicate-{name}-filters applies to teed streams (-t), and no {name} is teed: nothing duplicated"
                bus.publish(Message(level="warning", text=text))
        log_files = build_log_files(output, run_dir, tracker)
        if log_files is not None:
            bus.subscribe(log_files)
        procs = LocalProcesses(bus, trap, reaper, poll_interval=config.monitor_interval)
        agent = Agent(
            make_spec(config, rdzv, env),
            rdzv,
            procs,
            bus,
            host=host,
            run_dir=run_dir,
            tails=tails,
            signals=SignalPolicy(shutdown=shutdown_sigs, forward=forward_sigs),
            node_rank=config.node_rank
            if config.sources.get("node_rank") in ("option", "environment", "SLURM")
            else None,
            python=config.entry_kind != "program",
        )
        return agent.run()
    finally:
        if procs is not None:
            procs.close()
        if rdzv is not None:
            rdzv.shutdown()
        bus.close()
        if run_dir is not None:
            run_dir.cleanup()
        trap.close()
        reaper.close()


def plan_env(
    config: LaunchConfig, env: Mapping[str, str]
) -> tuple[RendezvousInfo, list[tuple[Any, tuple[str, ...], dict[str, str]]]]:
    """What each local worker would get, assuming this node's place (dry run: nothing starts)."""
    port = config.master_port or (0 if config.standalone else cfg.DEFAULT_MASTER_PORT)
    me = NodeInfo(host=host_name(config.local_addr), role=config.role, local_world_size=config.nproc_per_node)
    n = config.min_nodes
    group_rank = min(config.node_rank, n - 1)
    nodes = tuple(
        me
        if i == group_rank
        else NodeInfo(host=f"<node {i}>", role=config.role, local_world_size=config.nproc_per_node)
        for i in range(n)
    )
    info = RendezvousInfo(
        run_id=config.run_id,
        round=0,
        group_rank=group_rank,
        nodes=nodes,
        master_addr=_master_addr(config),
        master_port=port,
    )
    out = []
    for r in assign_ranks(info):
        wenv = worker_env(
            env,
            r,
            info,
            role=config.role,
            local_world_size=config.nproc_per_node,
            restart_count=0,
            max_restarts=config.max_restarts,
            error_file=f"<run dir>/attempt_0/{r.local_rank}/error.json",
            python=config.entry_kind != "program",
            virtual_local_rank=config.virtual_local_rank,
        )
        added = {k: v for k, v in wenv.items() if env.get(k) != v}
        if not config.single_node and config.rdzv_backend != "static":
            added.update(MASTER_ADDR="<rank 0's node>", MASTER_PORT="<chosen at rendezvous>")
        elif port == 0:
            added["MASTER_PORT"] = "<free port>"
        out.append((r, worker_argv(config.entry_argv, 1, r.local_rank), added))
    return info, out


def print_plan(config: LaunchConfig, out: TextIO, env: Mapping[str, str] | None = None) -> None:
    """`--dry-run`: the resolved settings, where each came from, and every worker's env and argv."""
    env = dict(os.environ if env is None else env)
    info, workers = plan_env(config, env)
    src = config.sources
    nodes = f"{config.min_nodes}" if config.min_nodes == config.max_nodes else f"{config.min_nodes}:{config.max_nodes}"
    rows = [
        ("nnodes", nodes, src.get("nnodes", "default")),
        ("nproc_per_node", str(config.nproc_per_node), src.get("nproc_per_node", "default")),
        (
            "rdzv_backend",
            "local (one node)" if config.single_node else config.rdzv_backend,
            src.get("rdzv_backend", "default"),
        ),
        ("run_id", config.run_id if not config.standalone else "<random per run>", src.get("rdzv_id", "default")),
        ("max_restarts", str(config.max_restarts), src.get("max_restarts", "default")),
        ("shutdown_timeout", f"{config.shutdown_timeout:g}s", src.get("shutdown_timeout", "default")),
        ("master", f"{info.master_addr}:{info.master_port or '<free port>'}", src.get("master_port", "default")),
    ]
    if not config.single_node:
        # Where the nodes meet and this node's place (both filled from the step under SLURM).
        rows.insert(3, ("node_rank", str(config.node_rank), src.get("node_rank", "default")))
        if config.rdzv_endpoint is not None:
            rows.insert(3, ("rdzv_endpoint", str(config.rdzv_endpoint), src.get("rdzv_endpoint", "default")))
        if config.rdzv_backend != "static":
            rows[-1] = ("master", "<rank 0's node>:<free port>", "chosen at rendezvous")
    out.write("elaunch dry run: nothing is started\n")
    for text in config.warnings:
        out.write(f"  warning: {text}\n")
    for name, value, where in rows:
        out.write(f"  {name:<17} {value:<28} ({where})\n")
    for r, argv, added in workers:
        out.write(
            f"worker local_rank={r.local_rank} rank={r.global_rank} role_rank={r.role_rank} world_size={r.world_size}\n"
        )
        out.write(f"  argv: {' '.join(_quote(a) for a in argv)}\n")
        for k in sorted(added):
            out.write(f"  env:  {k}={added[k]}\n")
    out.flush()


def _quote(a: str) -> str:
    import shlex

    return shlex.quote(a)
