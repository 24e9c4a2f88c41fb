"""A worker's claims: what it reads of the queue, and how it takes jobs from it.

Reading the queue is the expensive operation on some servers, so the worker
reads its candidates in one batch (``candidates``), adds those that wake-up
hints name, reads again when it has none (or rarely, to catch what hints
missed: a slow read is repeated less often), and claims by ``_id``, many at
once, under one claim token per claim.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

import structlog
from bson import ObjectId
from bson.errors import InvalidId
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import OperationFailure, PyMongoError

from qworker import limits, tracing
from qworker.store import CANDIDATE_FIELDS, WorkerStore
from qworker.streams import HINT_FIELDS
from qworker.when import utcnow
from qworker.worker.candidates import Candidates, Pick, priority_of
from qworker.worker.shares import Shares

log = structlog.get_logger("qworker.worker")

CANDIDATE_CAP = 20_000
PEERS_GAP = 1.0  # seconds: a claim that came back short reads the peers at most this often

Doc = dict[str, Any]


class Claims:
    def __init__(
        self,
        store: WorkerStore,
        tasks: Iterable[str],
        worker_id: str,
        nonce: str,
        lease: float,
        poll_interval: float,
        partitions: Mapping[str, str] | None = None,
        trace_writes: bool = False,
    ) -> None:
        """``partitions``: the ``partitionBy`` of each task that has one; ``trace_writes``
        (``--trace-writes``): each claim in a span of its own (``tracing``)."""
        self.store, self.tasks = store, frozenset(tasks)
        self.trace_writes = trace_writes
        paths = (partitions or {}).values()
        self.partition_fields = limits.fields(paths, [*CANDIDATE_FIELDS, *HINT_FIELDS])
        self.worker_id, self.nonce = worker_id, nonce
        self.lease, self.poll_interval = lease, poll_interval
        self.shares = Shares(worker_id, self.tasks)
        self.candidates = Candidates(self.shares.place, partitions)
        self.paused: frozenset[str] = frozenset()  # tasks paused fleet-wide (``Pauses``)
        self._tokens = itertools.count(1)
        self.wanted = True  # read the queue at the next chance
        self._next_read = 0.0
        self._reread_every = 5.0
        self._took = 0.0  # the last read's
        self._stale = False  # a claim came back short: peers took some of the candidates
        self.last_read_started = 0.0  # monotonic
        self._peers_read_at = 0.0  # monotonic

    def want(self) -> None:
        """Jobs came to the queue that no hint named (a lost worker's): read it soon."""
        self.wanted = True

    def should_read(self) -> bool:
        now = time.monotonic()
        if len(self.candidates) == 0:
            return self.wanted or now >= self._next_read
        if self._stale:  # as soon as a slow read may be repeated
            return now >= self._next_read + max(0.0, 20 * self._took - self.poll_interval)
        return now >= self._next_read + self._reread_every

    async def read(self) -> None:
        """The queued jobs of our tasks due within a poll interval, as the candidates."""
        started = time.monotonic()
        self.wanted = self._stale = False
        horizon = utcnow() + timedelta(seconds=self.poll_interval)
        try:
            docs = await self.store.candidates(
                self.tasks - self.paused, horizon, CANDIDATE_CAP, self.partition_fields
            )
        except PyMongoError as exc:
            log.warning("cannot read the queue", error=str(exc))
            self._next_read = time.monotonic() + self.poll_interval
            return
        self.candidates.replace(docs)
        self.last_read_started = started
        self._took = took = time.monotonic() - started
        # A slow read (a deep queue) is repeated less often, so reading never
        # costs more than a small share of the server.
        self._reread_every = max(5 * self.poll_interval, 20 * took)
        self._next_read = time.monotonic() + self.poll_interval

    async def claim(
        self, ids: list[ObjectId], token: str, now: datetime, solo: bool = False
    ) -> list[Doc]:
        """The claimed documents, in claim order (none if the server cannot be reached).

        ``token`` is this claim's (``token()``): the slots of limited tasks were taken
        under it."""
        try:
            with tracing.write(
                self.trace_writes,
                "claim",
                "receive",
                {"qworker.worker.id": self.worker_id, "qworker.claim.requested": len(ids)},
            ) as span:
                docs = await self.store.claim(ids, self.worker_id, token, now, self.lease, solo)
                span.set("messaging.batch.message_count", len(docs))
        except OperationFailure as exc:  # the server refused the update: a malformed job
            docs = await self._claim_apart(ids, token, now, exc)
        except PyMongoError as exc:
            log.warning("claim failed", error=str(exc))
            await asyncio.sleep(min(self.poll_interval, 1.0))
            return []
        return sorted(docs, key=lambda d: (-priority_of(d), d["nextRunAt"]))

    async def _claim_apart(
        self, ids: list[ObjectId], token: str, now: datetime, exc: OperationFailure
    ) -> list[Doc]:
        """Claim one at a time, failing the jobs whose claim the server refuses."""
        log.warning("a claim was refused; claiming one job at a time", error=str(exc)[:300])
        docs: list[Doc] = []
        for job_id in ids:
            try:
                docs += await self.store.claim([job_id], self.worker_id, token, now, self.lease)
            except OperationFailure as refused:
                reason = f"it cannot be claimed: {str(refused)[:300]}"
                log.error("failing a malformed job", job_id=str(job_id), reason=reason)
                with contextlib.suppress(PyMongoError):
                    await self.store.refuse(job_id, reason, now)
            except PyMongoError:
                break  # unreachable: the rest stay queued
        return docs

    async def read_peers(self, registry: AsyncCollection[Doc]) -> None:
        """Read which live workers share our tasks (``Shares``); if that changed, the
        candidates are placed anew."""
        self._peers_read_at = time.monotonic()
        try:
            changed = await self.shares.read(registry)
        except PyMongoError as exc:
            log.warning("cannot read the worker registry", error=str(exc))
            return
        if changed:
            self.candidates.reorder()

    async def fell_short(self, missed: list[Pick], registry: AsyncCollection[Doc]) -> None:
        """A claim did not get the ``missed`` jobs: peers took them. Where shares meet, the
        rest of one is what its owner took already (``Candidates.leave``); the other
        candidates are going stale too (the queue is read as soon as a read may be
        repeated); and the peers may be new (read again, at most every ``PEERS_GAP``)."""
        self.candidates.leave(pick for pick in missed if self.shares.shared(pick.task))
        self._stale = True
        if time.monotonic() - self._peers_read_at >= PEERS_GAP:
            await self.read_peers(registry)

    def pause(self, paused: frozenset[str]) -> None:
        """Claim nothing of ``paused`` (their candidates dropped); read the queue again for
        the tasks resumed."""
        resumed = self.paused - paused
        self.paused = paused
        self.candidates.discard_tasks(paused)
        if resumed:
            self.want()

    def token(self) -> str:
        """A claim token never used before."""
        return f"{self.worker_id}:{self.nonce}:{next(self._tokens)}"

    def hinted(self, body: dict[str, Any]) -> None:
        """A ``job:queued`` wake-up: the jobs it names, or the tasks to read again."""
        jobs, tasks = body.get("jobs"), body.get("tasks")
        if isinstance(jobs, list):
            served = self.tasks - self.paused
            mine = (_hinted_job(job, served) for job in jobs if isinstance(job, dict))
            self.candidates.add((doc for doc in mine if doc is not None), partitioned=False)
        elif isinstance(tasks, list) and all(isinstance(t, str) for t in tasks):
            self.wanted = self.wanted or bool(set(tasks) & (self.tasks - self.paused))
        else:
            log.warning("ignoring a malformed job:queued message")


def _hinted_job(entry: dict[str, Any], tasks: frozenset[str]) -> Doc | None:
    try:
        if entry["name"] not in tasks:
            return None
        at = datetime.fromisoformat(entry["nextRunAt"])
        if at.tzinfo is None:  # compared with aware times when claiming
            raise ValueError("nextRunAt without a UTC offset")
        return {
            "_id": ObjectId(entry["id"]),
            "name": entry["name"],
            "priority": int(entry.get("priority", 0)),
            "nextRunAt": at,
        }
    except (KeyError, TypeError, ValueError, OverflowError, InvalidId):
        log.warning("ignoring malformed job:queued entry")
        return None
