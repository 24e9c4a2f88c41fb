"""The leader's sweep of jobs past their deadline: they end ``expired``, on time.

A worker expires the overdue jobs it claims (``worker.runs``); the jobs no
worker claims — of a task no worker serves, snoozed past their deadline,
workflow nodes still waiting — would stay ``queued`` for ever. Every few
seconds the leader expires them, by task (whose metadata, when a worker
announced it, gives their retention and what their notifications carry),
sets off in their workflows what an end does (``lifecycle.ended``), and
announces each as an ``expire`` notification of its own (no worker's).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import structlog
from pymongo.asynchronous.collection import AsyncCollection

from qworker import lifecycle
from qworker.channel import Channel
from qworker.errors import TaskDefinitionError
from qworker.lifecycle import EXPIRED_REASON, KEEP
from qworker.model import JobState
from qworker.notifications import notification
from qworker.schema import DEADLINES_INDEX
from qworker.tasks import TaskMeta, check_metadata
from qworker.when import utcnow

Doc = dict[str, Any]
log = structlog.get_logger("qworker.manager")

# Jobs expired per sweep: a backlog is worked through a batch a round.
SWEEP_BATCH = 1_000
# Seconds between sweeps: a deadline is met to within this.
SWEEP_EVERY = 2.0


class Deadlines:
    def __init__(
        self,
        jobs: AsyncCollection[Doc],
        tasks: AsyncCollection[Doc],
        channel: Channel,
        manager_id: str,
    ) -> None:
        self.jobs, self.tasks, self.channel, self.manager_id = jobs, tasks, channel, manager_id
        self._next = 0.0  # monotonic

    async def sweep(self) -> int:
        """Expire the jobs past their deadline (at most ``SWEEP_BATCH``, at most every
        ``SWEEP_EVERY``); how many."""
        if time.monotonic() < self._next:
            return 0
        self._next = time.monotonic() + SWEEP_EVERY
        now = utcnow()
        # Named: SecantusDB does not choose a partial index itself, and scanned the
        # queue (240 ms at 10,000 queued) every sweep. The filter is within the index's.
        found = (
            await self.jobs.find(lifecycle.past_deadline(now), {"name": 1})
            .hint(DEADLINES_INDEX)
            .limit(SWEEP_BATCH)
            .to_list()
        )
        by_task: dict[str, list[Any]] = {}
        for doc in found:
            by_task.setdefault(str(doc.get("name")), []).append(doc["_id"])
        expired = 0
        for task, ids in by_task.items():
            expired += await self._expire(task, ids)
        return expired

    async def _expire(self, task: str, ids: list[Any]) -> int:
        """Expire these jobs of ``task`` that are still past their deadline, each once."""
        meta = await self._meta(task)
        now = utcnow()
        retention = meta.retention if meta is not None else KEEP
        late = {**lifecycle.past_deadline(now), "_id": {"$in": ids}}
        await self.jobs.update_many(
            {**late, "flow": {"$exists": False}}, lifecycle.expiry(now, retention)
        )
        in_workflow = lifecycle.kept_with_workflow({"flow": {}}, lifecycle.expiry(now, retention))
        await self.jobs.update_many({**late, "flow": {"$exists": True}}, in_workflow)
        # Only those this update expired: a worker may have claimed some meanwhile.
        done = await self.jobs.find(
            {**lifecycle.expired_at(now), "_id": {"$in": ids}}, {"logs": 0}
        ).to_list()
        stops = [
            write
            for doc in done
            for write in lifecycle.ended(doc, JobState.EXPIRED, EXPIRED_REASON, now, retention)
        ]
        if stops:
            await self.jobs.bulk_write(stops, ordered=False)
        if done:
            log.info("jobs expired", task=task, jobs=len(done))
            paths = meta.attributes_for("expire") if meta is not None else ()
            await self._announce(done, paths)
        return len(done)

    async def _meta(self, task: str) -> TaskMeta | None:
        """The task's metadata as workers announced it, if they did and it is valid."""
        found = await self.tasks.find_one({"_id": task, "valid": True}, {"metadata": 1})
        if found is None or not isinstance(found.get("metadata"), dict):
            return None
        try:
            return check_metadata(found["metadata"], Path(f"<task '{task}'>"), code=False)
        except TaskDefinitionError:
            return None

    async def _announce(self, docs: Iterable[Doc], paths: Iterable[str]) -> None:
        """An ``expire`` notification per job; a task no worker announced shares nothing
        of its jobs (its metadata would say what may leave)."""
        chosen = tuple(paths)
        notes = [
            notification(None, doc, "expire", chosen, managerId=self.manager_id) for doc in docs
        ]
        await self.channel.publish_many(notes)
