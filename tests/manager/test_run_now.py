"""A schedule's "run now": one job as its trigger would fire it, through ``Client``,
``AsyncClient`` and ``POST /api/schedules/{name}/run``; its overlap policy and
pauseOnFailure with a real leader manager and real worker processes.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
import pytest
from bson import ObjectId
from support.jobs import wait_finished
from support.logs import wait_leading
from support.waits import wait_for

from qworker import AsyncClient, Client
from qworker.errors import ScheduleBusy, ScheduleNotFound
from qworker.manager.scheduler import Firing
from qworker.when import utcnow

SCRIPT = {"X-Qworker-Request": "1"}
MS = timedelta(milliseconds=1)  # times are stored to the millisecond


def job(db: Any, job_id: Any) -> dict[str, Any]:
    return db.jobs.find_one({"_id": ObjectId(str(job_id))})  # type: ignore[no-any-return]


def test_run_now_makes_the_job_a_fire_would(client: Client, db: Any) -> None:
    client.every(
        "1 hour",
        "noop",
        {"report": "daily"},
        name="reports/daily",
        priority="high",
        max_attempts=3,
        timeout=30,
        description="the daily report",
    )
    next_fire = client.schedule_info("reports/daily")["nextRunAt"]
    before = utcnow()
    ran = client.run_schedule_now("reports/daily")
    assert ran["schedule"] == "reports/daily" and ran["outcome"] == "queued"
    doc = job(db, ran["jobId"])
    assert doc["name"] == "noop" and doc["data"] == {"report": "daily"}
    assert (doc["priority"], doc["maxAttempts"], doc["timeout"]) == (10, 3, 30.0)
    assert doc["description"] == "the daily report" and doc["state"] == "queued"
    assert doc["scheduleId"] == "reports/daily" and doc["runNow"] is True
    assert before - MS <= doc["scheduledFor"] <= utcnow() and "uniqueKey" not in doc
    assert doc["fireKey"] == ran["fireKey"]
    assert ran["fireKey"].startswith("reports/daily@") and " run-now " in ran["fireKey"]
    info = client.schedule_info("reports/daily")
    assert info["nextRunAt"] == next_fire  # the trigger did not move
    assert info["lastJob"]["_id"] == doc["_id"]  # the schedule's last job from now on
    again = client.run_schedule_now("reports/daily")  # allow: as many as asked
    assert again["jobId"] != ran["jobId"] and again["fireKey"] != ran["fireKey"]


def test_a_scheduled_fire_at_the_same_instant_is_a_fire_of_its_own(
    client: Client, db: Any, mongo_url: str
) -> None:
    client.every("1 hour", "noop", name="hourly")
    ran = client.run_schedule_now("hourly")
    at = job(db, ran["jobId"])["scheduledFor"]
    firing = Firing(client.db.client, mongo_url, client.names)
    assert firing.enqueue(client.schedules.get("hourly"), at)  # the same time, its own key
    assert db.jobs.count_documents({"scheduleId": "hourly", "scheduledFor": at}) == 2


def test_overlap_skip_refuses_a_run_while_the_last_one_is_active(client: Client, db: Any) -> None:
    client.every("1 hour", "noop", name="once", overlap="skip")
    first = client.run_schedule_now("once")
    assert job(db, first["jobId"])["uniqueKey"] == "schedule:once"
    with pytest.raises(ScheduleBusy, match="still queued or running"):
        client.run_schedule_now("once")
    client.cancel(str(first["jobId"]))
    assert client.run_schedule_now("once")["outcome"] == "queued"


def test_a_paused_schedule_runs_now_and_stays_paused(client: Client) -> None:
    client.every("1 hour", "noop", name="hourly")
    client.pause_schedule("hourly")
    assert client.run_schedule_now("hourly")["outcome"] == "queued"
    assert client.schedule_info("hourly")["paused"] is True
    with pytest.raises(ScheduleNotFound):
        client.run_schedule_now("nothing")


def test_buffer_one_keeps_one_run_until_the_last_ends(
    client: Client, db: Any, spawn_manager: Any, spawn_worker: Any
) -> None:
    """The leader releases the buffered run once the running one ends."""
    manager = spawn_manager("m1")
    wait_leading(manager)
    base = manager.api_url()
    client.every(
        "1 hour", "dash_slow", {"steps": 4, "delay": 0.5}, name="slow", overlap="buffer-one"
    )
    spawn_worker("dash_slow")
    first = httpx.post(f"{base}/api/schedules/slow/run", headers=SCRIPT, timeout=30).json()
    assert first["outcome"] == "queued"
    wait_for(lambda: job(db, first["jobId"])["state"] == "running", 30, "the first run")
    second = httpx.post(f"{base}/api/schedules/slow/run", headers=SCRIPT, timeout=30).json()
    assert second["outcome"] == "buffered" and job(db, second["jobId"])["state"] == "waiting"
    third = httpx.post(f"{base}/api/schedules/slow/run", headers=SCRIPT, timeout=30)
    assert third.status_code == 409 and "buffered already" in third.json()["error"]
    assert client.schedule_info("slow")["bufferedFire"] is not None
    done = wait_finished(db, str(first["jobId"]))
    after = wait_finished(db, str(second["jobId"]))
    assert done["state"] == after["state"] == "succeeded"
    assert after["lastRunAt"] >= done["lastFinishedAt"]  # one after the other
    assert after["releasedAt"] - done["lastFinishedAt"] < timedelta(seconds=5)
    missing = httpx.post(f"{base}/api/schedules/nothing/run", headers=SCRIPT, timeout=30)
    assert missing.status_code == 404


def test_a_failed_run_counts_for_pause_on_failure_as_a_fire_would(
    client: Client, db: Any, mongo_url: str, spawn_worker: Any
) -> None:
    """A run's job that fails for good is the schedule's last failure, and the next fire
    (here made as the leader makes it) is skipped, the schedule paused for it."""
    client.every("1 hour", "dash_fail", {"why": "run now"}, name="fragile", pause_on_failure=True)
    spawn_worker("dash_fail")
    ran = client.run_schedule_now("fragile")
    assert wait_finished(db, str(ran["jobId"]))["state"] == "failed"
    assert client.schedule_info("fragile")["lastFailure"]["_id"] == ran["jobId"]
    firing = Firing(client.db.client, mongo_url, client.names)
    firing.book = client.schedules
    schedule = client.schedules.get("fragile")
    assert not firing.enqueue(schedule, utcnow() + timedelta(hours=1))
    firing.apply_pauses()
    info = client.schedule_info("fragile")
    assert info["paused"] is True and "run now" in info["pauseReason"]
    client.resume_schedule("fragile")  # a resume forgives it, as any fire's failure
    assert firing.enqueue(schedule, utcnow() + timedelta(hours=2))


def test_the_async_client_runs_a_schedule_now(client: Client, db: Any, mongo_url: str) -> None:
    client.every("1 hour", "noop", name="hourly")

    async def run_it() -> dict[str, Any]:
        async with AsyncClient(mongo_url) as aclient:
            return await aclient.run_schedule_now("hourly")

    ran = asyncio.run(run_it())
    assert job(db, ran["jobId"])["scheduleId"] == "hourly"
