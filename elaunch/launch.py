"""Assembly at the edge: a validated LaunchConfig -> (rendezvous, processes, sinks, agent) -> RunResult.

Every usage error was raised before this point (options.build_config); what fails here is the
world (a store that does not answer, a disk that is full), reported as a failed run with its
summary written. Parts are built on one ExitStack and torn down in reverse order on every path.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TextIO

from elaunch.agent import Agent, host_name
from elaunch.config import LaunchConfig
from elaunch.errors import ElaunchError
from elaunch.events import Bus, Message, RunFinished, Sink
from elaunch.options import build_config
from elaunch.outputs import STOP_SIGNAL, Outputs
from elaunch.policy import SignalPolicy
from elaunch.progress import ProgressRules, compile_pattern
from elaunch.progresswatch import ProgressWatcher
from elaunch.reaper import Reaper
from elaunch.rendezvous import create_rendezvous
from elaunch.rundir import RunDir
from elaunch.runview import RunTracker, RunView
from elaunch.signals import Interrupted, SignalTrap, signal_name
from elaunch.sinks import build_log_files, build_sinks
from elaunch.spec import RunResult, WorkerState
from elaunch.terminal import pty_plan, terminal_restored
from elaunch.watchdog import TIMER_FILE_ENV, Watchdog
from elaunch.workers import LocalProcesses

if TYPE_CHECKING:
    from elaunch.healthcheck import HealthReport

__all__ = ["build_config", "launch", "print_plan"]

FORWARD_SIGNALS = frozenset({10, 12})  # SIGUSR1, SIGUSR2: passed on, the job keeps running


def signal_policy(signals: Iterable[int]) -> SignalPolicy:
    """SIGUSR1/SIGUSR2 are passed on to the workers (SLURM's preemption warnings); the rest stop the job."""
    sigs = frozenset(signals)
    return SignalPolicy(shutdown=sigs - FORWARD_SIGNALS, forward=sigs & FORWARD_SIGNALS)


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
    host = host_name(config.rdzv.local_addr)
    with contextlib.ExitStack() as stack:
        reaper = Reaper()  # forked first, before any thread exists
        stack.callback(reaper.close)
        trap = SignalTrap()
        stack.callback(trap.close)
        trap.install(config.signals_to_handle)
        bus = Bus()
        stack.callback(bus.close)
        rules = ProgressRules(
            pattern=compile_pattern(config.progress_pattern),
            factor=config.watch.straggler_factor,
            window=config.watch.straggler_window,
            interval=config.watch.progress_interval,
        )
        tracker = RunTracker(RunView(progress_rules=rules))  # first: every sink reads the view it keeps
        bus.subscribe(tracker)
        bus.subscribe(ProgressWatcher(bus, tracker, rules))
        outputs = Outputs(bus.publish, trap.interrupt, files=config.output.files)
        for s in build_sinks(
            config.output,
            host=host,
            role=config.role,
            multi_node=not config.single_node,
            out=out,
            err=err,
            terminal=stdout is None,
            env=env,
            views=tracker,
            progress_interval=config.watch.progress_interval,
            outputs=outputs,
        ):
            bus.subscribe(s)
        for s in sinks:
            bus.subscribe(s)
        for text in config.warnings:
            bus.publish(Message(level="warning", text=text))
        health = None
        if config.watch.health_port is not None:
            from elaunch.health import HealthServer

            health = HealthServer(tracker, config.watch.health_addr, config.watch.health_port)
            bus.subscribe(health)
        output = config.output
        policy = signal_policy([*config.signals_to_handle, STOP_SIGNAL])
        try:
            if health is not None:
                health.start()
                stack.callback(health.close)
                bus.publish(
                    Message(level="info", text=f"health endpoint: {health.url} (healthz, readyz, status, metrics)")
                )
            try:
                with trap.interruptible(policy.shutdown):  # a signal ends the wait for the store
                    rdzv = create_rendezvous(config.rdzv)
            except Interrupted as intr:
                result = RunResult(
                    state=WorkerState.STOPPED,
                    interrupted_by=intr.signum,
                    message=f"stopped by {signal_name(intr.signum)} while reaching the rendezvous",
                )
                bus.publish(RunFinished(result=result))
                return result
            stack.callback(rdzv.shutdown)
            try:
                run_dir = RunDir(output.log_dir, rdzv.run_id, reaper, keep=output.files)
            except OSError as e:
                raise ElaunchError(f"--log-dir {output.log_dir}: {e.strerror or e}") from None
            stack.callback(run_dir.cleanup)
        except ElaunchError as e:
            # Nothing ran, but the user (and --summary-file) still learn why.
            result = RunResult(state=WorkerState.FAILED, message=e.message)
            bus.publish(RunFinished(result=result))
            return result
        log_files = build_log_files(output, run_dir, tracker, outputs)
        if log_files is not None:
            if output.log_dir is None:
                bus.publish(Message(level="info", text=f"-r/-t: worker output files are kept in {run_dir.path}"))
            bus.subscribe(log_files)
        # On a terminal, workers get ptys (they draw as under torchrun) and stdin is put back as it
        # was if a worker dies inside input() with readline's settings on it.
        ptys = None
        if stdout is None and stderr is None:
            stack.enter_context(terminal_restored(0))
            width = len(str(max(config.max_nodes * config.nproc_per_node - 1, 0)))
            margin = width + 3 + (len(host) + 1 if not config.single_node else 0)
            ptys = pty_plan(sys.stdout, sys.stderr, output.redirects, output.tee, margin)
        procs = LocalProcesses(bus, trap, reaper, poll_interval=config.monitor_interval, ptys=ptys)
        stack.callback(procs.close)
        if health is not None:
            health.set_wake(procs.wake)
        if hasattr(rdzv, "set_notice"):  # lines from the rendezvous thread, published by the agent's

            def notice(text: str) -> None:
                bus.post(Message(level="info", text=text))
                procs.wake()

            rdzv.set_notice(notice)
        try:
            watch = Watchdog(
                config.supervision,
                add_reader=procs.add_reader,
                wake=procs.wake,
                fifo_dir=run_dir.path,
                timer_file=env.get(TIMER_FILE_ENV),
            )
        except ElaunchError as e:
            result = RunResult(state=WorkerState.FAILED, message=e.message)
            bus.publish(RunFinished(result=result))
            return result
        stack.callback(watch.close)
        bus.subscribe(watch)
        agent = Agent(
            config.worker_spec(env),
            rdzv,
            procs,
            bus,
            host=host,
            error_files=run_dir,
            signals=policy,
            node_rank=config.rdzv.node_rank,
            supervision=config.supervision,
            watch=watch,
            health=_health_check(config, host, env),
        )
        return agent.run()
    raise AssertionError("unreachable")  # pragma: no cover (ExitStack does not swallow exceptions)


def _health_check(config: LaunchConfig, host: str, env: Mapping[str, str] | None) -> Callable[[], HealthReport] | None:
    """`--health-check`, run before each round (elaunch.healthcheck is imported only when it is on)."""
    if config.health_check is None:
        return None
    from elaunch.healthcheck import HealthCheck, script_path

    script = script_path(config.entry_argv, config.entry_kind)
    return HealthCheck(
        config.health_check,
        config.health_check_timeout,
        host,
        script,
        config.output.log_dir,
        os.environ if env is None else env,
    )


def print_plan(config: LaunchConfig, out: TextIO, env: Mapping[str, str] | None = None) -> None:
    """`--dry-run`: print the resolved settings and every worker's env and argv (see dryrun.py)."""
    from elaunch.dryrun import render_plan

    out.write(render_plan(config, dict(os.environ if env is None else env), host_name(config.rdzv.local_addr)))
    out.flush()
