"""A worker's leases: renewed while its runs go on, and taken back from dead workers.

A claim holds a job for ``--lease`` seconds. Every third of that the worker
renews the leases of its running jobs and of the finished ones whose outcome
is still to be written (or a slow server would let them be taken back and run
again although they finished), learns there of cancels asked for meanwhile,
and returns to the queue the jobs whose lease ran out: their worker is dead.

After an outage every lease looks expired; the workers that are alive renew
theirs (and write the outcomes they held) within a lease of the server coming
back, so a worker takes leases back only once the server has answered it for
a whole lease: only the dead ones' jobs are then found expired.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime, timedelta

import structlog
from bson import ObjectId
from pymongo.errors import PyMongoError

from qworker.aio import check_cancelled
from qworker.store import WorkerStore
from qworker.when import utcnow

log = structlog.get_logger("qworker.worker")


class Leases:
    def __init__(
        self,
        store: WorkerStore,
        lease: float,
        held: Callable[[], Iterable[str]],
        cancel: Callable[[str], object],
        recovered: Callable[[], None],
        upkeep: Callable[[], Awaitable[None]],
    ) -> None:
        """``held``: the claim tokens to renew; ``cancel(job_id)`` for a cancel found;
        ``recovered()`` once jobs were taken back; ``upkeep()`` each round besides."""
        self.store, self.lease = store, lease
        self._held, self._cancel, self._recovered, self._upkeep = held, cancel, recovered, upkeep
        self._reachable_since: float | None = None  # monotonic; None after a failed write
        self.answered_at: float | None = time.monotonic()  # MongoDB's last answer (renewal)

    def unreachable(self) -> None:
        """A write failed: the server must answer for a whole lease again before
        this worker takes any lease back."""
        self._reachable_since = None

    async def keep(self) -> None:
        """Until cancelled: renew, notice cancels, take back the expired."""
        while True:
            await self._upkeep()
            await asyncio.sleep(self.lease / 3)
            now = utcnow()
            try:
                until = now + timedelta(seconds=self.lease)
                held = list(self._held())
                for job_id in await self.store.renew(held, until):
                    self._cancel(job_id)
                self.answered_at = time.monotonic()
                recovered = await self._take_back_expired(now, held)
            except PyMongoError as exc:
                check_cancelled()
                self.unreachable()
                log.warning("lease upkeep failed", error=str(exc))
                continue
            if recovered:
                log.warning("recovered jobs of a lost worker", jobs=[str(i) for i in recovered])
                self._recovered()

    async def _take_back_expired(self, now: datetime, held: list[str]) -> list[ObjectId]:
        """The jobs whose lease ran out, but never one of ``held``: this worker is alive
        and runs them (a read that saw a lease before its renewal must not free it)."""
        reached = time.monotonic()
        if self._reachable_since is None:
            self._reachable_since = reached
        if reached - self._reachable_since < self.lease:
            return []
        return await self.store.recover_expired(now, held)
