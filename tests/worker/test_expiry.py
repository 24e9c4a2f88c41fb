"""Deadlines (``expires``): a job not started by its ``expiresAt`` ends ``expired``.

A worker that claims a job past its deadline does not run it; the manager's
sweep of the jobs no worker claims is in tests/manager/test_deadlines.py.
A job cannot be enqueued already past its deadline (that is refused), so the
overdue ones are built with ``model.new_job`` and inserted as the client would.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bson import ObjectId
from support.jobs import finished

from qworker import Client, InvalidJobError, Step, workflows
from qworker.job import Job
from qworker.lifecycle import EXPIRED_REASON, KEEP, Outcome
from qworker.model import JobState, new_job
from qworker.when import utcnow
from qworker.worker.outbox import Outbox


def job(db: Any, job_id: Any) -> dict[str, Any]:
    doc: dict[str, Any] = db.jobs.find_one({"_id": ObjectId(job_id)})
    return doc


def overdue(task: str, data: Any = None, **options: Any) -> dict[str, Any]:
    """A job due 10 s ago that expired 5 s ago: no worker has claimed it in time."""
    now = utcnow()
    return new_job(task, data, now=now, run_at=now - timedelta(seconds=10), expires=5, **options)


def test_a_job_claimed_past_its_deadline_expires_without_running(
    client: Client, db: Any, burst: Any
) -> None:
    late = overdue("record")
    db.jobs.insert_one(late)
    on_time = {"_id": ObjectId(client.now("record", expires="10 minutes"))}
    worker = burst("record")

    expired = job(db, late["_id"])
    assert expired["state"] == "expired", expired
    assert expired["failReason"] == EXPIRED_REASON
    assert expired["attempts"] == 0  # it never ran: the claim's attempt is given back
    assert "lockToken" not in expired and "lockedBy" not in expired
    assert expired["lastWorker"] == "in-process"  # the worker that found it expired
    # Kept as long as a failed job (30 days by default), for the post-mortem.
    kept = (expired["expireAt"] - expired["lastFinishedAt"]).total_seconds()
    assert abs(kept - 30 * 86400) < 5
    assert job(db, on_time["_id"])["state"] == "succeeded"
    assert [e["job"] for e in db.effects.find()] == [str(on_time["_id"])]  # the late one never ran
    assert (worker.counters.expired, worker.counters.succeeded, worker.counters.failed) == (1, 1, 0)


def test_an_expired_job_can_be_retried_and_then_runs_without_a_deadline(
    client: Client, db: Any, burst: Any
) -> None:
    late = overdue("record")
    db.jobs.insert_one(late)
    job_id = str(late["_id"])
    burst("record")
    assert job(db, job_id)["state"] == "expired"

    again = client.retry(job_id)
    assert again["state"] == "queued" and "expiresAt" not in again and "failReason" not in again
    burst("record")
    done = job(db, job_id)
    assert done["state"] == "succeeded" and done["attempts"] == 1, done


def test_a_chain_step_that_expires_stops_the_chain(client: Client, db: Any, burst: Any) -> None:
    now = utcnow()
    steps = [Step("record", {"n": 1}, expires=5), Step("record", {"n": 2})]
    docs = workflows.chain(steps, now, now - timedelta(seconds=10)).jobs
    db.jobs.insert_many(docs)
    burst("record")

    first, second = (job(db, doc["_id"]) for doc in docs)
    assert first["state"] == "expired"
    assert second["state"] == "cancelled"
    assert second["failReason"] == (
        f"chain stopped at step 1 of 2 (task 'record', job {first['_id']}): {EXPIRED_REASON}"
    )
    assert db.effects.count_documents({}) == 0

    client.retry(str(first["_id"]))  # the chain goes on, as after a retried failure
    burst("record", until=lambda: finished(db, str(second["_id"])))
    assert job(db, second["_id"])["state"] == "succeeded"


def test_a_job_that_snoozes_past_its_deadline_expires(client: Client, db: Any, burst: Any) -> None:
    now = utcnow()
    doc = new_job("snoozing", {"delay": 0.6}, now=now, run_at=now, expires=0.4)
    db.jobs.insert_one(doc)
    worker = burst("snoozing", until=lambda: finished(db, str(doc["_id"])))

    done = job(db, doc["_id"])
    assert done["state"] == "expired" and done["failReason"] == EXPIRED_REASON, done
    assert done["attempts"] == 0  # one run, snoozed, then claimed too late: no attempt used
    assert [entry["msg"] for entry in done["logs"]] == ["snoozed for 0.6 s"]
    assert db.effects.count_documents({"job": str(doc["_id"])}) == 1
    assert (worker.counters.snoozed, worker.counters.expired) == (1, 1)


# -- what expires takes -----------------------------------------------------------


RUN_AT = datetime(2030, 1, 31, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("expires", "at"),
    [
        (600, RUN_AT + timedelta(minutes=10)),  # seconds: a lifetime from the run time
        (90.5, RUN_AT + timedelta(seconds=90.5)),
        (timedelta(hours=2), RUN_AT + timedelta(hours=2)),
        ("10 minutes", RUN_AT + timedelta(minutes=10)),
        ("in 1h 30m", RUN_AT + timedelta(hours=1, minutes=30)),
        ("2030-01-31T09:15:00Z", datetime(2030, 1, 31, 9, 15, tzinfo=UTC)),
        ("2030-01-31T10:15:00+01:00", datetime(2030, 1, 31, 9, 15, tzinfo=UTC)),
        (datetime(2030, 2, 1), datetime(2030, 2, 1, tzinfo=UTC)),  # naive: UTC
    ],
)
def test_expires_is_a_lifetime_from_the_run_time_or_a_moment(expires: Any, at: datetime) -> None:
    doc = new_job("record", None, now=RUN_AT - timedelta(days=1), run_at=RUN_AT, expires=expires)
    assert doc["expiresAt"] == at
    assert "expiresAt" not in new_job("record", None, now=RUN_AT, run_at=RUN_AT)


@pytest.mark.parametrize(
    ("expires", "said"),
    [
        ("2030-01-31T08:59:00Z", "must be after the job's run time (2030-01-31T09:00:00+00:00)"),
        (0, "must be after the job's run time"),
        ("now", "must be after the job's run time"),
        (-5, "a duration cannot be negative"),
        (float("inf"), "a duration must be a finite number"),
        ("next blursday", "cannot understand expires='next blursday'"),
        (True, "expires must be seconds, a duration"),
        ([60], "expires must be seconds, a duration"),
        (1e300, "too far ahead"),
    ],
)
def test_a_bad_expires_is_an_invalid_job_naming_the_field(expires: Any, said: str) -> None:
    with pytest.raises(InvalidJobError, match="expires") as raised:
        new_job("record", None, now=RUN_AT, run_at=RUN_AT, expires=expires)
    assert raised.value.field == "expires"
    assert said in str(raised.value)


# -- what a worker announces ---------------------------------------------------------


def test_an_expired_or_snoozed_run_is_announced_as_such() -> None:
    """A managed worker's notifications (see test_notifications.py for the process test)."""
    paths = {"expire": ("data", "failReason"), "snooze": ("data", "nextRunAt", "attempts")}
    outbox = Outbox(30, lambda: None, "w1", lambda task, event: paths[event])
    outbox.notifying = True
    doc = {**overdue("record", {"n": 1}), "lockToken": "w1:n:1", "attempts": 1}
    wake = utcnow() + timedelta(seconds=5)
    outbox.finish(Job(doc, outbox), Outcome(JobState.EXPIRED, reason=EXPIRED_REASON), KEEP)
    outbox.finish(Job(doc, outbox), Outcome(JobState.QUEUED, retry_at=wake), KEEP)
    drained = outbox.drain()
    writes, notes = drained.ops, drained.notes

    bodies = [n["message"] for n in notes if n["event"] == "worker:notification"]
    assert [b["type"] for b in bodies] == ["expire", "snooze"]
    assert bodies[0]["job"] == {"data": {"n": 1}, "failReason": EXPIRED_REASON}
    assert bodies[1]["job"]["attempts"] == 0  # the snooze gave its attempt back
    assert bodies[1]["job"]["nextRunAt"] == wake
    # The snoozed job is announced to the workers, to be claimed on time.
    (hint,) = [n["message"] for n in notes if n["event"] == "job:queued"]
    assert (
        hint["jobs"][0]["id"] == str(doc["_id"])
        and hint["jobs"][0]["nextRunAt"] == wake.isoformat()
    )
    assert len(writes) == 2
