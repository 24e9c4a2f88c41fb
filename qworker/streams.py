"""Change streams on ``jobs``: whether the server has them, and what is watched.

Where the server offers change streams (replica sets, sharded clusters, the
embedded server), workers learn of runnable jobs from a stream on ``jobs``
and clients publish no wake-up at all: an enqueue is one write. Support is
found by trying, never from a version string. A stream is only ever a hint:
the workers' poll stays the path that finds every job.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from bson import ObjectId
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.collection import Collection
from pymongo.errors import PyMongoError

from qworker.model import FINISHED_STATES, JobState

Doc = dict[str, Any]

# What a worker needs of a new job to claim it without reading it first.
HINT_FIELDS = ("_id", "name", "priority", "nextRunAt", "lostCount")
# Matches nothing: opening it is the test of support.
_PROBE: list[Doc] = [{"$match": {"operationType": "qworker-probe"}}]


def for_workers(tasks: Iterable[str], fields: Iterable[str] = ()) -> list[Doc]:
    """What a worker watches: an insert of a queued job of ``tasks`` (with the fields a
    claim needs); an update that set some job's state to queued (a retry, a recovery,
    a release, a chain's next step), whose task the event does not say; and a cancel
    asked of a running job (``cancelRequested``), which replaces the channel's hint.
    An insert also carries ``fields`` (the partitions of limited tasks)."""
    queued = JobState.QUEUED.value
    return [
        {
            "$match": {
                "$or": [
                    {
                        "operationType": "insert",
                        "fullDocument.state": queued,
                        "fullDocument.name": {"$in": sorted(tasks)},
                    },
                    {"operationType": "update", "updateDescription.updatedFields.state": queued},
                    {
                        "operationType": "update",
                        "updateDescription.updatedFields.cancelRequested": True,
                    },
                ]
            }
        },
        {
            "$project": {
                "operationType": 1,
                "documentKey": 1,
                "updateDescription.updatedFields.cancelRequested": 1,
                **{f"fullDocument.{name}": 1 for name in (*HINT_FIELDS, *fields)},
            }
        },
    ]


def cancel_asked(event: Doc) -> bool:
    """Whether a worker's event is a cancel asked of a job."""
    changed = (event.get("updateDescription") or {}).get("updatedFields") or {}
    return changed.get("cancelRequested") is True


def finished(job_id: ObjectId) -> list[Doc]:
    """Events after which a waiter reads the job again: it finished, or it is gone."""
    return [
        {
            "$match": {
                "documentKey._id": job_id,
                "$or": [
                    {"operationType": {"$in": ["delete", "replace"]}},
                    {
                        "updateDescription.updatedFields.state": {
                            "$in": [s.value for s in FINISHED_STATES]
                        }
                    },
                ],
            }
        }
    ]


def watchable(jobs: Collection[Doc]) -> bool:
    """Whether the server opens a change stream on ``jobs``."""
    try:
        with jobs.watch(_PROBE, max_await_time_ms=1) as stream:
            stream.try_next()
    except PyMongoError:
        return False
    return True


async def watchable_async(jobs: AsyncCollection[Doc]) -> bool:
    try:
        async with await jobs.watch(_PROBE, max_await_time_ms=1) as stream:
            await stream.try_next()
    except PyMongoError:
        return False
    return True
