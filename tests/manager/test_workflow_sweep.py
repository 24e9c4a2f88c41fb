"""The leader's retention of workflows (``qworker.manager.workflowsweep``), and the
fan-in of nodes that end outside a run: a cancel, a deletion, a deadline."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from bson import ObjectId

from qworker import Client
from qworker.channel import Channel
from qworker.manager.deadlines import Deadlines
from qworker.manager.workflowsweep import ACTIVE_AGAIN, WorkflowSweep
from qworker.mongo import async_client
from qworker.when import utcnow
from qworker.workflows import node_range


def sweep(mongo_url: str, kind: str = "workflows") -> int:
    async def once() -> int:
        client = async_client(mongo_url)
        db = client.get_default_database()
        try:
            if kind == "deadlines":
                return await Deadlines(db.jobs, db.tasks, Channel(db.channel), "m").sweep()
            return await WorkflowSweep(db.jobs, db.workflows).sweep()
        finally:
            await client.close()

    return asyncio.run(once())


def nodes(db: Any, workflow_id: str) -> dict[str, dict[str, Any]]:
    query = {"_id": node_range(ObjectId(workflow_id))}
    return {doc["flow"]["node"]: doc for doc in db.jobs.find(query)}


def test_a_finished_workflow_goes_whole_when_its_longest_kept_node_is_due(
    client: Client, db: Any, mongo_url: str, burst: Any
) -> None:
    done_id = client.group([("double", {"x": 1}), ("double", {"x": 2})], on_success="gather")
    burst("double", "gather")
    kept = nodes(db, done_id)
    assert all("expireAt" not in doc and doc["flow"]["keepUntil"] for doc in kept.values())
    running_id = client.group([("double", {"x": 3})])
    later_id = client.group([("double", {"x": 4})])
    db.jobs.update_many(
        {"_id": node_range(ObjectId(later_id))},
        {"$set": {"state": "succeeded", "flow.keepUntil": utcnow() + timedelta(days=3)}},
    )
    past = utcnow() - timedelta(seconds=1)
    db.workflows.update_many({}, {"$set": {"checkAt": past}})
    db.jobs.update_many({"_id": node_range(ObjectId(done_id))}, {"$set": {"flow.keepUntil": past}})

    assert sweep(mongo_url) == 1
    assert nodes(db, done_id) == {} and db.workflows.find_one({"_id": ObjectId(done_id)}) is None
    running = db.workflows.find_one({"_id": ObjectId(running_id)})
    assert abs(running["checkAt"] - utcnow() - ACTIVE_AGAIN) < timedelta(seconds=30)
    later = db.workflows.find_one({"_id": ObjectId(later_id)})
    assert abs(later["checkAt"] - utcnow() - timedelta(days=3)) < timedelta(seconds=30)
    assert len(nodes(db, running_id)) == 1 and len(nodes(db, later_id)) == 1


def test_a_child_cancelled_or_deleted_before_it_ran_counts_in_its_group(
    client: Client, db: Any, burst: Any
) -> None:
    group_id = client.group(
        [("double", {"x": n}) for n in range(3)], on_success="gather", on_complete="gather"
    )
    before = nodes(db, group_id)
    client.cancel(str(before["0"]["_id"]))
    client.delete(str(before["1"]["_id"]))
    burst("double", "gather")
    after = nodes(db, group_id)
    assert after["on_success"]["state"] == "cancelled"
    assert after["on_success"]["failReason"].startswith("not run: node '0'")
    summary = after["on_complete"]["result"]["data"]
    assert (summary["total"], summary["succeeded"]) == (3, 1)
    assert [f["state"] for f in summary["failures"]] == ["cancelled"]  # the deleted one is gone


def test_a_node_past_its_deadline_expires_and_its_dependents_hear_of_it(
    client: Client, db: Any, mongo_url: str, burst: Any
) -> None:
    wf = client.workflow("late")
    first = wf.add("double", {"x": 1}, name="first", expires="1 hour")
    wf.add("gather", name="after", deps=[first])
    workflow_id = wf.enqueue()
    db.jobs.update_one(
        {"_id": nodes(db, workflow_id)["first"]["_id"]},
        {"$set": {"expiresAt": utcnow() - timedelta(seconds=1)}},
    )
    assert sweep(mongo_url, "deadlines") == 1
    burst("gather")
    after = nodes(db, workflow_id)
    assert after["first"]["state"] == "expired" and after["after"]["state"] == "cancelled"
    assert "node 'first'" in after["after"]["failReason"]
    assert "expired" in after["after"]["failReason"]
