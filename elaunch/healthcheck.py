"""Health checks before each round (`--health-check CMD`, `--health-check-timeout`).

Before this node joins a rendezvous round (the first, and every restart), the agent runs the
check; a node whose check fails does not join: it leaves the job (the others go on without it:
a spare fills in, or the job shrinks within MIN; if they cannot, the job is closed), and its
report, and every other node's, names the host and the check's last output lines.

`--health-check builtin` runs only the built-in checks, which need no script; any other value is
a shell command (`/bin/sh -c`, in the launcher's environment, on this node) run after them:

* the training script (or `--no-python` program) still exists and is readable;
* `--log-dir`, when given, is a writable directory with room for a 64 KiB file (written and removed);
* the GPUs this node's workers would use (`CUDA_VISIBLE_DEVICES`, else all) run no compute process
  (`nvidia-smi --query-compute-apps`, skipped when nvidia-smi is not installed): at the time of a
  check this node's own workers are stopped, so any process there is someone else's.

The command passes with exit code 0; a non-zero exit, a signal, or `--health-check-timeout`
seconds without finishing (its process group is then killed) fail it. Decisions and texts are the
pure functions below; `HealthCheck` is the edge that runs things.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence

from elaunch.values import Value, value

BUILTIN = "builtin"
"""The `--health-check` value that runs the built-in checks only."""
LAST_LINES = 10
"""Output lines of a failed check kept for the reports."""
PROBE_BYTES = 64 * 1024


@value
class HealthReport(Value):
    """One check before one round: passed or not, what ran, why it failed, its last output lines."""

    ok: bool
    host: str
    check: str
    """The command, or `built-in checks`."""
    detail: str
    """`passed`, `exit code 3`, `killed by SIGKILL`, `timed out after 60 s`, or the built-in problems."""
    last_lines: tuple[str, ...] = ()
    duration: float = 0.0
    """Seconds the checks took."""


# -- pure ------------------------------------------------------------------------------------------
def script_path(entry_argv: Sequence[str], kind: str) -> str | None:
    """The file the workers run, for the built-in check (None for `-m module` or a program on PATH)."""
    if kind == "python":
        return entry_argv[1]
    if kind == "run_path":
        return entry_argv[3]
    if kind == "program" and "/" in entry_argv[0]:
        return entry_argv[0]
    return None


def visible_gpus(env: Mapping[str, str]) -> set[str] | None:
    """GPU indices or UUIDs in CUDA_VISIBLE_DEVICES (None: all GPUs are visible)."""
    raw = env.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return None
    return {x.strip() for x in raw.split(",") if x.strip()}


def busy_gpus(compute_apps: str, gpus: str, visible: set[str] | None) -> list[str]:
    """`GPU <index>: pid <pid> (<name>)` for each compute process on a visible GPU.

    `compute_apps`: `nvidia-smi --query-compute-apps=gpu_uuid,pid,process_name --format=csv,noheader`;
    `gpus`: `nvidia-smi --query-gpu=index,uuid --format=csv,noheader`.
    """
    index = {}
    for line in gpus.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 2:
            index[parts[1]] = parts[0]
    out = []
    for line in compute_apps.splitlines():
        parts = line.split(",", 2)
        if len(parts) < 3:
            continue
        uuid, pid, name = (p.strip() for p in parts)
        idx = index.get(uuid, uuid)
        if visible is None or idx in visible or uuid in visible:
            out.append(f"GPU {idx}: pid {pid} ({name})")
    return out


def exit_detail(returncode: int | None, timed_out: bool, timeout: float) -> str:
    """How a check command ended, in words (`passed` for exit code 0)."""
    if timed_out:
        return f"timed out after {timeout:g} s (--health-check-timeout)"
    if returncode is None or returncode == 0:
        return "passed"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def last_lines(output: bytes, n: int = LAST_LINES) -> tuple[str, ...]:
    """The last `n` non-empty lines of a check's output (stdout and stderr, interleaved)."""
    lines = [x.rstrip() for x in output.decode(errors="replace").splitlines() if x.strip()]
    return tuple(lines[-n:])


def failure_text(r: HealthReport) -> str:
    """What the reports say about a failed check: the host, the check, why, its last lines."""
    head = f"{r.host}: health check failed ({r.check}): {r.detail}; it did not join the round"
    return "\n".join([head, *(f"  | {x}" for x in r.last_lines)])


# -- the edge ------------------------------------------------------------------------------------
class HealthCheck:
    """Runs the built-in checks, then the command (unless it is `builtin`); one `HealthReport`.

    `script`: the file the workers run (`script_path`); `log_dir`: `--log-dir` or None; `env`: the
    environment the command runs in (and CUDA_VISIBLE_DEVICES is read from).
    """

    def __init__(
        self,
        command: str,
        timeout: float,
        host: str,
        script: str | None,
        log_dir: str | None,
        env: Mapping[str, str],
    ) -> None:
        self.command = command
        self.timeout = timeout
        self.host = host
        self.script = script
        self.log_dir = log_dir
        self.env = dict(env)

    def __call__(self) -> HealthReport:
        t0 = time.monotonic()
        problems = self._paths() + self._gpus()
        if problems:
            return HealthReport(False, self.host, "built-in checks", "; ".join(problems), (), time.monotonic() - t0)
        if self.command == BUILTIN:
            return HealthReport(True, self.host, "built-in checks", "passed", (), time.monotonic() - t0)
        rc, timed_out, out = self._run()
        detail = exit_detail(rc, timed_out, self.timeout)
        ok = detail == "passed"
        return HealthReport(ok, self.host, self.command, detail, () if ok else last_lines(out), time.monotonic() - t0)

    def _paths(self) -> list[str]:
        problems = []
        if self.script is not None and not os.access(self.script, os.R_OK):
            problems.append(f"{self.script}: {'not readable' if os.path.exists(self.script) else 'no such file'}")
        if self.log_dir is not None:
            problems += _writable_dir(self.log_dir)
        return problems

    def _gpus(self) -> list[str]:
        smi = shutil.which("nvidia-smi", path=self.env.get("PATH"))
        if smi is None:
            return []
        apps = _output([smi, "--query-compute-apps=gpu_uuid,pid,process_name", "--format=csv,noheader"], self.timeout)
        gpus = _output([smi, "--query-gpu=index,uuid", "--format=csv,noheader"], self.timeout)
        if apps is None or gpus is None:
            return [f"nvidia-smi did not answer within {self.timeout:g} s"]
        busy = busy_gpus(apps, gpus, visible_gpus(self.env))
        return [f"GPU in use by another process: {b}" for b in busy]

    def _run(self) -> tuple[int | None, bool, bytes]:
        with tempfile.TemporaryFile() as out:
            p = subprocess.Popen(
                ["/bin/sh", "-c", self.command],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,  # its own group: a timeout kills whatever it started
            )
            timed_out = False
            try:
                p.wait(self.timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except OSError:
                    pass
                p.wait()
            out.seek(0)
            return p.returncode, timed_out, out.read()


def _writable_dir(path: str) -> list[str]:
    """Problems with `--log-dir` (none: a directory, or creatable, with room for a small file)."""
    probe_dir = path
    while not os.path.exists(probe_dir):
        probe_dir = os.path.dirname(os.path.abspath(probe_dir))
    if not os.path.isdir(probe_dir):
        return [f"--log-dir {path}: {probe_dir} is not a directory"]
    try:
        with tempfile.NamedTemporaryFile(dir=probe_dir, prefix=".elaunch-health-") as f:
            f.write(b"\0" * PROBE_BYTES)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        return [f"--log-dir {path}: cannot write there: {e.strerror or e}"]
    return []


def _output(argv: list[str], timeout: float) -> str | None:
    try:
        r = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.decode(errors="replace") if r.returncode == 0 else ""


__all__ = [
    "BUILTIN",
    "HealthCheck",
    "HealthReport",
    "busy_gpus",
    "exit_detail",
    "failure_text",
    "last_lines",
    "script_path",
    "visible_gpus",
]
