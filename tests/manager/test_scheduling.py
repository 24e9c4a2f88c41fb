"""Recurring schedules run by real ``qworker-manager`` processes.

Fires are counted as the jobs they insert: one per fire time, never two,
across restarts, failovers and two schedulers running at once.
"""

from __future__ import annotations

import shutil
import time
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from support.logs import log_events, wait_accepted, wait_leading, wait_logged
from support.processes import LEASE, TASKS, ManagerProcess, managed
from support.server import Server
from support.waits import wait_for

from qworker import Client
from qworker.manager.scheduler import Scheduler
from qworker.mongo import Names, sync_client

SECOND = timedelta(seconds=1)


def fires(db: Any, name: str) -> list[dict[str, Any]]:
    """The jobs a schedule inserted, by fire time; fails if a fire time has two."""
    jobs = list(db.jobs.find({"scheduleId": name}).sort("scheduledFor", 1))
    times = [job["scheduledFor"] for job in jobs]
    assert len(set(times)) == len(times), f"a fire enqueued twice: {times}"
    assert len({job["fireKey"] for job in jobs}) == len(jobs)
    return jobs


def gaps(jobs: list[dict[str, Any]]) -> list[timedelta]:
    return [b["scheduledFor"] - a["scheduledFor"] for a, b in pairwise(jobs)]


def wait_fires(db: Any, name: str, count: int, timeout: float = 30) -> list[dict[str, Any]]:
    wait_for(lambda: len(fires(db, name)) >= count, timeout, f"{count} fires of {name}")
    return fires(db, name)


def logged_at(manager: ManagerProcess, event: str) -> datetime:
    """When the manager first logged ``event``."""
    entry = next(e for e in log_events(manager.output()) if e["event"] == event)
    return datetime.fromisoformat(entry["timestamp"])


def trigger_start(client: Client, name: str) -> datetime:
    """When an interval schedule's trigger counts from (set when it is installed)."""
    start: datetime = client.schedules.job(name).trigger.start_date
    return start


def test_an_interval_of_one_second_fires_once_a_second(
    client: Client, db: Any, spawn_manager: Any
) -> None:
    wait_leading(spawn_manager("m1"))
    client.every(1, "noop", {"n": 1}, name="tick")
    jobs = wait_fires(db, "tick", 5)
    assert gaps(jobs) == [SECOND] * (len(jobs) - 1)
    assert all(job["data"] == {"n": 1} and job["state"] == "queued" for job in jobs)
    # Each fire is enqueued when it is due, not early.
    assert all(job["createdAt"] >= job["scheduledFor"] for job in jobs)
    assert client.schedule_info("tick")["lastJob"]["scheduledFor"] >= jobs[-1]["scheduledFor"]


def test_a_cron_schedule_with_a_seconds_field(client: Client, db: Any, spawn_manager: Any) -> None:
    wait_leading(spawn_manager("m1"))
    client.cron("*/2 * * * * *", "noop", name="even")
    jobs = wait_fires(db, "even", 3)
    assert gaps(jobs) == [2 * SECOND] * (len(jobs) - 1)
    assert all(job["scheduledFor"].second % 2 == 0 for job in jobs)
    assert all(job["scheduledFor"].microsecond == 0 for job in jobs)


def test_scheduled_jobs_run_on_a_worker_and_the_list_shows_the_last_success(
    client: Client, db: Any, spawn_manager: Any, spawn_worker: Any
) -> None:
    wait_leading(spawn_manager("m1"))
    spawn_worker("noop")
    client.every(1, "noop", name="tick")
    wait_for(
        lambda: client.schedule_info("tick")["lastSuccess"] is not None, 30, "a scheduled success"
    )
    [view] = client.schedule_list()
    assert view["name"] == "tick" and view["trigger"] == "every 1s"
    assert db.jobs.find_one({"_id": view["lastSuccess"]["_id"]})["state"] == "succeeded"
    assert view["nextRunAt"] > view["lastSuccess"]["scheduledFor"]


def test_a_schedule_survives_a_manager_restart(client: Client, db: Any, spawn_manager: Any) -> None:
    first = spawn_manager("m1")
    wait_leading(first)
    client.every(1, "noop", name="tick")
    wait_fires(db, "tick", 2)
    assert first.stop() == 0
    stopped = len(fires(db, "tick"))

    second = spawn_manager("m1")
    wait_leading(second)
    jobs = wait_fires(db, "tick", stopped + 3)
    assert [s["name"] for s in client.schedule_list()] == ["tick"]
    assert "schedule fired" in second.output()
    # Fires missed while no manager ran came back as one (coalesced), then every second.
    assert all(gap >= SECOND for gap in gaps(jobs))


def test_fires_missed_while_no_manager_ran_are_coalesced_into_one(
    client: Client, db: Any, spawn_manager: Any
) -> None:
    added = client.every(1, "noop", name="tick", start_at="now")
    time.sleep(3.5)  # at least three fire times pass with no manager
    manager = spawn_manager("m1")
    wait_leading(manager)
    jobs = wait_fires(db, "tick", 3)
    running = logged_at(manager, "running the schedules")
    missed = [job for job in jobs if job["scheduledFor"] <= running]
    assert len(missed) == 1, [job["scheduledFor"] for job in jobs]
    # Fire times passed at +0, +1 and +2 s (at least): the one job is the latest.
    assert missed[0]["scheduledFor"] - added["nextRunAt"] >= 2 * SECOND
    assert gaps(jobs) == [SECOND] * (len(jobs) - 1)


def test_a_skip_schedule_drops_a_fire_later_than_its_grace(
    client: Client, db: Any, spawn_manager: Any
) -> None:
    added = client.every(60, "noop", name="tick", start_at="now", misfire="skip", grace=0.5)
    time.sleep(2)  # its first fire passes while no manager runs
    manager = spawn_manager("m1")
    wait_leading(manager)
    wait_logged(manager, "missed fire skipped", 30)
    assert fires(db, "tick") == []
    assert client.schedule_info("tick")["nextRunAt"] == added["nextRunAt"] + 60 * SECOND


def test_two_managers_through_a_failover_never_enqueue_a_fire_twice(
    client: Client, db: Any, spawn_manager: Any
) -> None:
    leader = spawn_manager("m1")
    wait_leading(leader)
    standby = spawn_manager("m2")
    wait_logged(standby, "manager started", 30)
    client.every(1, "noop", name="tick")
    wait_fires(db, "tick", 3)
    leader.kill()
    wait_leading(standby, timeout=LEASE + 10)
    before = len(fires(db, "tick"))
    jobs = wait_fires(db, "tick", before + 3)
    assert "schedule fired" in standby.output()
    # The fires missed during the takeover are one coalesced fire, then every second.
    assert all(gap >= SECOND for gap in gaps(jobs))
    assert sum(gap > SECOND for gap in gaps(jobs)) <= 1


def test_two_schedulers_running_at_once_insert_each_fire_once(
    client: Client, db: Any, mongo_url: str
) -> None:
    """Two leaders at once (a split brain): the fire key still lets one insert win."""
    client.every(1, "noop", name="tick", start_at="now")
    schedulers = [Scheduler(mongo_url, Names()) for _ in range(2)]
    for scheduler in schedulers:
        scheduler.start()
    try:
        jobs = wait_fires(db, "tick", 5)
    finally:
        for scheduler in schedulers:
            scheduler.stop()
    assert gaps(jobs) == [SECOND] * (len(jobs) - 1)


def test_a_tasks_metadata_schedule_is_installed_when_a_worker_defines_it(
    client: Client,
    db: Any,
    spawn_manager: Any,
    spawn_worker: Any,
    mongo_url: str,
    tmp_path: Path,
) -> None:
    folder = tmp_path / "tasks"
    folder.mkdir()
    for suffix in (".json", ".py"):
        shutil.copy(TASKS / f"ticker{suffix}", folder)
    wait_leading(spawn_manager("m1"))
    worker = managed(spawn_worker, mongo_url, "ticker", worker_id="w1", paths=[folder])
    wait_accepted(worker)
    wait_for(
        lambda: db.jobs.count_documents({"scheduleId": "task:ticker", "state": "succeeded"}) >= 2,
        30,
        "the ticker's scheduled jobs to run",
    )
    [view] = client.schedule_list()
    assert view["name"] == "task:ticker" and view["origin"] == "metadata"
    assert view["trigger"] == "every 1s"

    # A worker restart with the same metadata leaves the schedule as it is
    # (reinstalling it would restart its interval from now).
    worker.stop()
    installed = trigger_start(client, "task:ticker")
    defined = db.tasks.find_one({"_id": "ticker"})["definedAt"]
    again = managed(spawn_worker, mongo_url, "ticker", worker_id="w1", paths=[folder])
    wait_accepted(again)
    wait_for(lambda: db.tasks.find_one({"_id": "ticker"})["definedAt"] > defined, 10, "defined")
    time.sleep(1)  # the install follows the definition
    assert trigger_start(client, "task:ticker") == installed
    again.stop()

    # Without the schedule in its metadata, the next definition removes it.
    (folder / "ticker.json").write_text('{"description": "no longer scheduled"}')
    last = managed(spawn_worker, mongo_url, "ticker", worker_id="w1", paths=[folder])
    wait_accepted(last)
    wait_for(lambda: client.schedule_list() == [], 10, "the metadata schedule to be removed")


def test_the_scheduler_store_is_apschedulers(client: Client, mongo_url: str) -> None:
    """Schedules live as APScheduler jobs in the 'schedules' collection."""
    client.cron("0 3 * * *", "noop", name="nightly")
    mongo = sync_client(mongo_url)
    try:
        doc = mongo.get_default_database()["schedules"].find_one({"_id": "nightly"})
    finally:
        mongo.close()
    assert doc is not None and isinstance(doc["next_run_time"], float)
    assert isinstance(doc["job_state"], bytes)


def test_schedules_keep_firing_after_the_mongodb_server_restarts(
    client: Client, db: Any, mongo_server: Server, spawn_manager: Any
) -> None:
    if not mongo_server.managed:
        pytest.skip("QWORKER_TEST_MONGO_URL names an outside server: this test cannot restart it")
    manager = spawn_manager("m1")
    wait_leading(manager)
    client.every(1, "noop", name="tick")
    wait_fires(db, "tick", 2)
    try:
        mongo_server.stop()
        time.sleep(3)  # fires fall due while the server is down
    finally:
        mongo_server.start()
    restarted = datetime.now(UTC)
    wait_for(
        lambda: any(job["scheduledFor"] > restarted + SECOND for job in fires(db, "tick")),
        30,
        "fires after the restart",
    )
    jobs = fires(db, "tick")  # also: no fire time twice
    assert all(gap >= SECOND for gap in gaps(jobs))
    assert manager.process.poll() is None
