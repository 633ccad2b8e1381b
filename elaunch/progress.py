"""Progress as a fact: a worker's step, total, smoothed steps/s and ETA, read from its output. Pure.

Nothing here reads a clock or a pipe: `read_progress` turns the text of output lines (a chunk of
complete lines, or the pending `\\r`-redrawn line) into a `Reading`, `advance_progress` folds
readings into a `Progress` (the run view keeps one per worker), and `find_stragglers` compares
the workers' rates with their median. Times are the events' wall-clock seconds.

What is read, with no change to the script:

* tqdm's bars: `desc:  40%|####      | 40/100 [00:01<00:01, 39.5it/s]`, `40it [00:01, 39.5it/s]`
  (no total), `2.53s/it`, unit-scaled `1.20k/5.00k`; the `[elapsed<remaining, rate]` clock is
  what marks a bar (tqdm's `format_meter`);
* with `--progress-pattern REGEX`, lines the pattern matches: named group `step` (and optionally
  `total`), e.g. `step (?P<step>\\d+)/(?P<total>\\d+)`; tried before tqdm's form. `^` and `$` are
  line boundaries.

The latest reading of a chunk wins. A count that goes down (a new bar, a restarted worker) or a
bar with another total starts over.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Iterator, Mapping
from typing import AnyStr

from elaunch.values import Value, replace, value

RATE_PERIOD = 1.0
"""Seconds between two rate samples at least: a rate over a few ms of output is noise."""
SMOOTHING = 5.0
"""Time constant of the exponential moving average of steps/s, in seconds."""
STRAGGLER_FACTOR = 1.5
"""A worker is slow when its steps/s times this is below the median's."""
STRAGGLER_WINDOW = 60.0
"""... for this many seconds without a break: then it is a straggler."""
STALL_STEPS = 2.0
STALL_SECONDS = 2.0
"""A worker's rate is taken as falling once no step came for STALL_STEPS steps' time at its
rate, and at least STALL_SECONDS (output arrives in bursts: tqdm redraws every 0.1 s)."""
PARSE_PERIOD = 0.1
"""A worker's pending bar is read into its progress at most this often (seconds): a bar redrawn 50
times a second is read 10 times. What was skipped is read when the view is read
(`RunView.progress_of`), so no reader sees a stale step."""
MAX_CANDIDATES = 16
"""Lines with a `[` looked at from the end of a chunk for a tqdm bar (the bar is near the end)."""

_NUM = rb"\d+(?:\.\d+)?[kMGTPEZY]?"
_TQDM_SOURCE = (
    rb"(?<![\w.])(?P<n>" + _NUM + rb")(?:/(?P<total>" + _NUM + rb"))?[A-Za-z]*"
    rb" \[\d+(?::\d\d){1,2}(?:<(?:\?|\d+(?::\d\d){1,2}))?"
    rb", *(?:\?[A-Za-z]*/[A-Za-z]+|(?P<rate>\d+(?:\.\d+)?)(?P<scale>[kMGTPEZY]?)(?P<unit>[A-Za-z]*)/(?P<per>[A-Za-z]+))[,\]]"
)
_tqdm: re.Pattern[bytes] | None = None
"""`_TQDM_SOURCE` compiled when first used: compiling it costs 2 ms of start-up otherwise."""
_SCALE = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18, "Z": 10**21, "Y": 10**24}


@value
class Reading(Value):
    """One progress line read: `step` (count done), `total` or None, and the rate the worker
    printed itself (tqdm's steps/s) or None."""

    step: int
    total: int | None = None
    rate: float | None = None


@value
class Progress(Value):
    """A worker's progress so far; times are wall-clock seconds.

    `rate` is the smoothed steps/s (None until a second of readings, unless the bar printed one);
    `advanced` is when `step` last went up; `anchor_*` is the last rate sample's step and time;
    `read_at` when the last reading that changed something was folded in.
    """

    step: int
    total: int | None
    rate: float | None
    advanced: float
    anchor_step: int
    anchor_ts: float
    read_at: float = 0.0

    def rate_at(self, now: float) -> float | None:
        """steps/s at `now`: the smoothed rate, falling as 1/idle time once no step came for
        STALL_STEPS steps' time (and at least STALL_SECONDS): a worker that stopped is not shown
        running at its old speed."""
        if self.rate is None or self.done or self.rate <= 0:
            return self.rate
        grace = max(STALL_STEPS / self.rate, STALL_SECONDS)
        idle = now - self.advanced
        return self.rate if idle <= grace else self.rate * grace / idle

    def eta(self, now: float) -> float | None:
        """Seconds until `step` reaches `total` at `rate_at(now)`; 0 once done; None without a total or a rate."""
        if self.total is None:
            return None
        left = self.total - self.step
        if left <= 0:
            return 0.0
        rate = self.rate_at(now)
        if not rate:
            return None
        return left / rate

    @property
    def done(self) -> bool:
        return self.total is not None and self.step >= self.total


@value
class ProgressRules(Value):
    """How progress is read and judged (from the options): `pattern` is `--progress-pattern`
    compiled (re.MULTILINE), `factor`/`window` the straggler rule, `interval` the report period (s)."""

    pattern: re.Pattern[str] | None = None
    factor: float = STRAGGLER_FACTOR
    window: float = STRAGGLER_WINDOW
    interval: float = 30.0


def compile_pattern(pattern: str | None) -> re.Pattern[str] | None:
    """`--progress-pattern` (already checked by `config.parse_progress_pattern`) as used here."""
    return re.compile(pattern, re.MULTILINE) if pattern else None


def _number(text: bytes | str) -> int | None:
    """`120`, `1,200`, `1.20k` -> a whole number; None if it is not one."""
    t = text.decode() if isinstance(text, bytes) else text
    t = t.strip().replace(",", "").replace("_", "")
    scale = 1
    if t and t[-1] in "kMGTPEZY":
        scale, t = _SCALE[t[-1]], t[:-1]
    try:
        f = float(t)
    except ValueError:
        return None
    if not math.isfinite(f) or f < 0:
        return None
    return round(f * scale)


def _last(matches: Iterator[re.Match[AnyStr]]) -> re.Match[AnyStr] | None:
    last = deque(matches, maxlen=1)
    return last[0] if last else None


def read_tqdm(data: bytes) -> Reading | None:
    """The last tqdm bar in `data` (lines of a worker's output), or None."""
    global _tqdm
    if _tqdm is None:
        _tqdm = re.compile(_TQDM_SOURCE)
    end = len(data)
    for _ in range(MAX_CANDIDATES):
        i = data.rfind(b" [", 0, end)
        if i < 0:
            return None
        start = max(data.rfind(b"\n", 0, i), data.rfind(b"\r", 0, i)) + 1
        m = _last(_tqdm.finditer(data, start, end))
        if m is not None:
            return _tqdm_reading(m)
        end = start
    return None


def _tqdm_reading(m: re.Match[bytes]) -> Reading | None:
    step = _number(m.group("n"))
    if step is None:
        return None
    total = _number(m.group("total")) if m.group("total") else None
    rate = None
    if m.group("rate") is not None:
        x = float(m.group("rate")) * _SCALE[m.group("scale").decode()]
        if m.group("per") == b"s":  # 39.5it/s
            rate = x
        elif m.group("unit") == b"s" and x > 0:  # 2.53s/it
            rate = 1.0 / x
    return Reading(step=step, total=total, rate=rate)


def read_pattern(text: str, pattern: re.Pattern[str]) -> Reading | None:
    """The last match of `pattern` in `text`, as a Reading (None when none, or `step` is no number)."""
    m = _last(pattern.finditer(text))
    if m is None:
        return None
    step = _number(m.group("step") or "")
    if step is None:
        return None
    total = None
    if "total" in pattern.groupindex and m.group("total"):
        total = _number(m.group("total"))
    return Reading(step=step, total=total)


def read_progress(data: bytes, pattern: re.Pattern[str] | None = None) -> Reading | None:
    """The latest progress in `data`: a `pattern` match first, else a tqdm bar; None if neither."""
    if pattern is not None:
        r = read_pattern(data.decode(errors="replace"), pattern)
        if r is not None:
            return r
    if b" [" not in data:
        return None
    return read_tqdm(data)


def advance_progress(p: Progress | None, r: Reading, ts: float) -> Progress:
    """`p` after reading `r` at `ts`. The rate is sampled at most every RATE_PERIOD seconds and
    smoothed with an exponential moving average (time constant SMOOTHING); a new count (step went
    down, or another total) starts over, seeded with the rate the bar printed, if any."""
    if p is None or r.step < p.step or (r.total is not None and p.total is not None and r.total != p.total):
        return Progress(
            step=r.step, total=r.total, rate=r.rate, advanced=ts, anchor_step=r.step, anchor_ts=ts, read_at=ts
        )
    total = r.total if r.total is not None else p.total
    if r.step == p.step and total == p.total:
        return p
    advanced = ts if r.step > p.step else p.advanced
    dt = ts - p.anchor_ts
    if dt < RATE_PERIOD:
        return replace(p, step=r.step, total=total, advanced=advanced, read_at=ts)
    sample = (r.step - p.anchor_step) / dt
    rate = sample if p.rate is None else p.rate + (1.0 - math.exp(-dt / SMOOTHING)) * (sample - p.rate)
    return Progress(
        step=r.step, total=total, rate=rate, advanced=advanced, anchor_step=r.step, anchor_ts=ts, read_at=ts
    )


def median(xs: list[float]) -> float:
    """The median of a non-empty list (the mean of the middle two of an even count). Written
    out: `import statistics` costs start-up (it imports random, fractions and decimal)."""
    s = sorted(xs)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def find_stragglers(
    rates: Mapping[int, float], slow_since: Mapping[int, float], now: float, factor: float, window: float
) -> tuple[dict[int, float], frozenset[int], float | None]:
    """Which ranks are stragglers: (slow since, stragglers, median).

    `rates`: rank -> steps/s at `now` of the ranks still counting (not done); `slow_since`: the
    previous call's first result. A rank is slow while `rate * factor < median` (of at least two
    ranks) and a straggler once it has been slow for `window` seconds without a break.
    """
    if len(rates) < 2:
        return {}, frozenset(), None
    med = median(list(rates.values()))
    since = {rank: slow_since.get(rank, now) for rank, rate in rates.items() if rate * factor < med}
    return since, frozenset(rank for rank, t in since.items() if now - t >= window), med


def duration_text(seconds: float | None) -> str:
    """`42s`, `12m05s`, `3h02m`, `2d04h`; `?` for None."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def rate_text(rate: float | None) -> str:
    """`3.1 steps/s`, or `12.0 s/step` below one step a second; `?` for None."""
    if rate is None:
        return "?"
    if 0 < rate < 1:
        return f"{1 / rate:.1f} s/step"
    return f"{rate:.1f} steps/s"


def progress_cell(p: Progress | None, now: float) -> str:
    """The live view's short text for parsed progress: `120/5000 3.1 steps/s ETA 26m40s`."""
    if p is None:
        return ""
    count = f"{p.step}/{p.total}" if p.total is not None else str(p.step)
    rate = p.rate_at(now)
    text = count if rate is None else f"{count} {rate_text(rate)}"
    eta = p.eta(now)
    return text if eta is None else f"{text} ETA {duration_text(eta)}"
