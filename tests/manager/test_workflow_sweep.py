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
    # Kept with its workflow, not deleted on its own before its dependents read it.
    assert "expireAt" not in after["first"] and after["first"]["flow"]["keepUntil"]
    assert "node 'first'" in after["after"]["failReason"]
    assert "expired" in after["after"]["failReason"]


def test_an_end_that_a_crash_kept_from_its_dependents_is_written_by_the_sweep(
    client: Client, db: Any, mongo_url: str
) -> None:
    """A cancel or a deadline outside a run is two writes, the end then the count-down;
    the sweep finds a waiting node whose ended dependency's bit is still set."""
    wf = client.workflow("gap", check_tasks=False)
    ok = wf.add("double", {"x": 1}, name="ok")
    gone = wf.add("double", {"x": 2}, name="gone")
    wf.add("gather", name="after_ok", deps=[ok])
    wf.add("gather", name="after_gone", deps=[gone])
    wf.add("gather", name="both", deps=[ok, "after_ok"])
    workflow_id = wf.enqueue()
    found = nodes(db, workflow_id)
    # The ends alone, as a crash right after them leaves them.
    db.jobs.update_one({"_id": found["ok"]["_id"]}, {"$set": {"state": "succeeded"}})
    db.jobs.update_one({"_id": found["gone"]["_id"]}, {"$set": {"state": "cancelled"}})
    db.workflows.update_one({}, {"$set": {"checkAt": utcnow() - timedelta(seconds=1)}})
    assert sweep(mongo_url) == 0
    after = nodes(db, workflow_id)
    assert after["after_ok"]["state"] == "queued" and after["after_ok"]["flow"]["pending"] == 0
    assert after["after_gone"]["state"] == "queued"  # to be ended cancelled by its claim
    assert after["after_gone"]["flow"]["doomedBy"]["node"] == "gone"
    assert after["both"]["state"] == "waiting" and after["both"]["flow"]["pending"] == 1
    db.workflows.update_one({}, {"$set": {"checkAt": utcnow() - timedelta(seconds=1)}})
    assert sweep(mongo_url) == 0
    assert nodes(db, workflow_id)["both"]["flow"]["pending"] == 1  # counted once
