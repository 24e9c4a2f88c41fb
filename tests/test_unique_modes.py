"""Unique-job modes: debounce (``replace``), ``while: "queued"`` and throttle (``period``).

Against the real server, with real workers: a debounced job runs once, with the
last data, at its last run time; a throttle holds its key for its period whatever
the holder's state; a running holder does not block a ``queued``-mode key; and
concurrent enqueues still leave one holder per key in each mode.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from bson import ObjectId
from click.testing import CliRunner
from fastapi.testclient import TestClient
from support.effects import effects_env
from support.jobs import wait_finished
from support.logs import ready
from support.waits import wait_for

from qworker import AsyncClient, Client
from qworker.cli.manager import main
from qworker.errors import InvalidJobError, InvalidScheduleError
from qworker.manager.api import create_app
from qworker.model import MAX_UNIQUE_KEY_CHARS
from qworker.when import utcnow

DEBOUNCE = {"key": "d", "replace": ["data", "nextRunAt"]}
QUEUED = {"key": "q", "while": "queued"}
PERIOD = 2.0
THROTTLE = {"key": "t", "while": "period", "period": f"{PERIOD} seconds"}


def doc(db: Any, job_id: str) -> dict[str, Any]:
    found = db.jobs.find_one({"_id": ObjectId(job_id)})
    assert found is not None, job_id
    return found  # type: ignore[no-any-return]


def at_once(n: int, enqueue: Callable[[int], str]) -> list[str]:
    """``enqueue(i)`` from ``n`` threads released together; the ids returned."""
    barrier = threading.Barrier(n)

    def call(i: int) -> str:
        barrier.wait()
        return enqueue(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(call, range(n)))


# -- debounce ----------------------------------------------------------------


def test_debounce_replaces_the_data_and_pushes_back_the_start(client: Client, db: Any) -> None:
    first = client.schedule("in 1 hour", "noop", {"n": 1}, unique=DEBOUNCE)
    before = doc(db, first)["nextRunAt"]
    again = client.schedule("in 2 hours", "noop", {"n": 2}, unique=DEBOUNCE)
    assert again == first
    moved = doc(db, first)
    assert moved["data"] == {"n": 2}
    assert moved["nextRunAt"] - before > timedelta(minutes=59)
    assert moved["uniqueReplaced"] == 1
    assert db.jobs.count_documents({}) == 1


def test_replace_takes_only_what_it_names(client: Client, db: Any) -> None:
    data_only = {"key": "a", "replace": ["data"]}
    first = client.schedule("in 1 hour", "noop", {"n": 1}, unique=data_only)
    at = doc(db, first)["nextRunAt"]
    assert client.now("noop", {"n": 2}, unique=data_only) == first
    assert (doc(db, first)["data"], doc(db, first)["nextRunAt"]) == ({"n": 2}, at)

    time_only = {"key": "b", "replace": ["nextRunAt"], "while": "queued"}
    second = client.schedule("in 1 hour", "noop", {"n": 1}, unique=time_only, expires="1 hour")
    assert client.schedule("in 3 hours", "noop", {"n": 2}, unique=time_only) == second
    moved = doc(db, second)
    assert moved["data"] == {"n": 1}
    assert moved["nextRunAt"] > at + timedelta(hours=1, minutes=59)
    # the deadline counts from the run time: it goes with it (none was asked this time)
    assert "expiresAt" not in moved


def test_without_replace_the_holder_is_left_as_it_is(client: Client, db: Any) -> None:
    first = client.now("noop", {"n": 1}, unique={"key": "k"})
    assert client.now("noop", {"n": 2}, unique={"key": "k"}) == first
    assert client.now("noop", {"n": 3}, unique="k") == first  # the same key as a plain one
    assert doc(db, first)["data"] == {"n": 1}
    assert "uniqueWhile" not in doc(db, first)  # the default mode is stored as before


@pytest.mark.parametrize("wakeups", ["auto", "channel"])
def test_a_worker_runs_a_debounced_job_once_with_the_last_data_at_its_last_time(
    mongo_url: str, db: Any, spawn_worker: Any, wakeups: str
) -> None:
    worker = spawn_worker("double")
    ready(worker)
    with Client(mongo_url, wakeups=wakeups) as client:
        first = client.schedule("in 1.5 seconds", "double", {"x": 1}, unique=DEBOUNCE)
        for x in (2, 3):  # each comes before the job is due, and pushes it back
            time.sleep(0.7)
            assert client.schedule("in 1.5 seconds", "double", {"x": x}, unique=DEBOUNCE) == first
        due = doc(db, first)["nextRunAt"]
        done = wait_finished(db, first, timeout=30)
    assert done["state"] == "succeeded" and done["result"] == {"x": 6.0}
    assert done["attempts"] == 1 and db.jobs.count_documents({}) == 1
    assert done["lastRunAt"] >= due  # never started at one of its earlier times


def test_a_running_holder_is_not_replaced(
    client: Client, db: Any, mongo_url: str, spawn_worker: Any
) -> None:
    ready(spawn_worker("record", env=effects_env(mongo_url)))
    first = client.now("record", {"sleep": 2}, unique=DEBOUNCE)
    wait_for(lambda: doc(db, first)["state"] == "running", 30, "the job to start")
    assert client.now("record", {"sleep": 0}, unique=DEBOUNCE) == first
    assert doc(db, first)["data"] == {"sleep": 2}
    assert wait_finished(db, first)["state"] == "succeeded"


def test_concurrent_debounces_leave_one_job_with_one_of_their_data(client: Client, db: Any) -> None:
    ids = at_once(40, lambda n: client.schedule("in 1 hour", "noop", {"n": n}, unique=DEBOUNCE))
    assert len(set(ids)) == 1 and db.jobs.count_documents({}) == 1
    held = doc(db, ids[0])
    assert held["data"]["n"] in range(40)
    assert held["uniqueReplaced"] == 39


# -- while: queued --------------------------------------------------------------


def test_queued_mode_admits_one_job_beside_a_running_holder(
    client: Client, db: Any, mongo_url: str, spawn_worker: Any
) -> None:
    ready(spawn_worker("record", env=effects_env(mongo_url)))
    running = client.now("record", {"sleep": 3}, unique=QUEUED)
    default = client.now("record", {"sleep": 3}, unique="plain")
    wait_for(
        lambda: {doc(db, running)["state"], doc(db, default)["state"]} == {"running"},
        30,
        "both jobs to start",
    )
    # 30 enqueues at once: the running holder gives the key up once, one job is queued
    # (due later, so that the worker does not start it: running, it would free the key)
    ids = at_once(30, lambda n: client.schedule("in 1 hour", "record", {"n": n}, unique=QUEUED))
    assert len(set(ids)) == 1 and ids[0] != running
    assert doc(db, ids[0])["state"] == "queued" and doc(db, ids[0])["uniqueKey"] == "q"
    freed = doc(db, running)
    assert "uniqueKey" not in freed and freed["uniqueKeyFreed"] == "q"
    assert client.now("record", unique=QUEUED) == ids[0]  # a second queued one: refused
    assert db.jobs.count_documents({"name": "record", "data.n": {"$exists": True}}) == 1
    # a holder of the default mode keeps its promise: active means running too
    assert client.now("record", unique={"key": "plain", "while": "queued"}) == default
    assert "uniqueKey" in doc(db, default)
    assert wait_finished(db, running)["state"] == "succeeded"
    assert doc(db, ids[0])["state"] == "queued"


def test_queued_mode_debounce_replaces_a_queued_holder(client: Client, db: Any) -> None:
    spec = {**QUEUED, "replace": ["data"]}
    first = client.schedule("in 1 hour", "noop", {"n": 1}, unique=spec)
    assert doc(db, first)["uniqueWhile"] == "queued"
    assert client.now("noop", {"n": 2}, unique=spec) == first
    assert doc(db, first)["data"] == {"n": 2} and db.jobs.count_documents({}) == 1


# -- while: period (throttle) -------------------------------------------------------


def test_throttle_holds_the_key_for_its_period_even_once_the_job_finished(
    client: Client, db: Any, burst: Any
) -> None:
    first = client.now("noop", {"n": 1}, unique=THROTTLE)
    burst("noop")
    assert doc(db, first)["state"] == "succeeded"
    assert client.now("noop", {"n": 2}, unique=THROTTLE) == first
    assert db.jobs.count_documents({}) == 1

    created = doc(db, first)["createdAt"]
    wait_for(lambda: utcnow() >= created + timedelta(seconds=PERIOD), 10, "the period to pass")
    second = client.now("noop", {"n": 3}, unique=THROTTLE)
    assert second != first
    old, new = doc(db, first), doc(db, second)
    assert "fireKey" not in old and old["throttleKeyFreed"] == "noop|unique|t"
    assert new["fireKey"] == "noop|unique|t" and new["uniqueWhile"] == "period"
    assert "uniqueKey" not in new  # the throttle's key is its fireKey, in every state
    assert client.now("noop", {"n": 4}, unique=THROTTLE) == second


def test_throttle_counts_a_queued_holder_and_is_per_task_and_key(client: Client, db: Any) -> None:
    first = client.schedule("in 1 hour", "noop", unique=THROTTLE)
    assert client.now("noop", unique=THROTTLE) == first
    assert client.now("record", unique=THROTTLE) != first
    assert client.now("noop", unique={**THROTTLE, "key": "other"}) != first
    # the modes are apart: a throttle key is not an active-mode key
    assert client.now("noop", unique="t") != first
    assert db.jobs.count_documents({}) == 4


def test_concurrent_throttled_enqueues_give_one_job_then_one_after_the_period(
    client: Client, db: Any
) -> None:
    ids = at_once(40, lambda n: client.now("noop", {"n": n}, unique=THROTTLE))
    assert len(set(ids)) == 1 and db.jobs.count_documents({}) == 1
    created = doc(db, ids[0])["createdAt"]
    wait_for(lambda: utcnow() >= created + timedelta(seconds=PERIOD), 10, "the period to pass")
    later = at_once(40, lambda n: client.now("noop", {"n": n}, unique=THROTTLE))
    assert len(set(later)) == 1 and later[0] != ids[0]
    assert db.jobs.count_documents({}) == 2
    assert db.jobs.count_documents({"fireKey": "noop|unique|t"}) == 1


def test_throttle_keys_are_never_a_schedules_fires(client: Client, db: Any) -> None:
    # A schedule's fires are "<name>@<UTC time>", found by the range "<name>@".."<name>A";
    # a throttle's is "<task>|unique|<key>", and no schedule name has a "|".
    with pytest.raises(InvalidScheduleError):
        client.every("1 hour", "noop", name="noop|unique")
    client.every("1 hour", "noop", name="noop")  # a schedule named as the task
    client.now("noop", unique={**THROTTLE, "key": "@"})
    client.now("noop", unique=THROTTLE)
    assert db.jobs.count_documents({}) == 2
    assert client.schedule_info("noop")["lastJob"] is None


# -- validation, the API and the CLI --------------------------------------------------


@pytest.mark.parametrize(
    ("unique", "expected"),
    [
        ({"key": "k", "mode": "queued"}, "unknown field(s) 'mode'"),
        ({"while": "queued"}, "'key' is missing"),
        ({"key": ""}, "'key' must be a non-empty string"),
        ({"key": "x" * (MAX_UNIQUE_KEY_CHARS + 1)}, "'key' must be a non-empty string"),
        ({"key": 5}, "'key' must be a non-empty string"),
        ({"key": "k", "while": "running"}, "'while' must be one of 'active', 'queued', 'period'"),
        ({"key": "k", "while": "period"}, "while 'period' needs a 'period'"),
        ({"key": "k", "period": "1 minute"}, "'period' goes with while 'period' only"),
        ({"key": "k", "while": "queued", "period": 60}, "'period' goes with while 'period'"),
        ({"key": "k", "while": "period", "period": "soon"}, "'period': 'soon' is not a duration"),
        ({"key": "k", "while": "period", "period": 0}, "'period' must be more than 0"),
        ({"key": "k", "while": "period", "period": "400 days"}, "at most a year"),
        ({"key": "k", "replace": ["priority"]}, "'replace' must be a list of 'data' and"),
        ({"key": "k", "replace": "data"}, "'replace' must be a list"),
        (
            {"key": "k", "while": "period", "period": 5, "replace": ["data"]},
            "'replace' cannot go with while 'period'",
        ),
        (["k"], "unique must be a non-empty string"),
        ({"key": "\ud800"}, "not valid text"),
    ],
)
def test_bad_unique_specs_are_refused_at_the_call(
    client: Client, db: Any, unique: Any, expected: str
) -> None:
    with pytest.raises(InvalidJobError) as refused:
        client.now("noop", unique=unique)
    assert expected in str(refused.value) and refused.value.field == "unique"
    assert str(refused.value).startswith("unique")
    assert db.jobs.count_documents({}) == 0


def test_the_async_client_takes_the_modes(mongo_url: str, db: Any) -> None:
    async def enqueue() -> str:
        async with AsyncClient(mongo_url) as client:
            first = await client.schedule("in 1 hour", "noop", {"n": 1}, unique=DEBOUNCE)
            assert await client.now("noop", {"n": 2}, unique=DEBOUNCE) == first
            throttled = await client.now("noop", unique=THROTTLE)
            assert await client.now("noop", unique=THROTTLE) == throttled
            with pytest.raises(InvalidJobError, match="'while' must be one of"):
                await client.now("noop", unique={"key": "k", "while": "never"})
            return first

    first = asyncio.run(enqueue())
    assert doc(db, first)["data"] == {"n": 2} and db.jobs.count_documents({}) == 2


def test_the_api_takes_the_dict_form(client: Client, db: Any) -> None:
    headers = {"X-Qworker-Request": "1"}
    with TestClient(create_app(client), base_url="http://127.0.0.1:8765", headers=headers) as api:

        def post(unique: Any, data: Any = None) -> Any:
            return api.post("/api/jobs", json={"task": "noop", "data": data, "unique": unique})

        first = post({"key": "k", "while": "queued", "replace": ["data"]}, {"n": 1})
        again = post({"key": "k", "while": "queued", "replace": ["data"]}, {"n": 2})
        assert first.status_code == again.status_code == 201, first.text + again.text
        assert first.json() == again.json()
        assert doc(db, first.json()["id"])["data"] == {"n": 2}
        throttle = {"key": "t", "while": "period", "period": "1 hour"}
        assert post(throttle).json() == post(throttle).json()
        bad = post({"key": "k", "while": "period"})
        assert bad.status_code == 422 and bad.json()["field"].endswith("unique"), bad.text
        unknown = post({"key": "k", "every": 5})
        assert unknown.status_code == 422, unknown.text
    assert db.jobs.count_documents({}) == 2


def test_the_cli_takes_the_mode_options(client: Client, db: Any, mongo_url: str) -> None:
    def enqueue(*args: str) -> str:
        result = CliRunner().invoke(main, ["--mongo", mongo_url, "enqueue", "noop", *args])
        assert result.exit_code == 0, result.output
        return result.output.strip()

    debounce = ["--unique", "d", "--unique-replace", "data", "--unique-replace", "nextRunAt"]
    first = enqueue("--data", '{"n": 1}', "--when", "in 1 hour", *debounce)
    assert enqueue("--data", '{"n": 2}', "--when", "in 2 hours", *debounce) == first
    assert doc(db, first)["data"] == {"n": 2}
    throttle = ["--unique", "t", "--unique-period", "1 hour"]
    assert enqueue(*throttle) == enqueue(*throttle, "--unique-while", "period")
    assert doc(db, enqueue(*throttle))["uniqueWhile"] == "period"
    alone = CliRunner().invoke(
        main, ["--mongo", mongo_url, "enqueue", "noop", "--unique-period", "1h"]
    )
    assert alone.exit_code == 2 and "need --unique" in alone.output
    assert db.jobs.count_documents({}) == 2
