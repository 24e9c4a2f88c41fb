"""Bulk actions: retry, cancel or delete the given jobs or every job a filter matches, through
``Client.bulk``, ``AsyncClient.bulk`` and ``POST /api/jobs/bulk``, against the real server.

What spans processes runs there: a real manager's API and real worker processes re-run
the retried jobs and stop the cancelled ones.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from bson import ObjectId
from fastapi.testclient import TestClient
from support.effects import effects_env
from support.jobs import wait_finished
from support.waits import wait_for

from qworker import AsyncClient, Client, bulk
from qworker.errors import InvalidJobError
from qworker.manager.api import create_app
from qworker.operations import run
from qworker.when import utcnow

BASE = "http://127.0.0.1:8765"
SCRIPT = {"X-Qworker-Request": "1"}


@pytest.fixture
def api(client: Client) -> Iterator[TestClient]:
    with TestClient(create_app(client), base_url=BASE, headers=SCRIPT) as test_client:
        yield test_client


def set_state(db: Any, job_ids: list[str], state: str, **more: Any) -> None:
    fields = {"state": state, "lastFinishedAt": utcnow(), **more}
    db.jobs.update_many({"_id": {"$in": [ObjectId(i) for i in job_ids]}}, {"$set": fields})


def states(db: Any, job_ids: list[str]) -> list[str]:
    found = {str(d["_id"]): d["state"] for d in db.jobs.find({}, {"state": 1})}
    return [found.get(job_id, "deleted") for job_id in job_ids]


# -- across processes --------------------------------------------------------------------


def test_a_bulk_retry_of_failed_jobs_matching_a_filter_reruns_exactly_those(
    client: Client, db: Any, mongo_url: str, spawn_manager: Any, spawn_worker: Any
) -> None:
    """The issue's test: a worker process fails jobs, the manager's API retries those of
    one customer, and the worker runs exactly those again."""
    spawn_worker("retrying", env=effects_env(mongo_url))
    fail = {"fail_times": 1}
    wanted = [client.now("retrying", {"customer": "acme", **fail}, max_attempts=1) for _ in "abc"]
    bolt = client.now("retrying", {"customer": "bolt", **fail}, max_attempts=1)
    fine = client.now("retrying", {"customer": "acme", "fail_times": 0})
    for job_id in [*wanted, bolt, fine]:
        wait_finished(db, job_id)
    assert states(db, [*wanted, bolt, fine]) == ["failed"] * 4 + ["succeeded"]
    base = spawn_manager("m1").api_url()
    body = {
        "action": "retry",
        "filter": {"state": "failed", "data_field": "customer", "data_value": "acme"},
    }
    counted = httpx.post(f"{base}/api/jobs/bulk", json={**body, "dry_run": True}, timeout=30)
    assert counted.status_code == 200, counted.text
    assert counted.json() == {
        "action": "retry",
        "dryRun": True,
        "matched": 3,
        "eligible": 3,
        "changed": 0,
    }
    assert Counter(e["job"] for e in db.effects.find()) == dict.fromkeys([*wanted, bolt, fine], 1)
    done = httpx.post(f"{base}/api/jobs/bulk", json=body, timeout=30).json()
    assert done == {"action": "retry", "matched": 3, "changed": 3}

    def ran_again() -> Counter[str] | None:
        runs = Counter(e["job"] for e in db.effects.find())
        return runs if all(runs[job_id] == 2 for job_id in wanted) else None

    runs = wait_for(ran_again, 60, "the retried jobs to run again")
    for job_id in wanted:
        wait_finished(db, job_id)
    assert runs == {**dict.fromkeys(wanted, 2), bolt: 1, fine: 1}
    assert Counter(e["job"] for e in db.effects.find()) == runs  # nothing else ran since


def test_a_bulk_cancel_asks_running_jobs_to_stop_and_cancels_queued_ones(
    client: Client, db: Any, mongo_url: str, spawn_worker: Any
) -> None:
    spawn_worker("cooperative", env=effects_env(mongo_url))
    running = [client.now("cooperative", {"limit": 60}) for _ in range(2)]
    wait_for(lambda: client.count_jobs(state="running") == 2, 30, "two running jobs")
    later = client.schedule("in 1 hour", "cooperative")
    finished = client.now("noop")
    set_state(db, [finished], "succeeded")
    done = client.bulk("cancel", filter={"task": "cooperative"})
    assert done == {"action": "cancel", "matched": 3, "changed": 3}
    for job_id in running:
        assert wait_finished(db, job_id)["state"] == "cancelled"
    assert {e["job"]: e["saw_cancel"] for e in db.effects.find({"phase": "end"})} == {
        running[0]: True,
        running[1]: True,
    }
    assert states(db, [later, finished]) == ["cancelled", "succeeded"]
    again = client.bulk("cancel", filter={"task": "cooperative"})
    assert again == {"action": "cancel", "matched": 3, "changed": 0}


# -- the rules of each action ---------------------------------------------------------------


def test_a_bulk_delete_spares_running_jobs(client: Client, db: Any) -> None:
    queued, running, failed = (client.now("noop") for _ in range(3))
    set_state(db, [running], "running")
    set_state(db, [failed], "failed")
    assert client.bulk("delete", filter={}, dry_run=True) == {
        "action": "delete",
        "dryRun": True,
        "matched": 3,
        "eligible": 2,
        "changed": 0,
    }
    assert client.bulk("delete", filter={}) == {"action": "delete", "matched": 3, "changed": 2}
    assert states(db, [queued, running, failed]) == ["deleted", "running", "deleted"]


def test_a_bulk_retry_takes_finished_jobs_only(client: Client, db: Any) -> None:
    failed, cancelled, queued = (client.now("noop") for _ in range(3))
    set_state(db, [failed], "failed", failReason="boom", attempts=1, failCount=1)
    client.cancel(cancelled)
    done = client.bulk("retry", ids=[failed, cancelled, queued])
    assert done == {"action": "retry", "matched": 3, "changed": 2}
    again = db.jobs.find_one({"_id": ObjectId(failed)})
    assert again["state"] == "queued" and "failReason" not in again and again["failCount"] == 0
    assert states(db, [cancelled, queued]) == ["queued", "queued"]


def test_a_job_whose_unique_key_is_held_is_left_as_it_is(client: Client, db: Any) -> None:
    old = client.now("noop", unique="nightly")
    set_state(db, [old], "failed")
    holder = client.now("noop", unique="nightly")
    other = client.now("noop")
    set_state(db, [other], "failed")
    assert client.bulk("retry", filter={"state": "failed"}) == {
        "action": "retry",
        "matched": 2,
        "changed": 1,
    }
    assert states(db, [old, holder, other]) == ["failed", "queued", "queued"]


def test_workflow_nodes_go_through_their_own_paths(client: Client, db: Any, burst: Any) -> None:
    wf = client.workflow("bulk")
    first = wf.add("double", {"x": 1}, name="first")
    wf.add("shortlived", {"fail": True}, name="second", deps=[first])
    workflow_id = wf.enqueue()
    burst("double", "shortlived")
    assert client.workflow_info(workflow_id)["state"] == "failed"
    done = client.bulk("retry", filter={"state": "failed"})
    assert done == {"action": "retry", "matched": 1, "changed": 1}
    nodes = {n["node"]: n["state"] for n in client.workflow_info(workflow_id)["nodes"]}
    assert nodes == {"first": "succeeded", "second": "queued"}
    chain_id = client.chain([("double", {"x": 1}), "double", "double"])
    deleted = client.bulk("delete", filter={"state": "queued", "task": "double"})
    assert deleted == {"action": "delete", "matched": 1, "changed": 1}
    steps = [n["state"] for n in client.workflow_info(client.get(chain_id)["flow"]["id"])["nodes"]]
    assert steps == ["cancelled", "cancelled"]  # the first step deleted: its chain stopped


# -- batches --------------------------------------------------------------------------------


def test_each_job_is_taken_once_in_bounded_batches_and_none_that_ended_after(
    client: Client, db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between batches every job fails again (the retried ones re-run and fail, queued ones
    fail for the first time): a retry still runs each job once, and none that was not
    finished when it began."""
    monkeypatch.setattr(bulk, "BATCH", 7)
    queued = client.enqueue_many("noop", [None] * 5)  # older: reached last
    failed = client.enqueue_many("noop", [None] * 40)
    set_state(db, failed, "failed")
    walk = bulk.Bulk("retry", filter={"task": "noop"})
    seen: list[int] = []
    while (batch := run(walk.next(), client.db, client.names)) is not None:
        seen.append(batch.matched)
        again = [str(doc["_id"]) for doc in batch.queued]
        assert len(again) == batch.matched
        set_state(db, again + queued, "failed")  # they ran, and failed (again)
        client.now("noop")  # enqueued during the walk: never taken
    assert max(seen) == 7 and sum(seen) == 40
    assert walk.result() == {"action": "retry", "matched": 40, "changed": 40}
    assert states(db, failed + queued) == ["failed"] * 45  # none retried twice, nor late
    assert client.count_jobs(state="queued") == len(seen)  # those enqueued during it


# -- the API and its input ------------------------------------------------------------------


def test_the_route_over_ids_and_its_dry_run(api: TestClient, client: Client, db: Any) -> None:
    a, b = client.now("noop"), client.now("noop")
    set_state(db, [a], "failed")
    body = {"action": "retry", "ids": [a, b, "0" * 24]}
    assert api.post("/api/jobs/bulk", json={**body, "dry_run": True}).json() == {
        "action": "retry",
        "dryRun": True,
        "matched": 2,
        "eligible": 1,
        "changed": 0,
    }
    assert api.post("/api/jobs/bulk", json=body).json() == {
        "action": "retry",
        "matched": 2,
        "changed": 1,
    }


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"action": "retry"}, "body.ids"),
        ({"action": "retry", "ids": [], "filter": {}}, "body.ids"),
        ({"action": "explode", "filter": {}}, "body.action"),
        ({"action": "delete", "filter": {"colour": "red"}}, "body.filter.colour"),
        ({"action": "delete", "filter": {"state": "sleeping"}}, "body.filter.state"),
        ({"action": "delete", "filter": {"data_field": "$where"}}, "body.filter.data_field"),
        ({"action": "delete", "ids": ["nope"]}, "body.ids.0"),
        ({"action": "delete", "ids": ["0" * 24] * 10_001}, "body.ids"),
    ],
)
def test_bad_bulk_requests_are_refused_naming_the_field(
    api: TestClient, client: Client, body: dict[str, Any], field: str
) -> None:
    client.now("noop")
    response = api.post("/api/jobs/bulk", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field
    assert client.count_jobs() == 1


def test_the_client_refuses_ids_and_filter_together(client: Client) -> None:
    with pytest.raises(InvalidJobError, match="not both"):
        client.bulk("retry", ids=[], filter={})
    with pytest.raises(InvalidJobError, match="unknown filter 'colour'"):
        client.bulk("retry", filter={"colour": "red"})


def test_the_async_client_acts_alike(client: Client, db: Any, mongo_url: str) -> None:
    jobs = client.enqueue_many("noop", [{"n": n} for n in range(4)])
    set_state(db, jobs[:2], "failed")

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        async with AsyncClient(mongo_url) as aclient:
            dry = await aclient.bulk("retry", filter={"state": "failed"}, dry_run=True)
            return dry, await aclient.bulk("cancel", ids=jobs)

    dry, cancelled = asyncio.run(scenario())
    assert (dry["matched"], dry["eligible"]) == (2, 2)
    assert cancelled == {"action": "cancel", "matched": 4, "changed": 2}
    assert states(db, jobs) == ["failed", "failed", "cancelled", "cancelled"]
