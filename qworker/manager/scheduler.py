"""The leader manager's scheduler: APScheduler turns schedule fires into qworker jobs.

Each fire inserts one job whose ``fireKey`` (schedule name and fire time) is
unique in ``jobs``, so a repeated fire, a failover in the middle of one, or
two managers that both believe they lead can never enqueue the same run twice.
What a fire does while the job of the previous one is queued or running (its
overlap policy, and the fires ``buffer-one`` keeps) is ``qworker.manager.overlap``'s.

``pauseOnFailure`` pauses a schedule when a fire's job fails for good: on the
job's ``fail`` notification, and (should that be lost) at the next fire, which
is skipped if the latest ended fire's job failed. Pauses are written in the
scheduler's own thread, between rounds, so APScheduler's write of the next fire
time after a round can never undo one.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from apscheduler.executors.base import BaseExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from bson import ObjectId
from bson.errors import InvalidId
from pymongo import MongoClient
from pymongo.errors import DuplicateKeyError, PyMongoError

from qworker.manager.overlap import Buffers, Fire, Fired, insert_job
from qworker.model import JobState
from qworker.mongo import Names, database_name, sync_client
from qworker.schedules import (
    EXECUTOR,
    KEPT_FIELDS,
    LAST_FIELDS,
    Schedule,
    ScheduleBook,
    forgiven,
    job_store,
    last_ended,
)
from qworker.store import Doc
from qworker.tasks import TaskMeta
from qworker.wakeups import publish_now
from qworker.when import utcnow

log = structlog.get_logger("qworker.scheduler")

# Seconds between attempts while MongoDB cannot be reached.
OUTAGE_RETRY = 1.0
# Job end notifications that say a job left the active states, and the most failed
# jobs kept to look at (a flood of forged notifications must not grow the manager).
ENDED = ("success", "cancel", "expire")
MAX_FAILED_HEARD = 10_000


def run_now_key(name: str, at: datetime) -> str:
    """The fire key of an operator's "run now" of schedule ``name`` at ``at``.

    Among the schedule's fires (``fires_of``: the range after ``"<name>@"``) and in time
    order with them, so its job is the schedule's last job, success or failure; but no
    scheduled fire's (``"<name>@<UTC time>"``, which ends with the offset): a fresh
    ObjectId ends it.
    """
    return f"{name}@{at.astimezone(UTC)} run-now {ObjectId()}"


class Firing:
    """Where fires go: the jobs collection, and the channel for the wake-up hint.

    Its methods run in the scheduler's thread, but for ``hear``.
    """

    def __init__(
        self, client: MongoClient[Doc], url: str | None, names: Names, database: str | None = None
    ) -> None:
        db = client[database or database_name(url or "")]
        self.jobs, self.channel = db[names.jobs], db[names.channel]
        self.schedules = db[names.schedules]
        # The leader's book, once it runs: the pauses of pauseOnFailure go through it.
        self.book: ScheduleBook | None = None
        # Fires whose insert failed (MongoDB unreachable): APScheduler has moved
        # on from them, so they are tried again here until they are stored.
        self.failed: list[tuple[Schedule, datetime]] = []
        # Jobs inserted (or released) in this round of fires, announced together by
        # ``announce``: a channel insert can cost more than the fire itself.
        self._unannounced: list[Doc] = []
        self.overlap = Buffers(self.jobs, self.schedules, self._unannounced.append)
        self._lock = threading.Lock()  # what ``hear`` shares with the scheduler's thread
        self._failed_heard: list[str] = []  # jobs whose fail notification said "for good"
        self._pauses: list[tuple[str, Doc]] = []  # asked by this round's fires
        # Schedules seen firing with pause_on_failure, and their tasks: whose failures
        # to look at (a failure before the first fire a leader sees is its next fire's).
        self._pausing: dict[str, str] = {}
        self._pausing_tasks: frozenset[str] = frozenset()

    def retry_failed(self) -> None:
        failed, self.failed = self.failed, []
        for schedule, fire_time in failed:
            self.enqueue(schedule, fire_time)

    def enqueue(self, schedule: Schedule, fire_time: datetime) -> bool:
        """Insert the job of one fire (``buffer-one``: maybe ``waiting``); False if it
        exists, or the overlap policy or a failure (``pause_on_failure``) skipped it."""
        at = fire_time.astimezone(UTC)
        try:
            return self.fire(schedule, at, f"{schedule.name}@{at}").stored
        except PyMongoError as exc:
            log.warning(
                "cannot enqueue a fire; will retry",
                schedule=schedule.name,
                fire_time=at.isoformat(),
                error=str(exc),
            )
            self.failed.append((schedule, fire_time))
            return False

    def fire(self, schedule: Schedule, at: datetime, key: str, asked: bool = False) -> Fired:
        """The job of the fire of ``schedule`` at ``at``, under the fire key ``key``, as
        its overlap policy says; MongoDB's errors are the caller's. ``asked``: an
        operator's "run now" (``run_now_key``), which a failure does not skip."""
        self._watch_failures(schedule)
        this = Fire(schedule, at, key, asked)
        if not asked and schedule.pause_on_failure and self._last_failed(this):
            return Fired("skipped", reason="the last run failed (pauseOnFailure)")
        if schedule.overlap == "buffer-one":
            self.overlap.release_earlier(schedule.name)  # a buffered fire goes first
        now = utcnow()
        try:
            doc = insert_job(self.jobs, this, now)
        except DuplicateKeyError:  # on its unique key: the last fire's job is active
            return self.overlap.overlapped(this, now)
        if doc is None:
            return Fired("skipped", reason="this fire is enqueued already")
        self._unannounced.append(doc)
        return Fired("queued", doc["_id"])

    def announce(self) -> None:
        """Wake idle workers for this round's fires, in one message; a lost one costs latency."""
        docs = list(self._unannounced)
        self._unannounced.clear()  # not replaced: ``overlap`` appends to this very list
        publish_now(self.channel, docs)

    # -- pauseOnFailure --------------------------------------------------

    def _last_failed(self, fire: Fire) -> bool:
        """Whether the latest ended fire of its schedule failed, with no resume since: the
        fire is then skipped, and the schedule paused after this round."""
        name = fire.schedule.name
        ended = last_ended(self.jobs, name)
        if ended is None or ended.get("state") != JobState.FAILED.value:
            return False
        kept = self.schedules.find_one({"_id": name}, KEPT_FIELDS)
        if kept is None or forgiven(ended, kept):
            return False
        fire.skipped("the last run failed: pausing it (pauseOnFailure)")
        with self._lock:
            self._pauses.append((name, ended))
        return True

    def _watch_failures(self, schedule: Schedule) -> None:
        with self._lock:
            if schedule.pause_on_failure:
                self._pausing[schedule.name] = schedule.task
            else:
                self._pausing.pop(schedule.name, None)
            self._pausing_tasks = frozenset(self._pausing.values())

    def hear(self, body: Doc) -> bool:
        """A job's notification (from any thread): True if it asks for work here, a
        failure for good to look at, or an end that may release a buffered fire.

        A notification is a hint anyone could write: what it asks is only checked."""
        job_id, kind = body.get("sourceId"), body.get("type")
        if body.get("sourceType") != "job" or not isinstance(job_id, str):
            return False
        task = body.get("task")
        if not isinstance(task, str):
            return False
        final_failure = kind == "fail" and body.get("retry") is False
        work = False
        with self._lock:
            watched = final_failure and task in self._pausing_tasks
            if watched and len(self._failed_heard) < MAX_FAILED_HEARD:
                self._failed_heard.append(job_id)
                work = True
        released = (final_failure or kind in ENDED) and self.overlap.heard_end(task)
        return work or released

    def maintain(self) -> None:
        """Before a round: pause for the failures heard, release the buffered fires that
        an end was heard for (or all, when a sweep is due)."""
        with self._lock:
            failures, self._failed_heard = self._failed_heard, []
        for job_id in failures:
            self._failure(job_id)
        self.overlap.maintain()

    def _failure(self, job_id: str) -> None:
        try:
            oid = ObjectId(job_id)
        except InvalidId:
            return
        failed = self.jobs.find_one(
            {"_id": oid, "state": JobState.FAILED.value, "scheduleId": {"$type": "string"}},
            {**LAST_FIELDS, "scheduleId": 1, "fireKey": 1},
        )
        if failed is None or self.book is None:
            return
        name = failed["scheduleId"]
        if str(failed.get("fireKey", "")).startswith(f"{name}@"):
            self.book.pause_for_failure(name, failed)

    def apply_pauses(self) -> None:
        """After a round: the pauses its fires asked for (a pause written during the round
        would be undone by APScheduler's write of the next fire time)."""
        with self._lock:
            pauses, self._pauses = self._pauses, []
        for name, failed in pauses:
            if self.book is not None:
                self.book.pause_for_failure(name, failed)


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
        firing = self._firing
        try:
            firing.retry_failed()
            firing.maintain()
            wait: float | None = super()._process_jobs()
            firing.apply_pauses()
        except PyMongoError as exc:
            log.warning("cannot reach the schedules; retrying", error=str(exc))
            return OUTAGE_RETRY
        finally:
            firing.announce()
        if firing.failed:
            wait = OUTAGE_RETRY if wait is None else min(wait, OUTAGE_RETRY)
        sweep = firing.overlap.next_sweep()
        return sweep if wait is None else min(wait, sweep)


class Scheduler:
    """APScheduler over the ``schedules`` store, run while this manager leads."""

    def __init__(self, url: str, names: Names) -> None:
        self._url, self._names = url, names
        self._client: MongoClient[Doc] | None = None
        self._book: ScheduleBook | None = None
        self._firing: Firing | None = None

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
        store = job_store(client, db.name, self._names.schedules)
        aps = _LeaderScheduler(
            firing,
            jobstores={"default": store},
            executors={EXECUTOR: FireExecutor(firing)},
            timezone=ZoneInfo("UTC"),
        )
        book = firing.book = ScheduleBook(aps, db[self._names.jobs], store)
        try:
            aps.start()
        except BaseException:
            client.close()
            raise
        self._client, self._book, self._firing = client, book, firing
        log.info("running the schedules")

    def wakeup(self) -> None:
        """Look at the store again: another process may have changed a schedule."""
        if self._book is not None:
            self._book.wakeup()

    def changed(self) -> None:
        """A client changed a schedule (``schedules:changed``): look at the store now,
        buffered fires too (a "run now" of a buffer-one schedule notes one)."""
        if self._firing is not None:
            self._firing.overlap.sweep_soon()
        self.wakeup()

    def job_ended(self, body: Doc) -> None:
        """A job notification heard on the channel (``worker:notification``): a job that
        failed for good may pause its schedule, and an end may release a buffered fire.
        Quick: the work is the scheduler thread's, which this wakes."""
        firing, book = self._firing, self._book
        if firing is not None and book is not None and firing.hear(body):
            book.wakeup()

    def stop(self) -> None:
        if self._book is not None:
            self._book.close()
            self._book = None
            self._firing = None
        if self._client is not None:
            self._client.close()
            self._client = None
