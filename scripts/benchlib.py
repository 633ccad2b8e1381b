"""Shared helpers for the launcher benchmarks (scripts/bench_*.py); process trees come from testbed.procs.

* launcher commands (the console scripts next to this interpreter, not pyenv shims);
* a private work dir (worker scripts + TMPDIR for the launchers), removed at the end together
  with whatever the launchers left in it (torchrun leaves a `torchelastic_*` dir per run);
* `Run`: start one or more commands whose stdout/stderr go into pipes we read in threads
  (timestamps of the first and last byte), with a timeout after which the whole process tree is
  SIGKILLed by PID; this process is a child subreaper, so orphans come back to us and are killed
  and reaped too (`reap_strays`);
* statistics (median, min-max), markdown tables, and JSON results in bench-results/.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import json
import os
import platform
import resource
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn, Protocol

import psutil
from testbed.procs import cmdline, descendants, kill_pids, kill_tree

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench-results"
PYTHON = sys.executable
BIN = Path(PYTHON).parent
PR_SET_CHILD_SUBREAPER = 36
MiB = 1024 * 1024

# Variables that would change how a launcher behaves if they leaked in from the caller's shell.
_STRIP_PREFIXES = ("PET_", "ELAUNCH_", "TORCHELASTIC_", "TORCH_ELASTIC_")
_STRIP = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "OMP_NUM_THREADS"}
# Python settings that skew the comparison: without bytecode caching the editable elaunch checkout
# is recompiled on every launch (torch's site-packages already has its .pyc files), and unbuffered
# stdout turns every print() into two write() calls (text, then "\n"). Users run with neither.
PYTHON_SKEW = ("PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED")


# -- launchers ------------------------------------------------------------------------------------
def launcher_cmd(name: str) -> list[str] | None:
    """`elaunch` / `torchrun` as installed next to this python, else `python -m ...`; None if absent."""
    exe = BIN / name
    if exe.exists() and os.access(exe, os.X_OK):
        return [str(exe)]
    module = {"elaunch": "elaunch", "torchrun": "torch.distributed.run"}[name]
    probe = module.split(".")[0]
    try:
        metadata.version("torch" if probe == "torch" else probe)
    except metadata.PackageNotFoundError:
        return None
    return [PYTHON, "-m", module]


def become_subreaper() -> bool:
    """Orphaned descendants of our launchers are re-parented to us instead of PID 1."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def reap_strays() -> list[str]:
    """SIGKILL (by PID) and reap every live descendant of this process; returns their descriptions.

    Call only when no `Run` is in flight: everything still below us then is something a launcher
    left behind. Zombies (already exited orphans) are reaped but not reported.
    """
    strays = descendants([os.getpid()])
    left = [f"pid {pid}: {(cmdline(pid) or '?')[:120]}" for pid in strays]
    kill_pids(strays)
    with contextlib.suppress(psutil.Error):  # orphans re-parented to us (subreaper) are reaped here
        psutil.wait_procs(psutil.Process().children(), timeout=5)
    return left


# -- work dir ------------------------------------------------------------------------------------
class Workdir:
    """A private temp dir for worker scripts and the launchers' TMPDIR; `close` removes it all."""

    def __init__(self, prefix: str, *, keep_python_env: bool = False) -> None:
        self.keep_python_env = keep_python_env
        self.path = Path(tempfile.mkdtemp(prefix=prefix))
        self.tmp = self.path / "tmp"
        self.tmp.mkdir()

    def write(self, name: str, text: str) -> str:
        p = self.path / name
        p.write_text(text)
        return str(p)

    def mkdir(self, name: str) -> str:
        p = self.path / name
        p.mkdir(parents=True, exist_ok=True)
        return str(p)

    def env(self, **extra: str) -> dict[str, str]:
        strip = _STRIP if self.keep_python_env else _STRIP | set(PYTHON_SKEW)
        env = {k: v for k, v in os.environ.items() if not k.startswith(_STRIP_PREFIXES) and k not in strip}
        env["TMPDIR"] = str(self.tmp)
        env["NO_COLOR"] = "1"
        env.update(extra)
        return env

    def sweep_tmp(self) -> list[str]:
        """Names of what the last run left in TMPDIR (then removed)."""
        left = sorted(os.listdir(self.tmp))
        for name in left:
            p = self.tmp / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()
        return left

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> Workdir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- running ---------------------------------------------------------------------------------------
class _Reader(threading.Thread):
    """Reads a pipe to EOF in big chunks, noting when the first and last bytes arrived."""

    def __init__(self, fd: int) -> None:
        super().__init__(daemon=True)
        self.fd = fd
        self.chunks: list[bytes] = []
        self.first: float | None = None
        self.last: float | None = None
        self.eof: float | None = None
        self.listeners: list[Callable[[bytes], None]] = []

    def run(self) -> None:
        try:
            while True:
                data = os.read(self.fd, 1 << 20)
                now = time.perf_counter()
                if not data:
                    self.eof = now
                    return
                if self.first is None:
                    self.first = now
                self.last = now
                self.chunks.append(data)
                for fn in self.listeners:
                    fn(data)
        except OSError:
            self.eof = time.perf_counter()

    def data(self) -> bytes:
        return b"".join(self.chunks)


@dataclass
class RunResult:
    cmds: list[list[str]]
    returncodes: list[int | None]
    out: bytes
    err: bytes
    t0_wall: float
    """time.time() just before the first Popen."""
    elapsed: float
    """Seconds from just before the first Popen to all processes exited and stdout at EOF."""
    timed_out: bool
    first_out: float | None = None
    """Seconds from start to the first stdout byte."""
    last_out: float | None = None
    strays: list[str] = field(default_factory=list)
    tmp_left: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.timed_out and all(rc == 0 for rc in self.returncodes)

    @property
    def rc_text(self) -> str:
        if self.timed_out:
            return "timeout"
        return ",".join("?" if rc is None else str(rc) for rc in self.returncodes)


def wait_exit(p: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait for `p` to exit, noticing the exit at once; False on timeout.

    Popen.wait(timeout) polls with sleeps growing to 50 ms, which would add up to 50 ms to every
    measured time; a pidfd in select() wakes up when the process exits.
    """
    if p.returncode is not None:
        return True
    try:
        fd = os.pidfd_open(p.pid)
    except (AttributeError, OSError):
        try:
            p.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
    finally:
        os.close(fd)
    if not ready:
        return False
    p.wait()
    return True


class Run:
    """One or more commands started together, all writing into one stdout pipe and one stderr pipe."""

    def __init__(
        self,
        cmds: Sequence[Sequence[str]],
        *,
        env: dict[str, str] | Sequence[dict[str, str]],
        cwd: str | None = None,
        timeout: float,
    ) -> None:
        self.cmds = [list(c) for c in cmds]
        self.envs = [env] * len(self.cmds) if isinstance(env, dict) else list(env)
        self.cwd = cwd
        self.timeout = timeout
        self.procs: list[subprocess.Popen[bytes]] = []
        self.t0_wall = 0.0
        self.t0 = 0.0
        self.on_stdout: list[Callable[[bytes], None]] = []

    def start(self) -> Run:
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        self._out = _Reader(out_r)
        self._err = _Reader(err_r)
        self._out.listeners += self.on_stdout
        try:
            self.t0_wall = time.time()
            self.t0 = time.perf_counter()
            for cmd, env in zip(self.cmds, self.envs, strict=True):
                self.procs.append(
                    subprocess.Popen(
                        cmd,
                        stdin=subprocess.DEVNULL,
                        stdout=out_w,
                        stderr=err_w,
                        env=env,
                        cwd=self.cwd,
                        start_new_session=True,
                    )
                )
        except BaseException:
            kill_tree(p.pid for p in self.procs)
            for p in self.procs:
                p.wait()
            os.close(out_r)
            os.close(err_r)
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        self._out.start()
        self._err.start()
        return self

    @property
    def pid(self) -> int:
        return self.procs[0].pid

    def finish(self) -> RunResult:
        deadline = self.t0 + self.timeout
        timed_out = False
        exited = self.t0
        for p in self.procs:
            if not wait_exit(p, max(0.0, deadline - time.perf_counter())):
                timed_out = True
                break
            exited = max(exited, time.perf_counter())
        if not timed_out:
            self._out.join(max(0.0, deadline - time.perf_counter()))
            timed_out = self._out.is_alive()
        if timed_out:
            kill_tree(p.pid for p in self.procs)
            for p in self.procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(10)
        strays = reap_strays()
        for r in (self._out, self._err):
            r.join(10)
        for fd in (self._out.fd, self._err.fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        end = max(exited, self._out.eof or exited)
        rel = lambda t: None if t is None else t - self.t0  # noqa: E731
        return RunResult(
            cmds=self.cmds,
            returncodes=[p.returncode for p in self.procs],
            out=self._out.data(),
            err=self._err.data(),
            t0_wall=self.t0_wall,
            elapsed=end - self.t0,
            timed_out=timed_out,
            first_out=rel(self._out.first),
            last_out=rel(self._out.last),
            strays=strays,
        )


def run(
    cmds: Sequence[Sequence[str]],
    *,
    env: dict[str, str] | Sequence[dict[str, str]],
    timeout: float,
    cwd: str | None = None,
    work: Workdir | None = None,
) -> RunResult:
    r = Run(cmds, env=env, cwd=cwd, timeout=timeout).start().finish()
    if work is not None:
        r.tmp_left = work.sweep_tmp()
    return r


def check_no_children() -> None:
    """Fail loudly if something we started is still alive at the end (it is killed first)."""
    left = reap_strays()
    if left:
        print(f"warning: killed {len(left)} leftover process(es): {left}", file=sys.stderr)


# -- statistics and formatting --------------------------------------------------------------------
def stats(values: Iterable[float | None]) -> dict[str, Any] | None:
    vals = list(values)
    good = [v for v in vals if v is not None]
    if not good:
        return None
    return {
        "median": statistics.median(good),
        "min": min(good),
        "max": max(good),
        "n": len(good),
        "failed": len(vals) - len(good),
        "values": vals,
    }


def _num(v: float, digits: int) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.{digits}g}" if abs(v) < 1 else f"{v:.{max(digits - 1, 1)}f}".rstrip("0").rstrip(".")


def fmt_seconds(st: dict[str, Any] | None) -> str:
    """`215 ms (208–230)` or `2.84 s (2.80–2.91)`: one unit, chosen by the median."""
    if st is None:
        return "n/a"
    med = st["median"]
    scale, unit = (1000.0, "ms") if med < 1 else (1.0, "s")

    def f(v: float) -> str:
        v *= scale
        return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"

    text = f"{f(med)} {unit}"
    if st["n"] > 1:
        text += f" ({f(st['min'])}–{f(st['max'])})"
    if st.get("failed"):
        text += f" [{st['failed']} failed]"
    return text


def fmt_value(st: dict[str, Any] | None, unit: str, digits: int = 3) -> str:
    if st is None:
        return "n/a"
    text = f"{_num(st['median'], digits)} {unit}".rstrip()
    if st["n"] > 1:
        text += f" ({_num(st['min'], digits)}–{_num(st['max'], digits)})"
    if st.get("failed"):
        text += f" [{st['failed']} failed]"
    return text


def ratio(a: dict[str, Any] | None, b: dict[str, Any] | None) -> float | None:
    if a is None or b is None or b["median"] == 0:
        return None
    return float(a["median"]) / float(b["median"])


def fmt_ratio(r: float | None) -> str:
    if r is None:
        return "—"
    return f"{r:.3f}×" if r < 0.1 else f"{r:.2f}×"


def md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"  # noqa: E731
    out = [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out)


# -- results ----------------------------------------------------------------------------------------
def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def environment(commands: dict[str, list[str] | None]) -> dict[str, Any]:
    git: dict[str, Any] = {}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        rev = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "elaunch"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        git = {"rev": rev.stdout.strip() or None, "elaunch_dirty": bool(dirty.stdout.strip())}
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": _version("torch"),
        "elaunch": _version("elaunch"),
        "psutil": psutil.__version__,
        "git": git,
        "commands": commands,
    }


def python_env_note(keep: bool) -> str | None:
    found = {k: os.environ[k] for k in PYTHON_SKEW if k in os.environ}
    if not found:
        return None
    what = ", ".join(f"{k}={v}" for k, v in found.items())
    if keep:
        return f"kept the caller's {what} (--keep-python-env)"
    return (
        f"removed the caller's {what} from the launchers' environment (python defaults; --keep-python-env keeps them)"
    )


def write_json(name: str, payload: dict[str, Any], path: str | None = None) -> Path:
    out = Path(path) if path else RESULTS_DIR / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(tmp, out)
    return out


def install_signal_cleanup() -> None:
    """SIGTERM/SIGHUP become KeyboardInterrupt so `finally` blocks clean up as on Ctrl-C."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def _busy_cpu() -> float:
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def _own_cpu() -> float:
    """CPU of this process and of every descendant reaped so far (launchers wait for their workers)."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


class LoadWatch:
    """How much CPU other jobs used while we ran: on a 2-core machine they skew every figure."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.busy0 = _busy_cpu()
        self.own0 = _own_cpu()
        self.load0 = os.getloadavg()[0]
        self.info: dict[str, Any] = {}

    def stop(self) -> dict[str, Any]:
        wall = time.perf_counter() - self.t0
        cpus = os.cpu_count() or 1
        foreign = max(0.0, (_busy_cpu() - self.busy0) - (_own_cpu() - self.own0))
        self.info = {
            "load_at_start": self.load0,
            "load_at_end": os.getloadavg()[0],
            "wall_s": wall,
            "foreign_cpu_s": foreign,
            "foreign_share": foreign / (wall * cpus) if wall > 0 else 0.0,
        }
        return self.info

    def note(self) -> str | None:
        share = self.info.get("foreign_share", 0.0)
        if share < 0.05:
            return None
        return (
            f"machine was busy: other processes used {share:.0%} of the CPU time while this ran (load average "
            f"{self.load0:.1f} at start); figures are noisy, prefer the ratios and the minimums"
        )


def log(msg: str) -> None:
    """Progress notes go to stderr; stdout carries only the final table."""
    print(msg, file=sys.stderr, flush=True)


def preflight(parser: argparse.ArgumentParser, cmd: dict[str, list[str] | None], keep_python_env: bool) -> list[str]:
    """Refuse to run without elaunch; the notes every launcher benchmark starts with."""
    if cmd.get("elaunch") is None:
        parser.error("elaunch is not installed (pip install -e .)")
    notes = [n for n in (python_env_note(keep_python_env),) if n]
    if cmd.get("torchrun") is None:
        notes.append("torchrun not measured (not installed or --no-torchrun)")
    return notes


def add_trial_options(parser: argparse.ArgumentParser, name: str) -> None:
    """The options every multi-agent benchmark (recovery, restart, spare) shares: --quick, --reps,
    --keep-python-env, --out (default bench-results/<name>[-quick].json). See `trial_reps`."""
    parser.add_argument("--quick", action="store_true", help="one repetition")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 3, 1 with --quick)")
    parser.add_argument("--keep-python-env", action="store_true", help="keep PYTHONDONTWRITEBYTECODE/PYTHONUNBUFFERED")
    parser.add_argument("--out", default=None, help=f"JSON path (default bench-results/{name}[-quick].json)")


def trial_reps(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Set `args.reps` (3, 1 with --quick, unless given); a usage error below 1."""
    args.reps = args.reps if args.reps is not None else (1 if args.quick else 3)
    if args.reps < 1:
        parser.error("--reps must be at least 1")


class Trials(Protocol):
    """A multi-agent benchmark's runner: its launcher commands, its work dir, its trials."""

    cmd: dict[str, list[str] | None]
    work: Any

    def execute(self) -> None: ...


@dataclass
class Session:
    """What `run_trials` leaves for the report: preflight notes, the load note (None: quiet)."""

    notes: list[str]
    subreaper: bool
    load_average: dict[str, Any]
    busy: str | None
    started: float

    @property
    def total(self) -> float:
        """Seconds since the session started."""
        return time.perf_counter() - self.started


def run_trials(parser: argparse.ArgumentParser, bench: Trials, keep_python_env: bool) -> Session:
    """Run `bench.execute()` as every multi-agent benchmark does: signal cleanup, this process a
    child subreaper, the load watched; afterwards (also on an error) the work dir closed and
    every child checked gone."""
    install_signal_cleanup()
    subreaper = become_subreaper()
    started = time.perf_counter()
    load = LoadWatch()
    try:
        notes = preflight(parser, bench.cmd, keep_python_env)
        bench.execute()
    finally:
        bench.work.close()
        check_no_children()
        load_average = load.stop()
    return Session(notes, subreaper, load_average, load.note(), started)


def entry(main: Callable[[], int]) -> NoReturn:
    """Run a benchmark's main; on Ctrl-C/SIGTERM/SIGHUP (its `finally` blocks already cleaned up) exit 130."""
    try:
        sys.exit(main())
    except KeyboardInterrupt as e:
        log(f"interrupted ({str(e) or 'SIGINT'}): every process started was killed, temp dirs removed")
        sys.exit(130)


def finish(
    name: str,
    args: argparse.Namespace,
    cmd: dict[str, list[str] | None],
    notes: list[str],
    total: float,
    table: str,
    **fields: Any,
) -> int:
    """The end every launcher benchmark shares: notes and totals under the table, then the JSON
    (`bench-results/<name>[-quick].json`, or --out) with the run's context and `fields`."""
    for n in notes:
        print(f"- {n}")
    print(f"- total {total:.0f} s; {os.cpu_count()} CPUs; commands: {cmd}")
    payload = {"benchmark": name, "args": dict(vars(args)), "environment": environment(cmd), **fields}
    out = write_json(f"{name}-quick" if args.quick else name, {**payload, "notes": notes, "table": table,
                                                                 "total_seconds": total}, args.out)  # fmt: skip
    log(f"wrote {out}")
    return 0
