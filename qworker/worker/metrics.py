"""A worker's own Prometheus metrics (``qworker --metrics HOST:PORT``).

Read from the worker at scrape time, so nothing is added to the path of a job:
its run counts by outcome, the jobs it runs now, and who it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from qworker.config import parse_bind
from qworker.errors import ConfigError

if TYPE_CHECKING:
    from qworker.worker.daemon import Worker


class _WorkerFigures(Collector):
    """One worker's own counts, read from it at scrape time (nothing in its hot path)."""

    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | InfoMetricFamily]:
        worker = self._worker
        yield InfoMetricFamily(
            "qworker_worker",
            "This worker.",
            value={"worker_id": worker.id, "tasks": ",".join(sorted(worker.metas))},
        )
        runs = CounterMetricFamily(
            "qworker_worker_jobs", "Runs this worker finished, by outcome.", labels=["outcome"]
        )
        for outcome, count in vars(worker.counters).items():
            runs.add_metric([outcome], count)
        yield runs
        yield GaugeMetricFamily(
            "qworker_worker_running", "Jobs running now.", value=worker.running_count
        )


def serve_worker_metrics(worker: Worker, bind: str) -> None:
    """``/metrics`` of one worker on ``HOST:PORT``, from a background thread."""
    host, port = parse_bind(bind, "--metrics")
    registry = CollectorRegistry()
    registry.register(_WorkerFigures(worker))
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigError(f"--metrics {bind}: cannot listen there: {exc.strerror}") from None
