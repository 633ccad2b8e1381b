"""What the user sees: complete lines under load, plain text in pipes, the live view in tmux, records."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from collections import Counter
from pathlib import Path

import pytest

from elaunch.console import COLORS
from scripts.testbed import wait_until
from tests.helpers import ELAUNCH, run_elaunch, write_script

FLOOD = """
import os, sys
r = int(os.environ["RANK"])
n = int(sys.argv[1])
pad = "x" * (r * 7 % 50)
w = sys.stdout.write
for i in range(n):
    w("r%d i%07d %s end\\n" % (r, i, pad))
"""
LINE = re.compile(r"^\[(\d+)\] r(\d+) i(\d{7}) x* end$")


@pytest.mark.timeout(120)
def test_eight_workers_flooding_lose_cut_or_duplicate_nothing(tmp_path: Path) -> None:
    n = 30000
    script = write_script(tmp_path, "flood.py", FLOOD)
    r = subprocess.run(
        [*ELAUNCH, "--nproc-per-node", "8", str(script), str(n)], capture_output=True, timeout=110, check=False
    )
    assert r.returncode == 0, r.stderr[-2000:]
    seen: Counter[tuple[int, int]] = Counter()
    cut = 0
    for line in r.stdout.decode().splitlines():
        m = LINE.match(line)
        if not m or m.group(1) != m.group(2):
            cut += 1
            continue
        seen[(int(m.group(2)), int(m.group(3)))] += 1
    assert cut == 0
    assert sum(1 for c in seen.values() if c > 1) == 0
    assert len(seen) == 8 * n


@pytest.mark.timeout(60)
def test_pipe_gets_plain_text_without_escape_codes(tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        "bar.py",
        "import sys\nfor i in range(50):\n    sys.stderr.write('\\r%3d%%' % (i * 2))\nsys.stderr.write('\\r100%\\n')\nprint('ok')\n",
    )
    r = run_elaunch(["--nproc-per-node", "2", str(script)], env={"TERM": "xterm-256color"})
    assert r.returncode == 0
    assert "\x1b" not in r.stdout + r.stderr
    assert "\r" not in r.stdout + r.stderr
    # A progress bar is shown rate-limited, not as 50 partial lines per worker.
    bar_lines = [line for line in r.stderr.splitlines() if line.endswith("%")]
    assert len(bar_lines) <= 2 * 2, bar_lines
    assert "[0] 100%" in r.stderr and "[1] 100%" in r.stderr
    assert re.search(r"^\[elaunch \d\d:\d\d:\d\d\.\d{3}\] ", r.stderr, re.M)


@pytest.mark.timeout(60)
def test_summary_and_events_files(tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        "s.py",
        "import os, time\nprint('hi')\nif os.environ['RANK'] == '1':\n    raise KeyError('missing')\ntime.sleep(30)\n",
    )
    summary = tmp_path / "summary.json"
    events = tmp_path / "events.jsonl"
    r = run_elaunch(
        ["--nproc-per-node", "2", "--summary-file", str(summary), "--events-file", str(events), str(script)]
    )
    assert r.returncode == 1
    doc = json.loads(summary.read_text())
    assert doc["schema"] == "elaunch.summary/1"
    assert doc["state"] == "FAILED" and doc["exit_code"] == 1
    assert doc["root_cause"]["global_rank"] == 1
    assert "KeyError: 'missing'" in doc["root_cause"]["traceback"]
    states = {w["global_rank"]: (w["state"], w["stopped_by_elaunch"]) for w in doc["workers"]}
    assert states == {0: ("STOPPED", True), 1: ("FAILED", False)}
    recs = [json.loads(line) for line in events.read_text().splitlines()]
    kinds = [rec["event"] for rec in recs]
    assert kinds[0] == "Schema" and kinds[1] == "RunStarted" and kinds[-1] == "RunFinished"
    assert "WorkerStateChanged" in kinds and "WorkerOutput" in kinds
    assert all(isinstance(rec.get("ts", 0), float | int) for rec in recs)
    assert recs[-1]["root_cause"]["global_rank"] == 1


@pytest.mark.timeout(60)
def test_summary_is_written_when_workers_cannot_start(tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    prog = write_script(tmp_path, "badshebang.sh", "#!/nonexistent/interpreter\n")
    prog.chmod(0o755)
    r = run_elaunch(["--summary-file", str(summary), "--no-python", str(prog)])
    assert r.returncode == 1
    assert "cannot start" in r.stderr and "Traceback" not in r.stderr
    doc = json.loads(summary.read_text())
    assert doc["state"] == "FAILED" and "cannot start" in doc["message"]


@pytest.mark.timeout(60)
def test_program_exit_code_reaches_summary(tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    r = run_elaunch(["--summary-file", str(summary), "--no-python", "/bin/sh", "-c", "exit 9"])
    assert r.returncode == 9
    assert json.loads(summary.read_text())["exit_code"] == 9


def _tmux_capture(session: str) -> str:
    return subprocess.run(
        ["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True, check=False
    ).stdout


@pytest.mark.timeout(90)
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_live_view_in_a_real_terminal(tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        "live.py",
        "import os, sys, time\n"
        "print('hello', os.environ['RANK'], flush=True)\n"
        "go = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'go')\n"
        "while not os.path.exists(go):\n"
        "    sys.stderr.write('\\rwaiting %.1f' % time.time()); sys.stderr.flush(); time.sleep(0.1)\n"
        "sys.stderr.write('\\n')\n",
    )
    session = f"elaunch-test-{uuid.uuid4().hex[:8]}"
    done = tmp_path / "done"
    cmd = f"{' '.join(ELAUNCH)} --nproc-per-node 2 {script}; echo EXIT=$? > {done}; sleep 60"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "150", "-y", "40", cmd], check=True)
    try:
        screen = wait_until(
            lambda: (s := _tmux_capture(session)) and "HEALTHY" in s and "waiting" in s and "[1] hello 1" in s and s,
            30,
            "the live status area with two HEALTHY workers and their progress",
        )
        assert "rank" in str(screen) and "uptime" in str(screen)
        (tmp_path / "go").touch()
        wait_until(done.exists, 30, "the job to finish")
        screen = wait_until(lambda: (s := _tmux_capture(session)) and "job SUCCEEDED" in s and s, 10, "the report")
        assert "SUCCEEDED" in str(screen)
        assert done.read_text().strip() == "EXIT=0"
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False, capture_output=True)


@pytest.mark.timeout(90)
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_no_live_and_no_color_give_plain_text_on_a_terminal(tmp_path: Path) -> None:
    script = write_script(tmp_path, "p.py", "print('plain')\n")
    session = f"elaunch-test-{uuid.uuid4().hex[:8]}"
    done = tmp_path / "done"
    out = tmp_path / "screen"
    cmd = f"NO_COLOR=1 {' '.join(ELAUNCH)} --nproc-per-node 1 {script}; echo EXIT=$? > {done}; sleep 60"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "150", "-y", "40", cmd], check=True)
    try:
        wait_until(done.exists, 30, "the job to finish")
        subprocess.run(["tmux", "capture-pane", "-e", "-p", "-t", session], stdout=out.open("w"), check=True)
        screen = out.read_text()
        assert "[0] plain" in screen
        assert "uptime" not in screen  # no status area
        assert "\x1b[" not in screen.replace("\x1b[0m", "")  # no colours (tmux may add a reset)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False, capture_output=True)


HELLO = "import os\nprint('hello', os.environ['RANK'], flush=True)\n"
SGR = re.compile(r"\x1b\[([0-9;]*)m")
STAMPED = r"^\[elaunch \d\d:\d\d:\d\d\.\d{3}\] "


def _screen_in_tmux(tmp_path: Path, env: str, args: list[str], until: str) -> str:
    """Run elaunch in a tmux pane (`env` is a shell prefix); the pane's text with its escape codes (-e)."""
    session = f"elaunch-test-{uuid.uuid4().hex[:8]}"
    done = tmp_path / "done"
    cmd = f"{env} {' '.join(ELAUNCH)} {' '.join(args)}; echo EXIT=$? > {done}; sleep 60"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "150", "-y", "40", cmd], check=True)
    try:
        wait_until(done.exists, 30, "the job to finish")
        assert done.read_text().strip() == "EXIT=0"

        def capture() -> str:
            return subprocess.run(
                ["tmux", "capture-pane", "-e", "-p", "-t", session], capture_output=True, text=True, check=False
            ).stdout

        def drawn() -> str:
            screen = capture()
            return screen if until in SGR.sub("", screen) else ""

        # The pane may not have drawn the last bytes yet when the shell wrote `done`.
        return wait_until(drawn, 10, f"{until!r} on screen")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False, capture_output=True)


def _assert_plain_lines(text: str, nproc: int) -> None:
    """The plain console's lines: each worker's prefixed line, agent lines stamped, no status area."""
    for r in range(nproc):
        assert re.search(rf"^\[{r}\] hello {r}$", text, re.M), text
    assert re.search(STAMPED + rf"rank\(s\) 0-{nproc - 1} INIT -> HEALTHY \(pid ", text, re.M), text
    assert re.search(STAMPED + "job SUCCEEDED: ", text, re.M), text
    assert "uptime" not in text and "restarts left" not in text  # the live view's status area


@pytest.mark.timeout(90)
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_term_dumb_gives_plain_text_on_a_terminal(tmp_path: Path) -> None:
    script = write_script(tmp_path, "h.py", HELLO)
    screen = _screen_in_tmux(tmp_path, "TERM=dumb", ["--nproc-per-node", "2", str(script)], "job SUCCEEDED")
    assert "\x1b[" not in screen.replace("\x1b[0m", ""), repr(screen)  # no colours (tmux may add a reset)
    _assert_plain_lines(screen, 2)


@pytest.mark.timeout(90)
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_no_live_gives_line_output_without_status_area_on_a_terminal(tmp_path: Path) -> None:
    script = write_script(tmp_path, "h.py", HELLO)
    args = ["--no-live", "--nproc-per-node", "2", str(script)]
    screen = _screen_in_tmux(tmp_path, "env -u NO_COLOR", args, "job SUCCEEDED")
    _assert_plain_lines(SGR.sub("", screen), 2)


@pytest.mark.timeout(90)
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_no_live_gives_no_escape_codes_on_a_terminal(tmp_path: Path) -> None:
    script = write_script(tmp_path, "h.py", HELLO)
    args = ["--no-live", "--nproc-per-node", "2", str(script)]
    screen = _screen_in_tmux(tmp_path, "env -u NO_COLOR", args, "job SUCCEEDED")
    assert "\x1b[" not in screen.replace("\x1b[0m", ""), repr(screen)


def _foreground(sgr_run: str) -> int | None:
    """The foreground colour a run of SGR sequences leaves set (None: the default)."""
    fg: int | None = None
    for params in SGR.findall(sgr_run):
        codes = [int(c) for c in params.split(";") if c] or [0]
        for c in codes:
            if c in (0, 39):
                fg = None
            elif 30 <= c <= 37 or 90 <= c <= 97:
                fg = c
    return fg


@pytest.mark.timeout(90)
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_rank_prefixes_are_coloured_per_rank_on_a_terminal(tmp_path: Path) -> None:
    script = write_script(tmp_path, "h.py", HELLO)
    screen = _screen_in_tmux(tmp_path, "env -u NO_COLOR", ["--nproc-per-node", "3", str(script)], "job SUCCEEDED")
    colours: dict[int, int | None] = {}
    for r in range(3):
        m = re.search(rf"((?:\x1b\[[0-9;]*m)+)\[{r}\] ((?:\x1b\[[0-9;]*m)+)hello {r}", screen)
        assert m, f"no coloured prefix for rank {r}: {screen!r}"
        colours[r] = _foreground(m.group(1))
        assert _foreground(m.group(1) + m.group(2)) is None, "the colour is not reset after the prefix"
    assert colours == {r: COLORS[r] for r in range(3)}
    assert len(set(colours.values())) == 3


@pytest.mark.timeout(60)
def test_prefix_template_host_and_group_rank(tmp_path: Path) -> None:
    script = write_script(tmp_path, "h.py", HELLO)
    r = run_elaunch(["--nproc-per-node", "2", "--log-line-prefix", "<${host}|${group_rank}|${rank}> ", str(script)])
    assert r.returncode == 0, r.stderr
    host = os.uname().nodename
    assert sorted(r.stdout.splitlines()) == [f"<{host}|0|0> hello 0", f"<{host}|0|1> hello 1"]
