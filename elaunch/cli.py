"""The `elaunch` command: torchrun's options, parsed as torchrun parses them, -> LaunchConfig.

torchrun's parser is argparse (torch/distributed/run.py), and so is this one: the same option
strings (dash and underscore spellings), any unambiguous prefix of an option (`--redirect=3`,
argparse's `allow_abbrev`; an ambiguous one is an error naming the candidates), `--opt=value`,
and the script's own arguments passed through untouched. Every torchrun option takes its default
from `PET_<DEST>` (torch's `env`/`check_env` actions), elaunch's own from `ELAUNCH_<DEST>`; the
command line wins. Values stay raw strings here: `options.build_config` validates each once.
This module alone turns errors into one-line messages and exit codes (2 for usage errors).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from elaunch.config import DEFAULT_SIGNALS
from elaunch.errors import ConfigError, ElaunchError

# torchrun's defaults plus USR1/USR2, which are passed on to the workers without stopping.
DEFAULT_HANDLED = DEFAULT_SIGNALS + ",SIGUSR1,SIGUSR2"
FLAG = "flag"
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


class Opt:
    """One option: its long name (dashes), short forms, default, help; `own` = elaunch's (ELAUNCH_*)."""

    def __init__(
        self, long: str, *short: str, default: str | None = None, help: str, own: bool = False, flag: bool = False
    ) -> None:
        self.long, self.short, self.default, self.help, self.own, self.flag = long, short, default, help, own, flag
        self.dest = long[2:].replace("-", "_")

    @property
    def env(self) -> str:
        return ("ELAUNCH_" if self.own else "PET_") + self.dest.upper()

    @property
    def strings(self) -> list[str]:
        """Both spellings of the long option (`--nproc-per-node`, `--nproc_per_node`) and the short ones."""
        under = "--" + self.dest
        return [*self.short, self.long, *([under] if under != self.long else [])]


OPTIONS: tuple[Opt, ...] = (
    Opt("--nnodes", default="1:1", help="Number of nodes, N or MIN:MAX."),
    Opt("--nproc-per-node", default="1", help="Workers per node: a number, cpu, gpu, xpu or auto."),
    Opt(
        "--rdzv-backend",
        default="static",
        help="static, c10d, or etcd / etcd-v2 (an etcd server at --rdzv-endpoint; default port 2379).",
    ),
    Opt("--rdzv-endpoint", default="", help="host[:port] of the rendezvous store ([ipv6]:port)."),
    Opt("--rdzv-id", default="none", help="Job id shared by all nodes (TORCHELASTIC_RUN_ID)."),
    Opt("--rdzv-conf", default="", help="Rendezvous settings, k=v,k=v (join_timeout, last_call_timeout, ...)."),
    Opt("--standalone", flag=True, help="Single node: local rendezvous on a free port, random run id."),
    Opt("--max-restarts", default="0", help="Restarts of the worker group after failures."),
    Opt("--monitor-interval", default="0.1", help="Seconds between polls where exits cannot be waited on."),
    Opt(
        "--start-method",
        default="spawn",
        help="spawn, fork or forkserver: accepted for compatibility; scripts always run in new processes.",
    ),
    Opt("--role", default="default", help="Role name of this node's workers."),
    Opt("--module", "-m", flag=True, help="Run the script as a module: python -m MODULE."),
    Opt("--no-python", flag=True, help="Run the program directly, not through python."),
    Opt("--run-path", flag=True, help="Run the script with runpy.run_path inside each worker."),
    Opt("--log-dir", help="Keep per-worker logs in <dir>/<run_id>_<rand>/attempt_<k>/<local_rank>/."),
    Opt("--redirects", "-r", default="0", help="Send streams to files only: 1=stdout 2=stderr 3=both, or 0:3,1:1."),
    Opt("--tee", "-t", default="0", help="Send streams to files and the console (same form as --redirects)."),
    Opt("--local-ranks-filter", default="", help="Show only these local ranks on the console (0,1,4-7)."),
    Opt(
        "--duplicate-stdout-filters",
        default="",
        help="Also write teed stdout lines containing any of these strings (a,b; ,, is a comma) to filtered_stdout.log.",
    ),
    Opt("--duplicate-stderr-filters", default="", help="The same for stderr (filtered_stderr.log)."),
    Opt("--event-log-handler", default="null", help="torch's event handler: only null (see --events-file)."),
    Opt("--node-rank", help="This node's rank (static backend; a preference under c10d)."),
    Opt("--master-addr", default="127.0.0.1", help="Address of rank 0's node (static backend)."),
    Opt("--master-port", help="Port on rank 0's node (static backend)."),
    Opt("--local-addr", help="This node's address as others should reach it."),
    Opt("--logs-specs", help=argparse.SUPPRESS),
    Opt(
        "--numa-binding",
        help="Bind each worker to CPUs near its GPU (or spread over NUMA nodes): node, socket, exclusive, core-complex.",
    ),
    Opt(
        "--signals-to-handle",
        default=DEFAULT_HANDLED,
        help="Signals to catch: SIGUSR1/2 are passed on, others stop the job.",
    ),
    Opt(
        "--shutdown-timeout",
        help="Seconds between the stop signal and SIGKILL (TORCH_ELASTIC_SHUTDOWN_TIMEOUT, else 30).",
    ),
    Opt("--virtual-local-rank", flag=True, help="LOCAL_RANK=0 for every worker, one visible GPU each."),
    Opt(
        "--standby",
        own=True,
        default="0",
        help="Hot spares: nodes beyond --nnodes MAX stand by (no workers, heartbeats) and one takes the group "
        "rank of an active node that is lost or gives up; K is how many are expected.",
    ),
    Opt(
        "--health-check",
        own=True,
        help="Before each rendezvous round: `builtin` (script and --log-dir writable, GPUs free of other "
        "processes) or a shell command run after those; a node whose check fails does not join.",
    ),
    Opt("--health-check-timeout", own=True, default="60", help="Seconds a --health-check may take."),
    Opt("--exit-barrier-timeout", own=True, default="300", help="Seconds to wait for the other nodes at the end."),
    Opt(
        "--log-line-prefix",
        own=True,
        help="Prefix template: ${rank} ${local_rank} ${role_name} ${host} ${group_rank} ${restart}.",
    ),
    Opt("--ranks-filter", own=True, default="", help="Show only these global ranks on the console (0,1,4-7)."),
    Opt("--no-live", own=True, flag=True, help="Plain line-oriented output even on a terminal."),
    Opt("--summary-file", own=True, help="Write a JSON summary of the run here."),
    Opt("--events-file", own=True, help="Write every event as a JSON line here."),
    Opt(
        "--progress-pattern",
        own=True,
        help="A regex with a (?P<step>...) group (and optionally (?P<total>...)) that progress lines match.",
    ),
    Opt("--hang-timeout", own=True, help="Seconds without progress after which a worker is hung (off by default)."),
    Opt(
        "--startup-timeout",
        own=True,
        help="Seconds a worker may show no progress after it starts (default: max(--hang-timeout, 600)).",
    ),
    Opt(
        "--restart-backoff",
        own=True,
        default="0",
        help="Seconds to wait before a failure restart, doubled each time: BASE[:MAX] (MAX default 300).",
    ),
    Opt(
        "--no-requeue-exit-code",
        own=True,
        default="93",
        help="Exit code for a failure a restart cannot fix; a worker exiting with it is not restarted.",
    ),
    Opt(
        "--health-port",
        own=True,
        help="Serve /healthz /readyz /status /metrics over HTTP on this port (0: pick one and print it; "
        "default: TORCHELASTIC_HEALTH_CHECK_PORT, else off).",
    ),
    Opt("--health-addr", own=True, default="127.0.0.1", help="The local address the health endpoint listens on."),
    Opt("--progress-interval", own=True, default="30", help="Seconds between progress reports (console line, event)."),
    Opt("--straggler-factor", own=True, default="1.5", help="A worker this many times slower than the median is slow."),
    Opt("--straggler-window", own=True, default="60", help="Seconds a worker stays slow before it is a straggler."),
    Opt("--dry-run", own=True, flag=True, help="Print the resolved plan (ranks, environment, argv) and start nothing."),
)
_UNSET = object()


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are raised (one line, exit 2), never printed with a usage block and exited."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(_reword(message))


def _reword(message: str) -> str:
    """argparse's wording where click's was clearer (kept: scripts and tests read these)."""
    if message.startswith("unrecognized arguments: "):
        return f"No such option {message.split(': ', 1)[1].split()[0]!r}"
    if message.startswith("the following arguments are required: training_script"):
        return "Missing argument 'TRAINING_SCRIPT'."
    return message


class _Version(argparse.Action):
    """`--version`: the installed version, read only when asked (importlib.metadata is slow to import)."""

    def __init__(self, option_strings: list[str], dest: str, **kw: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="Show the version and exit.")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> NoReturn:
        from importlib.metadata import PackageNotFoundError, version

        try:
            text = version("elaunch")
        except PackageNotFoundError:
            from elaunch import __version__ as text
        sys.stdout.write(f"elaunch, version {text}\n")
        parser.exit(0)


def parser() -> argparse.ArgumentParser:
    """The argument parser (every default `_UNSET`: `parse` tells given, environment and default apart)."""
    p = _Parser(
        prog="elaunch",
        description="Launch TRAINING_SCRIPT on this node's workers, like torchrun. Every option also takes its "
        "default from PET_<NAME> (elaunch's own from ELAUNCH_<NAME>); the command line wins. "
        "`elaunch rdzv-server --help`: host only the rendezvous store, off the training nodes.",
        allow_abbrev=True,
        formatter_class=lambda prog: argparse.HelpFormatter(prog, max_help_position=34, width=100),
    )
    for o in OPTIONS:
        help_text = (
            o.help
            if o.help == argparse.SUPPRESS or o.default in (None, "") or o.flag
            else f"{o.help} (default: {o.default})"
        )
        if o.flag:
            p.add_argument(*o.strings, dest=o.dest, action="store_const", const=True, default=_UNSET, help=help_text)
        else:
            p.add_argument(*o.strings, dest=o.dest, default=_UNSET, metavar=o.dest.upper(), help=help_text)
    p.add_argument("--version", action=_Version)
    p.add_argument("training_script", help="The script (or module with -m, program with --no-python) to run.")
    p.add_argument("training_script_args", nargs=argparse.REMAINDER, help="Its arguments (${local_rank} is replaced).")
    return p


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(elaunch's arguments through the script, the script's own arguments), with option prefixes
    that name one option spelled out (`--nproc` -> `--nproc-per-node`).

    argparse alone calls `--nproc` ambiguous because it matches both `--nproc-per-node` and
    `--nproc_per_node`, and it reads the script's arguments for options too (an ambiguous
    `--n` after the script is an error there); here the script's arguments are never read, and
    a prefix of several options stays as it is for argparse to refuse, naming the candidates (unless
    exactly one of them is torchrun's: a prefix torchrun accepts keeps its meaning, `--stand`).
    """
    by_string = {s: o for o in OPTIONS for s in o.strings}
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            return [*out, *argv[i : i + 2]], list(argv[i + 2 :])
        if not arg.startswith("-") or arg == "-":
            return [*out, arg], list(argv[i + 1 :])
        name, eq, value = arg.partition("=")
        opt = by_string.get(name)
        if opt is None and name.startswith("--"):
            matches = {o.dest: o for s, o in by_string.items() if s.startswith(name)}
            theirs = {d: o for d, o in matches.items() if not o.own}
            if len(matches) > 1 and len(theirs) == 1:
                matches = theirs  # a prefix torchrun accepts means there what it means here (--stand)
            if len(matches) == 1:
                opt = next(iter(matches.values()))
                name = opt.long
        out.append(name + eq + value)
        if opt is not None and not opt.flag and not eq and i + 1 < len(argv):
            out.append(argv[i + 1])  # the option's value, even if it starts with "-"
            i += 1
        i += 1
    return out, []


def parse(argv: Sequence[str], env: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """(options, sources): raw values by dest, and where each came from ("option", "environment", "default")."""
    own, script_args = split_argv(argv)
    ns = parser().parse_args(own)
    opts: dict[str, Any] = {"training_script": ns.training_script, "training_script_args": tuple(script_args)}
    sources: dict[str, str] = {}
    for o in OPTIONS:
        given = getattr(ns, o.dest)
        if given is not _UNSET:
            opts[o.dest], sources[o.dest] = given, "option"
        elif o.env in env:
            opts[o.dest], sources[o.dest] = (_env_flag(o, env[o.env]) if o.flag else env[o.env]), "environment"
        else:
            opts[o.dest], sources[o.dest] = (False if o.flag else o.default), "default"
    return opts, sources


def _env_flag(o: Opt, raw: str) -> bool:
    v = raw.strip().lower()
    if v in TRUE or v in FALSE:
        return v in TRUE
    raise ConfigError(f"{o.env}={raw!r}: expected 1 or 0 (true or false) for {o.long}")


def main(argv: Sequence[str], env: Mapping[str, str]) -> int:
    """Parse, validate (every usage error here, before anything starts), then dry-run or launch."""
    from elaunch.options import build_config

    if not argv:
        parser().print_help()
        return 2
    if argv[0] == "rdzv-server":  # a subcommand only as the first argument: see rdzvserver.py
        from elaunch.rdzvserver import main as serve_main

        return serve_main(argv[1:], env)
    opts, sources = parse(argv, env)
    config = build_config(opts, sources, env)
    if config.dry_run:
        from elaunch.launch import print_plan

        print_plan(config, sys.stdout)
        return 0
    from elaunch.launch import launch

    return launch(config).exit_code


def run(argv: list[str] | None = None) -> int:
    """Entry point: every error becomes one line and a code; `-h`/`--version` print and return 0."""
    try:
        return main(sys.argv[1:] if argv is None else argv, os.environ)
    except SystemExit as e:  # argparse's --help and --version
        return e.code if isinstance(e.code, int) else 0
    except KeyboardInterrupt:
        _error("aborted")
        return 130
    except ElaunchError as e:
        _error(e.message)
        return e.exit_code


def entry() -> None:
    """Console-script entry: run, flush, and skip interpreter teardown (it only costs time).

    Everything elaunch started is stopped and reaped inside `run`; no atexit work remains.
    Closed standard descriptors are opened on /dev/null first (stdfds.py).
    """
    from elaunch.stdfds import ensure_std_fds

    ensure_std_fds()
    code = run()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _error(message: str) -> None:
    first = message.strip().splitlines()[0] if message.strip() else "error"
    sys.stderr.write(f"elaunch: error: {first}\n")
    sys.stderr.flush()


if __name__ == "__main__":  # pragma: no cover
    entry()
