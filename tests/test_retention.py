"""Retention: finished jobs expire through a TTL index; failed ones are kept longer."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from support.jobs import wait_finished
from support.waits import wait_for

from qworker import Client
from qworker.model import Retention

SECOND = timedelta(seconds=1)


def test_expiry_follows_the_task_retention(client: Client, db: Any, spawn_worker: Any) -> None:
    spawn_worker("shortlived")
    ok = wait_finished(db, client.now("shortlived"))
    failed = wait_finished(db, client.now("shortlived", {"fail": True}))
    assert ok["state"] == "succeeded" and failed["state"] == "failed"
    assert abs(ok["expireAt"] - ok["lastFinishedAt"] - SECOND) < SECOND / 100
    assert abs(failed["expireAt"] - failed["lastFinishedAt"] - timedelta(days=2)) < SECOND


def test_jobs_finished_without_a_worker_get_the_default_retention(client: Client, db: Any) -> None:
    cancelled = client.cancel(client.now("noop"))
    assert cancelled["expireAt"] - cancelled["lastFinishedAt"] == timedelta(
        seconds=Retention.finished or 0
    )
    assert (Retention.failed or 0) > (Retention.finished or 0)


def test_a_retried_job_no_longer_expires(client: Client) -> None:
    job_id = client.now("noop")
    client.cancel(job_id)
    assert "expireAt" not in client.retry(job_id)


def test_queued_and_running_jobs_never_expire(client: Client, db: Any) -> None:
    client.now("noop")
    client.schedule("in 1 hour", "noop")
    assert db.jobs.count_documents({"expireAt": {"$exists": True}}) == 0


def test_the_server_removes_an_expired_job(client: Client, db: Any, spawn_worker: Any) -> None:
    """MongoDB's TTL monitor runs every 60 s, so this takes up to a minute."""
    spawn_worker("shortlived")
    kept = wait_finished(db, client.now("shortlived", {"fail": True}))
    gone = wait_finished(db, client.now("shortlived"))
    wait_for(lambda: db.jobs.find_one({"_id": gone["_id"]}) is None, 150, "the TTL monitor")
    assert db.jobs.find_one({"_id": kept["_id"]})["state"] == "failed"
