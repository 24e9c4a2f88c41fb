"""Operations on the ``jobs`` collection, and the update documents they use.

The claim path avoids queries whose cost grows with the queue (see "The
claim path" in docs/decisions.md): a worker reads its candidates once, in a batch,
and claims them by ``_id`` with one conditional ``update_many``; completions
are conditional on the claim's ``lockToken`` so a worker that lost its lease
can never overwrite the outcome of another worker's run.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from bson import ObjectId
from bson.errors import InvalidId
from pymongo import ASCENDING, DESCENDING, InsertOne, ReturnDocument, UpdateMany, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, DuplicateKeyError

from qworker import lifecycle
from qworker.errors import InvalidJobError, JobNotFound, JobStateError
from qworker.model import ACTIVE_STATES, FINISHED_STATES, JobState
from qworker.operations import Call, Operation

CANDIDATE_FIELDS = {"_id": 1, "name": 1, "priority": 1, "nextRunAt": 1, "lostCount": 1}
MAX_TEXT_CHARS = 200  # a description search: each description is matched against it
# Paging stops here: MongoDB takes a 64-bit skip, and no one pages a billion jobs.
MAX_SKIP = 1_000_000_000
# A unique key held by a job that finishes meanwhile is retried this many times.
UNIQUE_INSERT_TRIES = 5

Doc = dict[str, Any]
DUPLICATE_KEY = 11000
log = structlog.get_logger("qworker.store")


def object_id(job_id: str | ObjectId) -> ObjectId:
    if isinstance(job_id, ObjectId):
        return job_id
    try:
        return ObjectId(job_id)
    except (InvalidId, TypeError):
        raise JobNotFound(f"no job {job_id!r}: a job id is 24 hexadecimal characters") from None


def _holding(doc: Doc) -> Doc:
    """The active job of the same task and ``uniqueKey`` as ``doc``."""
    return {
        "name": doc["name"],
        "uniqueKey": doc["uniqueKey"],
        "state": {"$in": [s.value for s in ACTIVE_STATES]},
    }


def job_query(
    state: str | None = None,
    task: str | None = None,
    text: str | None = None,
    worker: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    *,
    finished_since: datetime | None = None,
    finished_until: datetime | None = None,
    data_path: str | None = None,
    data_values: Sequence[Any] | None = None,
    error: str | None = None,
) -> Doc:
    """The filter of an operator's job listing; ``worker`` is the one running or last to run it.

    ``finished_since``/``finished_until`` bound ``lastFinishedAt`` of jobs in a finished
    state; ``data_path`` (a dotted path, checked by the caller) must hold one of
    ``data_values`` (or exist, with none given); ``error`` is text in the failure
    reason or the error's message. Only documents whose ``_id`` is an ObjectId are
    listed: every job qworker makes has one, and an id of another kind, written
    around it, could be anything a page or a script puts in a URL
    (``../schedules/x/pause``).
    """
    query: Doc = {"_id": {"$type": "objectId"}}
    both: list[Doc] = []  # conditions that need an $or of their own
    if state:
        query["state"] = state
    if task:
        query["name"] = task
    if text:
        query["description"] = _contains(text, "text")
    if worker:
        # lastWorker is set at claim time; lockedBy finds running jobs claimed before it was.
        query["$or"] = [{"lastWorker": worker}, {"lockedBy": worker}]
    if error:
        found = _contains(error, "error")
        both.append({"$or": [{"failReason": found}, {"error.message": found}]})
    created = _between(since, until)
    if created:
        query["createdAt"] = created
    finished = _between(finished_since, finished_until)
    if finished:
        query["lastFinishedAt"] = finished
        both.append({"state": lifecycle.FINISHED})
    if data_path is not None:
        query[data_path] = {"$exists": True} if data_values is None else {"$in": list(data_values)}
    if both:
        query["$and"] = both
    return query


def _contains(text: str, field: str) -> Doc:
    """A case-insensitive search for ``text`` as it is (not a pattern)."""
    if len(text) > MAX_TEXT_CHARS:  # each job's field is matched against it
        raise InvalidJobError(
            f"{field} is {len(text)} characters long: at most {MAX_TEXT_CHARS}", field
        )
    return {"$regex": re.escape(text), "$options": "i"}


def _between(since: datetime | None, until: datetime | None) -> Doc:
    bounds: Doc = {}
    if since is not None:
        bounds["$gte"] = since
    if until is not None:
        bounds["$lt"] = until
    return bounds


class WorkerStore:
    """What a worker does to jobs, asynchronously."""

    def __init__(self, jobs: AsyncCollection[Doc], workflows: AsyncCollection[Doc]) -> None:
        self.jobs, self.workflows = jobs, workflows

    async def find(self, query: Doc, fields: Doc) -> list[Doc]:
        return await self.jobs.find(query, fields).to_list()

    async def add_workflows(self, docs: list[Doc]) -> None:
        """Insert these workflow documents; one there already is one written before."""
        if docs:
            try:
                await self.workflows.insert_many(docs, ordered=False)
            except BulkWriteError as exc:
                if any(e.get("code") != DUPLICATE_KEY for e in exc.details.get("writeErrors", [])):
                    raise

    async def candidates(
        self, tasks: Iterable[str], until: datetime, cap: int, fields: Iterable[str] = ()
    ) -> list[Doc]:
        """Queued jobs of ``tasks`` due by ``until``: ids and ordering fields only, and
        ``fields`` (the partitions of limited tasks)."""
        query = {
            "state": JobState.QUEUED.value,
            "name": {"$in": list(tasks)},
            "nextRunAt": {"$lte": until},
        }
        projection = CANDIDATE_FIELDS | dict.fromkeys(fields, 1)
        return await self.jobs.find(query, projection).limit(cap).to_list()

    async def claim(
        self,
        ids: Sequence[ObjectId],
        worker_id: str,
        token: str,
        now: datetime,
        lease: float,
        lost_too: bool = False,
    ) -> list[Doc]:
        """Atomically take whichever of ``ids`` are still queued and due; return them.

        Jobs lost with a worker before are left out unless ``lost_too`` (they are
        claimed alone: see ``candidates``), whatever a wake-up said of them.
        """
        query: Doc = {
            "_id": {"$in": list(ids)},
            "state": JobState.QUEUED.value,
            "nextRunAt": {"$lte": now},
        }
        if not lost_too:
            query["lostCount"] = {"$not": {"$gt": 0}}
        result = await self.jobs.update_many(query, lifecycle.claim(worker_id, token, now, lease))
        if result.modified_count == 0:
            return []
        return await self.jobs.find({"_id": {"$in": list(ids)}, "lockToken": token}).to_list()

    async def refuse(self, job_id: Any, reason: str, now: datetime) -> None:
        """Fail a queued job that cannot even be claimed (its counters are not numbers)."""
        await self.jobs.update_one(
            {"_id": job_id, "state": JobState.QUEUED.value}, lifecycle.refusal(reason, now)
        )

    async def write(self, updates: Sequence[UpdateOne | UpdateMany | InsertOne[Doc]]) -> None:
        if updates:
            await self.jobs.bulk_write(list(updates), ordered=True)

    async def renew(self, tokens: Iterable[str], until: datetime) -> Doc:
        """Extend the leases of these claims; returns ids whose cancel was requested."""
        tokens = list(tokens)
        if not tokens:
            return {}
        await self.jobs.update_many(
            {"lockToken": {"$in": tokens}, "state": JobState.RUNNING.value},
            {"$set": {"lockExpiresAt": until}},
        )
        cancelled = self.jobs.find(
            {
                "state": JobState.RUNNING.value,
                "lockToken": {"$in": tokens},
                "cancelRequested": True,
            },
            {"_id": 1},
        )
        return {str(doc["_id"]): True async for doc in cancelled}

    async def recover_expired(self, now: datetime, held: Sequence[str] = ()) -> list[ObjectId]:
        """Take back jobs whose lease ran out (their worker died), but none of the claims
        ``held`` by the caller; the ids re-queued."""
        query: Doc = {"state": JobState.RUNNING.value, "lockExpiresAt": {"$lt": now}}
        if held:
            query["lockToken"] = {"$nin": list(held)}
        expired = await self.jobs.find(query, LOST_FIELDS).to_list()
        return await take_back(self.jobs, expired, now)


LOST_FIELDS = {
    "lockToken": 1,
    "lostCount": 1,
    "name": 1,
    "priority": 1,
    "flow.node": 1,  # a job failed for being lost too often counts down in the
    "flow.next": 1,  # workflow nodes waiting for it, or stops its chain
    "flow.doomedBy": 1,
    "flow.rest": 1,
}


async def take_back(
    jobs: AsyncCollection[Doc], held: Iterable[Doc], now: datetime
) -> list[ObjectId]:
    """``lost_writes`` for each of ``held`` (with ``LOST_FIELDS``); the ids re-queued.

    One job at a time: its owner may renew or finish it meanwhile, and only a
    write that matched is a recovery.
    """
    requeued = []
    for doc in held:
        ops = lifecycle.lost_writes(doc, now)
        result = await jobs.bulk_write(ops, ordered=True)
        if result.modified_count and len(ops) > 1:  # a release, not the final failure
            requeued.append(doc["_id"])
        elif result.modified_count:
            log.error(
                "failing a job lost with its worker too often",
                job_id=str(doc["_id"]),
                task=doc.get("name"),
                times=lifecycle.MAX_LOST,
            )
            reason = lifecycle.lost_reason(int(doc.get("lostCount", 0)) + 1)
            after = lifecycle.ended(doc, JobState.FAILED, reason, now, lifecycle.KEEP)
            if after:
                await jobs.bulk_write(after, ordered=True)
    return requeued


# What clients and operators do to jobs: operations (see ``qworker.operations``)
# that ``Client`` runs blocking and ``AsyncClient`` on the loop.


def _jobs(method: str, *args: Any, **kwargs: Any) -> Call:
    return Call("jobs", method, args, kwargs)


def insert(docs: Sequence[Doc]) -> Operation[None]:
    if len(docs) == 1:
        yield _jobs("insert_one", docs[0])
    elif docs:
        yield _jobs("insert_many", list(docs), ordered=True)


@dataclass(frozen=True)
class Held:
    """The job that holds the unique key an insert was refused for.

    ``moved``: after a debounce that replaced the holder's ``nextRunAt``, the fields a
    wake-up needs of it (``HOLDER_HINT_FIELDS``), as they are now.
    """

    id: ObjectId
    moved: Doc | None = None


HOLDER_FIELDS = {"_id": 1, "state": 1, "uniqueWhile": 1}
HOLDER_HINT_FIELDS = {"_id": 1, "name": 1, "priority": 1, "nextRunAt": 1}


def insert_unique(doc: Doc, replace: Sequence[str] = ()) -> Operation[Held | None]:
    """Insert a job with a ``uniqueKey``; ``None``, or the job holding the key.

    The partial unique index decides, so this holds with many clients at once. The
    holder found decides what follows, each step conditional on the state it was
    found in (else the insert is tried again):

    - queued, with ``replace`` (a debounce): its ``data`` and/or ``nextRunAt`` (with
      the new job's ``expiresAt``) become the new job's, and it is the holder;
    - running, both it and ``doc`` of mode ``queued`` (``uniqueWhile``): it gives the
      key up (``uniqueKeyFreed``) and the insert is tried again;
    - anything else (waiting, running in mode ``active``, or queued without
      ``replace``): it is the holder, unchanged.
    """
    key = doc["uniqueKey"]
    queued_only = doc.get("uniqueWhile") == "queued"
    for _ in range(UNIQUE_INSERT_TRIES):
        try:
            yield _jobs("insert_one", doc)
            return None
        except DuplicateKeyError:
            holder = yield _jobs("find_one", _holding(doc), HOLDER_FIELDS)
        if holder is None:
            continue  # it ended between the insert and the read
        held = {"_id": holder["_id"], "uniqueKey": key}
        state = holder.get("state")
        if state == JobState.QUEUED.value and replace:
            moved = yield _jobs(
                "find_one_and_update",
                {**held, "state": JobState.QUEUED.value},
                _replacement(doc, replace),
                projection=HOLDER_HINT_FIELDS,
                return_document=ReturnDocument.AFTER,
            )
            if moved is not None:
                return Held(ObjectId(holder["_id"]), moved if "nextRunAt" in replace else None)
        elif (
            state == JobState.RUNNING.value
            and queued_only
            and holder.get("uniqueWhile") == "queued"
        ):
            yield _jobs(
                "update_one",
                {**held, "state": JobState.RUNNING.value},
                {"$unset": {"uniqueKey": ""}, "$set": {"uniqueKeyFreed": key}},
            )
        else:
            return Held(ObjectId(holder["_id"]))
    raise JobStateError(f"unique key {key!r} is contended; try again")


def _replacement(doc: Doc, replace: Sequence[str]) -> Doc:
    """The update a debounce makes to the queued holder: ``doc``'s data and/or run time.

    The deadline goes with the run time (``expires`` counts from it): the holder takes
    ``doc``'s ``expiresAt``, or has none if ``doc`` has none.
    """
    fields: Doc = {name: doc[name] for name in replace}
    update: Doc = {"$set": fields, "$inc": {"uniqueReplaced": 1}}
    if "nextRunAt" in replace:
        if "expiresAt" in doc:
            fields["expiresAt"] = doc["expiresAt"]
        else:
            update["$unset"] = {"expiresAt": ""}
    return update


def throttle_key(task: str, key: str) -> str:
    """The ``fireKey`` of a throttled job (``unique`` with ``while: "period"``).

    A schedule's fire keys are ``"<schedule>@<UTC time>"``, and neither a schedule's
    name nor a task id has a ``|``: the two can never be equal, and a schedule's
    fires, found by the range ``"<schedule>@"``..``"<schedule>A"``, never include one.
    """
    return f"{task}|unique|{key}"


def insert_throttled(doc: Doc, period: float) -> Operation[ObjectId | None]:
    """Insert a job with a throttle ``fireKey``; ``None``, or the id of the job that holds
    the key: one created less than ``period`` seconds before ``doc``, whatever its state.

    The ``fire_key`` unique index (every state) decides. A holder older than the
    period is let go of lazily, here: its ``fireKey`` is unset (kept as
    ``throttleKeyFreed``), conditionally, and the insert is tried again.
    """
    key = doc["fireKey"]
    for _ in range(UNIQUE_INSERT_TRIES):
        try:
            yield _jobs("insert_one", doc)
            return None
        except DuplicateKeyError:
            holder = yield _jobs("find_one", {"fireKey": key}, {"_id": 1, "createdAt": 1})
        if holder is None:
            continue  # let go of, or deleted, meanwhile
        created = holder.get("createdAt")
        if isinstance(created, datetime) and doc["createdAt"] < created + timedelta(seconds=period):
            return ObjectId(holder["_id"])
        yield _jobs(
            "update_one",
            {"_id": holder["_id"], "fireKey": key},
            {"$unset": {"fireKey": ""}, "$set": {"throttleKeyFreed": key}},
        )
    raise JobStateError(f"unique key {key!r} is contended; try again")


def get(job_id: str | ObjectId) -> Operation[Doc]:
    doc = yield _jobs("find_one", {"_id": object_id(job_id)})
    if doc is None:
        raise JobNotFound(f"no job {job_id}")
    return doc  # type: ignore[no-any-return]


# How a listing is ordered: by creation (the default, newest first), by the time a job
# finished, or by how long its last run took; "desc" (the default) or "asc".
SORTS = ("created", "finished", "duration")
ORDERS = ("desc", "asc")
# Computed where sorted, not stored: jobs finished before any version are sorted too.
# Only jobs in a finished state have a finish time; only a succeeded or failed job has
# a duration, its last run's (lastFinishedAt - lastRunAt, in ms). The rest sort last.
FINISHED_TIME: Doc = {
    "$cond": [
        {"$in": ["$state", lifecycle.FINISHED["$in"]]},
        {"$ifNull": ["$lastFinishedAt", None]},
        None,
    ]
}
RAN = [JobState.SUCCEEDED.value, JobState.FAILED.value]
RUN_MS: Doc = {
    "$cond": [
        {
            "$and": [
                {"$in": ["$state", RAN]},
                {"$eq": [{"$type": "$lastRunAt"}, "date"]},
                {"$eq": [{"$type": "$lastFinishedAt"}, "date"]},
            ]
        },
        {"$subtract": ["$lastFinishedAt", "$lastRunAt"]},
        None,
    ]
}
SORT_KEYS = {"finished": FINISHED_TIME, "duration": RUN_MS}


def check_sort(sort: str, order: str) -> None:
    if sort not in SORTS:
        raise InvalidJobError(f"sort must be one of {', '.join(SORTS)}, not {sort!r}", "sort")
    if order not in ORDERS:
        raise InvalidJobError(f"order must be one of {', '.join(ORDERS)}, not {order!r}", "order")


def find(
    query: Doc, limit: int = 50, skip: int = 0, sort: str = "created", order: str = "desc"
) -> Operation[list[Doc]]:
    """Jobs matching ``query`` (see ``job_query``) without their logs, newest first, or
    in the order ``sort`` and ``order`` say (``SORTS``, ``ORDERS``).

    By creation it is a ``find`` over ``_id`` (an ObjectId starts with its creation
    time); by finish time or duration an aggregation that computes the key of each
    matching job, sorts them (those without one last, ties newest first) and keeps
    ``skip + limit`` of them while it sorts: it reads what ``count`` reads.
    """
    check_sort(sort, order)
    direction = DESCENDING if order == "desc" else ASCENDING
    if sort == "created":
        by_id = [("_id", direction)]
        docs = yield _jobs("find", query, {"logs": 0}, sort=by_id, skip=skip, limit=limit)
        return docs  # type: ignore[no-any-return]
    pipeline: list[Doc] = [
        {"$match": query},
        {"$addFields": {"_sortKey": SORT_KEYS[sort]}},
        {"$addFields": {"_sortHas": {"$cond": [{"$eq": ["$_sortKey", None]}, 0, 1]}}},
        {"$sort": {"_sortHas": -1, "_sortKey": direction, "_id": -1}},
        *([{"$skip": skip}] if skip else []),
        {"$limit": limit},
        {"$project": {"logs": 0, "_sortKey": 0, "_sortHas": 0}},
    ]
    docs = yield _jobs("aggregate", pipeline)
    return docs  # type: ignore[no-any-return]


def count(query: Doc) -> Operation[int]:
    n = yield _jobs("count_documents", query)
    return n  # type: ignore[no-any-return]


def delete(job_id: str | ObjectId, now: datetime) -> Operation[Doc]:
    """Delete a job that is not running; the workflow nodes it held up see a cancel."""
    oid = object_id(job_id)
    idle = {"_id": oid, "state": {"$ne": JobState.RUNNING.value}}
    doc = yield _jobs("find_one_and_delete", idle)
    if doc is None:
        state = (yield from get(oid))["state"]
        if state == JobState.RUNNING.value:
            raise JobStateError(
                f"job {job_id} is running: cancel it, then delete it once it has stopped"
            )
        doc = yield _jobs("find_one_and_delete", idle)  # it ended between the two reads
        if doc is None:
            raise JobStateError(f"job {job_id} changed while being deleted; try again")
    if doc["state"] in (JobState.QUEUED.value, JobState.WAITING.value):
        after = lifecycle.ended(doc, JobState.CANCELLED, "deleted", now, lifecycle.KEEP)
        if after:
            yield _jobs("bulk_write", after)
    return doc  # type: ignore[no-any-return]


def purge(state: JobState, before: datetime, dry_run: bool = False) -> Operation[int]:
    """Delete (``dry_run``: count) the finished ``state`` jobs that ended before ``before``."""
    if state not in FINISHED_STATES:
        raise ValueError(f"purge deletes finished jobs only, not {state.value!r} ones")
    query = {"state": state.value, "lastFinishedAt": {"$lt": before}}
    if dry_run:
        return (yield from count(query))
    deleted = yield _jobs("delete_many", query)
    return deleted.deleted_count  # type: ignore[no-any-return]


def cancel(job_id: str | ObjectId, now: datetime) -> Operation[Doc]:
    """Cancel a queued job at once; ask a running one to stop."""
    oid = object_id(job_id)
    done = yield _jobs(
        "update_one",
        {"_id": oid, "state": lifecycle.WAITING_OR_QUEUED},
        lifecycle.Outcome(JobState.CANCELLED).update(now),
    )
    if not done.modified_count:
        yield _jobs(
            "update_one", {"_id": oid, "state": JobState.RUNNING.value}, lifecycle.CANCEL_REQUEST
        )
    doc = yield from get(oid)
    if not done.modified_count and not doc.get("cancelRequested"):
        raise JobStateError(f"job {job_id} is already {doc['state']}: nothing to cancel")
    if done.modified_count:
        after = lifecycle.ended(doc, JobState.CANCELLED, "cancelled", now, lifecycle.KEEP)
        if after:
            yield _jobs("bulk_write", after)
    return doc


def retry(job_id: str | ObjectId, now: datetime) -> Operation[Doc]:
    """Queue a finished job again, now, with a fresh budget (``lifecycle.retry``)."""
    oid = object_id(job_id)
    try:
        done = yield _jobs(
            "update_one", {"_id": oid, "state": lifecycle.FINISHED}, lifecycle.retry(now)
        )
    except DuplicateKeyError:
        holder = (yield _jobs("find_one", _holding((yield from get(oid))), {"_id": 1})) or {}
        raise JobStateError(
            f"job {job_id} cannot run again while job {holder.get('_id')} holds its unique key"
        ) from None
    doc = yield from get(oid)
    if not done.modified_count:
        raise not_finished(job_id, doc["state"])
    return doc


def not_finished(job_id: str | ObjectId, state: str) -> JobStateError:
    return JobStateError(f"job {job_id} is {state}: only finished jobs can be retried")
