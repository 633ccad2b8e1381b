"""Progress as a fact: reading tqdm bars and --progress-pattern lines, rates, ETA, stragglers, reports."""

from __future__ import annotations

import io
import json

import pytest
from tqdm import tqdm

from elaunch import events as ev
from elaunch.logs import last_segment
from elaunch.progress import (
    Progress,
    ProgressRules,
    Reading,
    advance_progress,
    compile_pattern,
    duration_text,
    find_stragglers,
    progress_cell,
    read_progress,
)
from elaunch.progresswatch import ProgressWatcher, WatchState, progress_events, report_text, straggler_text
from elaunch.records import event_record
from elaunch.runview import RunTracker, RunView, fold
from tests.unit.history import T0, attempt, run_started

pytestmark = pytest.mark.timeout(10)


@pytest.mark.parametrize(
    ("text", "reading"),
    [
        (b"train:  40%|####      | 40/100 [00:01<00:01, 39.5it/s]", Reading(step=40, total=100, rate=39.5)),
        (b"40it [00:01, 39.5it/s]", Reading(step=40, total=None, rate=39.5)),
        (b"  0%|          | 0/100 [00:00<?, ?it/s]", Reading(step=0, total=100, rate=None)),
        (b" 40%|####   | 40/100 [00:01<00:01,  2.50s/it]", Reading(step=40, total=100, rate=0.4)),
        (b"1.20k/5.00k [00:01<00:03, 1.15kit/s]", Reading(step=1200, total=5000, rate=1150.0)),
        (b"12%|#| 3/25 [1:02:03<2:00:00, 39.5it/s, loss=0.1]", Reading(step=3, total=25, rate=39.5)),
        (b"100%|##| 3/3 [00:00<00:00, 3.0B/s]", Reading(step=3, total=3, rate=3.0)),
    ],
)
def test_tqdm_bars_are_read(text: bytes, reading: Reading) -> None:
    assert read_progress(text) == reading


@pytest.mark.parametrize(
    "text",
    [b"epoch 3/10 [12:00:01]\n", b"[INFO] loading 3/4 shards [rank0]\n", b"plain line\n", b""],
)
def test_lines_that_are_not_bars_are_not_read(text: bytes) -> None:
    assert read_progress(text) is None


def test_a_real_tqdm_bar_is_read_in_its_last_state() -> None:
    f = io.StringIO()
    for _ in tqdm(range(30), file=f, mininterval=0, ascii=True, desc="epoch 1"):
        pass
    data = f.getvalue().encode()
    assert b"\r" in data
    # As the live view gets it (the pending line after its last \r) and as a chunk of lines.
    r = read_progress(last_segment(data))
    assert r is not None and (r.step, r.total) == (30, 30)
    r = read_progress(b"some log line\n" + data + b"\n")
    assert r is not None and (r.step, r.total) == (30, 30)


def test_a_pattern_is_tried_first_and_its_last_match_wins() -> None:
    pattern = compile_pattern(r"^step (?P<step>\d+)/(?P<total>\d+)")
    data = b"step 1/50 loss 3\nnoise\nstep 2/50 loss 2\n 3/10 [00:01<00:01, 3.0it/s]\n"
    assert read_progress(data, pattern) == Reading(step=2, total=50)
    assert read_progress(b"epoch done\n", pattern) is None
    no_total = compile_pattern(r"iteration (?P<step>[\d,]+)")
    assert read_progress(b"iteration 1,200 of many\n", no_total) == Reading(step=1200)
    # A bar on a line the pattern does not match is still read.
    assert read_progress(b" 3/10 [00:01<00:01, 3.0it/s]", pattern) == Reading(step=3, total=10, rate=3.0)


def test_rate_is_sampled_each_second_and_smoothed() -> None:
    p = advance_progress(None, Reading(step=0, total=100), 0.0)
    assert p.rate is None
    p = advance_progress(p, Reading(step=2, total=100), 0.5)  # less than a second: no sample yet
    assert (p.step, p.rate) == (2, None)
    p = advance_progress(p, Reading(step=10, total=100), 1.0)
    assert p.rate == pytest.approx(10.0)
    assert p.eta(1.0) == pytest.approx(9.0)
    p = advance_progress(p, Reading(step=30, total=100), 2.0)  # 20 steps/s, smoothed towards it
    assert p.rate is not None and 10.0 < p.rate < 20.0
    same = advance_progress(p, Reading(step=30, total=100), 2.5)
    assert same is p


def test_a_stalled_worker_is_not_shown_at_its_old_speed() -> None:
    p = Progress(step=50, total=100, rate=10.0, advanced=100.0, anchor_step=50, anchor_ts=100.0)
    assert p.rate_at(100.05) == p.rate_at(102.0) == 10.0  # within 2 s (and 2 steps' time): bursts
    assert p.rate_at(104.0) == pytest.approx(5.0)  # then it falls as 1/idle time
    assert p.rate_at(120.0) == pytest.approx(1.0)
    assert p.eta(104.0) == pytest.approx(10.0)
    done = Progress(step=100, total=100, rate=10.0, advanced=100.0, anchor_step=100, anchor_ts=100.0)
    assert done.done and done.eta(500.0) == 0.0 and done.rate_at(500.0) == 10.0


def test_a_new_count_starts_over_seeded_with_the_bars_rate() -> None:
    p = advance_progress(None, Reading(step=90, total=100), 0.0)
    p = advance_progress(p, Reading(step=5, total=100, rate=7.0), 1.0)  # went down: a new bar
    assert (p.step, p.rate, p.advanced) == (5, 7.0, 1.0)
    p = advance_progress(p, Reading(step=6, total=20), 2.0)  # another total
    assert (p.step, p.total, p.rate) == (6, 20, None)


def test_stragglers_are_slow_against_the_median_for_a_whole_window() -> None:
    rates = {0: 10.0, 1: 10.0, 2: 6.0, 3: 9.0}
    since, slow, med = find_stragglers(rates, {}, 100.0, 1.5, 30.0)
    assert med == 9.5 and since == {2: 100.0} and slow == frozenset()
    since, slow, _ = find_stragglers(rates, since, 130.0, 1.5, 30.0)
    assert slow == {2}
    # A break in slowness starts the window again.
    since, slow, _ = find_stragglers({**rates, 2: 9.0}, since, 131.0, 1.5, 30.0)
    assert since == {} and slow == frozenset()
    assert find_stragglers({0: 1.0}, {0: 0.0}, 100.0, 1.5, 0.0) == ({}, frozenset(), None)


def _bars(ts: float, steps: dict[int, int], total: int = 1000) -> list[ev.Event]:
    return [
        ev.WorkerProgress(ts=ts, local_rank=r, global_rank=r, stream=2, text=b"%d/%d [00:01<00:10, ?it/s]" % (s, total))
        for r, s in steps.items()
    ]


def test_watcher_marks_a_straggler_and_reports_progress_through_the_bus() -> None:
    rules = ProgressRules(factor=1.5, window=2.0, interval=6.0)
    tracker = RunTracker(RunView(progress_rules=rules))
    rec = ev.Recorder()
    bus = ev.Bus([tracker])
    bus.subscribe(ProgressWatcher(bus, tracker, rules))
    bus.subscribe(rec)
    for e in [run_started(nproc=3), *attempt(T0, 3, round_=0, restart=0, first_pid=100, world=3)]:
        bus.publish(e)
    for k in range(0, 41):  # ranks 0 and 1 do 10 steps/s, rank 2 does 2 steps/s, for 10 s
        t = T0 + 1 + k / 4
        for e in _bars(t, {0: 10 * k // 4, 1: 10 * k // 4, 2: 2 * k // 4}):
            bus.publish(e)
    marks = rec.of(ev.StragglerChanged)
    assert [(m.global_rank, m.straggler) for m in marks] == [(2, True)]  # type: ignore[attr-defined]
    first = marks[0]
    assert first.ts - (T0 + 1.5) >= 2.0  # slow from its first rate sample, then a whole window
    w = tracker.view.worker(2)
    assert w is not None and w.straggler
    reports = rec.of(ev.ProgressReported)
    assert len(reports) == 1
    report = reports[0]
    assert isinstance(report, ev.ProgressReported)
    assert report.ranks == (0, 1, 2) and report.stragglers == (2,) and report.totals == (1000, 1000, 1000)
    assert report.steps[2] < report.steps[0]
    text = report_text(report)
    assert (
        text.startswith(f"progress: steps {report.steps[2]}-{report.steps[0]}/1000") and "straggler(s): rank 2" in text
    )
    assert "rank 2 is a straggler" in straggler_text(first)  # type: ignore[arg-type]
    # Both are events for tools: the events file records them as JSON.
    assert json.loads(json.dumps(event_record(report)))["stragglers"] == [2]
    assert event_record(first)["straggler"] is True
    # Events a sink publishes reach every sink after the event being handled, in one order.
    i = rec.events.index(first)
    assert isinstance(rec.events[i - 1], ev.WorkerProgress)


def test_a_straggler_that_catches_up_is_cleared() -> None:
    rules = ProgressRules(factor=1.5, window=0.0, interval=1e9)
    view = fold(
        [run_started(nproc=3), *attempt(T0, 3, round_=0, restart=0, first_pid=100, world=3)],
        RunView(progress_rules=rules),
    )
    history = _bars(T0 + 1, {0: 0, 1: 0, 2: 0}) + _bars(T0 + 2, {0: 10, 1: 10, 2: 2})
    view = fold(history, view)
    state, out = progress_events(view, T0 + 2, rules, WatchState())
    assert [(e.global_rank, e.straggler) for e in out] == [(2, True)]  # type: ignore[attr-defined]
    view = fold([*out, *_bars(T0 + 3, {0: 20, 1: 20, 2: 40})], view)
    state, out = progress_events(view, T0 + 3, rules, state)
    assert [(e.global_rank, e.straggler) for e in out] == [(2, False)]  # type: ignore[attr-defined]


def test_texts() -> None:
    assert [duration_text(x) for x in (None, 5, 65, 3 * 3600 + 125, 2 * 86400 + 7200)] == [
        "?", "5s", "1m05s", "3h02m", "2d02h",
    ]  # fmt: skip
    p = Progress(step=120, total=5000, rate=3.0, advanced=10.0, anchor_step=120, anchor_ts=10.0)
    assert progress_cell(p, 10.0) == "120/5000 3.0 steps/s ETA 27m07s"
    assert progress_cell(None, 0.0) == ""
    slow = Progress(step=3, total=None, rate=0.5, advanced=10.0, anchor_step=3, anchor_ts=10.0)
    assert progress_cell(slow, 10.0) == "3 2.0 s/step"


def test_bars_are_read_at_most_every_parse_period_and_the_rest_when_the_view_is_read() -> None:
    view = fold([run_started(nproc=1), *attempt(T0, 1, round_=0, restart=0, first_pid=100, world=1)])
    view = fold(_bars(T0 + 1, {0: 1}, total=10) + _bars(T0 + 1.01, {0: 2}, total=10), view)
    row = view.worker(0)
    assert row is not None and row.steps is not None
    assert row.steps.step == 1 and row.progress.startswith("2/10")  # the second redraw was not read yet
    p = view.progress_of(row)
    assert p is not None and (p.step, p.advanced) == (2, T0 + 1.01)
    view = fold(_bars(T0 + 1.2, {0: 3}, total=10), view)
    row = view.worker(0)
    assert row is not None and row.steps is not None and row.steps.step == 3
    assert view.progress_of(row) is row.steps
