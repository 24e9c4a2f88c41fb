"""The client library: enqueue jobs and look after them from application code."""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any

import structlog
from pymongo.errors import PyMongoError

from qworker import protocol
from qworker.channel import publish_sync
from qworker.model import FINISHED_STATES, new_job
from qworker.mongo import (
    CHANNEL_BYTES,
    Names,
    database_name,
    ensure_schema,
    resolve_url,
    sync_client,
)
from qworker.store import Doc, JobStore
from qworker.when import parse_when, utcnow

log = structlog.get_logger("qworker.client")

# Jobs due within this window are announced to workers with their ids, so an
# idle worker claims them at once; later ones are found by the workers' reads.
HINT_HORIZON = timedelta(seconds=60)
HINT_CHUNK = 1_000


class Client:
    """``Client("mongodb://host/db")``; ``Client("embedded")`` for the local server."""

    def __init__(self, url: str, prefix: str = "", channel_size: int = CHANNEL_BYTES) -> None:
        self.url = resolve_url(url)
        self._mongo = sync_client(self.url)
        self.names = Names(prefix)
        self.db = self._mongo[database_name(self.url)]
        ensure_schema(self.db, self.names, channel_size)
        self.store = JobStore(self.db[self.names.jobs])

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object | type[BaseException] | TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._mongo.close()

    # -- enqueueing ------------------------------------------------------

    def now(self, task: str, data: Any = None, **opts: Any) -> str:
        """Queue a job to run as soon as a worker is free; returns its id."""
        return self.schedule(None, task, data, **opts)

    def schedule(
        self,
        when: str | datetime | None,
        task: str,
        data: Any = None,
        *,
        unique: str | None = None,
        **opts: Any,
    ) -> str:
        """Queue a job for ``when`` (``now``, ``in 20 minutes``, an ISO time, ``tomorrow 9am``).

        With ``unique=KEY`` there is at most one queued or running job of
        ``task`` with that key: while one exists, its id is returned instead.
        """
        if unique is None:
            return self.enqueue_many(task, [data], when=when, **opts)[0]
        now = utcnow()
        doc = new_job(task, data, now=now, run_at=parse_when(when, now), unique=unique, **opts)
        holder = self.store.insert_unique(doc)
        if holder is not None:
            return str(holder)
        self._announce_due([doc], now)
        return str(doc["_id"])

    def enqueue_many(
        self,
        task: str,
        items: Iterable[Any],
        when: str | datetime | None = None,
        *,
        priority: int | str | None = None,
        max_attempts: int | None = None,
        timeout: float | None = None,
        description: str | None = None,
    ) -> list[str]:
        """Queue one job per item of data in one round trip; all or nothing is validated."""
        now = utcnow()
        run_at = parse_when(when, now)
        docs = [
            new_job(task, data, now=now, run_at=run_at, priority=priority,
                    max_attempts=max_attempts, timeout=timeout, description=description)
            for data in items
        ]  # fmt: skip
        self.store.insert(docs)
        self._announce_due(docs, now)
        return [str(doc["_id"]) for doc in docs]

    def _announce_due(self, docs: list[Doc], now: datetime) -> None:
        if docs and docs[0]["nextRunAt"] <= now + HINT_HORIZON:
            self._announce(docs)

    def _announce(self, docs: list[Doc]) -> None:
        """Wake idle workers; a lost hint only costs latency, never a job."""
        channel = self.db[self.names.channel]
        try:
            for start in range(0, len(docs), HINT_CHUNK):
                chunk = docs[start : start + HINT_CHUNK]
                publish_sync(channel, protocol.JOB_QUEUED, protocol.queued(chunk))
        except PyMongoError as exc:
            log.warning("could not announce new jobs; workers will find them", error=str(exc))

    # -- looking after jobs ----------------------------------------------

    def get(self, job_id: str) -> Doc:
        return self.store.get(job_id)

    def jobs(
        self, state: str | None = None, task: str | None = None, text: str | None = None,
        limit: int = 50, skip: int = 0,
    ) -> list[Doc]:  # fmt: skip
        return self.store.find(state=state, task=task, text=text, limit=limit, skip=skip)

    def wait(self, job_id: str, timeout: float | None = None) -> Doc:
        """Block until the job is finished; ``TimeoutError`` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.02
        while True:
            doc = self.store.get(job_id)
            if doc["state"] in FINISHED_STATES:
                return doc
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {doc['state']} after {timeout}s")
            time.sleep(pause)
            pause = min(pause * 1.5, 0.5)

    def cancel(self, job_id: str) -> Doc:
        """Cancel a queued job; a running one is asked to stop (``job.cancelled``)."""
        doc = self.store.cancel(job_id, utcnow())
        if doc.get("cancelRequested"):
            publish_sync(self.db[self.names.channel], "job:cancel", {"jobId": str(doc["_id"])})
        return doc

    def retry(self, job_id: str) -> Doc:
        """Run a finished (failed, cancelled or succeeded) job again, now."""
        doc = self.store.retry(job_id, utcnow())
        self._announce([doc])
        return doc
