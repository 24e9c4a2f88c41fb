"""Fleet-wide controls of a task, kept in MongoDB: whether it is paused.

One document per task in ``controls`` (``{_id: task, paused, changedAt}``), so
a pause outlives every process. A worker reads the pauses of its tasks as it
starts, every poll interval and at once on the channel's ``task:control``
hint, and claims nothing of a paused task: its queued jobs stay queued, its
running ones finish, the worker's other tasks run on. A claim already under
way when the pause lands may still start the jobs it took.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from pymongo import ReturnDocument

from qworker.model import check_task_id
from qworker.operations import Call, Operation

Doc = dict[str, Any]


def set_paused(task_id: str, paused: bool, now: datetime) -> Operation[Doc]:
    """Pause or resume a task, for every worker; the task's controls."""
    check_task_id(task_id)
    update = {"$set": {"paused": paused, "changedAt": now}}
    doc = yield Call(
        "controls",
        "find_one_and_update",
        ({"_id": task_id}, update),
        {"upsert": True, "return_document": ReturnDocument.AFTER},
    )
    return view(doc)


def get(task_id: str) -> Operation[Doc]:
    check_task_id(task_id)
    doc = yield Call("controls", "find_one", ({"_id": task_id},))
    return view(doc or {"_id": task_id})


def paused_among(tasks: Iterable[str] | None = None) -> Operation[set[str]]:
    """The paused tasks (of ``tasks``, if given)."""
    query: Doc = {"paused": True}
    if tasks is not None:
        query["_id"] = {"$in": sorted(tasks)}
    docs: list[Doc] = yield Call("controls", "find", (query, {"_id": 1}))
    return {str(doc["_id"]) for doc in docs}


def view(doc: Doc) -> Doc:
    return {"id": doc["_id"], "paused": bool(doc.get("paused")), "changedAt": doc.get("changedAt")}
