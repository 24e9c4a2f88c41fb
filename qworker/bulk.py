"""Acting on many jobs at once: retry, cancel or delete the given ids, or every job a
filter matches (``JobFilter``, the listing's).

A ``Bulk`` walks its jobs in batches of ``BATCH``, newest first, by ``_id``: each batch
is one read of ids and states after the last id seen, so memory stays bounded and no
job is taken twice, and a job enqueued after the walk began (a newer ``_id``) is never
taken. A retry also leaves out the jobs that finished after it began: what it runs
again are the jobs that were finished when it was asked (a job it queued again that
fails again meanwhile is not run a third time).

Each action keeps its rules, as for one job: a retry takes finished jobs only, a
cancel waiting, queued and running ones (a running one is asked to stop, as
``Client.cancel`` asks), a delete anything but a running job. The writes are the
single-job ones: ``lifecycle``'s updates, one ``update_many`` or ``delete_many`` per
batch for plain jobs, and ``workflowstore.retry_job``, ``store.cancel`` and
``store.delete`` one job at a time for a workflow's nodes (whose end or rerun counts
down in other nodes) and for a retry of a job with a unique key (which another job may
hold meanwhile). Every write is conditional on the state the rule needs, so a job that
moved since its batch was read is left as it is, and not counted as changed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bson import ObjectId
from bson.errors import InvalidId

from qworker import lifecycle, store, workflowstore
from qworker.errors import InvalidJobError, JobNotFound, JobStateError
from qworker.jobfilter import JobFilter
from qworker.model import FINISHED_STATES, JobState
from qworker.operations import Call, Operation
from qworker.when import utcnow

Doc = dict[str, Any]
ACTIONS = ("retry", "cancel", "delete")
BATCH = 500
MAX_IDS = 10_000  # ids given at once; a filter has no such bound
PAGE_FIELDS = {
    "_id": 1,
    "name": 1,
    "priority": 1,
    "state": 1,
    "uniqueKey": 1,
    "cancelRequested": 1,
    "flow.id": 1,
}
FINISHED = [s.value for s in FINISHED_STATES]
ACTIVE = [JobState.WAITING.value, JobState.QUEUED.value]
RUNNING = JobState.RUNNING.value
# What each action may act on (the rule of its single-job path).
RULES: dict[str, Doc] = {
    "retry": {"state": {"$in": FINISHED}},
    "cancel": {"state": {"$in": [*ACTIVE, RUNNING]}},
    "delete": {"state": {"$ne": RUNNING}},
}


@dataclass
class Batch:
    """What one batch did: jobs seen and changed, those queued again (for wake-ups) and
    the running ones asked to stop (for the hints)."""

    matched: int = 0
    changed: int = 0
    queued: list[Doc] = field(default_factory=list)
    asked: list[str] = field(default_factory=list)


def _jobs(method: str, *args: Any, **kwargs: Any) -> Call:
    return Call("jobs", method, args, kwargs)


class Bulk:
    """One bulk action: ``count()`` for a dry run, else ``next()`` until it returns None,
    then ``result()``. ``ids`` or ``filter`` (a ``JobFilter`` or a mapping of its
    fields; ``{}`` is every job), not both."""

    def __init__(
        self,
        action: str,
        ids: Sequence[str | ObjectId] | None = None,
        filter: JobFilter | Mapping[str, Any] | None = None,
        now: datetime | None = None,
    ) -> None:
        if action not in ACTIONS:
            raise InvalidJobError(
                f"action must be one of {', '.join(ACTIONS)}, not {action!r}", "action"
            )
        if (ids is None) == (filter is None):
            raise InvalidJobError(
                "give the jobs' ids or a filter (an empty one is every job), "
                f"not {'both' if ids is not None else 'neither'}",
                "ids",
            )
        self.action = action
        self.began = now or utcnow()
        self._ids = None if ids is None else _object_ids(ids)
        self._query = None if filter is None else _query(filter, self.began)
        self._last: ObjectId | None = None
        self._offset = 0
        self._done = False
        self.matched = self.changed = 0

    def scope(self) -> Doc:
        """The jobs this bulk is over (given ids are jobs' ids, as a listing's are)."""
        if self._query is not None:
            return self._query
        return {"_id": {"$in": self._ids or [], "$type": "objectId"}}

    def count(self) -> Operation[Doc]:
        """A dry run: how many jobs it is over, and how many its rule lets it act on."""
        matched = yield from store.count(self.scope())
        eligible = yield from store.count({"$and": [self.scope(), RULES[self.action]]})
        return {
            "action": self.action,
            "dryRun": True,
            "matched": matched,
            "eligible": eligible,
            "changed": 0,
        }

    def result(self) -> Doc:
        return {"action": self.action, "matched": self.matched, "changed": self.changed}

    def next(self) -> Operation[Batch | None]:
        """Read the next batch and act on it; None once every job was seen."""
        if self._done:
            return None
        docs = yield from self._page()
        if not docs:
            self._done = True
            return None
        now = utcnow()
        act = {"retry": self._retry, "cancel": self._cancel, "delete": self._delete}
        batch: Batch = yield from act[self.action](docs, now)
        batch.matched = len(docs)
        self.matched += batch.matched
        self.changed += batch.changed
        return batch

    def _page(self) -> Operation[list[Doc]]:
        if self._ids is not None:
            ids = self._ids[self._offset : self._offset + BATCH]
            self._offset += BATCH
            self._done = self._offset >= len(self._ids)
            if not ids:
                return []
            found: list[Doc] = yield _jobs("find", {"_id": {"$in": ids}}, PAGE_FIELDS)
            return found
        parts: list[Doc] = [self.scope()]
        if self._last is not None:
            parts.append({"_id": {"$lt": self._last}})
        if self.action == "retry":  # those that were finished when it began
            parts.append(
                {
                    "$or": [
                        {"lastFinishedAt": {"$lte": self.began}},
                        {"lastFinishedAt": {"$exists": False}},
                    ]
                }
            )
        page: list[Doc] = yield _jobs(
            "find", {"$and": parts}, PAGE_FIELDS, sort=[("_id", -1)], limit=BATCH
        )
        if page:
            self._last = page[-1]["_id"]
        return page

    # -- the actions: plain jobs by batch, the others one at a time ---------------------

    def _retry(self, docs: list[Doc], now: datetime) -> Operation[Batch]:
        batch = Batch()
        finished = [d for d in docs if d.get("state") in FINISHED]
        batchable = [d for d in finished if "flow" not in d and "uniqueKey" not in d]
        plain = [d["_id"] for d in batchable]
        if plain:
            mine = {"_id": {"$in": plain}, "state": lifecycle.FINISHED}
            done = yield _jobs("update_many", mine, lifecycle.retry(now))
            batch.changed += done.modified_count
            if done.modified_count == len(plain):  # all of them: their wake-ups as read
                batch.queued += [{**_hint_fields(d), "nextRunAt": now} for d in batchable]
            elif done.modified_count:  # some moved meanwhile: those queued now
                again = {"_id": {"$in": plain}, "state": JobState.QUEUED.value, "nextRunAt": now}
                batch.queued += yield _jobs("find", again, store.HOLDER_HINT_FIELDS)
        batched = set(plain)
        for doc in finished:
            if doc["_id"] in batched:
                continue
            try:
                batch.queued.append((yield from workflowstore.retry_job(doc["_id"], now)))
            except (JobStateError, JobNotFound):
                continue  # moved meanwhile, or its unique key is held: left as it is
            batch.changed += 1
        return batch

    def _cancel(self, docs: list[Doc], now: datetime) -> Operation[Batch]:
        batch = Batch()
        plain = [d for d in docs if "flow" not in d]
        waiting = [d["_id"] for d in plain if d.get("state") in ACTIVE]
        if waiting:
            mine = {"_id": {"$in": waiting}, "state": lifecycle.WAITING_OR_QUEUED}
            done = yield _jobs(
                "update_many", mine, lifecycle.Outcome(JobState.CANCELLED).update(now)
            )
            batch.changed += done.modified_count
        running = [
            d["_id"] for d in plain if d.get("state") == RUNNING and not d.get("cancelRequested")
        ]
        if running:
            unasked: Doc = {
                "_id": {"$in": running},
                "state": RUNNING,
                "cancelRequested": {"$ne": True},
            }
            done = yield _jobs("update_many", unasked, lifecycle.CANCEL_REQUEST)
            batch.changed += done.modified_count
            batch.asked += [str(job_id) for job_id in running]
        for doc in docs:
            state = doc.get("state")
            if "flow" not in doc or state not in (*ACTIVE, RUNNING) or doc.get("cancelRequested"):
                continue
            try:
                after = yield from store.cancel(doc["_id"], now)
            except (JobStateError, JobNotFound):
                continue
            batch.changed += 1
            if after.get("cancelRequested"):
                batch.asked.append(str(after["_id"]))
        return batch

    def _delete(self, docs: list[Doc], now: datetime) -> Operation[Batch]:
        batch = Batch()
        idle = [d for d in docs if d.get("state") != RUNNING]
        plain = [d["_id"] for d in idle if "flow" not in d]
        if plain:
            done = yield _jobs("delete_many", {"_id": {"$in": plain}, "state": {"$ne": RUNNING}})
            batch.changed += done.deleted_count
        for doc in idle:
            if "flow" not in doc:
                continue
            try:
                yield from store.delete(doc["_id"], now)
            except (JobStateError, JobNotFound):
                continue
            batch.changed += 1
        return batch


def _hint_fields(doc: Doc) -> Doc:
    """What a wake-up needs of a job (``protocol.queued``)."""
    return {key: doc[key] for key in store.HOLDER_HINT_FIELDS if key in doc}


def _query(filter: JobFilter | Mapping[str, Any], now: datetime) -> Doc:
    """The filter's query; a bad field is named as the filter's (``filter.state``)."""
    try:
        return JobFilter.of(filter).query(now)
    except InvalidJobError as exc:
        where = exc.field or ""
        raise InvalidJobError(
            str(exc), where if where.startswith("filter") else f"filter.{where}"
        ) from None


def _object_ids(ids: Sequence[str | ObjectId]) -> list[ObjectId]:
    """The given ids as ObjectIds, once each, in the order given."""
    if isinstance(ids, str) or not isinstance(ids, Sequence):
        raise InvalidJobError("ids must be a list of job ids", "ids")
    if len(ids) > MAX_IDS:
        raise InvalidJobError(
            f"{len(ids)} ids at once: at most {MAX_IDS} (act on a filter instead)", "ids"
        )
    found: dict[ObjectId, None] = {}
    for n, job_id in enumerate(ids):
        try:
            found[job_id if isinstance(job_id, ObjectId) else ObjectId(job_id)] = None
        except (InvalidId, TypeError):
            raise InvalidJobError(
                f"ids[{n}]: {str(job_id)[:100]!r} is not a job id (24 hexadecimal characters)",
                f"ids.{n}",
            ) from None
    return list(found)
