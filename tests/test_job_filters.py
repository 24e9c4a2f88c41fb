"""Finding jobs: by a field of their data, by error text, by finish time; sorted by finish
time or by duration. The same filters through ``Client``, ``AsyncClient``, the API's URL and
the CLI, against the real server; failures made by a real worker process.

Most jobs are enqueued by the client, then given the state and times a worker's run
would have written, so that finish times and durations are known to the millisecond.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from bson import ObjectId
from click.testing import CliRunner
from fastapi.testclient import TestClient
from support.jobs import wait_finished

from qworker import AsyncClient, Client
from qworker.cli.manager import main
from qworker.errors import InvalidJobError
from qworker.jobfilter import FILTER_FIELDS, FilterKeywords, JobFilter
from qworker.manager.api import create_app
from qworker.when import utcnow

BASE = "http://127.0.0.1:8765"
SCRIPT = {"X-Qworker-Request": "1"}
MINUTE = timedelta(minutes=1)


@pytest.fixture
def api(client: Client) -> Iterator[TestClient]:
    with TestClient(create_app(client), base_url=BASE, headers=SCRIPT) as test_client:
        yield test_client


def ran(db: Any, job_id: str, state: str, ago: timedelta, took: timedelta, **more: Any) -> None:
    """Give a job the outcome of a run that ended ``ago`` and lasted ``took``."""
    end = utcnow() - ago
    fields = {"state": state, "lastRunAt": end - took, "lastFinishedAt": end, **more}
    db.jobs.update_one({"_id": ObjectId(job_id)}, {"$set": fields})


def ids(docs: list[dict[str, Any]]) -> list[str]:
    return [str(doc["_id"]) for doc in docs]


# -- a field of the data ------------------------------------------------------------


def test_a_data_field_matches_strings_numbers_and_booleans(client: Client) -> None:
    acme = client.now("noop", {"customer": "acme", "n": 42, "vip": True})
    text42 = client.now("noop", {"customer": "Acme", "n": "42", "vip": "true"})
    float42 = client.now("noop", {"customer": "bolt", "n": 42.0, "address": {"city": "Lyon"}})
    other = client.now("noop", {"customer": "bolt", "n": 7, "tags": ["acme", "x"]})
    client.now("noop", None)

    def found(field: str, value: Any = None) -> set[str]:
        return set(ids(client.jobs(data_field=field, data_value=value)))

    assert found("customer", "acme") == {acme}  # exact, as stored: no case folding
    assert found("n", "42") == {acme, text42, float42}  # the text, and the number it spells
    assert found("n", 42) == {acme, text42, float42}  # a number, and its text
    assert found("n", "4") == set()
    assert found("vip", "true") == {acme, text42}
    assert found("address.city", "Lyon") == {float42}
    assert found("tags", "acme") == {other}  # an array holding it
    assert found("address") == {float42}  # no value: the field exists
    assert client.count_jobs(data_field="customer", data_value="bolt") == 2
    assert found("customer", "bolt") & found("n", "7") == {other}


@pytest.mark.parametrize(
    ("filters", "field"),
    [
        ({"data_field": "$where"}, "data_field"),
        ({"data_field": "a..b"}, "data_field"),
        ({"data_field": "customer", "data_value": {"$ne": 1}}, "data_value"),
        ({"data_field": "x" * 201}, "data_field"),
        ({"error": "e" * 201}, "error"),
        ({"finished_since": "next blursday"}, "finished_since"),
        ({"state": "sleeping"}, "state"),
        ({"data_value": "acme"}, "data_value"),
    ],
)
def test_bad_filters_are_refused_naming_the_field(
    client: Client, filters: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidJobError) as refused:
        client.jobs(**filters)
    assert refused.value.field == field


def test_sort_and_order_are_checked(client: Client) -> None:
    with pytest.raises(InvalidJobError, match="sort must be one of created, finished, duration"):
        client.jobs(sort="priority")
    with pytest.raises(InvalidJobError, match="order must be one of desc, asc"):
        client.jobs(order="up")


# -- error text and finish time ---------------------------------------------------------


def test_error_text_is_found_in_the_reason_or_the_message(client: Client, db: Any) -> None:
    timeout = client.now("noop")
    ran(db, timeout, "failed", MINUTE, MINUTE, failReason="TimeoutError: took too long")
    refused = client.now("noop")
    error = {"type": "HTTPError", "message": "503 from api.example (retry [later])"}
    ran(db, refused, "failed", MINUTE, MINUTE, failReason="gateway", error=error)
    client.now("noop")
    assert ids(client.jobs(error="too LONG")) == [timeout]
    assert ids(client.jobs(error="[later]")) == [refused]  # text, not a pattern
    assert client.count_jobs(error="e") == 2


def test_finish_time_bounds_finished_jobs_only(client: Client, db: Any) -> None:
    recent = client.now("noop")
    ran(db, recent, "succeeded", 5 * MINUTE, MINUTE)
    old = client.now("noop")
    ran(db, old, "failed", 3 * 60 * MINUTE, MINUTE)
    snoozed = client.now("noop")  # queued again after a run: not finished
    ran(db, snoozed, "queued", 5 * MINUTE, MINUTE)
    assert ids(client.jobs(finished_since="1 hour")) == [recent]
    assert ids(client.jobs(finished_until="1 hour")) == [old]
    assert ids(client.jobs(finished_since="4 hours", finished_until="10 minutes")) == [old]
    assert client.count_jobs(finished_since="1 day", state="queued") == 0


# -- a ready filter ------------------------------------------------------------------------


def test_a_ready_filter_lists_what_its_fields_do_one_by_one(
    client: Client, db: Any, mongo_url: str
) -> None:
    late = client.now("noop", {"customer": "acme"})
    ran(db, late, "failed", MINUTE, MINUTE, failReason="card declined")
    paid = client.now("noop", {"customer": "acme"})
    ran(db, paid, "succeeded", MINUTE, MINUTE)
    client.now("noop", {"customer": "bolt"})
    saved = JobFilter(data_field="customer", data_value="acme", finished_since="1 hour")
    one_by_one = ids(client.jobs(data_field="customer", data_value="acme", finished_since="1h"))
    assert ids(client.jobs(filter=saved)) == one_by_one == [paid, late]
    assert ids(client.jobs(filter=saved, limit=1, skip=1)) == [late]
    assert client.count_jobs(filter=saved) == 2
    assert ids(client.jobs(filter={"state": "failed", "error": "declined"})) == [late]
    assert ids(client.jobs("failed")) == [late]  # state, task and text keep their places
    with pytest.raises(TypeError, match=r"not both \(state\)"):
        client.jobs(filter=saved, state="failed")
    with pytest.raises(InvalidJobError) as refused:
        client.count_jobs(filter={"colour": "red"})
    assert refused.value.field == "filter.colour"

    async def scenario() -> tuple[list[str], int]:
        async with AsyncClient(mongo_url) as aclient:
            found = await aclient.jobs(filter=saved, sort="finished", order="asc")
            return ids(found), await aclient.count_jobs(filter={"state": "succeeded"})

    assert asyncio.run(scenario()) == ([late, paid], 1)


def test_the_keyword_filters_are_the_fields_after_state_task_and_text() -> None:
    assert ("state", "task", "text", *FilterKeywords.__annotations__) == FILTER_FIELDS


# -- sorting ------------------------------------------------------------------------------


def test_sort_by_finish_time_and_duration_with_the_rest_last(client: Client, db: Any) -> None:
    quick = client.now("noop")
    ran(db, quick, "succeeded", 30 * MINUTE, timedelta(milliseconds=250))
    slow = client.now("noop")
    ran(db, slow, "failed", 20 * MINUTE, 9 * MINUTE)
    medium = client.now("noop")
    ran(db, medium, "succeeded", 40 * MINUTE, 2 * MINUTE)
    cancelled = client.cancel(client.now("noop"))["_id"]  # finished, but never ran
    queued = client.now("noop")

    def order(sort: str, direction: str = "desc", **more: Any) -> list[str]:
        return ids(client.jobs(sort=sort, order=direction, **more))

    assert order("created") == [queued, str(cancelled), medium, slow, quick]
    assert order("created", "asc") == [quick, slow, medium, str(cancelled), queued]
    assert order("finished") == [str(cancelled), slow, quick, medium, queued]
    assert order("finished", "asc") == [medium, quick, slow, str(cancelled), queued]
    # Duration: of a succeeded or failed job's last run; the others last, newest first.
    assert order("duration") == [slow, medium, quick, queued, str(cancelled)]
    assert order("duration", "asc") == [quick, medium, slow, queued, str(cancelled)]
    assert order("duration", limit=2, skip=1) == [medium, quick]
    assert order("duration", state="succeeded") == [medium, quick]
    listed = client.jobs(sort="duration", limit=1)[0]
    assert "logs" not in listed and "_sortKey" not in listed and listed["name"] == "noop"


def test_async_client_filters_and_sorts_the_same(client: Client, db: Any, mongo_url: str) -> None:
    long = client.now("noop", {"customer": "acme"})
    ran(db, long, "failed", MINUTE, 5 * MINUTE, failReason="boom")
    short = client.now("noop", {"customer": "acme"})
    ran(db, short, "failed", MINUTE, MINUTE, failReason="boom")
    client.now("noop", {"customer": "acme"})

    async def scenario() -> tuple[list[str], int]:
        async with AsyncClient(mongo_url) as aclient:
            found = await aclient.jobs(
                data_field="customer", data_value="acme", error="BOOM", sort="duration"
            )
            total = await aclient.count_jobs(finished_since="1 hour", data_field="customer")
            return ids(found), total

    assert asyncio.run(scenario()) == ([long, short], 2)


# -- the API's URL and the CLI ---------------------------------------------------------


def test_every_filter_and_the_order_are_in_the_url(
    api: TestClient, client: Client, db: Any
) -> None:
    a = client.now("noop", {"customer": "acme"}, description="first")
    ran(db, a, "failed", 10 * MINUTE, MINUTE, failReason="card declined")
    b = client.now("noop", {"customer": "acme"}, description="second")
    ran(db, b, "failed", 5 * MINUTE, 3 * MINUTE, failReason="card declined")
    client.now("noop", {"customer": "bolt"})
    link = (
        "/api/jobs?task=noop&state=failed&data_field=customer&data_value=acme"
        "&error=declined&finished_since=1%20hour&since=1%20day&sort=duration&order=desc"
    )
    listed = api.get(link).json()
    assert ids(listed["jobs"]) == [b, a] and listed["total"] == 2
    again = api.get(link.replace("order=desc", "order=asc")).json()
    assert ids(again["jobs"]) == [a, b]
    parameters = api.get("/api/openapi.json").json()["paths"]["/api/jobs"]["get"]["parameters"]
    names = {p["name"] for p in parameters}
    assert {
        "data_field",
        "data_value",
        "error",
        "finished_since",
        "finished_until",
        "sort",
        "order",
    } <= names
    bad = api.get("/api/jobs", params={"data_field": "a b"})
    assert bad.status_code == 422 and bad.json()["field"] == "query.data_field"
    assert api.get("/api/jobs", params={"sort": "priority"}).status_code == 422


def test_the_cli_lists_with_the_same_filters(mongo_url: str, client: Client, db: Any) -> None:
    a = client.now("noop", {"customer": "acme"})
    ran(db, a, "failed", MINUTE, MINUTE, failReason="card declined")
    b = client.now("noop", {"customer": "acme"})
    ran(db, b, "failed", MINUTE, 2 * MINUTE, failReason="card declined")
    client.now("noop", {"customer": "acme"})
    args = ["--data-field", "customer", "--data-value", "acme", "--error", "declined"]
    result = CliRunner().invoke(
        main, ["--mongo", mongo_url, "jobs", "list", *args, "--sort", "duration", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert [job["_id"] for job in json.loads(result.stdout)] == [b, a]
    asc = CliRunner().invoke(
        main,
        ["--mongo", mongo_url, "jobs", "list", *args, "--sort", "duration", "--asc", "--json"],
    )
    assert [job["_id"] for job in json.loads(asc.stdout)] == [a, b]
    bad = CliRunner().invoke(main, ["--mongo", mongo_url, "jobs", "list", "--data-field", "$x"])
    assert bad.exit_code == 2 and "not a dotted path" in bad.output


# -- real failures --------------------------------------------------------------------


def test_failures_of_a_real_worker_are_found_by_their_error_and_data(
    client: Client, db: Any, spawn_manager: Any, spawn_worker: Any
) -> None:
    spawn_worker("dash_fail")
    wanted = [client.now("dash_fail", {"customer": "acme", "why": "card declined"}) for _ in "ab"]
    others = [
        client.now("dash_fail", {"customer": "bolt", "why": "card declined"}),
        client.now("dash_fail", {"customer": "acme", "why": "out of stock"}),
        client.now("dash_fail", {"customer": "acme", "ok": True}),
    ]
    for job_id in wanted + others:
        wait_finished(db, job_id)
    base = spawn_manager("m1").api_url()
    query = {"data_field": "customer", "data_value": "acme", "error": "CARD DECLINED"}
    listed = httpx.get(f"{base}/api/jobs", params=query, timeout=30).json()
    assert sorted(ids(listed["jobs"])) == sorted(wanted) and listed["total"] == 2
    by_duration = httpx.get(
        f"{base}/api/jobs", params={**query, "sort": "duration", "order": "asc"}, timeout=30
    ).json()["jobs"]
    docs = {
        str(doc["_id"]): doc
        for doc in db.jobs.find({"_id": {"$in": [ObjectId(i) for i in wanted]}})
    }
    took = {i: docs[i]["lastFinishedAt"] - docs[i]["lastRunAt"] for i in wanted}
    assert ids(by_duration) == sorted(wanted, key=lambda i: (took[i], -int(i, 16)))
