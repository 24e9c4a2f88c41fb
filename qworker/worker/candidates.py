"""A worker's local view of the jobs it may claim next.

Reading the queue is the expensive operation on some servers (its cost grows
with the number of matching jobs), so a worker reads its candidates once, in
a batch, keeps them here in claim order, and adds the ones that wake-up hints
announce. Claims stay conditional in MongoDB: an entry here is only a hint.
"""

from __future__ import annotations

import heapq
import zlib
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from bson import ObjectId

Key = tuple[int, datetime, int, ObjectId]


def priority_of(doc: dict[str, Any]) -> int:
    """A job's priority; one that is not a whole number (a malformed job) counts as 0.

    Such a job is claimed in turn, then failed with the reason (``model.malformed``).
    """
    priority = doc.get("priority", 0)
    return priority if isinstance(priority, int) and not isinstance(priority, bool) else 0


def lost_before(doc: dict[str, Any]) -> bool:
    """Whether this job was lost with a worker before: it may be what killed it.

    Anything but a count of none is taken for one (a malformed ``lostCount`` too):
    a batch claim leaves out every job whose ``lostCount`` MongoDB finds above 0.
    """
    lost = doc.get("lostCount")
    none = lost is None or (
        isinstance(lost, int | float) and not isinstance(lost, bool) and lost <= 0
    )
    return not none


class Candidates:
    """Claim order: higher priority, then earlier ``nextRunAt``.

    Jobs due at the same instant (a batch enqueued at once) are in no order
    of their own; with a ``salt`` each worker walks them in an order of its own,
    so that workers sharing a queue do not all try to claim the same ids.

    A job lost with a worker before is taken alone, by a worker that runs
    nothing else: if it kills its worker again, it takes no other job with it.
    """

    def __init__(self, salt: str = "") -> None:
        self._salt = salt
        self._heap: list[tuple[Key, str]] = []
        self._keys: dict[ObjectId, Key] = {}
        self._lost: set[ObjectId] = set()

    def __len__(self) -> int:
        return len(self._keys)

    def replace(self, docs: Iterable[dict[str, Any]]) -> None:
        self._heap, self._keys, self._lost = [], {}, set()
        self.add(docs)

    def add(self, docs: Iterable[dict[str, Any]]) -> None:
        for doc in docs:
            if not isinstance(doc.get("nextRunAt"), datetime) or not isinstance(
                doc.get("_id"), ObjectId
            ):
                continue  # not a job qworker wrote (and a string id is not comparable)
            tie = zlib.crc32(f"{self._salt}{doc['_id']}".encode()) if self._salt else 0
            key: Key = (-priority_of(doc), doc["nextRunAt"], tie, doc["_id"])
            if self._keys.get(doc["_id"]) != key:
                self._keys[doc["_id"]] = key
                heapq.heappush(self._heap, (key, doc["name"]))
            if lost_before(doc):
                self._lost.add(doc["_id"])

    def take(
        self, n: int, now: datetime, room: Callable[[str], int], alone: bool = False
    ) -> tuple[list[ObjectId], bool]:
        """Up to ``n`` due ids in claim order, within each task's ``room``; and whether
        the one id is a job lost before, which only a worker running nothing (``alone``)
        takes, and alone."""
        picked: list[ObjectId] = []
        kept: list[tuple[Key, str]] = []
        taken: dict[str, int] = {}
        solo = False
        while self._heap and len(picked) < n and not solo:
            key, task = heapq.heappop(self._heap)
            if self._keys.get(key[3]) != key:
                continue  # superseded or discarded
            lost = key[3] in self._lost
            if key[1] > now or taken.get(task, 0) >= room(task) or (lost and (picked or not alone)):
                kept.append((key, task))
                continue
            taken[task] = taken.get(task, 0) + 1
            del self._keys[key[3]]
            self._lost.discard(key[3])
            picked.append(key[3])
            solo = lost
        for item in kept:
            heapq.heappush(self._heap, item)
        return picked, solo

    def discard_tasks(self, tasks: frozenset[str]) -> None:
        """Forget the candidates of ``tasks``."""
        if not tasks:
            return
        kept = [(key, task) for key, task in self._heap if task not in tasks]
        gone = {key[3] for key, task in self._heap if task in tasks}
        heapq.heapify(kept)
        self._heap = kept
        for job_id in gone:
            self._keys.pop(job_id, None)
            self._lost.discard(job_id)

    def next_due(self) -> datetime | None:
        return min((key[1] for key in self._keys.values()), default=None)
