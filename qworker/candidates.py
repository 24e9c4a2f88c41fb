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


class Candidates:
    """Claim order: higher priority, then earlier ``nextRunAt``.

    Jobs due at the same instant (a batch enqueued at once) are in no order
    of their own; with a ``salt`` each worker walks them in an order of its own,
    so that workers sharing a queue do not all try to claim the same ids.
    """

    def __init__(self, salt: str = "") -> None:
        self._salt = salt
        self._heap: list[tuple[Key, str]] = []
        self._keys: dict[ObjectId, Key] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def replace(self, docs: Iterable[dict[str, Any]]) -> None:
        self._heap, self._keys = [], {}
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

    def take(self, n: int, now: datetime, room: Callable[[str], int]) -> list[ObjectId]:
        """Up to ``n`` due ids in claim order, within each task's ``room``."""
        picked: list[ObjectId] = []
        kept: list[tuple[Key, str]] = []
        taken: dict[str, int] = {}
        while self._heap and len(picked) < n:
            key, task = heapq.heappop(self._heap)
            if self._keys.get(key[3]) != key:
                continue  # superseded or discarded
            if key[1] > now or taken.get(task, 0) >= room(task):
                kept.append((key, task))
                continue
            taken[task] = taken.get(task, 0) + 1
            del self._keys[key[3]]
            picked.append(key[3])
        for item in kept:
            heapq.heappush(self._heap, item)
        return picked

    def next_due(self) -> datetime | None:
        return min((key[1] for key in self._keys.values()), default=None)
