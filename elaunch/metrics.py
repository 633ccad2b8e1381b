"""`/metrics`: the run's view in Prometheus' text exposition format, through prometheus-client.

Imported only when the health endpoint is on (prometheus-client is not loaded otherwise). Nothing
is counted on the agent's thread: `ViewCollector.collect` reads the tracker's current view at
scrape time and builds every family from it, so a scrape costs the agent nothing. Names follow
Prometheus' conventions: `elaunch_` prefix, base units as suffixes, `_total` for counters (the
library adds it). The agent's own RSS and CPU are the standard `process_*` families.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from elaunch.runview import ViewSource
from elaunch.spec import WorkerState
from elaunch.status import EXIT_KINDS, exit_kind, readiness

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ViewCollector(Collector):
    """Every elaunch family, from one read of the view (`views.view`) per scrape."""

    def __init__(self, views: ViewSource, clock: Callable[[], float] = time.time) -> None:
        self._views = views
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        view = self._views.view
        now = self._clock()
        run = view.run
        info = GaugeMetricFamily(
            "elaunch_run_info", "The run on this node (value 1).", labels=["run_id", "host", "role"]
        )
        if run is not None:
            info.add_metric([run.run_id, run.host, run.role], 1)
        yield info
        ready, _ = readiness(view)
        yield GaugeMetricFamily("elaunch_ready", "1 when every local worker is HEALTHY (as /readyz).", value=int(ready))
        yield GaugeMetricFamily("elaunch_world_size", "Workers in the whole job.", value=view.world_size)
        yield GaugeMetricFamily("elaunch_rendezvous_round", "The latest completed rendezvous round.", value=view.round)
        yield CounterMetricFamily(
            "elaunch_rendezvous_rounds", "Rendezvous rounds completed by this node.", value=len(view.rounds)
        )
        last = view.last_round
        yield GaugeMetricFamily(
            "elaunch_rendezvous_duration_seconds", "How long the latest rendezvous round took.",
            value=last.duration if last is not None else 0.0,
        )  # fmt: skip
        restarts = CounterMetricFamily(
            "elaunch_restarts", "Restarts of the worker group, by reason.", labels=["reason"]
        )
        restarts.add_metric(["failure"], view.restart_count)
        restarts.add_metric(["membership"], view.membership_restarts)
        yield restarts
        yield GaugeMetricFamily(
            "elaunch_restarts_left", "Restarts after failures still allowed.", value=view.restarts_left
        )
        exits = CounterMetricFamily("elaunch_worker_exits", "Workers that ended, by how they ended.", labels=["kind"])
        counts = dict.fromkeys(EXIT_KINDS, 0)
        for w in view.all_workers:
            kind = exit_kind(w)
            if kind is not None:
                counts[kind] += 1
        for kind, n in counts.items():
            exits.add_metric([kind], n)
        yield exits

        labels = ["rank", "local_rank"]
        state = GaugeMetricFamily(
            "elaunch_worker_state", "1 for the worker's current state.", labels=[*labels, "state"]
        )
        output_age = GaugeMetricFamily(
            "elaunch_worker_last_output_age_seconds", "Seconds since the worker last wrote output.", labels=labels
        )
        step = GaugeMetricFamily("elaunch_worker_step", "The worker's step, read from its output.", labels=labels)
        total = GaugeMetricFamily("elaunch_worker_total_steps", "The step count the worker goes to.", labels=labels)
        rate = GaugeMetricFamily("elaunch_worker_steps_per_second", "Smoothed steps per second.", labels=labels)
        eta = GaugeMetricFamily("elaunch_worker_eta_seconds", "Seconds until the worker's last step.", labels=labels)
        age = GaugeMetricFamily(
            "elaunch_worker_progress_age_seconds", "Seconds since the worker's step last went up.", labels=labels
        )
        straggler = GaugeMetricFamily(
            "elaunch_worker_straggler", "1 when the worker is marked a straggler.", labels=labels
        )
        for w in sorted(view.workers, key=lambda w: w.global_rank):
            key = [str(w.global_rank), str(w.local_rank)]
            for s in WorkerState:
                state.add_metric([*key, s.value], int(w.state == s))
            at = w.ended if w.ended is not None else now
            if w.last_output is not None:
                output_age.add_metric(key, max(0.0, at - w.last_output))
            straggler.add_metric(key, int(w.straggler))
            p = view.progress_of(w)
            if p is None:
                continue
            step.add_metric(key, p.step)
            age.add_metric(key, max(0.0, at - p.advanced))
            if p.total is not None:
                total.add_metric(key, p.total)
            r = p.rate_at(at)
            if r is not None:
                rate.add_metric(key, r)
            e = p.eta(at)
            if e is not None:
                eta.add_metric(key, e)
        yield from (state, output_age, step, total, rate, eta, age, straggler)


def registry(views: ViewSource) -> CollectorRegistry:
    """A registry of the run's families and this process's (`process_*`: the agent's RSS, CPU...)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(ViewCollector(views))
    ProcessCollector(registry=reg)
    return reg


def exposition(reg: CollectorRegistry) -> bytes:
    """The text exposition of `reg` (content type CONTENT_TYPE)."""
    return generate_latest(reg)
