"""Workflows on real workers: groups and chords, DAGs, both failure policies, cancel and
retry, transactions, and the fan-in's count that a repeated write cannot move twice."""

from __future__ import annotations

import time
from typing import Any

import pytest
from bson import ObjectId
from pymongo import MongoClient
from support.effects import effects_env

from qworker import Client, Dep, InvalidJobError, JobStateError, Step, fanin, rerun, workflows
from qworker.model import JobState
from qworker.operations import run
from qworker.when import utcnow


def nodes_of(db: Any, workflow_id: str) -> dict[str, dict[str, Any]]:
    query = {"_id": workflows.node_range(ObjectId(workflow_id))}
    return {doc["flow"]["node"]: doc for doc in db.jobs.find(query)}


def runs_of(db: Any, job_id: Any) -> int:
    return int(db.effects.count_documents({"job": str(job_id)}))


def test_a_chord_of_200_gets_the_200_results_in_order(
    client: Client, db: Any, mongo_url: str, spawn_worker: Any
) -> None:
    group_id = client.group([("double", {"x": n}) for n in range(200)], on_success=Step("gather"))
    nodes = nodes_of(db, group_id)
    assert nodes["on_success"]["state"] == "waiting" and nodes["0"]["state"] == "queued"
    spawn_worker("double", "gather", env=effects_env(mongo_url))
    with pytest.raises(TimeoutError, match=f"workflow {group_id} is still running"):
        client.wait_workflow(group_id, timeout=0.1)
    assert client.wait_workflow(group_id, timeout=120)["state"] == "succeeded"
    callback = client.get(str(nodes["on_success"]["_id"]))
    assert callback["state"] == "succeeded", callback.get("error")
    assert callback["result"]["data"] == [{"x": 2.0 * n} for n in range(200)]
    assert runs_of(db, callback["_id"]) == 1
    info = client.group_info(group_id)
    assert info["state"] == "succeeded" and info["progress"] == {"finished": 200, "total": 200}
    assert info["counts"]["succeeded"] == 201
    assert info["results"] == [{"x": 2.0 * n} for n in range(200)]
    last_child = max(nodes_of(db, group_id)[str(n)]["lastFinishedAt"] for n in range(200))
    assert last_child <= client.get(str(nodes["on_success"]["_id"]))["lastRunAt"]


def test_on_complete_sums_up_a_group_with_failures_and_on_success_is_cancelled(
    client: Client, db: Any, burst: Any
) -> None:
    steps = [("double", {"x": 1}), ("shortlived", {"fail": True}), ("double", {"x": 3})]
    group_id = client.group(steps, on_success="gather", on_complete="gather")
    burst("double", "shortlived", "gather")
    nodes = nodes_of(db, group_id)
    failed = nodes["1"]
    assert nodes["on_success"]["state"] == "cancelled"
    assert nodes["on_success"]["failReason"] == (
        f"not run: node '1' (job {failed['_id']}) failed: RuntimeError: asked to fail"
    )
    summary = nodes["on_complete"]["result"]["data"]
    assert summary == {
        "total": 3,
        "succeeded": 2,
        "failed": 1,
        "results": [{"x": 2.0}, None, {"x": 6.0}],
        "failures": [
            {
                "index": 1,
                "job": str(failed["_id"]),
                "state": "failed",
                "reason": "RuntimeError: asked to fail",
            }
        ],
    }
    assert client.group_info(group_id)["state"] == "failed"


def diamonds(client: Client, count: int) -> tuple[str, list[str]]:
    """``count`` diamonds in a row: top → left, right → bottom, each bottom the next top."""
    wf = client.workflow("diamonds")
    top = wf.add("gather", {"n": 0}, name="top0")
    names = ["top0"]
    for n in range(count):
        left = wf.add("gather", {"side": "left"}, name=f"left{n}", deps=[top])
        right = wf.add("gather", {"side": "right"}, name=f"right{n}", deps=[top])
        top = wf.add("gather", {"n": n + 1}, name=f"top{n + 1}", deps=[left, right])
        names += [f"left{n}", f"right{n}", f"top{n + 1}"]
    return wf.enqueue(), names


def test_a_dag_of_diamonds_runs_each_node_once_after_its_dependencies(
    client: Client, db: Any, burst: Any
) -> None:
    workflow_id, names = diamonds(client, 3)
    assert {n: d["state"] for n, d in nodes_of(db, workflow_id).items()} == {
        name: "queued" if name == "top0" else "waiting" for name in names
    }
    burst("gather")
    nodes = nodes_of(db, workflow_id)
    for name, doc in nodes.items():
        assert doc["state"] == "succeeded", name
        assert runs_of(db, doc["_id"]) == 1, name
        for dep in doc["flow"].get("deps", []):
            assert nodes[dep["node"]]["lastFinishedAt"] <= doc["lastRunAt"], (name, dep)
    assert nodes["top1"]["result"]["upstream"] == {
        "left0": {
            "data": {"side": "left"},
            "upstream": {"top0": {"data": {"n": 0}, "upstream": {}}},
        },
        "right0": {
            "data": {"side": "right"},
            "upstream": {"top0": {"data": {"n": 0}, "upstream": {}}},
        },
    }
    info = client.workflow_info(workflow_id)
    assert info["state"] == "succeeded" and info["progress"] == {"finished": 10, "total": 10}
    assert [n["node"] for n in info["nodes"]] == names
    assert info["nodes"][-1]["deps"] == ["left2", "right2"]


def test_a_failure_cancels_what_depends_on_it_unless_the_dependency_ignores_it(
    client: Client, db: Any, burst: Any
) -> None:
    wf = client.workflow("policies")
    broken = wf.add("shortlived", {"fail": True}, name="broken")
    fine = wf.add("gather", {"ok": 1}, name="fine")
    strict = wf.add("gather", name="strict", deps=[broken, fine])
    wf.add("gather", name="after_strict", deps=[strict])
    lenient = wf.add("gather", name="lenient", deps=[Dep(broken, ignore_failure=True), fine])
    wf.add("gather", name="all_lenient", deps=[strict, lenient], ignore_failure=True)
    workflow_id = wf.enqueue()
    burst("shortlived", "gather")
    nodes = nodes_of(db, workflow_id)
    assert nodes["broken"]["state"] == "failed"
    assert nodes["strict"]["state"] == "cancelled" and "lastRunAt" not in nodes["strict"]
    assert nodes["strict"]["failReason"] == (
        f"not run: node 'broken' (job {nodes['broken']['_id']}) failed: RuntimeError: asked to fail"
    )
    assert nodes["after_strict"]["state"] == "cancelled"
    assert nodes["after_strict"]["failReason"] == nodes["strict"]["failReason"] + (
        " (through node 'strict')"
    )
    assert nodes["strict"]["attempts"] == 0
    assert nodes["lenient"]["state"] == "succeeded"
    assert nodes["lenient"]["result"]["upstream"] == {
        "broken": {"failed": "failed", "reason": "RuntimeError: asked to fail"},
        "fine": {"data": {"ok": 1}, "upstream": {}},
    }
    seen = nodes["all_lenient"]["result"]["upstream"]
    assert seen["strict"]["failed"] == "cancelled" and "data" in seen["lenient"]
    assert runs_of(db, nodes["lenient"]["_id"]) == 1


def test_retrying_a_failed_node_runs_again_what_its_failure_cancelled(
    client: Client, db: Any, burst: Any
) -> None:
    wf = client.workflow("node-retry")
    broken = wf.add("shortlived", {"fail": True}, name="broken")
    strict = wf.add("gather", name="strict", deps=[broken])
    wf.add("gather", name="after", deps=[strict])
    wf.add("gather", name="lenient", deps=[Dep(broken, ignore_failure=True)])
    workflow_id = wf.enqueue()
    burst("shortlived", "gather")
    nodes = nodes_of(db, workflow_id)
    assert [nodes[n]["state"] for n in ("broken", "strict", "after", "lenient")] == [
        "failed",
        "cancelled",
        "cancelled",
        "succeeded",
    ]
    db.jobs.update_one({"_id": nodes["broken"]["_id"]}, {"$set": {"data": {"fail": False}}})
    assert client.retry(str(nodes["broken"]["_id"]))["state"] == "queued"
    again = nodes_of(db, workflow_id)
    assert [again[n]["state"] for n in ("strict", "after", "lenient")] == [
        "waiting",
        "waiting",
        "succeeded",  # it ran, seeing the failure: kept
    ]
    assert "doomedBy" not in again["strict"]["flow"] and again["after"]["flow"]["pending"] == 1
    burst("shortlived", "gather")
    done = nodes_of(db, workflow_id)
    assert {n: d["state"] for n, d in done.items()} == dict.fromkeys(done, "succeeded")
    assert done["after"]["result"]["upstream"] == {
        "strict": {"data": None, "upstream": {"broken": "done"}}
    }
    assert runs_of(db, done["lenient"]["_id"]) == 1


def test_retrying_a_child_waits_for_the_children_still_running(
    client: Client, db: Any, burst: Any, mongo_url: str
) -> None:
    """The chord a failed child cancelled waits again for it and for a child that has not
    run yet; a child that ends while the retry is being written is counted all the same."""
    steps = [("shortlived", {"fail": True}), ("double", {"x": 1}), ("noop", {})]
    group_id = client.group(steps, on_success="gather")
    burst("shortlived", "gather")  # the others wait for workers of theirs
    nodes = nodes_of(db, group_id)
    assert nodes["on_success"]["state"] == "cancelled"
    db.jobs.update_one({"_id": nodes["0"]["_id"]}, {"$set": {"data": {"fail": False}}})
    read = list(db.jobs.find({"_id": workflows.node_range(ObjectId(group_id))}, rerun.FIELDS))
    burst("double")  # child 1 ends after the retry read it queued
    assert client.get(str(nodes["1"]["_id"]))["state"] == "succeeded"
    with MongoClient(mongo_url, tz_aware=True) as mongo:
        database = mongo.get_default_database()
        op = rerun.rerun(read, {nodes["0"]["_id"]}, utcnow())
        assert run(op, database, client.names) == [nodes["0"]["_id"], nodes["on_success"]["_id"]]
    callback = client.get(str(nodes["on_success"]["_id"]))
    assert callback["state"] == "waiting" and callback["flow"]["pending"] == 2  # 0 and 2
    burst("shortlived", "noop", "gather")
    info = client.group_info(group_id)
    assert info["state"] == "succeeded" and info["results"] == ["done", {"x": 2.0}, None]


def test_a_unique_workflow_is_enqueued_once_while_it_runs(
    client: Client, db: Any, burst: Any
) -> None:
    first = client.group([("double", {"x": 1})], on_success="gather", unique="daily")
    again = client.group([("double", {"x": 2})], on_success="gather", unique="daily")
    assert again == first and db.jobs.count_documents({}) == 2
    other = client.group([("double", {"x": 3})], name="other", unique="daily")  # per name
    wf = client.workflow("group", unique="daily")
    wf.add("double", {"x": 4})
    assert wf.enqueue() == first  # the key is the name's, whatever the kind
    burst("double", "gather")
    assert client.group_info(first)["state"] == "succeeded"
    # Ended: the next enqueue frees the key and takes it.
    later = client.group([("double", {"x": 5})], on_success="gather", unique="daily")
    assert later not in (first, other)
    assert db.workflows.find_one({"_id": ObjectId(first)}).get("uniqueKey") is None
    assert db.workflows.find_one({"_id": ObjectId(later)})["uniqueKey"] == "daily"
    assert client.group([("double", {"x": 6})], unique="daily") == later
    with pytest.raises(InvalidJobError, match="unique must be a non-empty string"):
        client.group([("double", {"x": 7})], unique="")
    assert db.workflows.count_documents({}) == 3


def test_a_dag_is_checked_when_built_and_nothing_is_stored(client: Client, db: Any) -> None:
    wf = client.workflow("checked")
    a = wf.add("gather", name="a")
    with pytest.raises(InvalidJobError, match="'later', which is not a node added before it"):
        wf.add("gather", name="b", deps=[a, "later"])
    with pytest.raises(InvalidJobError, match="there is a node 'a' already"):
        wf.add("gather", name="a")
    with pytest.raises(InvalidJobError, match="names a dependency twice"):
        wf.add("gather", name="c", deps=[a, "a"])
    with pytest.raises(InvalidJobError, match="unknown option"):
        wf.add("gather", name="d", colour="red")
    with pytest.raises(InvalidJobError, match="workflow name"):
        client.workflow("bad name")
    with pytest.raises(InvalidJobError, match="on_success is given the group's results"):
        client.group([("double", {"x": 1})], on_success=("gather", {"table": "t"}))
    with pytest.raises(InvalidJobError, match="a group needs at least one job"):
        client.group([], on_complete="gather")
    assert wf.add("gather", deps=[a]) == workflows.Node("gather")
    assert wf.add("gather", deps=[a]).name == "gather-2"
    db.workers.insert_one({"_id": "w1", "tasks": ["gather"], "state": "running"})
    wf.add("no-such-task", name="e")
    with pytest.raises(InvalidJobError, match=r"unknown task.*'no-such-task'"):
        wf.enqueue()
    assert db.jobs.count_documents({}) == 0 and db.workflows.count_documents({}) == 0


def test_cancel_and_retry_a_workflow(client: Client, db: Any, burst: Any) -> None:
    wf = client.workflow("again")
    first = wf.add("gather", {"n": 1}, name="first")
    second = wf.add("shortlived", {"fail": True}, name="second", deps=[first])
    wf.add("gather", name="third", deps=[second])
    workflow_id = wf.enqueue()
    with pytest.raises(JobStateError, match="still running"):
        client.retry_workflow(workflow_id)
    burst("gather", "shortlived")
    nodes = nodes_of(db, workflow_id)
    assert [nodes[n]["state"] for n in ("first", "second", "third")] == [
        "succeeded",
        "failed",
        "cancelled",
    ]
    # Run it again, with "second" fixed: the succeeded node is kept.
    db.jobs.update_one({"_id": nodes["second"]["_id"]}, {"$set": {"data": {"fail": False}}})
    queued = client.retry_workflow(workflow_id)
    assert [str(doc["_id"]) for doc in queued] == [str(nodes["second"]["_id"])]
    assert client.get(str(nodes["third"]["_id"]))["state"] == "waiting"
    burst("gather", "shortlived")
    nodes = nodes_of(db, workflow_id)
    assert {n: d["state"] for n, d in nodes.items()} == dict.fromkeys(nodes, "succeeded")
    assert runs_of(db, nodes["first"]["_id"]) == 1 and runs_of(db, nodes["third"]["_id"]) == 1
    with pytest.raises(JobStateError, match="every node succeeded"):
        client.retry_workflow(workflow_id)

    again_id, _ = diamonds(client, 1)
    asked = client.cancel_workflow(again_id)
    assert asked["state"] == "cancelled" and asked["counts"]["cancelled"] == 4
    assert {d["failReason"] for d in nodes_of(db, again_id).values()} == {
        "its workflow was cancelled"
    }


def test_a_workflow_enqueued_in_an_aborted_transaction_leaves_nothing(
    client: Client, db: Any
) -> None:
    with pytest.raises(RuntimeError), client.transaction() as s:
        client.group([("double", {"x": 1})], on_success="gather", session=s)
        raise RuntimeError("declined")
    assert db.jobs.count_documents({}) == 0 and db.workflows.count_documents({}) == 0
    with client.transaction() as s:
        group_id = client.group([("double", {"x": 1})], on_success="gather", session=s)
    assert client.group_info(group_id)["counts"]["waiting"] == 1
    assert [w["_id"] for w in client.workflows()] == [ObjectId(group_id)]


def test_an_outcome_written_twice_counts_once(mongo_url: str, db: Any) -> None:
    built = workflows.group(
        [("double", {"x": n}) for n in range(130)], utcnow(), utcnow(), "gather"
    )
    db.jobs.insert_many(built.jobs)
    callback = built.jobs[-1]["_id"]
    children = built.jobs[:-1]
    with MongoClient(mongo_url) as mongo:
        jobs = mongo.get_default_database().jobs
        for child in children[:60]:  # one end at a time, each written twice
            writes = fanin.released(child, JobState.SUCCEEDED, None, utcnow(), None)
            jobs.bulk_write(writes, ordered=True)
            jobs.bulk_write(writes, ordered=True)  # a retried batch
        assert db.jobs.find_one({"_id": callback})["flow"]["pending"] == 70
        # A batch's ends in one count-down, repeating some counted already.
        bits = list(range(50, 130))
        jobs.bulk_write([fanin.count_down(callback, bits, utcnow())] * 2, ordered=True)
    done = db.jobs.find_one({"_id": callback})
    assert done["state"] == "queued" and done["flow"]["pending"] == 0
    assert done["flow"]["bits"] == {"w0": 0, "w1": 0, "w2": 0}


@pytest.mark.parametrize("fanout", ["fanout", "fanout_isolated"])
def test_a_job_fans_out_a_group_and_a_dag_that_its_callbacks_collect(
    client: Client, db: Any, burst: Any, fanout: str
) -> None:
    group_parent = client.now(fanout, {"xs": [1, 2, 3]})
    dag_parent = client.now(fanout, {"dag": True, "xs": [5]})
    burst(fanout, "double", "gather")
    group_id = client.get(group_parent)["result"]["started"]
    info = client.group_info(group_id)
    assert info["state"] == "succeeded" and info["results"] == [{"x": 2.0}, {"x": 4.0}, {"x": 6.0}]
    callback = nodes_of(db, group_id)["on_success"]
    assert callback["result"]["data"] == info["results"]
    dag = nodes_of(db, client.get(dag_parent)["result"]["started"])
    assert dag["then"]["result"]["upstream"] == {"first": {"x": 10.0}}
    assert db.workflows.count_documents({}) == 2


def test_a_child_that_fails_is_retried_and_succeeds_counts_once(
    client: Client, db: Any, burst: Any
) -> None:
    steps = [Step("retrying", {"fail_times": 1}, priority="high"), ("double", {"x": 4})]
    group_id = client.group(steps, on_success="gather", on_complete="gather")
    for _ in range(5):  # a burst ends while the retry waits out its 1 s backoff
        burst("retrying", "double", "gather")
        if client.group_info(group_id)["state"] != "running":
            break
        time.sleep(1)
    nodes = nodes_of(db, group_id)
    assert nodes["0"]["attempts"] == 2 and nodes["0"]["priority"] > 0
    assert nodes["on_success"]["result"]["data"] == [{"attempt": 2}, {"x": 8.0}]
    assert nodes["on_complete"]["result"]["data"]["succeeded"] == 2
    assert runs_of(db, nodes["on_success"]["_id"]) == 1
    assert runs_of(db, nodes["on_complete"]["_id"]) == 1


def test_the_nodes_that_wait_are_stored_before_those_that_release_them(
    client: Client, db: Any
) -> None:
    """A 4-worker bench lost 17 of 10,000 count-downs: the first children ran and ended
    before the insert reached their callback, so their count-downs found nothing."""
    group_id = client.group([("double", {"x": n}) for n in range(50)], on_success="gather")
    stored = [doc["state"] for doc in db.jobs.find().sort("$natural", 1)]
    assert stored == ["waiting"] + ["queued"] * 50
    assert nodes_of(db, group_id)["on_success"]["state"] == "waiting"


def test_too_many_nodes_is_an_error_at_the_call(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workflows, "MAX_NODES", 3)
    wf = client.workflow("big")
    for n in range(3):
        wf.add("double", {"x": n}, name=f"n{n}")
    with pytest.raises(InvalidJobError, match="at most 3 nodes"):
        wf.add("double", name="n3")
    with pytest.raises(InvalidJobError, match="a group has at most 3 jobs, its callbacks counted"):
        client.group([("double", {"x": n}) for n in range(3)], on_success="gather")
