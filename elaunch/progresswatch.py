"""Progress changes as events for tools: stragglers marked and cleared, and a periodic report.

The view already holds each worker's step, total and rate (folded from its output by
`runview.advance`). `progress_events` (pure) decides, at a moment `now`, which workers are
stragglers and whether a report is due; `ProgressWatcher` is the sink that asks it as output
arrives and publishes what it says (`StragglerChanged`, `ProgressReported`), which the events
file records and the consoles print. Time is the events' wall clock, so no timer thread is needed:
a worker that prints nothing at all is judged when another one prints.
"""

from __future__ import annotations

from elaunch import events as ev
from elaunch.progress import ProgressRules, duration_text, find_stragglers, median, rate_text
from elaunch.runview import RunView, ViewSource
from elaunch.values import Value, field, value

CHECK_PERIOD = 0.5
"""Seconds of event time between two looks at the workers' rates."""


@value
class WatchState(Value):
    """What `progress_events` carries from one call to the next: since when each global rank is
    slow, and when the last report was made (None: no progress seen yet)."""

    slow_since: dict[int, float] = field(default_factory=dict)
    reported: float | None = None


def progress_events(
    view: RunView, now: float, rules: ProgressRules, state: WatchState
) -> tuple[WatchState, list[ev.Event]]:
    """The events due at `now` (wall-clock seconds) and the state for the next call.

    Stragglers are judged among the current attempt's running workers that count steps and are
    not done (`find_stragglers`); a change of a worker's mark is a `StragglerChanged`. A
    `ProgressReported` is due `rules.interval` seconds after the previous one (the first, that
    long after progress was first seen).
    """
    steps = {w.global_rank: p for w in view.workers if (p := view.progress_of(w)) is not None}
    if not steps:
        return state, []
    rows = sorted((w for w in view.workers if w.global_rank in steps), key=lambda w: w.global_rank)
    rates = {
        w.global_rank: r
        for w in rows
        if w.ended is None and not steps[w.global_rank].done and (r := steps[w.global_rank].rate_at(now)) is not None
    }
    slow_since, stragglers, med = find_stragglers(rates, state.slow_since, now, rules.factor, rules.window)
    out: list[ev.Event] = []
    for w in rows if med is not None else ():  # fewer than two to compare: marks stay as they are
        mark = w.global_rank in stragglers
        if mark != w.straggler and (mark or w.ended is None):
            out.append(
                ev.StragglerChanged(
                    ts=now, local_rank=w.local_rank, global_rank=w.global_rank, straggler=mark,
                    rate=rates.get(w.global_rank), median_rate=med,
                )
            )  # fmt: skip
    reported = state.reported
    if reported is None:
        reported = now
    elif now - reported >= rules.interval:
        reported = now
        mine = [steps[w.global_rank] for w in rows]
        known = list(rates.values()) or [r for p in mine if (r := p.rate_at(now)) is not None]
        out.append(
            ev.ProgressReported(
                ts=now,
                ranks=tuple(w.global_rank for w in rows),
                steps=tuple(p.step for p in mine),
                totals=tuple(p.total for p in mine),
                rates=tuple(p.rate_at(now) for p in mine),
                etas=tuple(p.eta(now) for p in mine),
                stragglers=tuple(sorted(w.global_rank for w in rows if w.straggler or w.global_rank in stragglers)),
                median_rate=median(known) if known else None,
            )
        )
    return WatchState(slow_since=slow_since, reported=reported), out


class ProgressWatcher:
    """The sink that publishes `progress_events` on `bus` as workers' output arrives (at most
    every CHECK_PERIOD seconds); subscribe it after the tracker `views`."""

    def __init__(self, bus: ev.Bus, views: ViewSource, rules: ProgressRules) -> None:
        self._bus = bus
        self._views = views
        self._rules = rules
        self._state = WatchState()
        self._checked = float("-inf")

    def handle(self, e: ev.Event) -> None:
        if isinstance(e, ev.RendezvousDone):  # a new attempt: nobody is slow yet
            self._state = WatchState(reported=self._state.reported)
            return
        if not isinstance(e, ev.WorkerOutput | ev.WorkerProgress) or e.ts - self._checked < CHECK_PERIOD:
            return
        self._checked = e.ts
        self._state, events = progress_events(self._views.view, e.ts, self._rules, self._state)
        for x in events:
            self._bus.publish(x)  # delivered after `e` has reached every sink

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def report_text(e: ev.ProgressReported) -> str:
    """The plain console's progress line: the slowest worker's count, the median rate, the
    longest ETA, and the stragglers."""
    if not e.ranks:
        return "progress: none reported"
    i = min(range(len(e.steps)), key=lambda k: e.steps[k])
    lo, hi = min(e.steps), max(e.steps)
    count = f"step {lo}" if lo == hi else f"steps {lo}-{hi}"
    total = e.totals[i]
    if total is not None:
        count += f"/{total} ({100 * lo / total:.0f}%)" if total else f"/{total}"
    etas = [x for x in e.etas if x is not None]
    parts = [f"progress: {count} on {len(e.ranks)} rank(s)", rate_text(e.median_rate)]
    if etas:
        parts.append(f"ETA {duration_text(max(etas))}")
    text = ", ".join(parts)
    if e.stragglers:
        text += "; straggler(s): rank " + ",".join(str(r) for r in e.stragglers)
    return text


def straggler_text(e: ev.StragglerChanged) -> str:
    """The agent line for a straggler mark set or cleared."""
    if e.straggler:
        return f"rank {e.global_rank} is a straggler: {rate_text(e.rate)}, median {rate_text(e.median_rate)}"
    return f"rank {e.global_rank} is no longer a straggler ({rate_text(e.rate)}, median {rate_text(e.median_rate)})"
