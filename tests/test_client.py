"""The client library: bad input stores nothing; the good paths store what was asked.

Also unit tests of the parsing it relies on (``when``, durations, priorities)
and of the worker's candidate ordering.
"""

from __future__ import annotations

import math
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId
from pymongo import MongoClient
from support.commands import CommandCounter

from qworker import Client, InvalidJobError, JobNotFound, JobStateError
from qworker.model import PRIORITY_NAMES, parse_priority
from qworker.when import parse_duration, parse_when, utcnow
from qworker.worker.candidates import Candidates, Pick

NOW = datetime(2030, 1, 31, 9, 0, tzinfo=UTC)
# MongoDB stores milliseconds.
MS = timedelta(milliseconds=1)


def jobs_count(db: Any) -> int:
    return int(db.jobs.count_documents({}))


@pytest.fixture
def client(mongo_url: str) -> Iterator[Client]:
    """A client that always announces its jobs on the channel, as where the server has
    no change streams: the wake-ups these tests read."""
    with Client(mongo_url, wakeups="channel") as made:
        yield made


def hints(client: Client, db: Any) -> list[dict[str, Any]]:
    """The job ids announced to workers on the channel, once the client's wake-ups are out."""
    assert client.flush()
    return [j for m in db.channel.find({"event": "job:queued"}) for j in m["message"]["jobs"]]


class Unserialisable:
    pass


# -- bad input stores nothing --------------------------------------------------

BAD_CALLS: list[tuple[str, dict[str, Any], str]] = [
    # (task, keyword arguments to Client.schedule, fragment of the message)
    ("t", {"data": {1, 2}}, "job data is not JSON-serialisable"),
    ("t", {"data": {"x": Unserialisable()}}, "job data is not JSON-serialisable"),
    ("t", {"data": float("nan")}, "job data is not JSON-serialisable"),
    ("t", {"data": {"ratio": math.inf}}, "job data is not JSON-serialisable"),
    ("t", {"data": [datetime.now(UTC)]}, "job data is not JSON-serialisable"),
    ("t", {"data": b"bytes"}, "job data is not JSON-serialisable"),
    ("t", {"data": {"big": 2**70}}, "job data cannot be stored in MongoDB"),
    ("Hello", {}, "is not a valid task id"),
    ("", {}, "is not a valid task id"),
    ("send mail", {}, "is not a valid task id"),
    ("../etc", {}, "is not a valid task id"),
    ("-lead", {}, "is not a valid task id"),
    ("t", {"when": "whenever"}, "cannot understand when='whenever'"),
    ("t", {"when": "in 5 parsecs"}, "cannot understand when="),
    ("t", {"when": "-5 minutes"}, "cannot understand when="),
    ("t", {"when": "2030-02-30T09:00:00"}, "cannot understand when="),
    ("t", {"when": "inf"}, "cannot understand when='inf'"),
    ("t", {"when": "in 99999999 days"}, "too far in the future"),
    ("t", {"when": 42}, "when must be a string or a datetime"),
    ("t", {"priority": "urgent"}, "priority 'urgent' is not a number"),
    ("t", {"priority": 1.5}, "priority 1.5 is not a number"),
    ("t", {"priority": True}, "priority must be a number"),
    ("t", {"priority": 2**70}, "does not fit in 64 bits"),
    ("t", {"max_attempts": 0}, "max_attempts must be a whole number from 1 to"),
    ("t", {"max_attempts": -3}, "max_attempts must be a whole number from 1 to"),
    ("t", {"max_attempts": 2.5}, "max_attempts must be a whole number from 1 to"),
    ("t", {"max_attempts": "3"}, "max_attempts must be a whole number from 1 to"),
    ("t", {"max_attempts": True}, "max_attempts must be a whole number from 1 to"),
    ("t", {"timeout": 0}, "timeout must be a number of seconds > 0"),
    ("t", {"timeout": -1}, "timeout must be a number of seconds > 0"),
    ("t", {"timeout": "10"}, "timeout must be a number of seconds > 0"),
    ("t", {"timeout": math.nan}, "timeout must be a number of seconds > 0"),
    ("t", {"timeout": math.inf}, "timeout must be a number of seconds > 0"),
    ("t", {"timeout": True}, "timeout must be a number of seconds > 0"),
    ("t", {"description": 5}, "description must be a string"),
]


@pytest.mark.parametrize(
    ("task", "kwargs", "message"), BAD_CALLS, ids=[f"{t}-{k}" for t, k, _ in BAD_CALLS]
)
def test_bad_input_raises_and_stores_nothing(
    client: Client, db: Any, task: str, kwargs: dict[str, Any], message: str
) -> None:
    kwargs = dict(kwargs)
    when, data = kwargs.pop("when", None), kwargs.pop("data", None)
    with pytest.raises(InvalidJobError) as raised:
        client.schedule(when, task, data, **kwargs)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)
    assert jobs_count(db) == 0
    assert hints(client, db) == []


def test_enqueue_many_is_all_or_nothing(client: Client, db: Any) -> None:
    with pytest.raises(InvalidJobError, match="not JSON-serialisable"):
        client.enqueue_many("t", [{"n": 1}, {"n": 2}, {"n": {3}}, {"n": 4}])
    assert jobs_count(db) == 0
    assert hints(client, db) == []


def test_data_too_large_for_a_document(client: Client, db: Any) -> None:
    with pytest.raises(InvalidJobError, match="too large"):
        client.now("t", {"blob": "x" * (16 * 1024 * 1024)})
    assert jobs_count(db) == 0


def test_invalid_job_error_is_a_qworker_error() -> None:
    from qworker import QworkerError

    assert issubclass(InvalidJobError, QworkerError)


# -- good paths ----------------------------------------------------------------


def test_now_stores_a_queued_job_due_now_and_announces_it(client: Client, db: Any) -> None:
    before = datetime.now(UTC) - MS
    job_id = client.now("send-mail", {"to": "a@example.com", "n": [1, 2.5, None, True]})
    after = datetime.now(UTC) + MS
    doc = db.jobs.find_one({"_id": ObjectId(job_id)})
    assert doc["name"] == "send-mail"
    assert doc["data"] == {"to": "a@example.com", "n": [1, 2.5, None, True]}
    assert doc["state"] == "queued"
    assert doc["priority"] == 0
    assert doc["attempts"] == 0 and doc["failCount"] == 0
    assert before <= doc["createdAt"] <= after
    assert abs(doc["nextRunAt"] - doc["createdAt"]) <= MS
    assert "maxAttempts" not in doc and "timeout" not in doc
    assert [h["id"] for h in hints(client, db)] == [job_id]


def test_data_is_optional(client: Client, db: Any) -> None:
    doc = client.get(client.now("t"))
    assert doc["data"] is None


def test_json_data_is_stored_as_json(client: Client) -> None:
    """Tuples become lists and keys strings, as a JSON round trip gives them."""
    doc = client.get(client.now("t", {"pair": (1, 2), 3: "three"}))
    assert doc["data"] == {"pair": [1, 2], "3": "three"}


def test_schedule_in_20_minutes(client: Client, db: Any) -> None:
    job_id = client.schedule("in 20 minutes", "report", {"day": 1})
    doc = client.get(job_id)
    assert doc["state"] == "queued"
    assert abs(doc["nextRunAt"] - doc["createdAt"] - timedelta(minutes=20)) <= 2 * MS
    # Beyond the hint horizon: workers find it by reading, not by a wake-up.
    assert hints(client, db) == []


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        ("2030-01-31T09:00:00Z", NOW),
        ("2030-01-31T10:30:00+01:30", NOW),
        ("2030-01-31T09:00:00", NOW),
        (datetime(2030, 1, 31, 9, 0), NOW),
        (datetime(2030, 1, 31, 4, 0, tzinfo=timezone(timedelta(hours=-5))), NOW),
    ],
)
def test_schedule_at_a_time(client: Client, when: str | datetime, expected: datetime) -> None:
    doc = client.get(client.schedule(when, "report"))
    assert doc["nextRunAt"] == expected


def test_schedule_with_a_phrase(client: Client) -> None:
    """An English phrase is read against the client's clock, in UTC."""
    days = {datetime.now(UTC).date() + timedelta(days=1)}
    doc = client.get(client.schedule("tomorrow at 9am", "noop"))
    days.add(datetime.now(UTC).date() + timedelta(days=1))  # the call may straddle midnight
    assert doc["state"] == "queued"
    assert doc["nextRunAt"] in {datetime(d.year, d.month, d.day, 9, tzinfo=UTC) for d in days}


def test_schedule_in_the_past_runs_now(client: Client, db: Any) -> None:
    job_id = client.schedule("2001-01-01T00:00:00Z", "t")
    assert client.get(job_id)["nextRunAt"] == datetime(2001, 1, 1, tzinfo=UTC)
    assert [h["id"] for h in hints(client, db)] == [job_id]


def test_options_are_stored(client: Client) -> None:
    doc = client.get(
        client.now("t", priority="high", max_attempts=3, timeout=2.5, description="nightly run")
    )
    assert doc["priority"] == PRIORITY_NAMES["high"] == 10
    assert doc["maxAttempts"] == 3
    assert doc["timeout"] == 2.5
    assert doc["description"] == "nightly run"


def test_get_unknown_and_malformed_ids(client: Client) -> None:
    missing = str(ObjectId())
    with pytest.raises(JobNotFound, match=missing):
        client.get(missing)
    with pytest.raises(JobNotFound, match="24 hexadecimal characters"):
        client.get("not-an-id")


def test_wait_times_out_on_a_queued_job(client: Client) -> None:
    job_id = client.now("nobody-serves-this")
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=f"job {job_id} is still queued"):
        client.wait(job_id, timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 5


def test_wait_returns_a_finished_job(client: Client) -> None:
    job_id = client.now("t")
    client.cancel(job_id)
    assert client.wait(job_id, timeout=5)["state"] == "cancelled"


def test_cancel_a_queued_job(client: Client, db: Any) -> None:
    job_id = client.now("t")
    other = client.now("t")
    doc = client.cancel(job_id)
    assert doc["state"] == "cancelled"
    assert doc["failReason"] == "cancelled"
    assert doc["lastFinishedAt"] >= doc["createdAt"]
    assert client.get(other)["state"] == "queued"
    # Nothing was running, so no worker is asked to stop anything.
    assert db.channel.count_documents({"event": "job:cancel"}) == 0


def test_cancel_refuses_a_finished_job(client: Client) -> None:
    job_id = client.schedule("in 1 hour", "t")
    client.cancel(job_id)
    with pytest.raises(JobStateError, match="already cancelled: nothing to cancel"):
        client.cancel(job_id)
    assert client.get(job_id)["state"] == "cancelled"


def test_cancel_unknown_job(client: Client) -> None:
    with pytest.raises(JobNotFound):
        client.cancel(str(ObjectId()))


def test_retry_a_cancelled_job(client: Client, db: Any) -> None:
    job_id = client.schedule("in 1 hour", "t")
    client.cancel(job_id)
    before = datetime.now(UTC) - MS
    doc = client.retry(job_id)
    assert doc["state"] == "queued"
    assert before <= doc["nextRunAt"] <= datetime.now(UTC) + MS
    assert "failReason" not in doc
    assert job_id in [h["id"] for h in hints(client, db)]


def test_retry_refuses_a_queued_job(client: Client) -> None:
    job_id = client.schedule("in 1 hour", "t")
    with pytest.raises(JobStateError, match="only finished jobs can be retried"):
        client.retry(job_id)
    doc = client.get(job_id)
    assert doc["state"] == "queued" and doc["nextRunAt"] > datetime.now(UTC) + timedelta(minutes=59)


FAILS_FIRST_TIME = """
from collections.abc import Iterator
from pathlib import Path


def setup(worker, task):
    @worker.task(task.id)
    def run(job):
        ran = Path(job.data["marker"])
        if not ran.exists():
            ran.write_text("ran")
            raise RuntimeError("first run fails")
        return {"attempt": job.attempt}
"""


def test_retry_a_failed_job_runs_it_again(
    client: Client, spawn_worker: Any, tmp_path: Path
) -> None:
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "fickle.json").write_text('{"maxAttempts": 1}')
    (folder / "fickle.py").write_text(FAILS_FIRST_TIME)
    data = {"marker": str(tmp_path / "ran")}
    job_id = client.now("fickle", data)
    first = spawn_worker("fickle", paths=[folder], extra=["--burst"])
    assert first.wait(60) == 0, first.output()
    failed = client.get(job_id)
    assert failed["state"] == "failed", failed
    assert failed["failCount"] == 1 and "first run fails" in failed["failReason"]
    assert failed["attempts"] == 1

    # A fresh budget: the counts of runs and failures start again.
    queued = client.retry(job_id)
    assert queued["state"] == "queued" and queued["failCount"] == 0 and queued["attempts"] == 0
    assert "failReason" not in queued and "error" not in queued and "lostCount" not in queued

    second = spawn_worker("fickle", paths=[folder], extra=["--burst"])
    assert second.wait(60) == 0, second.output()
    done = client.get(job_id)
    assert done["state"] == "succeeded"
    assert done["result"] == {"attempt": 1} and done["data"] == data


def test_wake_ups_follow_one_at_a_time_enqueues_and_close_sends_the_last(
    mongo_url: str, db: Any
) -> None:
    """Wake-ups go out from a thread of their own; every job is named once, none lost."""
    quick = Client(mongo_url, wakeups="channel")
    ids = [quick.now("send-mail", {"n": n}) for n in range(60)]
    quick.close()  # flushes what is still pending
    named = [
        j["id"] for m in db.channel.find({"event": "job:queued"}) for j in m["message"]["jobs"]
    ]
    assert sorted(named) == sorted(ids)
    assert db.jobs.count_documents({"state": "queued"}) == 60


def test_enqueue_many(client: Client, db: Any) -> None:
    items = [{"n": n} for n in range(5)]
    ids = client.enqueue_many("batch", items, priority="low", description="bulk")
    assert len(ids) == len(set(ids)) == 5
    docs = [client.get(i) for i in ids]
    assert [d["data"] for d in docs] == items
    assert {d["priority"] for d in docs} == {-10}
    assert {d["description"] for d in docs} == {"bulk"}
    assert len({d["nextRunAt"] for d in docs}) == 1
    assert sorted(h["id"] for h in hints(client, db)) == sorted(ids)


def test_enqueue_many_later_and_empty(client: Client, db: Any) -> None:
    ids = client.enqueue_many("batch", [1, 2], when="in 2 hours")
    docs = [client.get(i) for i in ids]
    assert all(d["nextRunAt"] - d["createdAt"] >= timedelta(hours=2) - MS for d in docs)
    assert client.enqueue_many("batch", []) == []
    assert jobs_count(db) == 2


def test_jobs_filters(client: Client) -> None:
    a = client.now("alpha", description="Monthly Invoice")
    b = client.now("beta", description="weekly digest")
    client.cancel(b)
    assert [str(d["_id"]) for d in client.jobs(task="alpha")] == [a]
    assert [str(d["_id"]) for d in client.jobs(state="cancelled")] == [b]
    assert [str(d["_id"]) for d in client.jobs(text="invoice")] == [a]
    assert [str(d["_id"]) for d in client.jobs(text="(")] == []  # not a regex
    assert [str(d["_id"]) for d in client.jobs()] == [b, a]  # newest first


# -- parse_when / parse_duration -------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (0, 0.0),
        (90, 90.0),
        (2.5, 2.5),
        ("45", 45.0),
        ("90s", 90.0),
        ("20 minutes", 1200.0),
        ("1 minute", 60.0),
        ("1h 30m", 5400.0),
        ("1.5 hours", 5400.0),
        ("2 days", 172800.0),
        ("1 week", 604800.0),
        ("2 days and 3 hours", 183600.0),
        ("1h, 30m", 5400.0),
        ("500ms", 0.5),
        (" 10 SECONDS ", 10.0),
    ],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    ["", "soon", "5 parsecs", "-5", -5, "minutes", True, math.nan, math.inf, "nan", "inf"],
)
def test_parse_duration_rejects(text: Any) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        (None, NOW),
        ("now", NOW),
        ("NOW", NOW),
        ("", NOW),
        ("immediately", NOW),
        ("in 20 minutes", NOW + timedelta(minutes=20)),
        ("20 minutes", NOW + timedelta(minutes=20)),
        ("in 1h 30m", NOW + timedelta(minutes=90)),
        ("in 2 days", NOW + timedelta(days=2)),
        ("2031-05-06T07:08:09Z", datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)),
        ("2031-05-06T07:08:09+02:00", datetime(2031, 5, 6, 5, 8, 9, tzinfo=UTC)),
        ("2031-05-06T07:08:09", datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)),
        ("2031-05-06", datetime(2031, 5, 6, tzinfo=UTC)),
        (datetime(2031, 5, 6, 7, 8), datetime(2031, 5, 6, 7, 8, tzinfo=UTC)),
    ],
)
def test_parse_when(when: str | datetime | None, expected: datetime) -> None:
    parsed = parse_when(when, NOW)
    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)


# NOW is Thursday 31 January 2030, 09:00 UTC: the last day of a month, where
# dateparser moves a time that has passed today back to the 1st of the month.
@pytest.mark.parametrize(
    ("when", "expected"),
    [
        ("5", NOW + timedelta(seconds=5)),  # a bare number stays a duration in seconds
        ("tomorrow at 9am", datetime(2030, 2, 1, 9, tzinfo=UTC)),
        ("Tomorrow at 9 a.m.", datetime(2030, 2, 1, 9, tzinfo=UTC)),
        ("9am tomorrow", datetime(2030, 2, 1, 9, tzinfo=UTC)),
        ("tomorrow at 21:15", datetime(2030, 2, 1, 21, 15, tzinfo=UTC)),
        ("midnight", datetime(2030, 2, 1, tzinfo=UTC)),
        ("8am", datetime(2030, 2, 1, 8, tzinfo=UTC)),
        ("9am", NOW),
        ("noon", datetime(2030, 1, 31, 12, tzinfo=UTC)),
        ("21:15", datetime(2030, 1, 31, 21, 15, tzinfo=UTC)),
        ("8am EST", datetime(2030, 1, 31, 13, tzinfo=UTC)),
        ("tonight", datetime(2030, 1, 31, 20, tzinfo=UTC)),
        ("next monday 10:00", datetime(2030, 2, 4, 10, tzinfo=UTC)),
        ("friday 5pm", datetime(2030, 2, 1, 17, tzinfo=UTC)),
        ("thursday", datetime(2030, 2, 7, tzinfo=UTC)),
        ("june 5 at 10:00", datetime(2030, 6, 5, 10, tzinfo=UTC)),
        ("5 June 2031", datetime(2031, 6, 5, tzinfo=UTC)),
        ("in 3 days", NOW + timedelta(days=3)),
        ("in three days", NOW + timedelta(days=3)),
        ("in 2 weeks at noon", datetime(2030, 2, 14, 12, tzinfo=UTC)),
        ("a fortnight", NOW + timedelta(weeks=2)),
        ("10 minutes from now", NOW + timedelta(minutes=10)),
        ("next month", datetime(2030, 2, 28, 9, tzinfo=UTC)),
        ("today", NOW),
    ],
)
def test_parse_when_phrases(when: str, expected: datetime) -> None:
    parsed = parse_when(when, NOW)
    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("now", "when", "expected"),
    [
        (datetime(2030, 1, 15, 10, tzinfo=UTC), "8am", datetime(2030, 1, 16, 8, tzinfo=UTC)),
        (datetime(2030, 2, 28, 23, 30, tzinfo=UTC), "midnight", datetime(2030, 3, 1, tzinfo=UTC)),
        (datetime(2030, 12, 31, 23, tzinfo=UTC), "midnight", datetime(2031, 1, 1, tzinfo=UTC)),
        (datetime(2030, 12, 31, 23, tzinfo=UTC), "8am EST", datetime(2031, 1, 1, 13, tzinfo=UTC)),
        (datetime(2030, 12, 31, 23, tzinfo=UTC), "monday", datetime(2031, 1, 6, tzinfo=UTC)),
    ],
)
def test_parse_when_phrases_roll_over_months_and_years(
    now: datetime, when: str, expected: datetime
) -> None:
    assert parse_when(when, now) == expected


def test_parse_when_defaults_to_the_current_time() -> None:
    before = datetime.now(UTC)
    parsed = parse_when("in 1 minute")
    assert before + timedelta(minutes=1) <= parsed <= datetime.now(UTC) + timedelta(minutes=1)


@pytest.mark.parametrize(
    "when",
    [
        "tomorrow-ish",
        "in",
        "in minutes",
        "5 parsecs",
        "31/01/2030",
        "2030-13-01",
        "inf",
        "in 99999999 days",
        3.5,
        ["now"],
    ],
)
def test_parse_when_rejects(when: Any) -> None:
    with pytest.raises(InvalidJobError, match="when"):
        parse_when(when, NOW)


@pytest.mark.parametrize(
    "when",
    [
        "banana",
        "soon-ish",
        "next blursday",
        "every 5 minutes",
        "*/5 * * * *",
        "-5",
        "-5 minutes",
        "1 2",
        "demain",
        "asap",
        # numeric dates other than ISO 8601
        "01/02/2030 9am",
        "31.01.2030 noon",
        # times dateparser cannot read, which it would drop
        "tomorrow at 25:00",
        "tomorrow at 13pm",
        "tomorrow 5",
        "in 2 days at 9.30",
        # numbers it would read as months or days, and months alone
        "at 9",
        "the 5th",
        "twelve noon",
        "a 5",
        "monday 31",
        "march",
        "we",
    ],
)
def test_parse_when_rejects_phrases(when: str) -> None:
    with pytest.raises(InvalidJobError, match=r"cannot understand when=.*'tomorrow at 9am'"):
        parse_when(when, NOW)


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        ("yesterday", NOW - timedelta(days=1)),
        ("2 days ago", NOW - timedelta(days=2)),
        ("2030-01-01T00:00:00Z", datetime(2030, 1, 1, tzinfo=UTC)),
        (NOW - timedelta(hours=1), NOW - timedelta(hours=1)),
    ],
)
def test_a_time_in_the_past_is_due_at_once_whatever_its_form(
    when: str | datetime, expected: datetime
) -> None:
    """One rule for ISO times, datetimes and phrases: as Celery's eta or Sidekiq's perform_at."""
    assert abs(parse_when(when, NOW) - expected) < timedelta(seconds=1)


@pytest.mark.parametrize("when", ["in -5 days", "-5 minutes", "in - 3 hours"])
def test_a_negative_duration_is_refused(when: str) -> None:
    with pytest.raises(InvalidJobError, match="cannot understand when="):
        parse_when(when, NOW)


def test_a_job_due_in_the_past_runs_at_once(client: Client, spawn_worker: Any) -> None:
    spawn_worker("noop")
    job_id = client.schedule("yesterday at noon", "noop")
    assert client.get(job_id)["nextRunAt"] < utcnow() - timedelta(hours=11)
    assert client.wait(job_id, timeout=30)["state"] == "succeeded"


def test_parse_when_imports_dateparser_only_for_a_phrase() -> None:
    code = (
        "import sys; from qworker.when import parse_when; "
        "parse_when('in 5 minutes'); parse_when('2030-01-31T09:00:00Z'); "
        "assert 'dateparser' not in sys.modules; "
        "parse_when('tomorrow at 9am'); assert 'dateparser' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_parse_when_rejects_an_aware_time_beyond_the_calendar() -> None:
    with pytest.raises(InvalidJobError, match="out of the range of dates"):
        parse_when("9999-12-31T23:00:00-05:00", NOW)


# -- parse_priority ------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, 0),
        (0, 0),
        (7, 7),
        (-3, -3),
        ("12", 12),
        (" -4 ", -4),
        ("lowest", -20),
        ("low", -10),
        ("normal", 0),
        ("HIGH", 10),
        ("highest", 20),
        (2**63 - 1, 2**63 - 1),
    ],
)
def test_parse_priority(value: Any, expected: int) -> None:
    assert parse_priority(value) == expected


@pytest.mark.parametrize("value", [True, False, 1.5, "urgent", "", "1e3", 2**63, str(-(2**63) - 1)])
def test_parse_priority_rejects(value: Any) -> None:
    with pytest.raises(InvalidJobError, match="priority"):
        parse_priority(value)


def test_priority_names_are_ordered() -> None:
    names = ["lowest", "low", "normal", "high", "highest"]
    assert [parse_priority(n) for n in names] == sorted(parse_priority(n) for n in names)


# -- Candidates ------------------------------------------------------------------


def candidate(name: str, priority: int = 0, due: timedelta = timedelta(0)) -> dict[str, Any]:
    return {"_id": ObjectId(), "name": name, "priority": priority, "nextRunAt": NOW + due}


def unlimited(task: str) -> int:
    return 1_000


def ids(taken: tuple[list[Pick], bool]) -> list[ObjectId]:
    return [pick.id for pick in taken[0]]


def ids_and_solo(taken: tuple[list[Pick], bool]) -> tuple[list[ObjectId], bool]:
    return ids(taken), taken[1]


def test_candidates_order_by_priority_then_due_time() -> None:
    late_high = candidate("a", 10, -timedelta(seconds=1))
    early_high = candidate("a", 10, -timedelta(seconds=5))
    normal = candidate("a", 0, -timedelta(seconds=60))
    low = candidate("a", -10, -timedelta(seconds=600))
    c = Candidates()
    c.replace([low, normal, late_high, early_high])
    assert len(c) == 4
    assert ids(c.take(10, NOW, unlimited)) == [
        early_high["_id"],
        late_high["_id"],
        normal["_id"],
        low["_id"],
    ]
    assert len(c) == 0
    assert ids(c.take(10, NOW, unlimited)) == []


def test_candidates_same_priority_and_time_fall_back_to_id_order() -> None:
    docs = [candidate("a") for _ in range(5)]
    c = Candidates()
    c.add(reversed(docs))
    assert ids(c.take(5, NOW, unlimited)) == [d["_id"] for d in docs]


def test_candidates_take_at_most_n() -> None:
    docs = [candidate("a", p) for p in range(5)]
    c = Candidates()
    c.add(docs)
    assert ids(c.take(2, NOW, unlimited)) == [docs[4]["_id"], docs[3]["_id"]]
    assert ids(c.take(10, NOW, unlimited)) == [docs[2]["_id"], docs[1]["_id"], docs[0]["_id"]]


def test_candidates_skip_jobs_not_yet_due() -> None:
    future_high = candidate("a", 20, timedelta(seconds=30))
    due_low = candidate("a", -5)
    c = Candidates()
    c.add([future_high, due_low])
    assert ids(c.take(10, NOW, unlimited)) == [due_low["_id"]]
    assert c.next_due() == future_high["nextRunAt"]
    assert ids(c.take(10, NOW + timedelta(seconds=29), unlimited)) == []
    assert ids(c.take(10, NOW + timedelta(seconds=30), unlimited)) == [future_high["_id"]]
    assert c.next_due() is None


def test_candidates_respect_each_tasks_room() -> None:
    a = [candidate("a", 10) for _ in range(4)]
    b = [candidate("b", 0) for _ in range(3)]
    c = Candidates()
    c.add([*a, *b])
    room = {"a": 1, "b": 2}
    picked = ids(c.take(10, NOW, room.__getitem__))
    assert picked == [a[0]["_id"], b[0]["_id"], b[1]["_id"]]
    # What did not fit stays, in order, for when there is room again.
    assert len(c) == 4
    assert ids(c.take(10, NOW, {"a": 2, "b": 0}.__getitem__)) == [a[1]["_id"], a[2]["_id"]]
    assert ids(c.take(10, NOW, unlimited)) == [a[3]["_id"], b[2]["_id"]]


def test_a_job_lost_before_is_taken_alone_by_a_worker_running_nothing() -> None:
    """It may be what killed its last worker: it must not take other jobs down with it."""
    innocent = [candidate("a", 5) for _ in range(2)]
    suspect = {**candidate("a", 10), "lostCount": 1}
    c = Candidates()
    c.add([*innocent, suspect])
    # A busy worker leaves it for later and takes the others.
    innocent_ids = [d["_id"] for d in innocent]
    assert ids_and_solo(c.take(10, NOW, unlimited, alone=False)) == (innocent_ids, False)
    assert len(c) == 1
    # A worker running nothing takes it, and nothing else.
    c.add(innocent)
    assert ids_and_solo(c.take(10, NOW, unlimited, alone=True)) == ([suspect["_id"]], True)
    assert ids_and_solo(c.take(10, NOW, unlimited, alone=True)) == (innocent_ids, False)


def test_candidates_with_no_room_take_nothing() -> None:
    c = Candidates()
    c.add([candidate("a"), candidate("a")])
    assert ids(c.take(10, NOW, lambda task: 0)) == []
    assert len(c) == 2


def test_candidates_update() -> None:
    first, second = candidate("a", 5), candidate("a", 1)
    c = Candidates()
    c.add([first, second])
    # A newer view of a job (here: its priority raised) replaces the old one.
    c.add([{**second, "priority": 9}])
    assert len(c) == 2
    assert ids(c.take(10, NOW, unlimited)) == [second["_id"], first["_id"]]


def test_candidates_replace_forgets_the_old_set() -> None:
    old, new = candidate("a", 50), candidate("a")
    c = Candidates()
    c.add([old])
    c.replace([new])
    assert ids(c.take(10, NOW, unlimited)) == [new["_id"]]


# -- values MongoDB cannot store, returned by a handler ------------------------

UNSTORABLE_RESULT = """
def setup(worker, task):
    @worker.task(task.id)
    def run(job):
        return {"n": 2**70} if job.data["huge"] else {"n": 1}
"""


def test_an_unstorable_result_fails_its_job_only(
    client: Client, spawn_worker: Any, tmp_path: Path
) -> None:
    """JSON allows any integer, BSON only 64-bit ones: the job fails with the reason,
    and the outcomes written alongside it are not lost."""
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "huge.json").write_text("{}")
    (folder / "huge.py").write_text(UNSTORABLE_RESULT)
    bad, good = client.now("huge", {"huge": True}), client.now("huge", {"huge": False})
    worker = spawn_worker("huge", paths=[folder], extra=["--burst"])
    assert worker.wait(60) == 0, worker.output()
    failed = client.get(bad)
    assert failed["state"] == "failed"
    assert "return value cannot be stored in MongoDB" in failed["failReason"]
    assert client.get(good)["state"] == "succeeded"
    assert client.get(good)["result"] == {"n": 1}


def test_wait_watches_the_job_instead_of_polling_it(mongo_url: str, db: Any) -> None:
    listener = CommandCounter("find")
    app: MongoClient[dict[str, Any]] = MongoClient(mongo_url, event_listeners=[listener])
    try:
        waiter = Client(app)
        job_id = waiter.now("send-mail", {})
        finisher = threading.Timer(
            1.5,
            lambda: db.jobs.update_one(
                {"_id": ObjectId(job_id)}, {"$set": {"state": "succeeded", "result": 7}}
            ),
        )
        before = listener.count
        finisher.start()
        assert waiter.wait(job_id, timeout=20)["result"] == 7
        # Read once at the start and once after the event; a poll reads ~10 times in 1.5 s.
        assert listener.count - before <= 3, listener.count - before
        with pytest.raises(TimeoutError, match="still queued"):
            waiter.wait(waiter.now("send-mail", {}), timeout=0.5)
    finally:
        finisher.join()
        app.close()
