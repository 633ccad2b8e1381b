"""The worker side of `elaunch.run`: load the pickled call, run it, write the return value. Run as a script.

`python <this file> PAYLOAD RESULTS_DIR` in each worker (started by the agent as any script, so
with torchrun's environment, supervision, output and restarts). PAYLOAD holds the caller's
`sys.path` and the call pickled with cloudpickle (or pickle); the return value is written to
RESULTS_DIR/<RANK>.pkl (atomically). On an exception the worker writes torch's error file
(`TORCHELASTIC_ERROR_FILE`, the format of `@record`) with the traceback, prints the traceback
and exits 1, so the agent reports the real exception as it does for scripts.
"""

import sys

# Run as a script, this file's directory (elaunch/) is sys.path[0]: its modules must not shadow
# the caller's, so the package's parent takes its place before anything else is imported.
sys.path[0] = __file__.rsplit("/", 2)[0]

import json  # noqa: E402
import os  # noqa: E402
import pickle  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from typing import Any  # noqa: E402


class CallError(Exception):
    """The call could not be loaded, or its return value not pickled (one line: rank, what and type)."""


def _dumps(obj: Any) -> bytes:
    try:
        import cloudpickle
    except ImportError:
        return pickle.dumps(obj)
    return bytes(cloudpickle.dumps(obj))


def write_error_file(exc: BaseException) -> None:
    """torch's `@record` error file: the exception's message and the formatted traceback."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)) if exc.__traceback__ else ""
    doc = {
        "message": {
            "message": f"{type(exc).__name__}: {exc}",
            "extraInfo": {"py_callstack": tb, "timestamp": str(int(time.time()))},
        }
    }
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(doc, f)
    except OSError:
        pass


def main(payload: str, results: str) -> int:
    rank = os.environ.get("RANK", "?")
    with open(payload, "rb") as f:
        paths = pickle.load(f)
        for p in reversed(paths):
            if p not in sys.path:
                sys.path.insert(1, p)
        try:
            fn, args, kwargs = pickle.load(f)
        except Exception as e:
            raise CallError(f"rank {rank}: cannot load the function and its arguments: {type(e).__name__}: {e}") from e
    ret = fn(*args, **kwargs)
    try:
        data = _dumps(ret)
    except Exception as e:
        name = getattr(fn, "__qualname__", repr(fn))
        raise CallError(
            f"rank {rank}: the return value of {name} (type {type(ret).__module__}.{type(ret).__qualname__}) "
            f"cannot be pickled: {e}"
        ) from None
    tmp = os.path.join(results, f".{rank}.{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, os.path.join(results, f"{rank}.pkl"))
    return 0


if __name__ == "__main__":
    try:
        code = main(sys.argv[1], sys.argv[2])
    except SystemExit:
        raise
    except BaseException as exc:
        if isinstance(exc, CallError):
            exc.__traceback__ = None  # elaunch's own frames tell nothing: the message is the report
            sys.stderr.write(f"{type(exc).__name__}: {exc}\n")
        else:
            # The user's frames only: the traceback starts where this file calls the function.
            tb = exc.__traceback__
            while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
                tb = tb.tb_next
            exc = exc.with_traceback(tb) if tb is not None else exc
            traceback.print_exception(type(exc), exc, exc.__traceback__)
        write_error_file(exc)
        sys.stderr.flush()
        code = 1
    sys.exit(code)
