"""A worker's change stream on ``jobs``: its tasks' runnable jobs as they appear.

With it an enqueue is one write (the job), and an idle worker claims a new
job about as soon as the server reports the insert. An insert comes with the
fields a claim needs, so the job becomes a candidate without a read; an update
that queued some job (a retry, a recovery, a release, a chain's next step)
does not say whose task it is, so it asks for a read of the queue; a cancel
asked of a job the worker runs stops it at once (the server wrote the
``cancelRequested`` it reports, so no check follows, unlike a channel hint). The stream
is a hint only: a broken one is resumed from its last token, and the poll
still finds every job, a lost event costing at most one poll interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from typing import Any

import structlog
from pymongo.asynchronous.change_stream import AsyncChangeStream
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import OperationFailure, PyMongoError

from qworker import streams
from qworker.awaits import MIN_GAP, Pace

log = structlog.get_logger("qworker.worker")

Doc = dict[str, Any]
# How long the server holds a getMore for new events: the batching of a stream.
AWAIT_MS = 1_000
# The floor under empty reads while the worker is busy (no free slot, or candidates
# enough for its slots): news can wait for a slot anyway. On MongoDB an empty read
# lasts AWAIT_MS, so this changes nothing there; on SecantusDB, where any write ends
# every waiting getMore, four busy workers' streams made 0.31 empty reads per job.
BUSY_GAP = AWAIT_MS / 1000
# A broken stream is opened again after this long (or the poll interval, if shorter).
REOPEN_SECONDS = 1.0
# A stream that cannot be resumed from its token (the server forgot it) starts anew.
HISTORY_LOST = (280, 286)  # ChangeStreamFatalError, ChangeStreamHistoryLost


class JobFeed:
    def __init__(
        self,
        jobs: AsyncCollection[Doc],
        tasks: Iterable[str],
        retry_after: float,
        on_jobs: Callable[[list[Doc]], None],
        on_requeued: Callable[[], None],
        on_cancel: Callable[[str], object],
        fields: Iterable[str] = (),
        busy: Callable[[], bool] = lambda: False,
    ) -> None:
        """``busy()``: whether new jobs can wait (``BUSY_GAP``)."""
        self.jobs = jobs
        self.busy = busy
        self.pipeline = streams.for_workers(tasks, fields)
        self.retry_after = retry_after
        self.on_jobs, self.on_requeued, self.on_cancel = on_jobs, on_requeued, on_cancel
        self._stream: AsyncChangeStream[Doc] | None = None
        self._token: Any = None
        self.alive_at = time.monotonic()  # the stream's last answer, an event or none

    async def open(self) -> bool:
        """Open the stream; False where the server has no change streams (said in the log)."""
        try:
            self._stream = await self._watch()
        except PyMongoError as exc:
            log.info(
                "no change streams on this server: new jobs come from job:queued wake-ups "
                "and polling",
                reason=str(exc)[:200],
            )
            return False
        log.info("new jobs come from a change stream on jobs")
        return True

    async def run(self) -> None:
        """Deliver events until cancelled; reopen a broken stream, resuming where it was."""
        while True:
            try:
                if self._stream is None:
                    self._stream = await self._watch()
                    log.info("the change stream on jobs is back")
                    self.on_requeued()  # what came while it was down: read the queue
                await self._deliver(self._stream)
            except PyMongoError as exc:
                await self._broken(exc)

    async def _watch(self) -> AsyncChangeStream[Doc]:
        return await self.jobs.watch(
            self.pipeline, resume_after=self._token, max_await_time_ms=AWAIT_MS
        )

    async def _deliver(self, stream: AsyncChangeStream[Doc]) -> None:
        pace = Pace()
        while True:
            pace.begin()
            event = await stream.try_next()
            self.alive_at = time.monotonic()
            self._token = stream.resume_token
            if event is None:
                pace.gap = BUSY_GAP if self.busy() else MIN_GAP
                await asyncio.sleep(pace.rest())  # a server that woke us for nothing
                continue
            job = event.get("fullDocument")
            if streams.cancel_asked(event):
                self.on_cancel(str(event["documentKey"]["_id"]))
            elif event.get("operationType") != "insert":
                self.on_requeued()
            elif isinstance(job, dict):
                self.on_jobs([job])  # the candidates check what they are given

    async def _broken(self, exc: PyMongoError) -> None:
        log.warning("the change stream on jobs broke; resuming it", error=str(exc)[:200])
        stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(PyMongoError):  # a server gone has nothing to close
                await stream.close()
        if isinstance(exc, OperationFailure) and exc.code in HISTORY_LOST:
            self._token = None
        await asyncio.sleep(min(self.retry_after, REOPEN_SECONDS))
