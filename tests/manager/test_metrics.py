"""Prometheus metrics: the manager's (from the store) and a worker's own."""

from __future__ import annotations

import socket
from typing import Any

import httpx
from support.jobs import wait_finished
from support.logs import ready, wait_leading
from support.prometheus import value
from support.waits import wait_for

from qworker import Client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_managers_metrics_count_finished_jobs_and_time_them(
    client: Client, db: Any, spawn_manager: Any, spawn_worker: Any
) -> None:
    manager = spawn_manager("m1")
    wait_leading(manager)
    metrics = f"{manager.api_url()}/metrics"
    spawn_worker("noop", "shortlived")
    ok = [client.now("noop") for _ in range(3)]
    failed = client.now("shortlived", {"fail": True})
    for job_id in [*ok, failed]:
        wait_finished(db, job_id)
    client.enqueue_many("noop", [None] * 2, when="in 1 hour")
    client.pause_task("shortlived")

    def scraped() -> str | None:
        text = httpx.get(metrics, timeout=30).text
        # Each job is counted once its settling time has passed since it finished: the
        # failed one may have finished last.
        done = value(text, "qworker_jobs_succeeded_total", 'task="noop"') == 3.0
        failed = value(text, "qworker_jobs_failed_total", 'task="shortlived"') == 1.0
        return text if done and failed else None

    text = wait_for(scraped, 30, "the finished jobs to be counted")
    assert value(text, "qworker_jobs", 'state="succeeded",task="noop"') == 3.0
    assert value(text, "qworker_jobs", 'state="queued",task="noop"') == 2.0
    assert value(text, "qworker_jobs", 'state="failed",task="shortlived"') == 1.0
    assert value(text, "qworker_job_duration_seconds_count", 'task="noop"') == 3.0
    assert value(text, "qworker_job_wait_seconds_count", 'task="noop"') == 3.0
    assert value(text, "qworker_workers_live") == 1.0
    assert value(text, "qworker_task_paused", 'task="shortlived"') == 1.0
    assert value(text, "qworker_task_paused", 'task="noop"') == 0.0
    # Counted once: a second scrape adds nothing for the same jobs.
    again = httpx.get(metrics, timeout=30).text
    assert value(again, "qworker_jobs_succeeded_total", 'task="noop"') == 3.0


def test_a_worker_serves_its_own_metrics(client: Client, db: Any, spawn_worker: Any) -> None:
    port = free_port()
    worker = spawn_worker("noop", worker_id="w7", extra=["--metrics", f"127.0.0.1:{port}"])
    ready(worker)
    for job_id in [client.now("noop") for _ in range(2)]:
        wait_finished(db, job_id)
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    assert value(text, "qworker_worker_jobs_total", 'outcome="succeeded"') == 2.0
    assert value(text, "qworker_worker_running") == 0.0
    assert 'qworker_worker_info{tasks="noop",worker_id="w7"} 1.0' in text
