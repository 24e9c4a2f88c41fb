"""What clients and operators do to workflows: store one, read it, cancel it, run it again.

Each is an operation (``qworker.operations``), run by ``Client`` and
``AsyncClient`` alike. A workflow's nodes are read as one ``_id`` range
(``workflows.node_range``): the read is the size of the workflow, never of
the queue.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from bson import ObjectId
from pymongo.errors import DuplicateKeyError, OperationFailure

from qworker import fanin, lifecycle, rerun, store, workflows
from qworker.enqueue import Enqueued, due_soon
from qworker.errors import InvalidJobError, JobNotFound, JobStateError
from qworker.model import ACTIVE_STATES, JobState, check_unique_key
from qworker.mongo import UNAUTHORIZED
from qworker.operations import Call, Operation
from qworker.steps import Step
from qworker.when import parse_when, utcnow
from qworker.workflows import Built, node_range

Doc = dict[str, Any]

NODE_FIELDS = {
    "name": 1,
    "state": 1,
    "priority": 1,
    "result": 1,
    "failReason": 1,
    "lastRunAt": 1,
    "lastFinishedAt": 1,
    "flow.node": 1,
    "flow.deps": 1,
    "flow.over": 1,
    "flow.pending": 1,
}
ACTIVE = [s.value for s in ACTIVE_STATES]
CANCELLED_REASON = "its workflow was cancelled"


def check_tasks(tasks: Iterable[str]) -> Operation[None]:
    """Refuse a task no worker knows, where workers have said what they run."""
    try:
        announced: list[str] = yield Call("tasks", "distinct", ("_id",))
        listed: list[str] = yield Call("workers", "distinct", ("tasks",))
    except OperationFailure as exc:
        if exc.code != UNAUTHORIZED:
            raise
        return  # an application's role reads no fleet: the workers will refuse what they lack
    known = set(announced) | set(listed)
    unknown = sorted(set(tasks) - known)
    if known and unknown:
        raise InvalidJobError(
            f"unknown task(s) {', '.join(map(repr, unknown))}: no worker has announced them "
            f"(known: {', '.join(sorted(known))}); pass check_tasks=False if their workers "
            "have not started yet",
            "task",
        )


def insert(
    built: Built, now: datetime, check: bool = True, unique: str | None = None
) -> Operation[Enqueued]:
    """Store a workflow: its document, then its jobs in one ordered insert; with
    ``check``, refuse tasks no worker knows (``check_tasks``) first. With ``unique``,
    the id of the workflow of that name and key still running, if there is one."""
    if check:
        yield from check_tasks({doc["name"] for doc in built.jobs})
    if check_unique_key(unique) is not None:
        built.workflow["uniqueKey"] = unique
        holder = yield from _insert_unique(built.workflow)
        if holder is not None:
            return Enqueued([str(holder)])
    else:
        yield Call("workflows", "insert_one", (built.workflow,))
    yield from store.insert(built.insert_order)
    queued = [doc for doc in built.jobs if doc["state"] == JobState.QUEUED.value]
    return Enqueued([built.id], due_soon(queued, now))


def _insert_unique(doc: Doc) -> Operation[ObjectId | None]:
    """Insert a workflow document with a ``uniqueKey``; None, or the id of the running
    workflow holding the key. A holder found ended gives its key up (no write at its
    end holds it: the first enqueue after it frees it)."""
    for _ in range(store.UNIQUE_INSERT_TRIES):
        try:
            yield Call("workflows", "insert_one", (doc,))
            return None
        except DuplicateKeyError:
            key = {"name": doc["name"], "uniqueKey": doc["uniqueKey"]}
            holder = yield Call("workflows", "find_one", (key, {"_id": 1}))
        if holder is None:
            continue  # freed meanwhile
        active = {"_id": node_range(holder["_id"]), "state": {"$in": ACTIVE}}
        if (yield Call("jobs", "find_one", (active, {"_id": 1}))) is not None:
            return ObjectId(holder["_id"])
        freed = {"$unset": {"uniqueKey": ""}, "$set": {"freedKey": doc["uniqueKey"]}}
        yield Call("workflows", "update_one", ({**key, "_id": holder["_id"]}, freed))
    raise JobStateError(f"unique key {doc['uniqueKey']!r} is contended; try again")


def _workflow(workflow_id: str | ObjectId) -> Operation[Doc]:
    oid = store.object_id(workflow_id)
    doc = yield Call("workflows", "find_one", ({"_id": oid},))
    if doc is None:
        raise JobNotFound(f"no workflow {workflow_id}")
    return doc  # type: ignore[no-any-return]


def _nodes(workflow_id: ObjectId, fields: Doc = NODE_FIELDS) -> Operation[list[Doc]]:
    query = {"_id": node_range(workflow_id)}
    docs = yield Call("jobs", "find", (query, fields), {"sort": [("_id", 1)]})
    return docs  # type: ignore[no-any-return]


def info(workflow_id: str | ObjectId) -> Operation[Doc]:
    """The workflow, its state, its nodes' counts by state, and each node."""
    doc = yield from _workflow(workflow_id)
    nodes = yield from _nodes(doc["_id"])
    _summarize(doc, nodes)
    doc["nodes"] = [_node(node) for node in nodes]
    if doc["kind"] == "group":
        doc["results"] = [node.get("result") for node in nodes if _is_child(node)]
    return doc


def _summarize(doc: Doc, nodes: list[Doc]) -> None:
    """Add the state, the counts by state and the progress (a group's: of its children)."""
    counts = Counter(node["state"] for node in nodes)
    counted = [node for node in nodes if _is_child(node)] if doc["kind"] == "group" else nodes
    finished = sum(1 for node in counted if node["state"] not in ACTIVE)
    doc.update(
        state=_state(counts),
        counts={s.value: counts.get(s.value, 0) for s in JobState},
        progress={"finished": finished, "total": len(counted)},
    )


def _is_child(node: Doc) -> bool:
    """A group's child (nodes 0, 1, ...), not one of its callbacks."""
    return str((node.get("flow") or {}).get("node")).isdigit()


def state(workflow_id: str | ObjectId) -> Operation[str]:
    """``running`` while a node is waiting, queued or running; else ``info``'s state (one
    read that stops at the first active node, then the counts once it is over)."""
    doc = yield from _workflow(workflow_id)
    active = {"_id": node_range(doc["_id"]), "state": {"$in": ACTIVE}}
    if (yield Call("jobs", "find_one", (active, {"_id": 1}))) is not None:
        return "running"
    return str((yield from info(doc["_id"]))["state"])


def _node(doc: Doc) -> Doc:
    flow = doc.get("flow") or {}
    deps = [dep["node"] for dep in flow.get("deps") or []]
    return {
        "node": flow.get("node"),
        "id": str(doc["_id"]),
        "task": doc.get("name"),
        "state": doc.get("state"),
        "deps": deps,
        "ignoreFailure": [dep["node"] for dep in flow.get("deps") or [] if dep["ignoreFailure"]],
        "waitsForGroup": "over" in flow,
        "pending": flow.get("pending") if doc.get("state") == JobState.WAITING.value else 0,
        "result": doc.get("result"),
        "reason": doc.get("failReason"),
        "lastRunAt": doc.get("lastRunAt"),
        "lastFinishedAt": doc.get("lastFinishedAt"),
    }


def _state(counts: Counter[str]) -> str:
    """running while a node is active; else succeeded, failed (or expired), cancelled."""
    if any(counts.get(s) for s in ACTIVE):
        return "running"
    if set(counts) <= {JobState.SUCCEEDED.value}:
        return JobState.SUCCEEDED.value
    if counts.get(JobState.FAILED.value) or counts.get(JobState.EXPIRED.value):
        return JobState.FAILED.value
    return JobState.CANCELLED.value


def listing(limit: int = 50, skip: int = 0) -> Operation[list[Doc]]:
    """Workflows, newest first, each with its state and counts (its nodes' states read,
    not their results)."""
    newest = [("createdAt", -1), ("_id", -1)]
    docs = yield Call("workflows", "find", ({},), {"sort": newest, "limit": limit, "skip": skip})
    for doc in docs:
        nodes = yield from _nodes(doc["_id"], {"state": 1, "flow.node": 1})
        _summarize(doc, nodes)
    return docs  # type: ignore[no-any-return]


def cancel(workflow_id: str | ObjectId, now: datetime) -> Operation[list[ObjectId]]:
    """Cancel the nodes not started; ask the running ones to stop. The ids asked."""
    doc = yield from _workflow(workflow_id)
    nodes = {"_id": node_range(doc["_id"])}
    update = lifecycle.Outcome(JobState.CANCELLED, reason=CANCELLED_REASON).update(now)
    yield Call("jobs", "update_many", ({**nodes, "state": lifecycle.WAITING_OR_QUEUED}, update))
    running = {**nodes, "state": JobState.RUNNING.value}
    asked: list[Doc] = yield Call("jobs", "find", (running, {"_id": 1}))
    yield Call("jobs", "update_many", (running, lifecycle.CANCEL_REQUEST))
    return [job["_id"] for job in asked]


def retry(workflow_id: str | ObjectId, now: datetime) -> Operation[list[Doc]]:
    """Run the nodes that did not succeed again, each waiting for those of its
    dependencies that run again (``rerun``); the succeeded ones are kept. The nodes
    queued."""
    doc = yield from _workflow(workflow_id)
    nodes = yield from _nodes(doc["_id"], rerun.FIELDS)
    active = [n for n in nodes if n["state"] in ACTIVE]
    if active:
        raise JobStateError(
            f"workflow {workflow_id} is still running ({len(active)} nodes waiting, queued or "
            "running): cancel it, or wait for it to end"
        )
    asked = {n["_id"] for n in nodes if n["state"] != JobState.SUCCEEDED.value}
    if not asked:
        raise JobStateError(f"workflow {workflow_id}: every node succeeded, nothing to run again")
    ids = yield from rerun.rerun(nodes, asked, now)
    queued = yield Call(
        "jobs", "find", ({"_id": {"$in": ids}, "state": JobState.QUEUED.value}, {"logs": 0})
    )
    return queued  # type: ignore[no-any-return]


def retry_job(job_id: str | ObjectId, now: datetime) -> Operation[Doc]:
    """A finished job run again (``store.retry``); a workflow's node, with the nodes its
    failure cancelled, each waiting for what runs again (``rerun``)."""
    doc = yield from store.get(job_id)
    workflow_id = fanin.flow_of(doc).get("id")
    if not isinstance(workflow_id, ObjectId):
        return (yield from store.retry(job_id, now))
    if doc["state"] in ACTIVE:
        raise store.not_finished(job_id, doc["state"])
    nodes = yield from _nodes(workflow_id, rerun.FIELDS)
    yield from rerun.rerun(nodes, {doc["_id"]}, now)
    return (yield from store.get(doc["_id"]))


def chain(
    steps: Sequence[Step | str | tuple[str, Any]], when: str | datetime | None
) -> Operation[Enqueued]:
    """A chain (``workflows.chain``); its id is its last step's, so ``wait`` waits for it.
    Its tasks are not checked: a chain may wait for workers that start later."""
    now = utcnow()
    built = workflows.chain(steps, now, parse_when(when, now))
    done = yield from insert(built, now, check=False)
    return Enqueued([str(built.jobs[-1]["_id"])], done.due)
