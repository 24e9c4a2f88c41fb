"""The worker's engine in the test's own loop (burst mode) against the real server.

Retries, failures, priorities, due times and concurrency caps are the engine's
decisions, the same in a process or not; these tests queue jobs, run a worker
here until none is left, and read what it did. Signals, child processes and exit
codes are what the process-level tests in test_worker.py and test_shutdown.py prove.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import ObjectId
from support.jobs import finished, max_overlap

from qworker import Client
from qworker.model import PRIORITY_NAMES
from qworker.mongo import async_client
from qworker.store import WorkerStore


def job(db: Any, job_id: str) -> dict[str, Any]:
    doc: dict[str, Any] = db.jobs.find_one({"_id": ObjectId(job_id)})
    return doc


def test_burst_mode_runs_every_queued_job_and_returns(client: Client, db: Any, burst: Any) -> None:
    ids = client.enqueue_many("record", [{"n": n} for n in range(20)])
    later = client.schedule("in 1 hour", "record", {})
    worker = burst("record")  # returns: nothing is due, nothing runs

    assert worker.counters.succeeded == 20 and worker.counters.failed == 0
    assert {job(db, i)["state"] for i in ids} == {"succeeded"}
    assert sorted(e["job"] for e in db.effects.find()) == sorted(ids)  # each ran once
    assert db.jobs.count_documents({"lockToken": {"$exists": True}}) == 0
    assert job(db, later)["state"] == "queued"  # not due: left for a later worker
    # Its listing says it stopped (standalone workers list themselves).
    (listed,) = db.workers.find({"_id": "in-process"})
    assert listed["state"] == "stopped", listed


# -- retries, backoff and failures ----------------------------------------


def test_a_job_that_fails_twice_is_retried_with_growing_backoff_and_succeeds(
    client: Client, db: Any, burst: Any
) -> None:
    job_id = client.now("retrying", {"fail_times": 2})
    burst("retrying", until=lambda: finished(db, job_id))
    done = job(db, job_id)

    assert done["state"] == "succeeded", done
    assert done["failCount"] == 2
    assert done["attempts"] == 3
    assert done["result"] == {"attempt": 3}
    assert "lockedBy" not in done

    runs = sorted(db.effects.find({"job": job_id}), key=lambda e: e["attempt"])
    assert [r["attempt"] for r in runs] == [1, 2, 3]
    assert [r["failing"] for r in runs] == [True, True, False]
    # retrying.json: backoff delay 1 s, factor 2, no jitter -> 1 s then 2 s.
    for run, delay in ((runs[1], 1.0), (runs[2], 2.0)):
        scheduled = (run["nextRunAt"] - run["failedAt"]).total_seconds()
        assert abs(scheduled - delay) < 0.1, (scheduled, delay)
        assert run["start"] >= run["nextRunAt"].timestamp() - 0.01  # never before its time
    gap1 = runs[1]["start"] - runs[0]["end"]
    gap2 = runs[2]["start"] - runs[1]["end"]
    assert gap1 >= 1.0 - 0.01
    assert gap2 >= 2.0 - 0.01
    assert gap2 > gap1


def test_a_job_that_always_fails_ends_failed_with_its_error(
    client: Client, db: Any, burst: Any
) -> None:
    job_id = client.now("retrying", {"fail_times": 99})
    once = client.now("retrying", {"fail_times": 99}, max_attempts=1)  # the job's own limit
    worker = burst("retrying", until=lambda: finished(db, job_id) and finished(db, once))
    done = job(db, job_id)

    assert done["state"] == "failed", done
    assert done["attempts"] == 3 and done["failCount"] == 3  # maxAttempts 3 in retrying.json
    assert done["failReason"] == "RuntimeError: planned failure of attempt 3"
    error = done["error"]
    assert error["type"] == "RuntimeError"
    assert error["message"] == "planned failure of attempt 3"
    assert "Traceback" in error["traceback"] and "retrying.py" in error["traceback"]
    assert done["failedAt"] >= done["lastRunAt"]
    assert "lockedBy" not in done
    assert db.effects.count_documents({"job": job_id}) == 3

    once_done = job(db, once)
    assert once_done["state"] == "failed"
    assert once_done["attempts"] == 1 and once_done["failCount"] == 1
    assert db.effects.count_documents({"job": once}) == 1
    assert worker.counters.failed == 2 and worker.counters.retried == 2


# -- priorities and due times ------------------------------------------------


def test_jobs_run_in_priority_order(client: Client, db: Any, burst: Any) -> None:
    # Enqueued lowest-first-ish, so a FIFO worker would get the order wrong.
    plan: list[int | str] = ["low", 5, "highest", 0, "high", "lowest", 15, -3]
    ids = {client.now("record", {"p": str(p)}, priority=p): p for p in plan}
    numeric = {job_id: PRIORITY_NAMES.get(str(p), p) for job_id, p in ids.items()}
    for job_id, value in numeric.items():
        assert job(db, job_id)["priority"] == value

    burst("record", concurrency=1)
    assert {job(db, i)["state"] for i in ids} == {"succeeded"}
    ran = [e["job"] for e in db.effects.find().sort("start", 1)]
    expected = sorted(numeric, key=lambda job_id: -numeric[job_id])
    assert [numeric[j] for j in ran] == [numeric[j] for j in expected]
    assert ran == expected


def test_a_job_scheduled_in_2_seconds_does_not_start_before_its_time(
    client: Client, db: Any, burst: Any
) -> None:
    before = datetime.now(UTC)
    job_id = client.schedule("in 2 seconds", "record", {"sleep": 0})
    queued = job(db, job_id)
    assert queued["state"] == "queued"
    due = queued["nextRunAt"]
    assert 1.9 <= (due - before).total_seconds() <= 3

    burst("record", until=lambda: finished(db, job_id))
    done = job(db, job_id)
    assert done["state"] == "succeeded"
    assert done["lastRunAt"] >= due
    (effect,) = db.effects.find({"job": job_id})
    assert effect["start"] >= due.timestamp()
    assert effect["start"] < due.timestamp() + 10  # and it did run once due


# -- async handlers and concurrency ----------------------------------------


def test_async_handlers_run_on_the_loop_within_their_task_cap(
    client: Client, db: Any, burst: Any
) -> None:
    ids = client.enqueue_many("async_capped", [{"sleep": 0.5}] * 8)
    burst("async_capped", concurrency=8)
    for job_id in ids:
        done = job(db, job_id)
        assert done["state"] == "succeeded", done
        assert done["result"] == {"async": True}
    effects = list(db.effects.find())
    assert sorted(e["job"] for e in effects) == sorted(ids)
    assert {e["thread"] for e in effects} == {"MainThread"}  # ran on the loop, not in a thread
    # async_capped.json: concurrency 2 (the worker's own limit is 8).
    assert max_overlap((e["start"], e["end"]) for e in effects) == 2


def test_worker_concurrency_limits_jobs_at_once(client: Client, db: Any, burst: Any) -> None:
    ids = client.enqueue_many("record", [{"sleep": 0.5}] * 9)  # record's own cap is 4
    burst("record", concurrency=3)
    assert {job(db, i)["state"] for i in ids} == {"succeeded"}
    effects = list(db.effects.find())
    assert len(effects) == 9
    assert max_overlap((e["start"], e["end"]) for e in effects) == 3


def test_a_lease_round_never_takes_back_a_claim_the_worker_holds(mongo_url: str, db: Any) -> None:
    """A read that saw a lease before its renewal landed (a busy server) must not free a
    job its worker is running: only the claims of others are taken back."""
    past = datetime.now(UTC) - timedelta(seconds=5)
    running = {"state": "running", "name": "record", "lockExpiresAt": past, "priority": 0}
    mine = db.jobs.insert_one({**running, "lockToken": "w1:n:1"}).inserted_id
    lost = db.jobs.insert_one({**running, "lockToken": "w2:n:1"}).inserted_id

    async def recover() -> list[Any]:
        mongo = async_client(mongo_url)
        try:
            db = mongo.get_default_database()
            store = WorkerStore(db.jobs, db.workflows)
            return await store.recover_expired(datetime.now(UTC), held=["w1:n:1"])
        finally:
            await mongo.close()

    assert asyncio.run(recover()) == [lost]
    assert db.jobs.find_one({"_id": lost})["state"] == "queued"
    assert db.jobs.find_one({"_id": mine})["state"] == "running"
