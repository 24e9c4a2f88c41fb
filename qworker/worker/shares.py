"""A worker's share of the queue: which of the jobs due together it claims first.

Workers that serve one task read the same candidates, and a batch enqueued at
once is due at one instant, in no order of its own. Were every worker to walk
such a batch the same way, or each at random, most claims would ask for jobs a
peer had just taken: on a server whose single core is the limit, four workers
then cost it twice what one does per job (docs/benchmarks.md). So each worker
takes first the jobs whose id hashes to it among the live workers of the task
(``workers``, the registry every worker is listed in), in id order; then the
other shares, the next worker's first, from their far end, where their owners
come last. Nothing is held back: a share is an order, never a lock, so a busy,
dead or unlisted peer only means its jobs are taken by the others later in the
batch.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from typing import Any

from bson import ObjectId
from pymongo.asynchronous.collection import AsyncCollection

from qworker.fleet import status
from qworker.when import utcnow

Place = tuple[int, int]  # (how far the job's share is from this worker's, order within it)


class Shares:
    """The live workers of each task, as last read from the registry."""

    def __init__(self, worker_id: str, tasks: Iterable[str]) -> None:
        self.id, self.tasks = worker_id, frozenset(tasks)
        self._peers: dict[str, tuple[str, ...]] = {}

    def shared(self, task: str) -> bool:
        """Whether other live workers serve ``task`` too."""
        return len(self._peers.get(task, ())) > 1

    def place(self, task: str, job_id: ObjectId) -> Place:
        """Where this job comes among the jobs of ``task`` due with it, for this worker."""
        number = int.from_bytes(job_id.binary)
        peers = self._peers.get(task, ())
        if len(peers) < 2:
            return (0, number)
        distance = (zlib.crc32(job_id.binary) - peers.index(self.id)) % len(peers)
        return (distance, -number if distance else number)

    def update(self, entries: Iterable[dict[str, Any]]) -> bool:
        """Take the live peers from registry entries; whether any task's changed."""
        now = utcnow()
        serving: dict[str, set[str]] = {task: {self.id} for task in self.tasks}
        for entry in entries:
            tasks = entry.get("tasks")
            if status(entry, now) != "running" or not isinstance(tasks, list):
                continue
            for task in self.tasks.intersection(t for t in tasks if isinstance(t, str)):
                serving[task].add(str(entry["_id"]))
        peers = {task: tuple(sorted(ids)) for task, ids in serving.items()}
        changed = peers != self._peers
        self._peers = peers
        return changed

    async def read(self, registry: AsyncCollection[dict[str, Any]]) -> bool:
        """Read the live peers again (``update``); raises ``PyMongoError``."""
        query = {"state": "running", "tasks": {"$in": sorted(self.tasks)}}
        fields = {"state": 1, "tasks": 1, "pingedAt": 1, "pingInterval": 1}
        return self.update(await registry.find(query, fields).to_list(None))
