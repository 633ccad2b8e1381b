"""Workers as torchrun runs them: prompts, stdin, pdb and progress bars on a real terminal (tmux) and
through pipes; per-rank files byte-exact."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.testbed import wait_until
from tests.helpers import ELAUNCH, run_elaunch, write_script

needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")

PROMPT = """
import os, sys
if os.environ["RANK"] == "0":
    name = input("name? ")
    print("hello", name)
else:
    print("rank 1 here")
"""


class Tmux:
    """A private tmux server (its own socket: started from this environment) with one 150x40 pane."""

    def __init__(self, tmp_path: Path) -> None:
        self.socket = f"elaunch-test-{uuid.uuid4().hex[:8]}"
        self.done = tmp_path / "done"

    def _tmux(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=False)

    def start(self, args: list[str], env: str = "", after: str = "") -> None:
        """Run elaunch with `args` in the pane, then the shell command `after`."""
        keep = " ".join(f"{k}={shlex.quote(v)}" for k, v in os.environ.items() if k in ("PYTHONPATH", "PATH"))
        cmd = (
            f"env -u NO_COLOR {keep} TERM=xterm-256color {env} {shlex.join([*ELAUNCH, *args])}; "
            f"code=$?; {after or 'true'}; echo EXIT=$code > {self.done}; sleep 60"
        )
        r = self._tmux("new-session", "-d", "-x", "150", "-y", "40", cmd)
        assert r.returncode == 0, r.stderr

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p").stdout

    def wait_screen(self, *texts: str, timeout: float = 30) -> str:
        return wait_until(
            lambda: (s := self.screen()) and all(t in s for t in texts) and s, timeout, f"{texts} on screen"
        )

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", *keys)

    def exit_code(self, timeout: float = 30) -> str:
        wait_until(lambda: self.done.exists() and self.done.read_text().strip(), timeout, "the job to finish")
        return self.done.read_text().strip()

    def kill(self) -> None:
        self._tmux("kill-server")


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    t = Tmux(tmp_path)
    try:
        yield t
    finally:
        t.kill()


@pytest.mark.timeout(60)
def test_a_prompt_shows_before_the_answer_through_pipes(tmp_path: Path) -> None:
    script = write_script(tmp_path, "w.py", PROMPT)
    p = subprocess.Popen(
        [*ELAUNCH, "--standalone", "--nproc-per-node", "2", str(script)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out: list[bytes] = []
    reader = threading.Thread(target=lambda: out.extend(iter(lambda: os.read(p.stdout.fileno(), 4096), b"")))  # type: ignore[union-attr]
    reader.start()
    try:
        # Nothing is typed yet: the unfinished line must reach the user on its own.
        wait_until(lambda: b"[0] name? " in b"".join(out), 30, "the prompt before any answer")
        assert p.stdin is not None
        p.stdin.write(b"alice\n")
        p.stdin.close()
        assert p.wait(30) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        reader.join(10)
        p.stderr.close()  # type: ignore[union-attr]
    text = b"".join(out).decode()
    assert "[0] name? hello alice\n" in text  # completed without repeating the prompt
    assert "[1] rank 1 here\n" in text


@pytest.mark.timeout(60)
def test_workers_inherit_the_launchers_stdin_as_under_torchrun(tmp_path: Path) -> None:
    script = write_script(tmp_path, "w.py", PROMPT)
    r = subprocess.run(
        [*ELAUNCH, "--standalone", "--nproc-per-node", "2", str(script)],
        input=b"alice\n",
        capture_output=True,
        timeout=50,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert b"[0] name? hello alice\n" in r.stdout


@pytest.mark.timeout(60)
def test_log_files_hold_exactly_the_workers_bytes(tmp_path: Path) -> None:
    body = """
import os, sys
r = int(os.environ["RANK"])
out, err = sys.stdout.buffer, sys.stderr.buffer
out.write(bytes(range(256)) + b"\\n")
out.write(b"bar\\r 10%\\r 50%\\r100%\\n\\r\\n")
out.write(b"x" * (3 << 19) + b"\\n")  # 1.5 MiB in one line
out.write(b"\\x1b[31mred\\x1b[0m\\x1b[Aup\\n")
out.write(b"rank %d ends without a newline" % r)
err.write(b"\\xff\\xfe not utf-8\\r\\nerr end")
"""
    script = write_script(tmp_path, "bytes.py", body)
    logs = tmp_path / "logs"
    r = run_elaunch(["--nproc-per-node", "2", "--log-dir", str(logs), "-r", "3", str(script)])
    assert r.returncode == 0, r.stderr[-2000:]
    for rank in (0, 1):
        want_out = (
            bytes(range(256))
            + b"\nbar\r 10%\r 50%\r100%\n\r\n"
            + b"x" * (3 << 19)
            + b"\n\x1b[31mred\x1b[0m\x1b[Aup\n"
            + b"rank %d ends without a newline" % rank
        )
        (out_log,) = logs.glob(f"*/attempt_0/{rank}/stdout.log")
        (err_log,) = logs.glob(f"*/attempt_0/{rank}/stderr.log")
        assert out_log.read_bytes() == want_out
        assert err_log.read_bytes() == b"\xff\xfe not utf-8\r\nerr end"


NESTED_TQDM = """
import os, time
from tqdm import tqdm
go = os.path.join(os.path.dirname(os.path.abspath(__file__)), "go")
for e in tqdm(range(2), desc="epoch", position=0, ascii=True):
    for b in tqdm(range(5), desc="batch", position=1, leave=False, ascii=True, mininterval=0):
        time.sleep(0.01)
    tqdm.write(f"epoch {e} done")
bar = tqdm(total=10, desc="waiting", position=0, ascii=True, mininterval=0)
inner = tqdm(total=10, desc="inner", position=1, ascii=True, mininterval=0)
bar.update(3); inner.update(7)
while not os.path.exists(go):
    time.sleep(0.05)
inner.close(); bar.close()
print("bye")
"""


@pytest.mark.timeout(90)
def test_nested_tqdm_bars_through_a_pipe_are_plain_lines(tmp_path: Path) -> None:
    pytest.importorskip("tqdm")
    pytest.importorskip("pyte")
    script = write_script(tmp_path, "tq.py", NESTED_TQDM)
    (tmp_path / "go").touch()
    r = run_elaunch(["--nproc-per-node", "2", str(script)])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "\x1b" not in r.stdout + r.stderr and "\r" not in r.stdout + r.stderr
    for rank in (0, 1):
        done = [line for line in r.stdout.splitlines() if line.startswith(f"[{rank}] epoch ") and "done" in line]
        assert done == [f"[{rank}] epoch 0 done", f"[{rank}] epoch 1 done"]
        assert f"[{rank}] bye" in r.stdout


@pytest.mark.timeout(120)
@needs_tmux
def test_nested_tqdm_bars_in_the_live_view(tmp_path: Path, tmux: Tmux) -> None:
    pytest.importorskip("tqdm")
    pytest.importorskip("pyte")
    script = write_script(tmp_path, "tq.py", NESTED_TQDM)
    tmux.start(["--nproc-per-node", "2", str(script)])
    # Both workers' two bars, each on a row of its own under the table, while they wait.
    # (The lines tqdm.write printed above the bars come in the printer's next batch: waited for too.)
    screen = tmux.wait_screen(
        "[0] waiting:", "[0] inner:", "[1] waiting:", "[1] inner:", "HEALTHY", "[0] epoch 1 done", "[1] epoch 1 done",
        timeout=60,
    )  # fmt: skip
    assert "[A" not in screen  # no escape code copied raw
    (tmp_path / "go").touch()
    assert tmux.exit_code() == "EXIT=0"
    screen = tmux.wait_screen("job SUCCEEDED", "[0] bye", "[1] bye")
    assert "[A" not in screen


RICH = """
import os, sys, time
from rich.console import Console
from rich.progress import Progress
con = Console()
print("terminal", con.is_terminal, sys.stdout.isatty(), flush=True)
go = os.path.join(os.path.dirname(os.path.abspath(__file__)), "go")
with Progress(console=con, refresh_per_second=20) as p:
    t = p.add_task("training", total=100)
    p.update(t, completed=42)
    while not os.path.exists(go):
        time.sleep(0.05)
    p.update(t, completed=100)
print("bye", flush=True)
"""


@pytest.mark.timeout(120)
@needs_tmux
def test_rich_progress_draws_in_the_live_view(tmp_path: Path, tmux: Tmux) -> None:
    script = write_script(tmp_path, "rp.py", RICH)
    tmux.start(["--nproc-per-node", "2", str(script)])
    screen = tmux.wait_screen("[0] terminal True True", "42%", timeout=60)  # rich draws: it sees a terminal
    assert "training" in screen
    (tmp_path / "go").touch()
    assert tmux.exit_code() == "EXIT=0"
    screen = tmux.wait_screen("job SUCCEEDED", "[0] bye", "[1] bye")
    assert "100%" in screen


@pytest.mark.timeout(90)
@needs_tmux
def test_input_on_a_terminal_shows_the_prompt_and_what_is_typed(tmp_path: Path, tmux: Tmux) -> None:
    script = write_script(tmp_path, "w.py", PROMPT)
    tmux.start(["--nproc-per-node", "2", str(script)])
    tmux.wait_screen("[0] name?")  # (a pane's text has no trailing blanks)
    tmux.keys("alice")
    tmux.wait_screen("[0] name? alice")
    tmux.keys("Enter")
    assert tmux.exit_code() == "EXIT=0"
    screen = tmux.wait_screen("job SUCCEEDED")
    assert "[0] hello alice" in screen and "[1] rank 1 here" in screen


PDB = """
import os, time
r = int(os.environ["RANK"])
x = 41 + r
if r == 0:
    breakpoint()
    print("after pdb", x)
else:
    for i in range(3):
        print("tick", i, flush=True)
        time.sleep(0.2)
"""


@pytest.mark.timeout(90)
@needs_tmux
def test_pdb_in_rank_0_is_usable_in_the_live_view(tmp_path: Path, tmux: Tmux) -> None:
    script = write_script(tmp_path, "pdbw.py", PDB)
    tmux.start(["--nproc-per-node", "2", str(script)])
    tmux.wait_screen("[0] (Pdb)", "[1] tick 2")
    tmux.keys("p xyz")
    tmux.wait_screen("[0] (Pdb) p xyz")  # what the user types is visible
    tmux.keys("BSpace", "BSpace")  # readline erases: the line is read as a terminal shows it
    wait_until(lambda: "[0] (Pdb) p x\n" in tmux.screen(), 30, "the line after two backspaces")
    tmux.keys("Enter")
    screen = tmux.wait_screen("[0] 41")
    assert "[1] tick 2" in screen  # lines printed while the status area stepped aside are kept
    tmux.keys("c", "Enter")
    assert tmux.exit_code() == "EXIT=0"
    screen = tmux.wait_screen("job SUCCEEDED", "[0] after pdb 41")
    assert '-> print("after pdb", x)' in screen


@pytest.mark.timeout(90)
@needs_tmux
def test_the_terminal_is_put_back_when_a_worker_dies_inside_input(tmp_path: Path, tmux: Tmux) -> None:
    # As readline leaves it while it reads: no echo, no line editing; then the worker is killed.
    script = write_script(
        tmp_path,
        "raw.py",
        "import os, termios\n"
        "a = termios.tcgetattr(0)\n"
        "a[3] &= ~(termios.ECHO | termios.ICANON)\n"
        "termios.tcsetattr(0, termios.TCSANOW, a)\n"
        "os.kill(os.getpid(), 9)\n",
    )
    stty = tmp_path / "stty"
    tmux.start(["--nproc-per-node", "1", str(script)], after=f"stty -a > {stty}")
    assert tmux.exit_code() == "EXIT=137"
    flags = stty.read_text().split()
    assert "echo" in flags and "icanon" in flags, flags
