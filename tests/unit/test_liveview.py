"""The live view: its status table from a RunView, its printed lines, and its refresh thread."""

from __future__ import annotations

import io
import os
import threading

import pytest
from rich.console import Console

from elaunch import events as ev
from elaunch.console import ConsoleOptions, PlainConsole
from elaunch.liveview import LiveConsole, ProcessUsage, job_text, status, status_rows
from elaunch.progress import ProgressRules, compile_pattern
from elaunch.runview import RunTracker, RunView, fold
from scripts.testbed import wait_until
from tests.unit.history import T0, attempt, fail_then_succeed, run_started, until

pytestmark = pytest.mark.timeout(20)


def _text(renderable: object) -> str:
    console = Console(file=io.StringIO(), width=150, color_system=None, record=True)
    console.print(renderable)
    return console.export_text()


def test_job_line() -> None:
    history = fail_then_succeed()
    assert job_text(fold(history[:1])) == "run r1  round 0  world size 0  restarts left 1/1"
    assert job_text(fold(history)) == "run r1  round 1  world size 2  restarts left 0/1"
    membership = ev.RestartDecided(reason="x", membership=True, restarts_used=0, restarts_left=1, membership_restarts=2)
    assert job_text(fold([*history[:1], membership])).endswith("restarts left 1/1  membership changes 2")
    spare = ev.MembershipChanged(waiting=0, lost=(), closed=False, reason=None, spare=True)
    assert job_text(fold([*history[:1], spare])).endswith("restarts left 1/1  SPARE: standing by")
    spares = ev.MembershipChanged(waiting=0, lost=(), closed=False, reason=None, spares=("h3", "h4"))
    assert job_text(fold([*history, spares])).endswith("restarts left 0/1  spares h3, h4")


def test_status_rows_from_a_view() -> None:
    view = fold(until(fail_then_succeed(), ev.WorkerProgress))  # attempt 0 running, rank 0 drawing a bar
    usage = {100: ("12%", "130M"), 101: ("3%", "90M")}
    assert status_rows(view, T0 + 2.0, usage) == [
        ("0", "100", "HEALTHY", "0", "1.4s", "12%", "130M", "40%|####  |"),
        ("1", "101", "HEALTHY", "0", "1.4s", "3%", "90M", ""),
    ]
    # Ended workers keep their final uptime and show no CPU or memory.
    view = fold(until(fail_then_succeed(), ev.GroupStateChanged, 3))
    assert status_rows(view, T0 + 9.0, usage) == [
        ("0", "100", "STOPPED", "0", "1.2s", "", "", "40%|####  |"),
        ("1", "101", "FAILED", "0", "0.9s", "", "", ""),
    ]


def test_status_rows_show_steps_read_from_lines_and_stragglers() -> None:
    history = [
        *until(fail_then_succeed(), ev.GroupStateChanged, 1),
        ev.WorkerOutput(ts=T0 + 1.0, local_rank=1, global_rank=1, stream=1, data=b"step 10/100\n"),
        ev.WorkerOutput(ts=T0 + 2.0, local_rank=1, global_rank=1, stream=1, data=b"step 30/100\n"),
        ev.StragglerChanged(ts=T0 + 2.0, local_rank=1, global_rank=1, straggler=True, rate=20.0, median_rate=40.0),
    ]
    rules = ProgressRules(pattern=compile_pattern(r"step (?P<step>\d+)/(?P<total>\d+)"))
    rows = status_rows(fold(history, RunView(progress_rules=rules)), T0 + 2.0, {})
    assert rows[1][-1] == "STRAGGLER 30/100 20.0 steps/s ETA 4s"


def test_status_area_renders_the_rows() -> None:
    view = fold(until(fail_then_succeed(), ev.WorkerProgress))
    lines = _text(status(view, T0 + 2.0, {})).splitlines()
    assert lines[0] == "elaunch run r1  round 0  world size 2  restarts left 1/1"
    assert lines[1].split() == ["rank", "pid", "state", "restarts", "uptime", "cpu", "mem", "progress"]
    assert lines[2].split() == ["0", "100", "HEALTHY", "0", "1.4s", "40%|####", "|"]
    assert lines[3].split() == ["1", "101", "HEALTHY", "0", "1.4s"]


def _live(console: Console) -> tuple[RunTracker, LiveConsole, io.BytesIO]:
    tracker = RunTracker()
    err = io.BytesIO()
    plain = PlainConsole(io.BytesIO(), err, ConsoleOptions(host="vm"), tracker)
    return tracker, LiveConsole(plain, tracker, stderr_is_tty=False, console=console), err


def test_live_console_prints_worker_and_agent_lines(utc: None) -> None:
    screen = Console(file=io.StringIO(), width=150, color_system=None, record=True)
    tracker, live, err = _live(screen)
    bus = ev.Bus([tracker, live])
    for e in fail_then_succeed():
        bus.publish(e)
    bus.close()
    text = screen.export_text()
    assert "[0] step 1\n[0] step 2\n" in text and "[1] hello\n" in text
    assert (
        "[elaunch 00:00:01.750] restarting the group: rank 1 (pid 101) exited with code 1 (restart 1 of 1, 0 left)\n"
        in text
    )
    assert text.rstrip().endswith("[elaunch 00:00:03.750] job SUCCEEDED: 2 worker(s) exited 0")
    # stderr is not the terminal: worker stderr goes there as plain lines.
    assert (
        err.getvalue()
        == b'[1] Traceback (most recent call last):\n[1]   File "t.py", line 3, in <module>\n[1] ValueError: boom\n'
    )
    # rich stops its refresh thread without joining it: it ends as soon as it wakes.
    wait_until(
        lambda: not [t for t in threading.enumerate() if type(t).__name__ == "_RefreshThread"], 5, "rich's thread"
    )


def test_refresh_thread_renders_whole_snapshots_while_events_arrive() -> None:
    # rich draws the status area from its own thread; the agent thread changes the run meanwhile.
    tracker, live, _ = _live(Console(file=io.StringIO(), width=150, color_system=None))
    errors: list[BaseException] = []
    renders = 0
    stop = threading.Event()

    def draw() -> None:
        nonlocal renders
        renderable = live._live.renderable
        while not stop.is_set():
            try:
                lines = _text(renderable).splitlines()
                # Every drawing is one view: the rows drawn are the workers of the round on the job line.
                round_ = int(lines[0].split("round ")[1].split()[0])
                pids = [int(line.split()[1]) for line in lines[2:]]
                assert all((p - 1000) // 8 == round_ for p in pids), lines
                renders += 1
            except BaseException as e:
                errors.append(e)
                return

    t = threading.Thread(target=draw)
    t.start()
    try:
        bus = ev.Bus([tracker, live])
        bus.publish(run_started(nproc=8))
        for k in range(150):
            for e in attempt(T0 + k, 8, round_=k, restart=0, first_pid=1000 + 8 * k, world=8):
                bus.publish(e)
            for r in range(8):
                bus.publish(ev.WorkerProgress(local_rank=r, global_rank=r, stream=2, text=b"%d%%" % k))
    finally:
        stop.set()
        t.join(10)
        live.close()
    assert not errors, errors[0]
    assert renders > 0, "the status area was never drawn"


def test_process_usage_reads_running_processes_only() -> None:
    usage = ProcessUsage()
    me = os.getpid()
    first = usage.sample([me, 2**22 + 7])  # a pid above pid_max: never a process
    assert set(first) == {me}
    cpu, mem = first[me]
    assert cpu.endswith("%") and mem.endswith("M") and int(mem[:-1]) > 0
    assert usage.sample([]) == {}


def test_cpu_percent_is_measured_over_a_second_and_capped() -> None:
    from elaunch.liveview import CPU_INTERVAL, cpu_percent

    assert cpu_percent(0.5, 1.0, 2) == 50.0
    assert cpu_percent(0.01, 0.002, 2) == 200.0  # one clock tick over 2 ms: capped at the machine
    assert cpu_percent(1.0, 0.0, 2) == 0.0
    t = [100.0]
    usage = ProcessUsage(clock=lambda: t[0])
    me = os.getpid()
    assert usage.sample([me])[me][0] == "0%"  # no measurement yet
    sum(range(200_000))  # some CPU time, within the same instant of the fake clock
    assert usage.sample([me])[me][0] == "0%"  # less than CPU_INTERVAL since: the last value, not a spike
    t[0] += CPU_INTERVAL
    assert int(usage.sample([me])[me][0][:-1]) <= 100 * (os.cpu_count() or 1)


def test_redraws_do_not_grow_with_the_output_rate() -> None:
    # Each print above the status area redraws it: lines are gathered and printed together.
    screen = Console(file=io.StringIO(), width=150, color_system=None, force_terminal=True, record=True)
    tracker, live, _ = _live(screen)
    renders = 0
    draw = live._status.__rich__

    def counting() -> object:
        nonlocal renders
        renders += 1
        return draw()

    live._status.__rich__ = counting  # type: ignore[method-assign]
    bus = ev.Bus([tracker, live])
    for e in [run_started(nproc=64), *attempt(T0, 64, round_=0, restart=0, first_pid=1000, world=64)]:
        bus.publish(e)
    for i in range(40):
        for r in range(64):
            bus.publish(ev.WorkerOutput(local_rank=r, global_rank=r, stream=1, data=b"line %d\n" % i))
    live.close()
    text = screen.export_text()
    assert text.count("line ") == 40 * 64  # every line, in order per rank
    assert [int(x.split()[3]) for x in text.splitlines() if x.startswith("[ 7] line")] == list(range(40))
    assert renders < 200, renders  # 2560 lines; redraws follow time (10 prints and 4 refreshes a second)


def test_the_status_area_steps_aside_for_a_prompt() -> None:
    out = io.StringIO()
    screen = Console(file=out, width=150, color_system=None, force_terminal=True)
    tracker, live, _ = _live(screen)
    bus = ev.Bus([tracker, live])
    for e in [run_started(nproc=2), *attempt(T0, 2, round_=0, restart=0, first_pid=1000, world=2)]:
        bus.publish(e)
    bus.publish(ev.WorkerPartialLine(local_rank=0, global_rank=0, stream=1, text=b"(Pdb) "))
    assert not live._live.is_started  # the terminal is the prompt's
    assert out.getvalue().endswith("\r\x1b[2K[0] (Pdb) ")
    bus.publish(ev.WorkerPartialLine(local_rank=0, global_rank=0, stream=1, text=b"(Pdb) p x"))
    assert out.getvalue().endswith("\r\x1b[2K[0] (Pdb) p x")
    bus.publish(ev.WorkerOutput(local_rank=0, global_rank=0, stream=1, data=b"(Pdb) p x\n41\n"))
    assert live._live.is_started  # the line ended: the status area is back
    live.close()
    text = out.getvalue()
    assert "(Pdb) p x\n" in text and "[0] 41\n" in text
    assert text.count("(Pdb) p x") == 1  # the line is not printed again
