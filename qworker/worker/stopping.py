"""A worker's stop: what each signal means, and the three phases that follow it.

The phases are: the claim loop ends (a claim stuck on an unreachable server is
not waited for), running jobs finish within the grace period, and the last
writes go out, bounded too. Kept apart from the claim loop so that each of the
worker's timeouts on the way out is in one place.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from qworker import systemd
from qworker.aio import cancel_and_wait
from qworker.worker.outbox import Outbox, OutboxWriter
from qworker.worker.runs import Runs

log = structlog.get_logger("qworker.worker")

# Seconds a stopping worker waits for MongoDB to take what it has not written yet.
STOP_WAIT = 10.0
# Seconds a claim in flight when a stop begins may take; beyond, it is abandoned
# (a claim the server made anyway returns its jobs with their lease).
CLAIM_WAIT = 2.0
# Writes named in the log of a stop that could not make them.
UNWRITTEN_SHOWN = 50


class Stopping:
    """The stop of one worker: asked by signals, the manager or ``worker.fail``."""

    def __init__(self, grace: float, runs: Runs, wake: Callable[[], None]) -> None:
        self.grace = grace
        self.runs = runs
        self.wake = wake
        self.asked = False  # no more claims
        self.forced = asyncio.Event()  # running jobs are handed back at once
        self._asked = asyncio.Event()
        self._give_up = asyncio.Event()  # the last writes wait for MongoDB no longer
        self._writing_last = False

    def request(self, force: bool = False) -> None:
        """First signal: stop claiming and drain; second (or ``force``): stop at once.

        A third signal, or any while the last writes wait for MongoDB, ends that wait.
        """
        if self.forced.is_set() or self._writing_last:
            log.warning("no longer waiting for MongoDB: stopping at once")
            self._give_up.set()
            return
        if not self.asked:  # the shutdown begins: tell systemd, if it runs us
            status = f"stopping: {len(self.runs)} running jobs to finish or hand back"
            systemd.stopping(status, within=self.grace + systemd.STOP_MARGIN)
        if self.asked or force:
            log.warning("stopping now, returning unfinished jobs to the queue")
            self.forced.set()
        else:
            log.info("stopping: finishing running jobs", grace=self.grace, running=len(self.runs))
        self.asked = True
        self._asked.set()
        self.wake()

    async def end_claims(self, claiming: asyncio.Future[Any]) -> None:
        """Wait for the claim loop to end with a stop: a read or claim that waits for an
        unreachable server is not waited for beyond ``CLAIM_WAIT``."""
        asked: asyncio.Future[Any] = asyncio.ensure_future(self._asked.wait())
        await asyncio.wait([claiming, asked], return_when=asyncio.FIRST_COMPLETED)
        asked.cancel()
        await asyncio.wait([claiming], timeout=CLAIM_WAIT)
        await cancel_and_wait([claiming])
        if not claiming.cancelled():
            claiming.result()  # what the loop raised, it raises here

    async def drain(self) -> None:
        """Let running jobs finish within the grace period (or until a second signal)."""
        tasks = self.runs.tasks()
        if tasks:
            finished: asyncio.Future[Any] = asyncio.gather(*tasks, return_exceptions=True)
            forced: asyncio.Future[Any] = asyncio.ensure_future(self.forced.wait())
            await asyncio.wait(
                [finished, forced], timeout=self.grace, return_when=asyncio.FIRST_COMPLETED
            )
            forced.cancel()
        self.runs.release_all()

    async def last_writes(
        self, outbox: Outbox, writer: OutboxWriter, goodbye: Callable[[], Awaitable[None]]
    ) -> None:
        """Outcomes and hand-backs, notifications, the goodbye: what a stopping worker
        still owes MongoDB, waiting for it at most ``STOP_WAIT`` (or until another
        signal). What could not be written is logged: the leases of those jobs
        expire, and the jobs return to the queue."""
        self._writing_last = True
        writing = asyncio.ensure_future(_write_all(writer, goodbye))
        given_up = asyncio.ensure_future(self._give_up.wait())
        await asyncio.wait(
            [writing, given_up], timeout=STOP_WAIT, return_when=asyncio.FIRST_COMPLETED
        )
        given_up.cancel()
        if writing.done():
            return
        await cancel_and_wait([writing])
        drained = outbox.drain()
        unwritten = outbox.describe(drained.ops)
        log.error(
            "stopping without writing to MongoDB; their leases return these jobs to the queue",
            unwritten=unwritten[:UNWRITTEN_SHOWN],
            more=max(0, len(unwritten) - UNWRITTEN_SHOWN),
            workflows=[str(doc["_id"]) for doc in drained.workflows],
            notifications=len(drained.notes) + len(writer.notes) + len(writer.unsent),
        )


async def _write_all(writer: OutboxWriter, goodbye: Callable[[], Awaitable[None]]) -> None:
    writer.stopping = True
    await writer.flush()
    await writer.publish()
    await goodbye()
