"""Documents written straight into ``jobs``, around the client: a worker must survive them.

Every one that names the worker's task and is due either runs (it is a job after
all) or ends ``failed`` with a reason that names the field; none may crash the
worker, stop it from running the good jobs queued with them, or be retried forever.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from bson import ObjectId
from support.jobs import FINISHED
from support.logs import alive, count_logged, ready
from support.waits import wait_for

from qworker import Client
from qworker.model import malformed

NOW = datetime.now(UTC)

# (the junk fields, the field a failure must name; None: the job may simply run)
JUNK: list[tuple[dict[str, Any], str | None]] = [
    ({"priority": "high"}, None),  # claimed in turn (as priority 0), then failed
    ({"priority": 1.5}, None),
    ({"priority": True}, None),
    ({"attempts": "many"}, "attempts"),  # the claim's $inc is refused by the server
    ({"failCount": "x", "maxAttempts": "y"}, "failCount"),
    ({"maxAttempts": 0}, "maxAttempts"),
    ({"timeout": "soon"}, "timeout"),
    ({"timeout": -5}, "timeout"),
    ({"lostCount": [1]}, "lostCount"),
    ({"flow": "next"}, "flow"),
    ({"logs": "none"}, "logs"),
    ({"description": 5}, "description"),
    ({"expiresAt": "soon"}, "expiresAt"),  # not a deadline it could compare with now
    ({"data": {"deep": [[[{"a": None}]]]}}, None),  # odd but valid data: it runs
]


def junk_job(fields: dict[str, Any]) -> dict[str, Any]:
    return {
        "_id": ObjectId(),
        "name": "noop",
        "state": "queued",
        "nextRunAt": NOW,
        "createdAt": NOW,
        **fields,
    }


def test_malformed_names_the_field() -> None:
    assert malformed(junk_job({})) is None
    assert malformed({**junk_job({}), "attempts": 0, "failCount": 0, "logs": []}) is None
    for fields, field in JUNK:
        problem = malformed(junk_job(fields))
        if field is not None:
            assert problem is not None and repr(field) in problem, (fields, problem)


def test_junk_in_the_jobs_collection_neither_crashes_nor_blocks_a_worker(
    client: Client, db: Any, spawn_worker: Any
) -> None:
    worker = spawn_worker("noop", worker_id="w1")
    ready(worker)
    junk = [junk_job(fields) for fields, _ in JUNK]
    # Not jobs at all: never due, or an id a worker cannot order; they are left alone.
    strays = [
        {"_id": "a-string-id", "name": "noop", "state": "queued", "nextRunAt": NOW},
        {"_id": ObjectId(), "name": "noop", "state": "queued", "nextRunAt": "now"},
        {"_id": ObjectId(), "name": "noop", "state": "queued"},
    ]
    db.jobs.insert_many([*junk, *strays])
    good = client.enqueue_many("noop", [{"n": n} for n in range(40)])

    for job_id in good:
        done = wait_for(
            lambda i=job_id: db.jobs.find_one({"_id": ObjectId(i), "state": {"$in": FINISHED}}),
            60,
            f"good job {job_id} to finish",
        )
        assert done["state"] == "succeeded", done
    for (fields, field), doc in zip(JUNK, junk, strict=True):
        ended = wait_for(
            lambda d=doc: db.jobs.find_one({"_id": d["_id"], "state": {"$in": FINISHED}}),
            60,
            f"junk {fields} to end",
        )
        if field is not None:
            assert ended["state"] == "failed", (fields, ended)
            assert field in ended["failReason"] and "malformed job" in ended["failReason"], ended
            assert "lockToken" not in ended
    for stray in strays:
        assert db.jobs.find_one({"_id": stray["_id"]})["state"] == "queued"

    # Still serving, said what it refused, and never crashed.
    alive(worker)
    assert count_logged(worker, "failing a malformed job") >= sum(1 for _, f in JUNK if f)
    output = worker.output()
    assert "Traceback" not in output, output[-3000:]
    late = client.now("noop")
    assert wait_for(
        lambda: db.jobs.find_one({"_id": ObjectId(late), "state": "succeeded"}), 60, "a new job"
    )
    # Nothing is left running or retried in a loop.
    assert db.jobs.count_documents({"state": "running"}) == 0
    junk_ids = [doc["_id"] for doc in junk]
    assert db.jobs.count_documents({"_id": {"$in": junk_ids}, "state": {"$nin": FINISHED}}) == 0
