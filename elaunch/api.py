"""`elaunch.run(fn, *args, nproc_per_node=..., **options)`: launch a function, get each rank's return value.

The function runs in every worker as a script would (`fnworker.py` is the script): the same agent,
environment contract, supervision, output and restarts as `elaunch script.py`. The options are the
command line's, by their Python names (`nnodes="2"`, `rdzv_backend="c10d"`, `max_restarts=3`,
`tee="3"`, `numa_binding="node"`...), validated by the same `options.build_config`; `PET_*`
variables are not read (a call states its options). The call is pickled with cloudpickle (an
optional dependency, `pip install 'elaunch[api]'`, imported only here), so functions defined in
`__main__` or a notebook, lambdas and closures work; without it, plain pickle (importable
module-level functions only).
"""

from __future__ import annotations

import os
import pickle
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

from elaunch.errors import ChildFailedError, ConfigError
from elaunch.spec import RunResult, WorkerState
from elaunch.values import replace

FNWORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fnworker.py")
NOT_FOR_FUNCTIONS = ("training_script", "training_script_args", "module", "no_python", "run_path", "dry_run")


def _dumps() -> Callable[[Any], bytes]:
    try:
        import cloudpickle
    except ImportError:
        return pickle.dumps
    return cloudpickle.dumps


def _type_name(v: Any) -> str:
    t = type(v)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def pickle_call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bytes:
    """(fn, args, kwargs) pickled for the workers; ConfigError naming the value that cannot be."""
    dumps = _dumps()
    try:
        return dumps((fn, tuple(args), dict(kwargs)))
    except Exception as whole:
        hint = (
            "" if dumps is not pickle.dumps else " (install cloudpickle to send __main__ functions, lambdas, closures)"
        )
        parts: list[tuple[str, Any]] = [(f"the function {getattr(fn, '__qualname__', fn)!r}", fn)]
        parts += [(f"argument {i}", a) for i, a in enumerate(args)]
        parts += [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
        for what, v in parts:
            try:
                dumps(v)
            except Exception as e:
                raise ConfigError(
                    f"{what} (type {_type_name(v)}) cannot be pickled for the workers (every rank gets it): "
                    f"{type(e).__name__}: {e}{hint}"
                ) from None
        raise ConfigError(
            f"the call cannot be pickled for the workers: {type(whole).__name__}: {whole}{hint}"
        ) from None


def options_for(
    given: Mapping[str, Any], refused: tuple[str, ...] = NOT_FOR_FUNCTIONS
) -> tuple[dict[str, Any], dict[str, str]]:
    """(opts, sources) as `cli.parse` makes them: every option's default, then `given` (Python names).

    Flags take booleans; other values are passed as text (`str(v)`), lists joined with commas.
    ConfigError for a name that is not an option, naming the closest one.
    """
    from elaunch.cli import OPTIONS

    opts: dict[str, Any] = {}
    sources: dict[str, str] = {}
    known = {o.dest: o for o in OPTIONS}
    for name in given:
        if name in refused:
            raise ConfigError(f"{name}: not an option of elaunch.run (it runs the function it is given)")
        if name not in known:
            import difflib

            close = difflib.get_close_matches(name, list(known), n=1)
            raise ConfigError(f"{name}: no such option" + (f" (did you mean {close[0]}?)" if close else ""))
    for o in OPTIONS:
        v = given.get(o.dest)
        if v is None:
            opts[o.dest], sources[o.dest] = (False if o.flag else o.default), "default"
            continue
        if o.flag:
            opts[o.dest] = bool(v)
        elif isinstance(v, (list, tuple, set, frozenset)):
            opts[o.dest] = ",".join(str(x) for x in v)
        else:
            opts[o.dest] = str(v)
        sources[o.dest] = "option"
    return opts, sources


class _TextToBinary:
    """A text stream (a notebook's sys.stdout has no `.buffer`) seen as the binary one elaunch writes."""

    def __init__(self, stream: Any) -> None:
        self._s = stream

    def write(self, data: bytes) -> int:
        self._s.write(data.decode(errors="replace"))
        return len(data)

    def flush(self) -> None:
        self._s.flush()


def failure_message(result: RunResult, remote: tuple[str, ...] = ()) -> str:
    """The CLI's report (with the root causes other nodes published, `remote`), then the traceback
    of each other rank of this node that failed on its own."""
    from elaunch.console import report

    text = report(result, remote)
    cause = result.root_cause
    for rank in sorted(result.failures):
        f = result.failures[rank]
        if f is cause or f.stopped_by_agent or not f.traceback:
            continue
        text += f"\n  rank {rank} (local rank {f.local_rank}) on {f.host}:\n"
        text += "\n".join("    " + x for x in f.traceback.splitlines())
    return text


class _RemoteFailures:
    """A sink keeping the root causes other nodes published, from the run's last event."""

    def __init__(self) -> None:
        self.texts: tuple[str, ...] = ()

    def handle(self, event: Any) -> None:
        self.texts = getattr(event, "remote_failures", self.texts)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def _launch(opts: dict[str, Any], sources: dict[str, str], env: dict[str, str]) -> RunResult:
    """build_config then launch, output to this process's stdout/stderr; ChildFailedError unless it succeeded."""
    from elaunch.launch import launch
    from elaunch.options import build_config

    config = build_config(opts, sources, env)
    has_buffer = hasattr(sys.stdout, "buffer") and hasattr(sys.stderr, "buffer")
    remote = _RemoteFailures()
    result = launch(
        config,
        env=env,
        stdout=None if has_buffer else _TextToBinary(sys.stdout),
        stderr=None if has_buffer else _TextToBinary(sys.stderr),
        sinks=(remote,),
    )
    if result.state != WorkerState.SUCCEEDED:
        raise ChildFailedError(failure_message(result, remote.texts), result, remote.texts)
    return result


def run(
    fn: Callable[..., Any],
    *args: Any,
    nproc_per_node: int | str = 1,
    kwargs: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    **options: Any,
) -> RunResult:
    """Run `fn(*args, **kwargs)` in `nproc_per_node` workers on this node (and on every node of the job).

    Returns the `RunResult` with `return_values` = {global rank: fn's return value} for this node's
    workers (torch's `elastic_launch` shape). Raises `ConfigError` before anything starts for a bad
    option or a value that cannot be pickled, and `ChildFailedError` when the job fails (every
    failed rank's traceback, the root cause first) or is stopped by a signal. `env` is the agent's
    environment (default: os.environ); `options` are the CLI's options by their Python names.
    """
    full_env = dict(os.environ if env is None else env)
    opts, sources = options_for({**options, "nproc_per_node": nproc_per_node})
    blob = pickle_call(fn, args, kwargs or {})
    tmp = tempfile.mkdtemp(prefix="elaunch-fn-")
    try:
        payload = os.path.join(tmp, "call.pkl")
        with open(payload, "wb") as f:
            pickle.dump([p or os.getcwd() for p in sys.path], f)  # "" (a REPL, a notebook) is the cwd
            f.write(blob)
        os.mkdir(os.path.join(tmp, "results"))
        opts["training_script"] = FNWORKER
        opts["training_script_args"] = (payload, os.path.join(tmp, "results"))
        result = _launch(opts, sources, full_env)
        values: dict[int, Any] = {}
        for rank in sorted(result.return_values):
            try:
                with open(os.path.join(tmp, "results", f"{rank}.pkl"), "rb") as f:
                    values[rank] = pickle.load(f)
            except FileNotFoundError:
                values[rank] = None  # the function ended the process itself (sys.exit(0))
        return replace(result, return_values=values)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_command(
    command: list[str], *, nproc_per_node: int | str = 1, env: Mapping[str, str] | None = None, **options: Any
) -> RunResult:
    """Run a script (`command[0]`, with `module`/`no_python`/`run_path` as on the CLI) as `elaunch.run`
    runs a function; `return_values` = {global rank: None}, as torch's for commands."""
    if not command:
        raise ConfigError("run_command: the command is empty")
    opts, sources = options_for({**options, "nproc_per_node": nproc_per_node}, refused=NOT_FOR_FUNCTIONS[:2])
    opts["training_script"], opts["training_script_args"] = command[0], tuple(command[1:])
    result = _launch(opts, sources, dict(os.environ if env is None else env))
    return replace(result, return_values=dict.fromkeys(result.return_values))
