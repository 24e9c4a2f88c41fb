"""A worker's side of the fleet-wide limits (``qworker.limits``): the slots it takes
before it claims, and gives back when its jobs end.

A candidate of a limited task is claimed only once a slot was granted for it,
so no job is claimed early and then held. A lane (a task, or a partition of
one) refused a slot is left alone until the rate's window lets a job start,
or, at its concurrency, for a short while (at once when one of this worker's
own jobs of that lane ends); the worker's other lanes and tasks go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import structlog
from bson import ObjectId
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from qworker import limits
from qworker.limits import Limits
from qworker.mongo import Names
from qworker.operations import Operation, run_async
from qworker.worker.candidates import Lane, Pick

log = structlog.get_logger("qworker.worker")

Doc = dict[str, Any]
UNLIMITED = 1 << 30
# A lane at its concurrency asks again after about this long (each worker at its
# own moment), doubling while it is refused, unless one of the worker's own jobs
# of that lane ends first: its slot is then the worker's to take again.
RETRY_SECONDS = 0.25
MAX_RETRY_SECONDS = 2.0
FORGET_SECONDS = 10.0


class Gates:
    def __init__(
        self, db: AsyncDatabase[Doc], names: Names, limited: Mapping[str, Limits], lease: float
    ) -> None:
        self.db, self.names, self.lease = db, names, lease
        self.limits = {task: lim for task, lim in limited.items() if lim}
        self._closed: dict[Lane, float] = {}  # lane -> monotonic time it opens again
        self._refusals: dict[Lane, int] = {}  # lane -> refusals in a row, at its concurrency
        self._releases: dict[str, list[tuple[ObjectId, str]]] = {}
        self.wanted = asyncio.Event()

    # -- before a claim ----------------------------------------------------

    def room(self, task: str, partition: str | None) -> int:
        """How many of a lane's candidates one claim may take."""
        until = self._closed.get((task, partition))
        if until is not None and until > time.monotonic():
            return 0
        lim = self.limits.get(task)
        if lim is None:
            return UNLIMITED
        return min(
            lim.concurrency if lim.concurrency is not None else UNLIMITED,
            lim.rate.limit if lim.rate is not None else UNLIMITED,
        )

    def opens_in(self) -> float | None:
        """Seconds until the first closed lane opens again, if one is closed."""
        now = time.monotonic()
        # A lane open again for a while is forgotten, with its refusals in a row.
        self._closed = {lane: t for lane, t in self._closed.items() if t > now - FORGET_SECONDS}
        self._refusals = {lane: n for lane, n in self._refusals.items() if lane in self._closed}
        return min((until - now for until in self._closed.values() if until > now), default=None)

    async def admit(
        self, picks: list[Pick], token: str, now: datetime
    ) -> tuple[list[Pick], list[Pick]]:
        """The picks that may be claimed under ``token`` (slots taken for those of limited
        tasks), and those refused (to put back)."""
        free = [p for p in picks if p.task not in self.limits]
        bounded = [p for p in picks if p.task in self.limits]
        if not bounded:
            return picks, []
        if self._releases:  # a slot this worker gives back is one it may take again
            await self.flush()
        refused: list[Pick] = []
        try:
            bounded = await self._placed(bounded)
            lanes: dict[Lane, list[Pick]] = {}
            for pick in bounded:
                lanes.setdefault(pick.lane, []).append(pick)
            for lane, members in lanes.items():
                shut = self.room(*lane) == 0  # a hinted job's lane, found closed
                allowed = set() if shut else await self._acquire(lane, members, token, now)
                free += [p for p in members if p.id in allowed]
                refused += [p for p in members if p.id not in allowed]
        except PyMongoError as exc:
            log.warning("cannot take slots of a limited task", error=str(exc)[:200])
            taken = {p.id for p in free}
            refused = [p for p in picks if p.id not in taken]
            for pick in refused:
                self._close(pick.lane, RETRY_SECONDS)
        return free, refused

    async def _placed(self, picks: list[Pick]) -> list[Pick]:
        """The picks with their partitions: a hinted job's is read from its document."""
        unknown = [p for p in picks if p.partition is None]
        if not unknown:
            return picks
        paths = [self.limits[p.task].partition_by or "" for p in unknown]
        projection = dict.fromkeys(["name", *limits.fields(filter(None, paths), ["name"])], 1)
        docs = (
            await self.db[self.names.jobs]
            .find({"_id": {"$in": [p.id for p in unknown]}}, projection)
            .to_list()
        )
        found = {
            doc["_id"]: limits.partition_of(doc, self.limits[doc["name"]].partition_by)
            for doc in docs
            if doc.get("name") in self.limits
        }
        return [
            p if p.partition is not None else Pick(p.id, p.task, found.get(p.id, ""), p.key, p.lost)
            for p in picks
        ]

    async def _acquire(
        self, lane: Lane, picks: list[Pick], token: str, now: datetime
    ) -> set[ObjectId]:
        task, partition = lane[0], lane[1] or ""
        lim = self.limits[task]
        ids = [p.id for p in picks]
        doc = await self._run(limits.acquire(task, partition, lim, ids, token, now))
        allowed = limits.granted(doc, token)
        if len(allowed) == len(picks):
            self._refusals.pop(lane, None)
            return allowed
        opens = limits.next_start(doc, lim.rate, now)
        if opens is not None:  # the window is full: no slot before it moves on
            self._close(lane, (opens - now).total_seconds())
            return allowed
        stale = await self._run(limits.stale_entries(doc, now - timedelta(seconds=self.lease)))
        if stale:  # slots of jobs no longer running (a dead worker's): free, try again soon
            log.info("taking back slots of jobs that no longer run", task=task, slots=len(stale))
            await self._run(limits.take_back(limits.slot_id(task, partition), stale))
            self._close(lane, 0.0)
        else:
            refusals = self._refusals[lane] = self._refusals.get(lane, 0) + 1
            wait = min(MAX_RETRY_SECONDS, RETRY_SECONDS * 2 ** (refusals - 1))
            self._close(lane, wait * random.uniform(0.5, 1.5))
        return allowed

    def _close(self, lane: Lane, seconds: float) -> None:
        self._closed[lane] = time.monotonic() + max(seconds, 0.0)

    # -- after a claim, and as jobs end ------------------------------------

    async def unclaimed(self, admitted: list[Pick], claimed: list[Doc], token: str) -> None:
        """Give back, starts too, the slots of admitted jobs that another worker claimed first."""
        mine = {doc["_id"] for doc in claimed}
        lost: dict[str, list[tuple[ObjectId, str]]] = {}
        for pick in admitted:
            if pick.task in self.limits and pick.id not in mine:
                slot = limits.slot_id(pick.task, pick.partition or "")
                lost.setdefault(slot, []).append((pick.id, token))
        if lost:
            with contextlib.suppress(PyMongoError):  # else taken back as stale, after a lease
                await self._run(limits.release(lost, starts_too=True))

    def ended(self, doc: Doc) -> None:
        """A claimed job of ours ended (or never started): its slot is to be given back."""
        lim = self.limits.get(doc.get("name", ""))
        if lim is None or lim.concurrency is None:
            return  # a rate counts starts: nothing to give back
        partition = limits.partition_of(doc, lim.partition_by)
        slot = limits.slot_id(doc["name"], partition)
        self._releases.setdefault(slot, []).append((doc["_id"], doc["lockToken"]))
        self._closed.pop((doc["name"], partition), None)
        self._refusals.pop((doc["name"], partition), None)
        self.wanted.set()

    async def flush(self) -> None:
        releases, self._releases = self._releases, {}
        try:
            await self._run(limits.release(releases, starts_too=False))
        except PyMongoError as exc:  # taken back as stale by the next worker refused
            log.warning("cannot give back the slots of ended jobs", error=str(exc)[:200])

    async def keep(self) -> None:
        """Give slots back as jobs end, a few at a time."""
        while True:
            await self.wanted.wait()
            self.wanted.clear()
            await self.flush()

    async def _run(self, op: Operation[Any]) -> Any:
        return await run_async(op, self.db, self.names)
