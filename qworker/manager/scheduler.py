"""The leader manager's scheduler: APScheduler turns schedule fires into qworker jobs.

Each fire inserts one job whose ``fireKey`` (schedule name and fire time) is
unique in ``jobs``, so a repeated fire, a failover in the middle of one, or
two managers that both believe they lead can never enqueue the same run twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from apscheduler.executors.base import BaseExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from pymongo import MongoClient
from pymongo.errors import DuplicateKeyError, PyMongoError

from qworker.mongo import Names, database_name, sync_client
from qworker.schedules import EXECUTOR, Schedule, ScheduleBook, job_store
from qworker.store import Doc
from qworker.tasks import TaskMeta
from qworker.wakeups import publish_now
from qworker.when import utcnow

log = structlog.get_logger("qworker.scheduler")

# Seconds between attempts while MongoDB cannot be reached.
OUTAGE_RETRY = 1.0


class Firing:
    """Where fires go: the jobs collection, and the channel for the wake-up hint."""

    def __init__(self, client: MongoClient[Doc], url: str, names: Names) -> None:
        db = client[database_name(url)]
        self.jobs, self.channel = db[names.jobs], db[names.channel]
        # Fires whose insert failed (MongoDB unreachable): APScheduler has moved
        # on from them, so they are tried again here until they are stored.
        self.failed: list[tuple[Schedule, datetime]] = []
        # Jobs inserted in this round of fires, announced together by ``announce``:
        # a channel insert can cost more than the fire itself.
        self._unannounced: list[Doc] = []

    def retry_failed(self) -> None:
        failed, self.failed = self.failed, []
        for schedule, fire_time in failed:
            self.enqueue(schedule, fire_time)

    def enqueue(self, schedule: Schedule, fire_time: datetime) -> bool:
        """Insert the job of one fire; False if it exists (or the last run is still active)."""
        now = utcnow()
        doc = schedule.job(now)
        at = fire_time.astimezone(UTC)
        doc.update(scheduleId=schedule.name, scheduledFor=at, fireKey=f"{schedule.name}@{at}")
        try:
            self.jobs.insert_one(doc)
        except PyMongoError as exc:
            if not isinstance(exc, DuplicateKeyError):
                log.warning(
                    "cannot enqueue a fire; will retry",
                    schedule=schedule.name,
                    fire_time=at.isoformat(),
                    error=str(exc),
                )
                self.failed.append((schedule, fire_time))
                return False
            index = (exc.details or {}).get("keyPattern") or {}
            index = (exc.details or {}).get("keyPattern") or {}
            reason = "already enqueued" if "fireKey" in index else "the last run is still active"
            log.info(
                "schedule fire skipped",
                schedule=schedule.name,
                fire_time=at.isoformat(),
                reason=reason,
            )
            return False
        log.info(
            "schedule fired",
            schedule=schedule.name,
            fire_time=at.isoformat(),
            job_id=str(doc["_id"]),
        )
        self._unannounced.append(doc)
        return True

    def announce(self) -> None:
        """Wake idle workers for this round's fires, in one message; a lost one costs latency."""
        docs, self._unannounced = self._unannounced, []
        publish_now(self.channel, docs)


def fire(
    schedule: Doc, *, firing: Firing | None = None, run_times: Sequence[datetime] = ()
) -> None:
    """Every schedule's APScheduler job: one qworker job for the latest due fire time.

    The store holds the call ``fire(schedule=...)``; ``FireExecutor`` adds
    where to enqueue and the fire times. APScheduler coalesces the fires
    missed while no manager ran into the last one; a schedule whose
    ``misfire`` is ``skip`` drops it when it is later than its grace time.
    """
    if firing is None or not run_times:
        raise ValueError("fire() is called by FireExecutor, with the firing and run times")
    spec = Schedule.from_stored(schedule)
    name = spec.name
    fire_time = run_times[-1]
    late = (utcnow() - fire_time).total_seconds()
    if late > spec.grace and spec.misfire == "skip":
        log.warning(
            "missed fire skipped", schedule=name, fire_time=fire_time.isoformat(), late=round(late)
        )
        return
    firing.enqueue(spec, fire_time)


class FireExecutor(BaseExecutor):  # type: ignore[misc]
    """Runs fires at once, in the scheduler's thread: each is one insert."""

    def __init__(self, firing: Firing) -> None:
        super().__init__()
        self._firing = firing

    def _do_submit_job(self, job: Any, run_times: list[datetime]) -> None:
        try:
            job.func(*job.args, firing=self._firing, run_times=run_times, **job.kwargs)
        except Exception as exc:
            self._run_job_error(job.id, exc, exc.__traceback__)
        else:
            self._run_job_success(job.id, [])


class _LeaderScheduler(BackgroundScheduler):  # type: ignore[misc]
    """APScheduler's background scheduler, kept alive through MongoDB outages.

    Its loop has no error handling of its own: a job store write failing after
    a fire would end the thread and with it every schedule, silently.
    """

    def __init__(self, firing: Firing, **options: Any) -> None:
        super().__init__(**options)
        self._firing = firing

    def _process_jobs(self) -> float | None:
        try:
            self._firing.retry_failed()
            wait: float | None = super()._process_jobs()
        except PyMongoError as exc:
            log.warning("cannot reach the schedules; retrying", error=str(exc))
            return OUTAGE_RETRY
        finally:
            self._firing.announce()
        if self._firing.failed:
            return OUTAGE_RETRY if wait is None else min(wait, OUTAGE_RETRY)
        return wait


class Scheduler:
    """APScheduler over the ``schedules`` store, run while this manager leads."""

    def __init__(self, url: str, names: Names) -> None:
        self._url, self._names = url, names
        self._client: MongoClient[Doc] | None = None
        self._book: ScheduleBook | None = None

    def install(self, metas: list[TaskMeta]) -> None:
        """Bring the schedules of these tasks' metadata into the store.

        A changed one replaces the installed one; an unchanged one is left
        alone, so a worker restart does not move its next fire. A task whose
        metadata no longer has a schedule loses the one it had installed.
        """
        book = self._book
        if book is None:
            return
        installed = set(book.names())
        for meta in metas:
            name = f"task:{meta.id}"
            current = book.get(name) if name in installed else None
            if meta.schedule is not None and meta.schedule != current:
                book.add(meta.schedule)
                log.info("installed a schedule", schedule=name, trigger=meta.schedule.describe())
            elif meta.schedule is None and current is not None and current.origin == "metadata":
                book.remove(name)
                log.info("removed a task's schedule", schedule=name)

    def start(self) -> None:
        if self._book is not None:
            return
        client = sync_client(self._url)
        db = client[database_name(self._url)]
        firing = Firing(client, self._url, self._names)
        aps = _LeaderScheduler(
            firing,
            jobstores={"default": job_store(client, db.name, self._names.schedules)},
            executors={EXECUTOR: FireExecutor(firing)},
            timezone=ZoneInfo("UTC"),
        )
        try:
            aps.start()
        except BaseException:
            client.close()
            raise
        self._client, self._book = client, ScheduleBook(aps, db[self._names.jobs])
        log.info("running the schedules")

    def wakeup(self) -> None:
        """Look at the store again: another process may have changed a schedule."""
        if self._book is not None:
            self._book.wakeup()

    def stop(self) -> None:
        if self._book is not None:
            self._book.close()
            self._book = None
        if self._client is not None:
            self._client.close()
            self._client = None
