"""A job's transitions, each as the update that makes it.

Every move a job makes is written here once, as the filter and update
documents that MongoDB applies atomically: the claim, the outcome of a run
(success, failure, a retry, a cancel, a snooze), a job claimed past its
deadline, a refused malformed job, a run handed back or taken back from a lost
worker, the manager's expiry of overdue jobs, an operator's cancel and retry,
and what an end outside a run sets off in a workflow (``fanin``). The store
writes them; the worker, the manager and the client choose which.

Every write of a run is conditional on the claim's ``lockToken`` (``owned``),
so a worker that lost its lease can never overwrite another run's outcome.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from bson import ObjectId
from pymongo import UpdateMany, UpdateOne

from qworker import fanin
from qworker.model import FINISHED_STATES, MAX_LOG_LINES, JobState, Retention

Doc = dict[str, Any]

LOCK_FIELDS = {"lockedBy": "", "lockToken": "", "lockExpiresAt": "", "lockedAt": ""}
# A job lost this many times with its worker (crash, kill, lost lease) is
# failed instead of re-queued, so a job that kills its worker cannot loop.
MAX_LOST = 5
# For jobs finished where the task's metadata is not known (client cancel, lost jobs).
KEEP = Retention()
# A job that ends without having run (expired at its claim) or that asked to run later
# (a snooze) gives back the attempt its claim counted: attempts count runs made.
UNCLAIM = {"attempts": -1}
EXPIRED_REASON = "not started by its deadline (expiresAt)"


# -- a run ----------------------------------------------------------------


def claim(worker_id: str, token: str, now: datetime, lease: float) -> Doc:
    """``queued`` to ``running`` under a lease held by the claim ``token``."""
    return {
        "$set": {
            "state": JobState.RUNNING.value,
            "lockedBy": worker_id,
            "lastWorker": worker_id,  # kept once the lock fields are gone
            "lockToken": token,
            "lockedAt": now,
            "lockExpiresAt": now + timedelta(seconds=lease),
            "lastRunAt": now,
        },
        "$inc": {"attempts": 1},
    }


def owned(job_id: ObjectId, token: str | None) -> Doc:
    """The filter of every write of a run: the job, still running under this claim."""
    return {"_id": job_id, "lockToken": token, "state": JobState.RUNNING.value}


def progress(percent: float, step: str | None, lease_until: datetime) -> Doc:
    """A run's progress; reporting also renews its lease."""
    return {"$set": {"progress": {"percent": percent, "step": step}, "lockExpiresAt": lease_until}}


def log_lines(entries: Sequence[Doc]) -> Doc:
    """Log lines added to the job's own, the latest ``MAX_LOG_LINES`` kept."""
    return {"$push": {"logs": {"$each": list(entries), "$slice": -MAX_LOG_LINES}}}


@dataclass(frozen=True)
class Outcome:
    """How a run ended, turned into the update that records it.

    ``EXPIRED`` is a job claimed past its deadline, which did not run;
    ``QUEUED`` is a snooze: queued again for ``retry_at``. Neither uses an attempt.
    """

    state: JobState
    result: Any = None
    error: dict[str, str] | None = None
    reason: str | None = None
    retry_at: datetime | None = None  # a failure's retry, or the end of a snooze
    ran: bool = True  # False: claimed, then ended without running (a doomed workflow node)

    def update(self, now: datetime, retention: Retention = KEEP) -> Doc:
        fields: Doc = {"lastFinishedAt": now}
        inc: Doc = {}
        if self.state is JobState.SUCCEEDED:
            fields.update(state=JobState.SUCCEEDED.value, result=self.result)
            fields["progress.percent"] = 100.0
        elif self.state in (JobState.CANCELLED, JobState.EXPIRED):
            fields.update(state=self.state.value, failReason=self.reason or self.state.value)
            if self.state is JobState.EXPIRED:
                inc.update(UNCLAIM)
        elif self.state is JobState.QUEUED:
            fields.update(state=JobState.QUEUED.value, nextRunAt=self.retry_at)
            inc.update(UNCLAIM)
        else:
            fields.update(failReason=self.reason, error=self.error, failedAt=now)
            inc["failCount"] = 1
            if self.retry_at is not None:
                fields.update(state=JobState.QUEUED.value, nextRunAt=self.retry_at)
            else:
                fields["state"] = JobState.FAILED.value
        expire_at = retention.expire_at(JobState(fields["state"]), now)
        if fields["state"] != JobState.QUEUED.value and expire_at is not None:
            fields["expireAt"] = expire_at
        update: Doc = {"$set": fields, "$unset": LOCK_FIELDS}
        if not self.ran:
            inc.update(UNCLAIM)
            update["$unset"] = {**LOCK_FIELDS, "lastRunAt": ""}
        if inc:
            update["$inc"] = inc
        return update


def refusal(reason: str, now: datetime, retention: Retention = KEEP) -> Doc:
    """The update that fails a malformed job: no ``$inc``, as its counters may be junk."""
    update = Outcome(JobState.FAILED, reason=f"malformed job: {reason}").update(now, retention)
    del update["$inc"]
    return update


def release(job_id: ObjectId, token: str | None, now: datetime, lost: bool) -> list[UpdateOne]:
    """Back to ``queued`` at once: a shutdown or a lost worker is not a failed attempt.

    A job whose cancellation was asked for meanwhile ends ``cancelled`` instead
    (the writes are ordered: the second cannot match once the first did).
    """
    cancelled = Outcome(JobState.CANCELLED).update(now)
    queued: Doc = {
        "$set": {"state": JobState.QUEUED.value, "nextRunAt": now},
        "$unset": LOCK_FIELDS,
    }
    if lost:
        for update in (cancelled, queued):
            update["$inc"] = {"lostCount": 1}
    mine = owned(job_id, token)
    return [UpdateOne({**mine, "cancelRequested": True}, cancelled), UpdateOne(mine, queued)]


def lost_reason(times: int) -> str:
    return f"lost with its worker {times} times"


def lost_writes(doc: Doc, now: datetime) -> list[UpdateOne]:
    """Take a job back from a run that was lost (its worker died, or its lease ran out):
    queued again, or failed once lost ``MAX_LOST`` times, so that a job that kills its
    worker cannot loop. The one rule for every path that recovers jobs."""
    lost = int(doc.get("lostCount", 0)) + 1
    if lost < MAX_LOST:
        return release(doc["_id"], doc.get("lockToken"), now, lost=True)
    failed = Outcome(JobState.FAILED, reason=lost_reason(lost)).update(now)
    failed["$inc"]["lostCount"] = 1
    return [UpdateOne(owned(doc["_id"], doc.get("lockToken")), failed)]


# -- what clients and operators do ---------------------------------------------------


WAITING_OR_QUEUED = {"$in": [JobState.QUEUED.value, JobState.WAITING.value]}
CANCEL_REQUEST: Doc = {"$set": {"cancelRequested": True}}


def overdue(doc: Doc, now: datetime) -> bool:
    """Whether a claimed job is past its deadline: then it is expired, not run."""
    expires = doc.get("expiresAt")
    return isinstance(expires, datetime) and expires <= now


def past_deadline(now: datetime) -> Doc:
    """The filter of the jobs not started by their deadline: queued (a snoozed one
    too) or waiting for a workflow node before them. The manager expires them."""
    return {"state": WAITING_OR_QUEUED, "expiresAt": {"$lte": now}}


def expiry(now: datetime, retention: Retention) -> Doc:
    """The update that expires jobs ``past_deadline``: they were not claimed, so no
    attempt is given back. ``lastFinishedAt`` is ``now`` exactly: what was expired by
    this update is read back by it (``expired_at``)."""
    update = Outcome(JobState.EXPIRED, reason=EXPIRED_REASON).update(now, retention)
    del update["$inc"]
    return update


def expired_at(now: datetime) -> Doc:
    """The filter of the jobs that ``expiry(now, …)`` expired."""
    return {"state": JobState.EXPIRED.value, "lastFinishedAt": now}


def retry(now: datetime) -> Doc:
    """A finished job queued again, now, with a fresh budget: its counts of runs,
    failures and losses start again from zero, and it has no deadline any more
    (an expired job would expire again at once)."""
    return {
        "$set": {"state": JobState.QUEUED.value, "nextRunAt": now, "failCount": 0, "attempts": 0},
        "$unset": {
            "cancelRequested": "",
            "failReason": "",
            "error": "",
            "result": "",
            "expireAt": "",
            "expiresAt": "",
            "lostCount": "",
        },
    }


FINISHED = {"$in": [s.value for s in FINISHED_STATES]}


def kept_with_workflow(doc: Doc, update: Doc) -> Doc:
    """A workflow's node is deleted with its workflow, not on its own: the expiry its
    outcome would set is kept as ``flow.keepUntil``, which the manager's sweep reads."""
    fields = update.get("$set") or {}
    if "flow" in doc and "expireAt" in fields:
        fields["flow.keepUntil"] = fields.pop("expireAt")
    return update


def ended(
    doc: Doc, state: JobState, reason: str, now: datetime, retention: Retention
) -> list[UpdateOne | UpdateMany]:
    """What a job ending ``state`` outside a worker's run sets off (a cancel, a
    deletion, an expiry, a job lost too often): the count-down in the workflow nodes
    waiting for it, or the rest of its chain stopped. Written once the end itself
    was, as they must not follow an end that did not happen."""
    keep = retention.expire_at(JobState.CANCELLED, now)
    return fanin.released(doc, state, reason, now, keep)
