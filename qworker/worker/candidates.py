"""A worker's local view of the jobs it may claim next.

Reading the queue is the expensive operation on some servers (its cost grows
with the number of matching jobs), so a worker reads its candidates once, in
a batch, keeps them here in claim order, and adds the ones that wake-up hints
announce. Claims stay conditional in MongoDB: an entry here is only a hint.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bson import ObjectId

from qworker.limits import partition_of

# (priority, round, due time, place among jobs due with it, id): see ``Candidates``.
Key = tuple[int, int, datetime, tuple[int, int], ObjectId]
Lane = tuple[str, str | None]  # a task and a partition of it (None: not known yet)
Order = tuple[int, datetime, tuple[int, int], ObjectId]
Placer = Callable[[str, ObjectId], tuple[int, int]]  # a job's place in a batch (``Shares``)


@dataclass(frozen=True)
class Pick:
    """A candidate taken: its job, the lane it came from, and what puts it back."""

    id: ObjectId
    task: str
    partition: str | None
    key: Key
    lost: bool = False

    @property
    def lane(self) -> Lane:
        return (self.task, self.partition)


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
    """Claim order: higher priority, then round-robin over lanes, then earlier ``nextRunAt``.

    A lane is a task, or a partition of a task with ``partitionBy``. The jobs of
    each lane are numbered in their own order (their *round*), so jobs of equal
    priority are taken one lane after the other: a lane with a deep backlog does
    not starve the others. A lane seen for the first time joins at the round
    being served, not ahead of it.

    Jobs due at the same instant (a batch enqueued at once) are in no order
    of their own: they come in id order, or as ``place`` puts them (each
    worker its own share of the batch first, ``Shares``), so that workers
    sharing a queue do not all try to claim the same ids.

    A job lost with a worker before is taken alone, by a worker that runs
    nothing else: if it kills its worker again, it takes no other job with it.
    """

    def __init__(
        self, place: Placer | None = None, partitions: Mapping[str, str] | None = None
    ) -> None:
        self._place = place or (lambda _task, job_id: (0, 0))
        self._paths = dict(partitions or {})  # task -> partitionBy
        self._heap: list[tuple[Key, str, str | None]]
        self._keys: dict[ObjectId, Key]
        self._lost: set[ObjectId]
        self._rounds: dict[Lane, int]
        self._serving: int  # the round of the last job taken
        self._clear()

    def __len__(self) -> int:
        return len(self._keys)

    def replace(self, docs: Iterable[dict[str, Any]]) -> None:
        self._clear()
        self.add(docs)

    def add(self, docs: Iterable[dict[str, Any]], partitioned: bool = True) -> None:
        """Add or update candidates; ``partitioned``: the docs carry their partition's
        field (a wake-up hint does not, and its lane is found out when it is taken)."""
        valid = [
            doc
            for doc in docs  # not a job qworker wrote (and a string id is not comparable)
            if isinstance(doc.get("nextRunAt"), datetime) and isinstance(doc.get("_id"), ObjectId)
        ]
        self._insert(
            (self._order(doc), (doc["name"], self._partition(doc, partitioned)), lost_before(doc))
            for doc in valid
        )

    def reorder(self) -> None:
        """Place every candidate anew (the peers sharing the queue changed)."""
        live = [
            ((prio, at, self._place(task, job), job), (task, part), job in self._lost)
            for (prio, _turn, at, _place, job), task, part in self._heap
            if self._keys.get(job) == (prio, _turn, at, _place, job)
        ]
        self._clear()
        self._insert(live)

    def _clear(self) -> None:
        self._heap, self._keys, self._lost, self._rounds, self._serving = [], {}, set(), {}, 0

    def _insert(self, entries: Iterable[tuple[Order, Lane, bool]]) -> None:
        """Add candidates (their order, lane, and whether lost before), each lane's in turn."""
        for order, lane, lost in sorted(entries, key=lambda e: e[0]):
            old = self._keys.get(order[3])
            if old is not None and (old[0], old[2]) == (order[0], order[1]):
                continue  # known as it is
            turn = max(self._rounds.get(lane, 0), self._serving)
            self._rounds[lane] = turn + 1
            key: Key = (order[0], turn, order[1], order[2], order[3])
            self._keys[order[3]] = key
            heapq.heappush(self._heap, (key, *lane))
            if lost:
                self._lost.add(order[3])

    def _order(self, doc: dict[str, Any]) -> Order:
        place = self._place(doc["name"], doc["_id"])
        return (-priority_of(doc), doc["nextRunAt"], place, doc["_id"])

    def _partition(self, doc: dict[str, Any], known: bool) -> str | None:
        path = self._paths.get(doc["name"])
        if path is None:
            return ""
        return partition_of(doc, path) if known else None

    def take(
        self,
        n: int,
        now: datetime,
        room: Callable[[str], int],
        lane_room: Callable[[str, str | None], int] | None = None,
        alone: bool = False,
    ) -> tuple[list[Pick], bool]:
        """Up to ``n`` due jobs in claim order, within each task's ``room`` and each
        lane's ``lane_room``; and whether the one taken is a job lost before, which only
        a worker running nothing (``alone``) takes, and alone."""
        picked: list[Pick] = []
        kept: list[tuple[Key, str, str | None]] = []
        per_task: dict[str, int] = {}
        per_lane: dict[Lane, int] = {}
        solo = False
        while self._heap and len(picked) < n and not solo:
            item = heapq.heappop(self._heap)
            key, task, partition = item
            if self._keys.get(key[4]) != key:
                continue  # superseded or discarded
            lost = key[4] in self._lost
            lane = (task, partition)
            full = per_task.get(task, 0) >= room(task) or (
                lane_room is not None and per_lane.get(lane, 0) >= lane_room(task, partition)
            )
            if key[2] > now or full or (lost and (picked or not alone)):
                kept.append(item)
                continue
            per_task[task] = per_task.get(task, 0) + 1
            per_lane[lane] = per_lane.get(lane, 0) + 1
            del self._keys[key[4]]
            self._lost.discard(key[4])
            self._serving = max(self._serving, key[1])
            picked.append(Pick(key[4], task, partition, key, lost))
            solo = lost
        for item in kept:
            heapq.heappush(self._heap, item)
        return picked, solo

    def put_back(self, picks: Iterable[Pick]) -> None:
        """Candidates taken but not claimed (a limit refused them): in their old place."""
        for pick in picks:
            if pick.id in self._keys:
                continue  # seen again meanwhile
            self._keys[pick.id] = pick.key
            heapq.heappush(self._heap, (pick.key, pick.task, pick.partition))
            if pick.lost:
                self._lost.add(pick.id)

    def discard_tasks(self, tasks: frozenset[str]) -> None:
        """Forget the candidates of ``tasks``."""
        if tasks:
            self._discard(lambda _key, task: task in tasks)

    def leave(self, missed: Iterable[Pick]) -> None:
        """Claims of these came back empty where shares of the queue meet (``Shares``):
        forget what a peer has taken already. In another's share, walked from its far
        end, that is the rest of it; in this worker's own, walked upward while the
        others come down, every job above the lowest one missed."""
        lowest: dict[tuple[str, int], int] = {}
        for pick in missed:
            share, number = pick.key[3]
            lowest[(pick.task, share)] = min(lowest.get((pick.task, share), number), number)

        def taken(key: Key, task: str) -> bool:
            share, number = key[3]
            floor = lowest.get((task, share))
            return floor is not None and (share > 0 or number >= floor)

        if lowest:
            self._discard(taken)

    def _discard(self, gone: Callable[[Key, str], bool]) -> None:
        kept = [item for item in self._heap if not gone(item[0], item[1])]
        dropped = {item[0][4] for item in self._heap if gone(item[0], item[1])}
        heapq.heapify(kept)
        self._heap = kept
        for job_id in dropped:
            self._keys.pop(job_id, None)
            self._lost.discard(job_id)

    def any_takeable(
        self,
        now: datetime,
        room: Callable[[str], int],
        lane_room: Callable[[str, str | None], int],
    ) -> bool:
        """Whether one due candidate has room (the watchdog's question; nothing is taken)."""
        return any(
            key[2] <= now
            and key[4] not in self._lost
            and room(task) > 0
            and lane_room(task, part) > 0
            for key, task, part in self._heap
            if self._keys.get(key[4]) == key
        )

    def next_due(self) -> datetime | None:
        return min((key[2] for key in self._keys.values()), default=None)
