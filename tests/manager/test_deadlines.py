"""The leader's sweep of jobs past their deadline (``qworker.manager.deadlines``).

The sweep itself runs here against the real server; one test runs a real
manager, with no worker for the job's task, and reads the outcome in the API.
The in-process tests build overdue jobs with ``model.new_job`` (a deadline in the
past cannot be enqueued: it is refused as before the run time).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from bson import ObjectId
from support.jobs import messages
from support.logs import wait_leading
from support.prometheus import value
from support.waits import wait_for

from qworker import Client, Step, workflows
from qworker.channel import Channel
from qworker.lifecycle import EXPIRED_REASON
from qworker.manager import metrics as metrics_module
from qworker.manager.deadlines import Deadlines
from qworker.model import new_job
from qworker.mongo import async_client
from qworker.when import utcnow

DAY = 86400.0
# Announced by a worker: only data.to may leave in a notification; failed jobs kept a day.
MAILER = {"id": "mailer", "jobAttributes": ["data.to"], "failedRetention": "1 day"}


def job(db: Any, doc: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = db.jobs.find_one({"_id": doc["_id"]})
    return found


def overdue(task: str, data: Any = None, **fields: Any) -> dict[str, Any]:
    """A job due 10 s ago whose deadline passed 5 s ago."""
    now = utcnow()
    doc = new_job(task, data, now=now, run_at=now - timedelta(seconds=10), expires=5)
    return {**doc, **fields}


def sweep(mongo_url: str) -> Iterator[int]:
    """Sweeps by a leader called m-test, each as soon as asked."""

    async def once() -> int:
        client = async_client(mongo_url)
        db = client.get_default_database()
        deadlines = Deadlines(db.jobs, db.tasks, Channel(db.channel), "m-test")
        try:
            return await deadlines.sweep()
        finally:
            await client.close()

    while True:
        yield asyncio.run(once())


def test_the_sweep_expires_what_no_worker_claimed_and_announces_it(
    client: Client, db: Any, mongo_url: str
) -> None:
    db.tasks.insert_one({"_id": "mailer", "valid": True, "metadata": MAILER})
    queued = overdue("mailer", {"to": "ops@example.com", "secret": "s"})
    snoozed = overdue("mailer", nextRunAt=utcnow() + timedelta(hours=1))  # snoozed past it
    ghost = overdue("ghost", {"secret": "s"})  # a task no worker ever announced
    running = overdue("mailer", state="running", lockToken="w1:n:1")  # started in time
    later = new_job("mailer", None, now=utcnow(), run_at=utcnow(), expires="1 hour")
    db.jobs.insert_many([queued, snoozed, ghost, running, later])

    assert next(sweep(mongo_url)) == 3
    for doc in (queued, snoozed, ghost):
        expired = job(db, doc)
        assert expired["state"] == "expired", expired
        assert expired["failReason"] == EXPIRED_REASON and expired["attempts"] == 0
    assert (job(db, running)["state"], job(db, later)["state"]) == ("running", "queued")
    # Retention: the task's own failedRetention where a worker announced it, else 30 days.
    for doc, keep in ((queued, DAY), (ghost, 30 * DAY)):
        expired = job(db, doc)
        kept = (expired["expireAt"] - expired["lastFinishedAt"]).total_seconds()
        assert abs(kept - keep) < 5, (doc["name"], kept)

    notes = {n["sourceId"]: n for n in messages(db, "worker:notification")}
    assert set(notes) == {str(queued["_id"]), str(snoozed["_id"]), str(ghost["_id"])}
    for note in notes.values():
        assert note["type"] == "expire" and note["managerId"] == "m-test"
        assert note["workerId"] is None  # no worker touched it
    assert notes[str(queued["_id"])]["job"] == {"data": {"to": "ops@example.com"}}
    assert notes[str(ghost["_id"])]["job"] == {}  # no metadata says what may leave

    assert next(sweep(mongo_url)) == 0  # each is expired, and announced, once
    assert len(messages(db, "worker:notification")) == 3


def test_a_waiting_chain_step_past_its_deadline_expires_and_stops_its_chain(
    client: Client, db: Any, mongo_url: str
) -> None:
    now = utcnow()
    steps = [Step("mailer", expires="1 hour"), Step("mailer", expires=5), Step("mailer")]
    first, second, third = workflows.chain(steps, now, now - timedelta(seconds=10)).jobs
    db.jobs.insert_many([first, second, third])

    assert next(sweep(mongo_url)) == 1
    assert job(db, first)["state"] == "queued"  # its own deadline is an hour away
    assert job(db, second)["state"] == "expired"
    stopped = job(db, third)
    assert stopped["state"] == "cancelled"
    assert stopped["failReason"] == (
        f"chain stopped at step 2 of 3 (task 'mailer', job {second['_id']}): {EXPIRED_REASON}"
    )
    assert stopped["flow"]["doomedBy"]["job"] == second["_id"]


def test_expired_jobs_are_counted_in_the_managers_metrics(
    client: Client, db: Any, mongo_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics_module, "SETTLE", timedelta(0))  # no write to wait for
    metrics = metrics_module.Metrics(client)
    db.jobs.insert_many([overdue("noop"), overdue("noop")])
    assert next(sweep(mongo_url)) == 2

    text = metrics.render()[0].decode()
    assert value(text, "qworker_jobs_expired_total", 'task="noop"') == 2.0
    assert value(text, "qworker_jobs", 'state="expired",task="noop"') == 2.0
    assert value(text, "qworker_job_duration_seconds_count", 'task="noop"') is None  # no run
    assert value(text, "qworker_jobs_failed_total", 'task="noop"') is None


def test_a_manager_expires_a_job_no_worker_serves_and_the_api_lists_it(
    client: Client, db: Any, spawn_manager: Any
) -> None:
    manager = spawn_manager("m1")
    wait_leading(manager)
    enqueued = httpx.post(
        f"{manager.api_url()}/api/jobs", json={"task": "noop", "expires": 1}
    )  # through the API, which enqueues with Client.schedule
    assert enqueued.status_code == 201, enqueued.text
    doc = {"_id": ObjectId(enqueued.json()["id"])}
    assert job(db, doc)["state"] == "queued"

    wait_for(lambda: job(db, doc)["state"] == "expired", 15, "the manager to expire the job")
    listed = httpx.get(f"{manager.api_url()}/api/jobs", params={"state": "expired"}).json()
    assert listed["total"] == 1 and listed["jobs"][0]["_id"] == str(doc["_id"])
    assert listed["jobs"][0]["failReason"] == EXPIRED_REASON
    # Past its deadline within a sweep's period (2 s) and a leader's round.
    done = job(db, doc)
    assert (done["lastFinishedAt"] - done["expiresAt"]).total_seconds() < 4
    (note,) = messages(db, "worker:notification")
    assert note["type"] == "expire" and note["managerId"] == "m1"
    assert note["sourceId"] == str(doc["_id"])
