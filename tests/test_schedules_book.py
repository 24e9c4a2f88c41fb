"""Recurring schedules without a manager: cron parsing, validation, the book, fires, the CLI.

Everything here edits or reads the schedule store and the jobs collection
directly (``ScheduleBook``, ``Firing``, ``fire``); no manager runs the
schedules, so nothing fires on its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from bson import ObjectId
from click.testing import CliRunner, Result
from pymongo import MongoClient
from support.logs import one_error_line

from qworker import Client
from qworker.cli.manager import main
from qworker.errors import (
    InvalidScheduleError,
    ScheduleExists,
    ScheduleNotFound,
    TaskDefinitionError,
)
from qworker.manager.scheduler import Firing, fire
from qworker.mongo import Names, sync_client
from qworker.protocol import JOB_QUEUED, SCHEDULES_CHANGED
from qworker.schedules import Schedule, cron_trigger, make_schedule
from qworker.tasks import check_metadata

# A Sunday, in winter (Paris is UTC+1).
SUNDAY = datetime(2026, 11, 22, tzinfo=UTC)
UNREACHABLE = "mongodb://127.0.0.1:1/x"
SECOND = timedelta(seconds=1)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# -- 1. cron parsing (pure) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "zone", "first", "second"),
    [
        ("0 9 * * 1", "UTC", "2026-11-23T09:00", "2026-11-30T09:00"),  # Monday
        ("0 9 * * 0", "UTC", "2026-11-22T09:00", "2026-11-29T09:00"),  # crontab's 0: Sunday
        ("0 9 * * 7", "UTC", "2026-11-22T09:00", "2026-11-29T09:00"),  # and so is 7
        ("0 9 * * sun", "UTC", "2026-11-22T09:00", "2026-11-29T09:00"),
        ("0 9 * * 1-5", "UTC", "2026-11-23T09:00", "2026-11-24T09:00"),  # weekdays
        ("0 9 * * 5-7", "UTC", "2026-11-22T09:00", "2026-11-27T09:00"),  # Fri, Sat, Sun
        ("0 9 * * 6,0", "UTC", "2026-11-22T09:00", "2026-11-28T09:00"),
        ("*/15 * * * *", "UTC", "2026-11-22T00:00", "2026-11-22T00:15"),
        ("*/2 * * * * *", "UTC", "2026-11-22T00:00:00", "2026-11-22T00:00:02"),  # seconds
        ("30 0 * * * *", "UTC", "2026-11-22T00:00:30", "2026-11-22T01:00:30"),
        ("@daily", "UTC", "2026-11-22T00:00", "2026-11-23T00:00"),
        ("@hourly", "UTC", "2026-11-22T00:00", "2026-11-22T01:00"),
        ("@weekly", "UTC", "2026-11-22T00:00", "2026-11-29T00:00"),  # Sundays
        ("@MONTHLY", "UTC", "2026-12-01T00:00", "2027-01-01T00:00"),
        ("0 9 * * *", "Europe/Paris", "2026-11-22T08:00", "2026-11-23T08:00"),  # UTC+1
        ("0 9 * * *", "America/New_York", "2026-11-22T14:00", "2026-11-23T14:00"),  # UTC-5
    ],
)
def test_cron_next_fire_times(expr: str, zone: str, first: str, second: str) -> None:
    trigger = cron_trigger(expr, ZoneInfo(zone))
    fire_time = trigger.get_next_fire_time(None, SUNDAY)
    assert fire_time is not None
    assert fire_time.astimezone(UTC) == at(first)
    following = trigger.get_next_fire_time(fire_time, fire_time + SECOND)
    assert following is not None and following.astimezone(UTC) == at(second)


def test_cron_fields_are_read_in_the_time_zone_across_daylight_saving() -> None:
    """09:00 in Paris is 08:00Z in winter and 07:00Z in summer (DST began 2027-03-28)."""
    trigger = cron_trigger("0 9 * * *", ZoneInfo("Europe/Paris"))
    summer = trigger.get_next_fire_time(None, at("2027-03-28T00:00"))
    assert summer is not None and summer.astimezone(UTC) == at("2027-03-28T07:00")


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("* * *", "expected 5 fields"),
        ("* * * * * * *", "got 7"),
        ("61 * * * *", "61"),
        ("0 25 * * *", "25"),
        ("0 9 32 * *", "32"),
        ("0 9 * 13 *", "13"),
        ("0 9 * * 8", "'8' is not a day"),
        ("0 9 * * 5-1", "runs backwards"),
        ("0 9 * * 1-", "cannot read"),
        ("0 9 * * */0", "a step must be >= 1"),
        ("@sometimes", "@sometimes"),
        ("garbage", "expected 5 fields"),
        ("", "got 0"),
        ("a b c d e", "cron weekday field"),
        ("0 9 * * monkey", "not a day"),
    ],
)
def test_bad_cron_is_refused(expr: str, message: str) -> None:
    with pytest.raises(InvalidScheduleError, match="cron") as caught:
        cron_trigger(expr, ZoneInfo("UTC"))
    assert message in str(caught.value)


# -- 2. make_schedule validation -----------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"every": "1 minute", "cron": "* * * * *"}, "one of every or cron"),
        ({}, "one of every or cron"),
        ({"every": "0.5 seconds"}, "between 1 second and 10 years"),
        ({"every": 0}, "between 1 second and 10 years"),
        ({"every": "soon"}, "'soon' is not a duration"),
        ({"every": "5 parsecs"}, "unknown time unit 'parsecs'"),
        ({"every": -5}, "cannot be negative"),
        ({"every": True}, "not a duration"),
        ({"every": float("inf")}, "finite"),
        ({"cron": "0 9 * * *", "timezone": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
        ({"cron": "0 9 * * 8"}, "'8' is not a day"),
        ({"every": "1m", "misfire": "later"}, "misfire must be one of coalesce, skip"),
        ({"every": "1m", "grace": "a while"}, "grace"),
        ({"every": "1m", "start_at": "blah blah"}, "cannot understand when='blah blah'"),
        ({"every": "1m", "task": "Not Valid"}, "'Not Valid' is not a valid task id"),
        ({"every": "1m", "task": ""}, "not a valid task id"),
        ({"every": "1m", "data": {1, 2}}, "job data is not JSON-serialisable"),
        ({"every": "1m", "data": {"when": datetime.now(UTC)}}, "job data is not JSON"),
        ({"every": "1m", "priority": "urgent"}, "priority 'urgent' is not a number"),
        ({"every": "1m", "priority": True}, "priority must be a number"),
        ({"every": "1m", "max_attempts": 0}, "max_attempts must be a whole number"),
        ({"every": "1m", "timeout": -1}, "timeout must be a number of seconds"),
        ({"every": "1m", "description": 5}, "description must be a string"),
        ({"every": "1m", "name": "has space"}, "schedule name 'has space'"),
        ({"every": "1m", "name": ""}, "schedule name ''"),
        ({"every": "1m", "name": "x" * 300}, "1-200 letters"),
        ({"every": "1m", "name": "-dash-first"}, "starting with a letter or digit"),
        ({"every": "1m", "name": 5}, "schedule name 5"),
    ],
)
def test_make_schedule_refuses(kwargs: dict[str, Any], message: str) -> None:
    args = {"name": "report", "task": "noop", **kwargs}
    with pytest.raises(InvalidScheduleError) as caught:
        make_schedule(**args)
    assert message in str(caught.value)


@pytest.mark.parametrize("kwargs", [{"every": [1]}, {"every": "1m", "grace": {}}])
def test_make_schedule_refuses_durations_of_the_wrong_type(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidScheduleError):
        make_schedule("report", "noop", **kwargs)


def test_make_schedule_accepts_and_normalises() -> None:
    schedule = make_schedule(
        "reports/daily:eu@v1",
        "noop",
        {"n": 1},
        every="1h 30m",
        timezone="Europe/Paris",
        misfire="skip",
        grace="2 minutes",
        unique=True,
        priority="high",
        max_attempts=3,
        timeout=5,
        description="daily report",
    )
    assert schedule.every == 5400.0 and schedule.cron is None
    assert schedule.grace == 120.0 and schedule.misfire == "skip" and schedule.unique is True
    assert schedule.describe() == "every 1h30m"
    assert schedule.timezone == "Europe/Paris" and schedule.origin == "client"
    assert make_schedule("n", "noop", every=1).every == 1.0  # the minimum
    spaced = make_schedule("n", "noop", cron="  0   9 * * 1-5 ", timezone=None)
    assert spaced.cron == "0 9 * * 1-5" and spaced.timezone == "UTC"
    assert spaced.describe() == "cron 0 9 * * 1-5 (UTC)"
    assert Schedule.from_stored(schedule.stored()) == schedule


def test_make_schedule_start_at() -> None:
    before = datetime.now(UTC)
    now = make_schedule("a", "noop", every="1 minute", start_at="now").start_at
    assert now is not None and before <= now <= datetime.now(UTC)
    iso = make_schedule("a", "noop", every="1 minute", start_at="2030-01-31T09:00:00Z")
    assert iso.start_at == at("2030-01-31T09:00")
    assert iso.describe() == "every 1m from 2030-01-31T09:00:00+00:00"
    tomorrow = make_schedule("a", "noop", every="1 day", start_at="tomorrow at 9am").start_at
    assert tomorrow is not None and tomorrow > before
    assert (tomorrow.hour, tomorrow.minute) == (9, 0)
    assert tomorrow.date() == (before + timedelta(days=1)).date()


@pytest.mark.parametrize("every", [1e15, "500000 weeks"])
def test_an_interval_too_long_to_schedule_is_refused(client: Client, every: Any) -> None:
    """An interval that takes the next fire past year 9999 is an invalid schedule."""
    with pytest.raises(InvalidScheduleError):
        client.every(every, "noop", name="huge")
    assert client.schedule_list() == []


def test_metadata_unique_false_string_is_not_true() -> None:
    raw = {"schedule": {"cron": "* * * * *", "unique": "false"}}
    try:
        meta = check_metadata(raw, Path("/tasks/nightly.json"), code=False)
    except TaskDefinitionError as exc:
        assert "unique" in str(exc)  # refusing a non-boolean is fine too
        return
    assert meta is not None and meta.schedule is not None
    assert meta.schedule.unique is False


def test_metadata_schedules() -> None:
    """What a task's metadata may say: a cron string, every, or a mapping."""
    path = Path("/tasks/report.json")
    cron = check_metadata({"schedule": "*/15 * * * *"}, path, code=False)
    assert cron is not None and cron.schedule is not None
    assert cron.schedule.name == "task:report" and cron.schedule.task == "report"
    assert cron.schedule.cron == "*/15 * * * *" and cron.schedule.origin == "metadata"
    every = check_metadata({"every": "30 minutes"}, path, code=False)
    assert every is not None and every.schedule is not None and every.schedule.every == 1800
    full = {
        "cron": "0 3 * * *",
        "timezone": "Europe/Paris",
        "misfire": "skip",
        "grace": "5m",
        "unique": True,
        "priority": "high",
        "maxAttempts": 2,
        "timeout": 30,
        "description": "nightly",
        "data": {"k": 1},
    }
    mapped = check_metadata({"schedule": full}, path, code=False)
    assert mapped is not None and mapped.schedule == make_schedule(
        "task:report",
        "report",
        {"k": 1},
        cron="0 3 * * *",
        timezone="Europe/Paris",
        misfire="skip",
        grace=300,
        unique=True,
        priority="high",
        max_attempts=2,
        timeout=30,
        description="nightly",
        origin="metadata",
    )
    none = check_metadata({}, path, code=False)
    assert none is not None and none.schedule is None


# -- 3. the schedule book, through the client ----------------------------------------


def changes(db: Any) -> int:
    return int(db.channel.count_documents({"event": SCHEDULES_CHANGED}))


def test_every_defaults_and_view(client: Client, db: Any) -> None:
    before = datetime.now(UTC)
    view = client.every("30 minutes", "noop", {"a": 1})
    after = datetime.now(UTC)
    assert view["name"] == "noop" and view["task"] == "noop"  # named after the task
    assert view["data"] == {"a": 1} and view["every"] == 1800.0 and view["cron"] is None
    assert view["trigger"] == "every 30m"
    assert view["paused"] is False
    assert view["nextRunAt"].tzinfo is not None
    half_hour = timedelta(minutes=30)
    assert before + half_hour - SECOND <= view["nextRunAt"] <= after + half_hour + SECOND
    assert view["lastJob"] is None and view["lastSuccess"] is None
    assert view["lastFailure"] is None
    assert view["misfire"] == "coalesce" and view["grace"] == 60.0 and view["unique"] is False
    assert view["origin"] == "client"
    assert client.schedule_info("noop") == view
    assert client.schedule_list() == [view]
    # Stored: the schedules collection holds one APScheduler job named after it.
    assert [d["_id"] for d in db.schedules.find()] == ["noop"]
    assert client.schedules.get("noop") == make_schedule("noop", "noop", {"a": 1}, every=1800)


def test_a_second_every_of_the_same_name_replaces_it(client: Client, db: Any) -> None:
    client.every("30 minutes", "noop")
    view = client.every("1 hour", "noop", {"v": 2}, priority="low")
    assert view["trigger"] == "every 1h" and view["data"] == {"v": 2}
    assert [s["name"] for s in client.schedule_list()] == ["noop"]
    assert client.schedule_info("noop")["priority"] == "low"
    assert db.schedules.count_documents({}) == 1

    with pytest.raises(ScheduleExists, match="a schedule named 'noop' exists"):
        client.every("5 minutes", "noop", replace=False)
    assert client.schedule_info("noop")["trigger"] == "every 1h"  # untouched
    with pytest.raises(ScheduleExists):
        client.cron("* * * * *", "record", name="noop", replace=False)

    other = client.every("5 minutes", "noop", name="fast")
    assert other["name"] == "fast" and other["task"] == "noop"
    assert [s["name"] for s in client.schedule_list()] == ["fast", "noop"]  # by name


def paris_3am_after(now: datetime) -> datetime:
    local = now.astimezone(ZoneInfo("Europe/Paris"))
    candidate = local.replace(hour=3, minute=0, second=0, microsecond=0)
    if candidate <= local:
        candidate = (local + timedelta(days=1)).replace(hour=3, minute=0, second=0, microsecond=0)
    return candidate.astimezone(UTC)


def test_cron_in_a_time_zone_pause_resume_remove(client: Client, db: Any) -> None:
    now = datetime.now(UTC)
    view = client.cron("0 3 * * *", "noop", tz="Europe/Paris", name="nightly")
    assert view["trigger"] == "cron 0 3 * * * (Europe/Paris)"
    assert view["cron"] == "0 3 * * *" and view["every"] is None
    assert view["timezone"] == "Europe/Paris"
    expected = paris_3am_after(now)
    assert view["nextRunAt"] == expected
    assert view["nextRunAt"].tzinfo is not None and view["nextRunAt"].utcoffset() == timedelta(0)
    if expected.astimezone(ZoneInfo("Europe/Paris")).utcoffset() == timedelta(hours=1):
        assert (expected.hour, expected.minute) == (2, 0)  # winter: 03:00 in Paris is 02:00Z

    paused = client.pause_schedule("nightly")
    assert paused["paused"] is True and paused["nextRunAt"] is None
    assert client.schedule_info("nightly")["paused"] is True
    assert client.schedule_list()[0]["paused"] is True

    resumed = client.resume_schedule("nightly")
    assert resumed["paused"] is False
    assert resumed["nextRunAt"] == paris_3am_after(datetime.now(UTC))
    assert resumed["nextRunAt"] > datetime.now(UTC)

    client.every("1 minute", "noop", name="other")
    client.remove_schedule("nightly")
    assert [s["name"] for s in client.schedule_list()] == ["other"]
    with pytest.raises(ScheduleNotFound, match="no schedule named 'nightly'"):
        client.schedule_info("nightly")
    assert db.schedules.count_documents({}) == 1


def test_resume_of_an_every_schedule_is_in_the_future(client: Client) -> None:
    client.every("1 hour", "noop", start_at="now")
    client.pause_schedule("noop")
    view = client.resume_schedule("noop")
    assert view["paused"] is False
    assert datetime.now(UTC) < view["nextRunAt"] <= datetime.now(UTC) + timedelta(hours=1)


@pytest.mark.parametrize("action", ["pause", "resume", "remove", "show"])
def test_unknown_names(client: Client, db: Any, action: str) -> None:
    client.every("1 hour", "noop")
    calls = {
        "pause": client.pause_schedule,
        "resume": client.resume_schedule,
        "remove": client.remove_schedule,
        "show": client.schedule_info,
    }
    published = changes(db)
    with pytest.raises(ScheduleNotFound, match="no schedule named 'ghost'"):
        calls[action]("ghost")
    assert changes(db) == published  # nothing changed, nothing announced
    assert [s["name"] for s in client.schedule_list()] == ["noop"]


def test_resume_never_deletes_a_schedule(client: Client) -> None:
    try:
        client.cron("0 9 30 2 *", "noop", name="never")
    except InvalidScheduleError:
        return  # refusing a cron that never fires would be fine
    with contextlib.suppress(InvalidScheduleError):  # so would refusing to resume it
        client.resume_schedule("never")
    assert client.schedule_info("never")["name"] == "never"


def test_every_change_publishes_one_message(client: Client, db: Any) -> None:
    assert changes(db) == 0
    client.every("30 minutes", "noop")
    assert changes(db) == 1
    client.every("1 hour", "noop")  # replaced
    assert changes(db) == 2
    client.cron("0 3 * * *", "noop", tz="Europe/Paris", name="nightly")
    assert changes(db) == 3
    client.pause_schedule("nightly")
    assert changes(db) == 4
    client.resume_schedule("nightly")
    assert changes(db) == 5
    client.remove_schedule("nightly")
    assert changes(db) == 6
    # Reading, and refused changes, publish nothing.
    client.schedule_list()
    client.schedule_info("noop")
    with pytest.raises(ScheduleExists):
        client.every("1 minute", "noop", replace=False)
    with pytest.raises(InvalidScheduleError):
        client.cron("61 * * * *", "noop")
    assert changes(db) == 6
    message = db.channel.find_one({"event": SCHEDULES_CHANGED})
    assert message["message"] == {} and message["ts"] is not None
    assert db.channel.count_documents({"event": {"$ne": SCHEDULES_CHANGED}}) == 0


def test_a_schedule_outlives_its_client(mongo_url: str, client: Client) -> None:
    with Client(mongo_url) as first:
        first.cron("*/5 * * * *", "noop", {"k": "v"}, name="five")
        view = first.schedule_info("five")
    with Client(mongo_url) as second:
        assert second.schedule_list() == [view]
        assert second.schedules.get("five").data == {"k": "v"}
    assert client.schedule_info("five") == view  # another, long-lived client sees it too


@pytest.fixture
def firing(mongo_url: str, client: Client) -> Iterator[Firing]:
    """Where fires go, over a connection of its own (as in the leader manager)."""
    mongo: MongoClient[dict[str, Any]] = sync_client(mongo_url)
    yield Firing(mongo, mongo_url, Names())
    mongo.close()


def test_last_job_success_and_failure(client: Client, db: Any, firing: Firing) -> None:
    client.every("1 hour", "noop", name="hourly")
    schedule = client.schedules.get("hourly")
    times = [at(f"2026-11-22T{hour:02}:00") for hour in range(1, 6)]
    ids: dict[int, ObjectId] = {}
    # Inserted out of order: the view goes by scheduledFor, not by insertion.
    for n in (3, 0, 4, 1, 2):
        assert firing.enqueue(schedule, times[n])
        ids[n] = db.jobs.find_one({"scheduleId": "hourly", "scheduledFor": times[n]})["_id"]
    finished = datetime(2026, 11, 22, 12, tzinfo=UTC)
    outcomes = {0: "succeeded", 1: "failed", 2: "succeeded", 3: "failed", 4: "queued"}
    for n, state in outcomes.items():
        fields: dict[str, Any] = {"state": state}
        if state != "queued":
            fields["lastFinishedAt"] = finished + timedelta(minutes=n)
        if state == "failed":
            fields["failReason"] = f"boom {n}"
        db.jobs.update_one({"_id": ids[n]}, {"$set": fields})
    # Jobs of another schedule, and plain jobs, are not this schedule's.
    other = make_schedule("other", "noop", every=60)
    assert firing.enqueue(other, at("2026-11-23T00:00"))
    db.jobs.update_one({"scheduleId": "other"}, {"$set": {"state": "failed"}})
    client.now("noop")

    view = client.schedule_info("hourly")
    assert view["lastJob"]["_id"] == ids[4] and view["lastJob"]["state"] == "queued"
    assert view["lastJob"]["scheduledFor"] == times[4]
    assert view["lastSuccess"]["_id"] == ids[2]
    assert view["lastSuccess"]["lastFinishedAt"] == finished + timedelta(minutes=2)
    assert view["lastFailure"]["_id"] == ids[3]
    assert view["lastFailure"]["failReason"] == "boom 3"
    assert client.schedule_list()[0]["lastFailure"]["_id"] == ids[3]  # list: the same views

    # A newer success moves lastSuccess and lastJob; lastFailure stays.
    assert firing.enqueue(schedule, times[4] + timedelta(hours=1))
    db.jobs.update_one(
        {"scheduleId": "hourly", "state": "queued", "_id": {"$ne": ids[4]}},
        {"$set": {"state": "succeeded", "lastFinishedAt": finished + timedelta(hours=1)}},
    )
    view = client.schedule_info("hourly")
    assert view["lastJob"]["state"] == "succeeded"
    assert view["lastJob"]["scheduledFor"] == times[4] + timedelta(hours=1)
    assert view["lastSuccess"]["_id"] == view["lastJob"]["_id"]
    assert view["lastFailure"]["_id"] == ids[3]


# -- 4. firing -------------------------------------------------------------------------


def test_a_round_of_fires_is_announced_in_one_message(
    client: Client, db: Any, firing: Firing
) -> None:
    schedules = [make_schedule(f"s{n}", "noop", None, every="1 minute") for n in range(3)]
    fire_time = at("2026-11-22T09:00")
    before = db.channel.count_documents({"event": "job:queued"})
    for schedule in schedules:
        assert firing.enqueue(schedule, fire_time)
    assert db.channel.count_documents({"event": "job:queued"}) == before  # not yet
    firing.announce()
    firing.announce()  # nothing more to say
    messages = list(db.channel.find({"event": "job:queued"}).skip(before))
    assert len(messages) == 1
    announced = {entry["id"] for entry in messages[0]["message"]["jobs"]}
    assert announced == {str(job["_id"]) for job in db.jobs.find({"fireKey": {"$exists": True}})}
    assert len(announced) == 3


def test_a_fire_enqueues_one_job(client: Client, db: Any, firing: Firing) -> None:
    schedule = make_schedule(
        "report",
        "noop",
        {"n": 1},
        every="1 hour",
        priority="high",
        max_attempts=3,
        timeout=5,
        description="hourly report",
    )
    fire_time = at("2026-11-22T09:00")
    assert firing.enqueue(schedule, fire_time) is True
    assert firing.enqueue(schedule, fire_time) is False  # the same fire again
    paris = fire_time.astimezone(ZoneInfo("Europe/Paris"))
    assert firing.enqueue(schedule, paris) is False  # the same instant, written otherwise
    assert db.jobs.count_documents({}) == 1
    job = db.jobs.find_one()
    assert job["name"] == "noop" and job["state"] == "queued"
    assert job["scheduleId"] == "report"
    assert job["scheduledFor"] == fire_time
    assert job["fireKey"] == f"report@{fire_time}"
    assert job["data"] == {"n": 1} and job["priority"] == 10
    assert job["maxAttempts"] == 3 and job["timeout"] == 5.0
    assert job["description"] == "hourly report"
    assert "uniqueKey" not in job
    # Due now (a fire is enqueued when it is due), and announced once the round ends.
    assert job["nextRunAt"] <= datetime.now(UTC)
    firing.announce()
    assert db.channel.count_documents({"event": JOB_QUEUED}) == 1
    # The next fire time is another job.
    assert firing.enqueue(schedule, fire_time + timedelta(hours=1)) is True
    assert db.jobs.count_documents({"scheduleId": "report"}) == 2


def test_a_late_fire_with_coalesce_and_with_skip(client: Client, db: Any, firing: Firing) -> None:
    late = datetime.now(UTC) - timedelta(minutes=5)
    coalesce = make_schedule("coalesce", "noop", every="1 hour", misfire="coalesce", grace=60)
    fire(coalesce.stored(), firing=firing, run_times=[late])
    assert db.jobs.count_documents({"scheduleId": "coalesce"}) == 1

    skip = make_schedule("skip", "noop", every="1 hour", misfire="skip", grace=60)
    fire(skip.stored(), firing=firing, run_times=[late])
    assert db.jobs.count_documents({"scheduleId": "skip"}) == 0

    lenient = make_schedule("lenient", "noop", every="1 hour", misfire="skip", grace="10 minutes")
    fire(lenient.stored(), firing=firing, run_times=[late])
    assert db.jobs.count_documents({"scheduleId": "lenient"}) == 1

    on_time = datetime.now(UTC)
    fire(skip.stored(), firing=firing, run_times=[on_time])
    assert db.jobs.count_documents({"scheduleId": "skip"}) == 1


def test_coalesced_fires_enqueue_the_latest(client: Client, db: Any, firing: Firing) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    missed = [now - timedelta(hours=h) for h in (3, 2, 1)]
    schedule = make_schedule("hourly", "noop", every="1 hour")
    fire(schedule.stored(), firing=firing, run_times=missed)
    jobs = list(db.jobs.find({"scheduleId": "hourly"}))
    assert len(jobs) == 1 and jobs[0]["scheduledFor"] == missed[-1]


def test_fire_needs_its_firing_and_times(firing: Firing) -> None:
    schedule = make_schedule("hourly", "noop", every="1 hour").stored()
    with pytest.raises(ValueError, match="FireExecutor"):
        fire(schedule)
    with pytest.raises(ValueError, match="FireExecutor"):
        fire(schedule, firing=firing, run_times=[])


def test_a_unique_schedule_skips_while_its_last_run_is_active(
    client: Client, db: Any, firing: Firing
) -> None:
    schedule = make_schedule("single", "noop", every="1 hour", unique=True)
    first, second, third = (at(f"2026-11-22T{h:02}:00") for h in (9, 10, 11))
    assert firing.enqueue(schedule, first) is True
    job = db.jobs.find_one({"scheduleId": "single"})
    assert job["uniqueKey"] == "schedule:single"
    assert firing.enqueue(schedule, second) is False  # the first is still queued
    db.jobs.update_one({"_id": job["_id"]}, {"$set": {"state": "running"}})
    assert firing.enqueue(schedule, second) is False  # and then running
    assert db.jobs.count_documents({"scheduleId": "single"}) == 1
    db.jobs.update_one({"_id": job["_id"]}, {"$set": {"state": "succeeded"}})
    assert firing.enqueue(schedule, third) is True
    assert db.jobs.count_documents({"scheduleId": "single"}) == 2
    # Through fire(), the same: a queued run holds the next fire back.
    fire(schedule.stored(), firing=firing, run_times=[datetime.now(UTC)])
    assert db.jobs.count_documents({"scheduleId": "single"}) == 2


# -- 5. the CLI ------------------------------------------------------------------------


def cli(*args: str, mongo: str) -> Result:
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("QWORKER_")}
    return CliRunner().invoke(
        main, ["--mongo", mongo, "schedules", *args], prog_name="qworker-manager", env=env
    )


def ok(result: Result) -> str:
    assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
    assert result.stderr == ""
    return result.stdout


def one_line_error(result: Result, code: int, command: str, *fragments: str) -> str:
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert result.stdout == ""
    return one_error_line(result.stderr, f"qworker-manager schedules {command}", *fragments)


def detail(text: str) -> dict[str, str]:
    """``name:  value`` lines as a mapping."""
    pairs = (line.split(":", 1) for line in text.strip().splitlines())
    return {key.strip(): value.strip() for key, value in pairs}


def test_cli_add_prints_the_schedule(mongo_url: str, client: Client) -> None:
    out = ok(
        cli(
            "add",
            "report",
            "noop",
            "--every",
            "30 minutes",
            "--data",
            '{"x": [1, 2]}',
            "--unique",
            "--priority",
            "high",
            "--max-attempts",
            "2",
            "--description",
            "the report",
            mongo=mongo_url,
        )
    )
    shown = detail(out)
    assert shown["name"] == "report" and shown["task"] == "noop"
    assert shown["trigger"] == "every 30m"
    assert shown["data"] == '{"x": [1, 2]}'
    assert shown["unique"] == "yes" and shown["priority"] == "high"
    assert shown["misfire"] == "coalesce (grace 60s)"
    assert shown["description"] == "the report" and shown["origin"] == "client"
    view = client.schedule_info("report")
    assert shown["next run"] == view["nextRunAt"].strftime("%Y-%m-%d %H:%M:%S")
    assert view["unique"] is True and view["max_attempts"] == 2 and view["data"] == {"x": [1, 2]}

    out = ok(
        cli(
            "add",
            "nightly",
            "noop",
            "--cron",
            "0 3 * * *",
            "--tz",
            "Europe/Paris",
            "--misfire",
            "skip",
            "--grace",
            "5 minutes",
            mongo=mongo_url,
        )
    )
    shown = detail(out)
    assert shown["trigger"] == "cron 0 3 * * * (Europe/Paris)"
    assert shown["misfire"] == "skip (grace 300s)"
    assert "unique" not in shown and "data" not in shown  # empty fields are left out
    expected = paris_3am_after(datetime.now(UTC))
    assert shown["next run"] == expected.strftime("%Y-%m-%d %H:%M:%S")

    as_json = json.loads(
        ok(cli("add", "--json", "hourly", "noop", "--cron", "@hourly", mongo=mongo_url))
    )
    assert as_json["name"] == "hourly" and as_json["trigger"] == "cron @hourly (UTC)"
    assert datetime.fromisoformat(as_json["nextRunAt"]).minute == 0
    assert client.db.channel.count_documents({"event": SCHEDULES_CHANGED}) == 3


def test_cli_list_show_pause_resume_remove(
    mongo_url: str, client: Client, db: Any, firing: Firing
) -> None:
    client.every("30 minutes", "noop", {"a": 1}, name="report")
    client.cron("0 3 * * *", "noop", tz="Europe/Paris", name="nightly")
    fire_time = at("2026-11-22T02:00")
    assert firing.enqueue(client.schedules.get("nightly"), fire_time)
    job = db.jobs.find_one({"scheduleId": "nightly"})
    done = at("2026-11-22T02:00:07")
    db.jobs.update_one(
        {"_id": job["_id"]}, {"$set": {"state": "succeeded", "lastFinishedAt": done}}
    )

    lines = ok(cli("list", mongo=mongo_url)).splitlines()
    assert lines[0].split() == [
        "NAME",
        "TASK",
        "TRIGGER",
        "NEXT",
        "RUN",
        "LAST",
        "JOB",
        "LAST",
        "SUCCESS",
        "LAST",
        "FAILURE",
    ]
    assert set(lines[1]) == {"-", " "}
    assert len(lines) == 4
    nightly, report = lines[2], lines[3]  # by name
    next_run = client.schedule_info("nightly")["nextRunAt"].strftime("%Y-%m-%d %H:%M:%S")
    assert nightly.startswith("nightly  noop  cron 0 3 * * * (Europe/Paris)")
    assert next_run in nightly
    assert "2026-11-22 02:00:00 succeeded" in nightly and "2026-11-22 02:00:07" in nightly
    assert report.startswith("report") and "every 30m" in report

    listed = json.loads(ok(cli("list", "--json", mongo=mongo_url)))
    assert [s["name"] for s in listed] == ["nightly", "report"]
    first = listed[0]
    assert first["task"] == "noop" and first["paused"] is False
    assert first["trigger"] == "cron 0 3 * * * (Europe/Paris)"
    assert first["timezone"] == "Europe/Paris" and first["cron"] == "0 3 * * *"
    assert (
        datetime.fromisoformat(first["nextRunAt"]) == client.schedule_info("nightly")["nextRunAt"]
    )
    assert first["lastJob"]["_id"] == str(job["_id"]) and first["lastJob"]["state"] == "succeeded"
    assert datetime.fromisoformat(first["lastSuccess"]["lastFinishedAt"]) == done
    assert first["lastFailure"] is None
    assert listed[1]["data"] == {"a": 1} and listed[1]["every"] == 1800.0

    shown = detail(ok(cli("show", "nightly", mongo=mongo_url)))
    assert shown["name"] == "nightly" and shown["next run"] == next_run
    assert shown["last job"] == f"{job['_id']} 2026-11-22 02:00:00 succeeded"
    assert shown["last success"] == "2026-11-22 02:00:07"
    shown_json = json.loads(ok(cli("show", "--json", "report", mongo=mongo_url)))
    assert shown_json["name"] == "report" and shown_json["lastJob"] is None

    assert ok(cli("pause", "nightly", mongo=mongo_url)) == "nightly paused\n"
    assert client.schedule_info("nightly")["paused"] is True
    row = next(r for r in ok(cli("list", mongo=mongo_url)).splitlines() if r.startswith("nightly"))
    assert row.split("(Europe/Paris)")[1].split()[0] == "paused"
    assert detail(ok(cli("show", "nightly", mongo=mongo_url)))["next run"] == "paused"

    out = ok(cli("resume", "nightly", mongo=mongo_url))
    assert out.startswith("nightly resumed; next run ")
    resumed = datetime.fromisoformat(out.strip().rsplit(" ", 1)[1])
    assert resumed == client.schedule_info("nightly")["nextRunAt"] > datetime.now(UTC)

    assert ok(cli("remove", "report", mongo=mongo_url)) == "report removed\n"
    assert [s["name"] for s in client.schedule_list()] == ["nightly"]
    assert db.jobs.count_documents({"scheduleId": "nightly"}) == 1  # its jobs stay
    assert db.channel.count_documents({"event": SCHEDULES_CHANGED}) == 2 + 3


def test_cli_errors(mongo_url: str, client: Client) -> None:
    client.every("1 hour", "noop", name="report")
    one_line_error(
        cli("add", "report", "noop", "--every", "5m", "--no-replace", mongo=mongo_url),
        1,
        "add",
        "a schedule named 'report' exists",
    )
    assert client.schedule_info("report")["trigger"] == "every 1h"
    for name in ("show", "remove", "pause", "resume"):
        one_line_error(cli(name, "ghost", mongo=mongo_url), 1, name, "no schedule named 'ghost'")
    assert [s["name"] for s in client.schedule_list()] == ["report"]
    assert client.db.channel.count_documents({"event": SCHEDULES_CHANGED}) == 1


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--cron", "61 * * * *"], ["cron '61 * * * *'", "59"]),
        (["--cron", "* * *"], ["expected 5 fields"]),
        (["--cron", "* * * * *", "--every", "1m"], ["one of every or cron"]),
        ([], ["one of every or cron"]),
        (["--every", "0.1s"], ["between 1 second and 10 years"]),
        (["--every", "often"], ["'often' is not a duration"]),
        (["--cron", "0 3 * * *", "--tz", "Nowhere/Land"], ["unknown time zone 'Nowhere/Land'"]),
        (["--every", "1m", "--priority", "urgent"], ["priority 'urgent'"]),
        (["--every", "1m", "--start-at", "blah blah"], ["cannot understand"]),
    ],
)
def test_cli_invalid_schedules_exit_2_before_connecting(
    args: list[str], fragments: list[str]
) -> None:
    started = time.monotonic()
    result = cli("add", "report", "noop", *args, mongo=UNREACHABLE)
    one_line_error(result, 2, "add", *fragments)
    assert time.monotonic() - started < 5, "did it try to reach MongoDB?"


def test_cli_bad_data_is_refused_before_connecting() -> None:
    started = time.monotonic()
    result = cli("add", "report", "noop", "--every", "1m", "--data", "{nope", mongo=UNREACHABLE)
    assert result.exit_code == 2 and result.stdout == ""
    assert "Invalid value for '--data': not valid JSON" in result.stderr
    assert "line 1, column 2" in result.stderr
    assert "Traceback" not in result.output
    assert time.monotonic() - started < 5, "did it try to reach MongoDB?"


def test_cli_bad_name_is_refused(mongo_url: str, client: Client) -> None:
    one_line_error(
        cli("add", "has space", "noop", "--every", "1m", mongo=mongo_url),
        2,
        "add",
        "schedule name 'has space'",
    )
    one_line_error(
        cli("add", "report", "Not-A-Task", "--every", "1m", mongo=mongo_url),
        2,
        "add",
        "'Not-A-Task' is not a valid task id",
    )
    assert client.schedule_list() == []
