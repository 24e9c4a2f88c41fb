"""Prometheus metrics of the fleet, read from the store when scraped.

Gauges (jobs by task and state, live workers, paused tasks) are counted at each scrape.
Counters and histograms are fed by the jobs that finished since the last
scrape, so they cover standalone workers too, which tell no one but MongoDB.
An expired job is counted, but has no run to time. A snooze leaves nothing
in the store to count: workers count theirs (``worker.metrics``).
A job is observed a few seconds after it finished, once its worker's batched
write has surely landed, and only once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from qworker import stats
from qworker.model import JobState
from qworker.when import utcnow

if TYPE_CHECKING:
    from qworker.client import Client

# How long after a job's finish its outcome is surely written (outboxes flush in ms).
SETTLE = timedelta(seconds=5)
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600)


class _Store(Collector):
    """Gauges counted in the store at scrape time."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def collect(self) -> Iterator[GaugeMetricFamily]:
        jobs = GaugeMetricFamily("qworker_jobs", "Jobs in the store.", labels=["task", "state"])
        counts = stats.job_counts(self._client.jobs_collection)
        for task, by_state in sorted(counts.items()):
            for state in JobState:
                jobs.add_metric([task, state.value], by_state.get(state.value, 0))
        yield jobs
        live = sum(1 for worker in self._client.workers() if worker.get("live"))
        yield GaugeMetricFamily("qworker_workers_live", "Workers alive now.", value=live)
        paused = GaugeMetricFamily(
            "qworker_task_paused", "1 while the task is paused fleet-wide.", labels=["task"]
        )
        held = self._client.paused_tasks()
        for task in sorted(counts.keys() | held):
            paused.add_metric([task], 1.0 if task in held else 0.0)
        yield paused
        yield from _limit_gauges(self._client.task_limits())


LIMIT_GAUGES = (  # name, help, the field of ``limits.summary`` it shows
    ("qworker_task_global_concurrency", "A task's fleet-wide concurrency limit.", "concurrency"),
    ("qworker_task_slots_in_use", "Slots of the limit held by running jobs.", "running"),
    ("qworker_task_rate_limit", "Starts a task's rate limit allows per window.", "rateLimit"),
    ("qworker_task_rate_window_seconds", "The window of a task's rate limit.", "ratePeriod"),
    ("qworker_task_recent_starts", "Starts in the rate limit's last window.", "recentStarts"),
    ("qworker_task_partitions", "Partitions of a limited task seen.", "partitions"),
)


def _limit_gauges(limited: dict[str, dict[str, Any]]) -> Iterator[GaugeMetricFamily]:
    """A task's limits and their use, summed over its partitions."""
    for name, text, field in LIMIT_GAUGES:
        gauge = GaugeMetricFamily(name, text, labels=["task"])
        for task, view in sorted(limited.items()):
            if view.get(field) is not None:
                gauge.add_metric([task], float(view[field]))
        yield gauge


class Metrics:
    def __init__(self, client: Client) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._seen_until = utcnow() - SETTLE
        self.registry = CollectorRegistry()
        self.succeeded = Counter(
            "qworker_jobs_succeeded", "Jobs that succeeded.", ["task"], registry=self.registry
        )
        self.failed = Counter(
            "qworker_jobs_failed", "Jobs that failed for good.", ["task"], registry=self.registry
        )
        self.expired = Counter(
            "qworker_jobs_expired",
            "Jobs not started by their deadline.",
            ["task"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "qworker_job_duration_seconds",
            "Run time of finished jobs' last run.",
            ["task"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.wait = Histogram(
            "qworker_job_wait_seconds",
            "Enqueue (or due time) to start of finished jobs.",
            ["task"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_Store(client))

    def observe(self) -> None:
        """Count the jobs that finished since the last call."""
        with self._lock:
            until = utcnow() - SETTLE
            for doc in stats.finished_between(
                self._client.jobs_collection, self._seen_until, until
            ):
                task = str(doc["name"])
                if doc["state"] == JobState.SUCCEEDED.value:
                    self.succeeded.labels(task).inc()
                elif doc["state"] == JobState.FAILED.value:
                    self.failed.labels(task).inc()
                elif doc["state"] == JobState.EXPIRED.value:
                    self.expired.labels(task).inc()
                    continue  # it never ran: nothing to time
                else:
                    continue  # a failed attempt that will be retried, a snooze, or a cancel
                for histogram, seconds in (
                    (self.duration, stats.run_seconds(doc)),
                    (self.wait, stats.wait_seconds(doc)),
                ):
                    if seconds is not None:
                        histogram.labels(task).observe(seconds)
            self._seen_until = until

    def render(self) -> tuple[bytes, str]:
        self.observe()
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
