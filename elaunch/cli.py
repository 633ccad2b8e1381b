"""The `elaunch` command: torchrun's options (dash or underscore, PET_* defaults) -> LaunchConfig.

Thin by design: parsing of values lives in config.py, building and running in launch.py. This
module alone turns errors into one-line messages and exit codes (2 for usage errors).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import click

from elaunch.config import DEFAULT_SIGNALS
from elaunch.errors import ConfigError, ElaunchError

# torchrun's defaults plus USR1/USR2, which are passed on to the workers without stopping.
DEFAULT_HANDLED = DEFAULT_SIGNALS + ",SIGUSR1,SIGUSR2"


def _names(long: str, *short: str) -> list[str]:
    """Both spellings of a long option (`--nproc-per-node`, `--nproc_per_node`)."""
    out = [*short, long]
    under = long.replace("-", "_")
    if under[2:] != long[2:]:
        out.append("--" + under[2:])
    return out


def _env(long: str, prefix: str = "PET_") -> str:
    return prefix + long[2:].replace("-", "_").upper()


def option(long: str, *short: str, own: bool = False, **kw: Any) -> Callable[[Any], Any]:
    """A torchrun option (`PET_*` default) or an elaunch one (`ELAUNCH_*` default)."""
    return click.option(
        *_names(long, *short), envvar=_env(long, "ELAUNCH_" if own else "PET_"), show_envvar=False, **kw
    )


CONTEXT = {"allow_interspersed_args": False, "help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.command(context_settings=CONTEXT)
@option("--nnodes", default="1:1", show_default=True, help="Number of nodes, N or MIN:MAX.")
@option("--nproc-per-node", default="1", show_default=True, help="Workers per node: a number, cpu, gpu, xpu or auto.")
@option(
    "--rdzv-backend",
    default="static",
    show_default=True,
    help="static, c10d, or etcd / etcd-v2 (an etcd server at --rdzv-endpoint; default port 2379).",
)
@option("--rdzv-endpoint", default="", help="host[:port] of the rendezvous store ([ipv6]:port).")
@option("--rdzv-id", default="none", show_default=True, help="Job id shared by all nodes (TORCHELASTIC_RUN_ID).")
@option("--rdzv-conf", default="", help="Rendezvous settings, k=v,k=v (join_timeout, last_call_timeout, ...).")
@option("--standalone", is_flag=True, help="Single node: local rendezvous on a free port, random run id.")
@option("--max-restarts", default=0, show_default=True, type=click.IntRange(min=0), help="Restarts after failures.")
@option(
    "--monitor-interval",
    default="0.1",
    show_default=True,
    help="Seconds between polls where exits cannot be waited on.",
)
@option(
    "--start-method",
    default="spawn",
    type=click.Choice(["spawn", "fork", "forkserver"]),
    help="Accepted for compatibility; scripts always run in new processes.",
)
@option("--role", default="default", show_default=True, help="Role name of this node's workers.")
@option("--module", "-m", is_flag=True, help="Run the script as a module: python -m MODULE.")
@option("--no-python", is_flag=True, help="Run the program directly, not through python.")
@option("--run-path", is_flag=True, help="Run the script with runpy.run_path inside each worker.")
@option("--log-dir", default=None, help="Keep per-worker logs in <dir>/<run_id>_<rand>/attempt_<k>/<local_rank>/.")
@option("--redirects", "-r", default="0", help="Send streams to files only: 1=stdout 2=stderr 3=both, or 0:3,1:1.")
@option("--tee", "-t", default="0", help="Send streams to files and the console (same form as --redirects).")
@option("--local-ranks-filter", default="", help="Show only these local ranks on the console (0,1,4-7).")
@option(
    "--duplicate-stdout-filters",
    default="",
    help="Also write teed stdout lines containing any of these strings (a,b; ,, is a comma) to filtered_stdout.log.",
)
@option("--duplicate-stderr-filters", default="", help="The same for stderr (filtered_stderr.log).")
@option(
    "--event-log-handler",
    default="null",
    show_default=True,
    help="torch's event handler: only null (see --events-file).",
)
@option(
    "--node-rank",
    default=None,
    type=click.IntRange(min=0),
    help="This node's rank (static backend; a preference under c10d).",
)
@option("--master-addr", default="127.0.0.1", show_default=True, help="Address of rank 0's node (static backend).")
@option("--master-port", default=None, type=int, help="Port on rank 0's node (static backend).")
@option("--local-addr", default=None, help="This node's address as others should reach it.")
@option("--logs-specs", default=None, hidden=True)
@option("--numa-binding", default=None, help="Bind workers to CPUs near their device (not supported yet).")
@option(
    "--signals-to-handle",
    default=DEFAULT_HANDLED,
    show_default=True,
    help="Signals to catch: SIGUSR1/2 are passed on, others stop the job.",
)
@option(
    "--shutdown-timeout",
    default=None,
    help="Seconds between the stop signal and SIGKILL (TORCH_ELASTIC_SHUTDOWN_TIMEOUT, else 30).",
)
@option("--virtual-local-rank", is_flag=True, help="LOCAL_RANK=0 for every worker, one visible GPU each.")
@option(
    "--exit-barrier-timeout",
    own=True,
    default="300",
    show_default=True,
    help="Seconds to wait for the other nodes at the end.",
)
@option(
    "--log-line-prefix",
    own=True,
    default=None,
    help="Prefix template: ${rank} ${local_rank} ${role_name} ${host} ${group_rank} ${restart}.",
)
@option("--ranks-filter", own=True, default="", help="Show only these global ranks on the console (0,1,4-7).")
@option("--no-live", own=True, is_flag=True, help="Plain line-oriented output even on a terminal.")
@option("--summary-file", own=True, default=None, help="Write a JSON summary of the run here.")
@option("--events-file", own=True, default=None, help="Write every event as a JSON line here.")
@option(
    "--dry-run", own=True, is_flag=True, help="Print the resolved plan (ranks, environment, argv) and start nothing."
)
@click.argument("training_script")
@click.argument("training_script_args", nargs=-1, type=click.UNPROCESSED)
@click.version_option(package_name="elaunch", prog_name="elaunch")
@click.pass_context
def main(ctx: click.Context, **opts: Any) -> None:
    """Launch TRAINING_SCRIPT on this node's workers, like torchrun."""
    from elaunch.launch import launch, print_plan
    from elaunch.options import build_config

    sources = {}
    for name in opts:
        src = ctx.get_parameter_source(name)
        sources[name] = {"COMMANDLINE": "option", "ENVIRONMENT": "environment"}.get(src.name if src else "", "default")
    config = build_config(opts, sources, os.environ)  # every usage error is raised here, before anything starts
    if config.dry_run:
        print_plan(config, sys.stdout)
        ctx.exit(0)
    result = launch(config)
    ctx.exit(result.exit_code)


def run(argv: list[str] | None = None) -> int:
    """Entry point: click in non-standalone mode so every error becomes one line and a code."""
    try:
        rv = main.main(args=argv, prog_name="elaunch", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except click.exceptions.Exit as e:
        return int(e.exit_code)
    except click.exceptions.NoArgsIsHelpError as e:
        click.echo(e.ctx.get_help() if e.ctx else str(e))
        return 2
    except click.UsageError as e:
        _error(e.format_message(), 2)
        return 2
    except click.Abort:
        _error("aborted", 130)
        return 130
    except ConfigError as e:
        _error(e.message, e.exit_code)
        return e.exit_code
    except ElaunchError as e:
        _error(e.message, e.exit_code)
        return e.exit_code


def entry() -> None:
    """Console-script entry: run, flush, and skip interpreter teardown (it only costs time).

    Everything elaunch started is stopped and reaped inside `run`; no atexit work remains.
    """
    code = run()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _error(message: str, code: int) -> None:
    first = message.strip().splitlines()[0] if message.strip() else "error"
    sys.stderr.write(f"elaunch: error: {first}\n")
    sys.stderr.flush()


if __name__ == "__main__":  # pragma: no cover
    entry()
