"""The client library: enqueue jobs and look after them from application code."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from functools import cached_property
from types import TracebackType
from typing import Any

import pymongo
import structlog
from pymongo.errors import PyMongoError

from qworker import fleet, protocol
from qworker.chains import Step, chain_jobs
from qworker.channel import publish_sync
from qworker.errors import InvalidJobError, ScheduleNotFound, ScheduleOwnedByTask
from qworker.model import FINISHED_STATES, JobState, new_job
from qworker.mongo import (
    CHANNEL_BYTES,
    Names,
    database_name,
    ensure_schema,
    resolve_url,
    sync_client,
)
from qworker.schedules import Schedule, ScheduleBook, make_schedule
from qworker.store import Doc, JobStore, job_query
from qworker.wakeups import Wakeups
from qworker.when import parse_when, utcnow

log = structlog.get_logger("qworker.client")

# Jobs due within this window are announced to workers with their ids, so an
# idle worker claims them at once; later ones are found by the workers' reads.
HINT_HORIZON = timedelta(seconds=60)
PING_SECONDS = 3.0


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
        if "_wakeups" in self.__dict__:
            self._wakeups.close()
        if "schedules" in self.__dict__:
            self.schedules.close()
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
            new_job(
                task,
                data,
                now=now,
                run_at=run_at,
                priority=priority,
                max_attempts=max_attempts,
                timeout=timeout,
                description=description,
            )
            for data in items
        ]
        self.store.insert(docs)
        self._announce_due(docs, now)
        return [str(doc["_id"]) for doc in docs]

    def chain(
        self, steps: Sequence[Step | str | tuple[str, Any]], when: str | datetime | None = None
    ) -> str:
        """Queue steps to run one after another; returns the chain's id (its last job's).

        A step is ``("task", data)``, a bare ``"task"`` whose data is the
        previous step's result, or a ``Step`` with job options. The chain
        stops at the first step that fails for good: the steps after it end
        ``cancelled``, their ``failReason`` naming the step. ``wait(chain_id)``
        returns the last step.
        """
        now = utcnow()
        docs = chain_jobs(steps, now, parse_when(when, now))
        self.store.insert(docs)
        self._announce_due(docs[:1], now)
        return str(docs[-1]["_id"])

    def _announce_due(self, docs: list[Doc], now: datetime) -> None:
        if docs and docs[0]["nextRunAt"] <= now + HINT_HORIZON:
            self._announce(docs)

    def _announce(self, docs: list[Doc]) -> None:
        """Wake idle workers, from the wake-up thread (see ``qworker.wakeups``)."""
        self._wakeups.announce(docs)

    @cached_property
    def _wakeups(self) -> Wakeups:
        return Wakeups(self.db[self.names.channel])

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until the wake-ups of the jobs enqueued so far are on the channel.

        Jobs are stored when ``now``/``schedule``/``enqueue_many`` return; their
        wake-ups follow a moment later. ``close`` flushes too. True if all went out.
        """
        return "_wakeups" not in self.__dict__ or self._wakeups.flush(timeout)

    # -- recurring schedules ---------------------------------------------

    def every(
        self,
        interval: str | float,
        task: str,
        data: Any = None,
        *,
        name: str | None = None,
        start_at: str | datetime | None = None,
        replace: bool = True,
        **opts: Any,
    ) -> Doc:
        """Run ``task`` every ``interval`` (``30 minutes``, ``1 hour``, seconds).

        The first run is one interval from now, or at ``start_at`` (``now``,
        ``midnight``, an ISO time). The schedule is named ``name`` (default:
        the task id); an existing one of that name is replaced unless
        ``replace=False``. ``opts``: ``timezone``, ``misfire`` (``coalesce`` or
        ``skip``), ``grace``, ``unique``, and the job options of ``now``.
        """
        schedule = make_schedule(
            name or task, task, data, every=interval, start_at=start_at, **opts
        )
        return self.add_schedule(schedule, replace)

    def cron(
        self,
        expr: str,
        task: str,
        data: Any = None,
        *,
        name: str | None = None,
        tz: str | None = None,
        replace: bool = True,
        **opts: Any,
    ) -> Doc:
        """Run ``task`` on a crontab schedule: five fields, or six with seconds first.

        ``tz`` is the time zone the fields are read in (default UTC).
        """
        schedule = make_schedule(name or task, task, data, cron=expr, timezone=tz, **opts)
        return self.add_schedule(schedule, replace)

    def add_schedule(self, schedule: Schedule, replace: bool = True) -> Doc:
        view = self.schedules.add(schedule, replace)
        self._schedules_changed()
        return view

    def schedule_list(self) -> list[Doc]:
        """Every schedule, with its next fire and its last job, success and failure."""
        return self.schedules.list()

    def schedule_info(self, name: str) -> Doc:
        return self.schedules.show(name)

    def pause_schedule(self, name: str) -> Doc:
        view = self.schedules.pause(name)
        self._schedules_changed()
        return view

    def resume_schedule(self, name: str) -> Doc:
        view = self.schedules.resume(name)
        self._schedules_changed()
        return view

    def remove_schedule(self, name: str) -> None:
        """Delete a schedule; its jobs stay. One from a task's metadata is refused: the
        manager would install it again when a worker defines the task (pause it instead)."""
        try:
            schedule: Schedule | None = self.schedules.get(name)
        except ScheduleNotFound:
            schedule = None  # or one the store would not read: deleted all the same
        if schedule is not None and schedule.origin == "metadata":
            raise ScheduleOwnedByTask(
                f"schedule {name!r} comes from the metadata of task {schedule.task!r}, and a "
                f"worker defining the task installs it again: pause it instead (schedules "
                f"pause {name}), or take 'schedule'/'every' out of the task's metadata"
            )
        self.schedules.remove(name)
        self._schedules_changed()

    @cached_property
    def schedules(self) -> ScheduleBook:
        return ScheduleBook.editor(
            self._mongo, self.db.name, self.names.schedules, self.db[self.names.jobs]
        )

    def _schedules_changed(self) -> None:
        """Tell the leader manager to look at the store now (it also looks every few seconds)."""
        try:
            publish_sync(self.db[self.names.channel], protocol.SCHEDULES_CHANGED, {})
        except PyMongoError as exc:
            log.warning("could not tell the manager; it will see the change", error=str(exc))

    def ping(self, timeout: float = PING_SECONDS) -> None:
        """Return if MongoDB answers within ``timeout`` seconds; else raise pymongo's error."""
        with pymongo.timeout(timeout):
            self.db.command("ping")

    # -- looking after jobs ----------------------------------------------

    def get(self, job_id: str) -> Doc:
        return self.store.get(job_id)

    def jobs(
        self,
        state: str | None = None,
        task: str | None = None,
        text: str | None = None,
        limit: int = 50,
        skip: int = 0,
        *,
        worker: str | None = None,
        since: str | datetime | None = None,
        until: str | datetime | None = None,
    ) -> list[Doc]:
        """Jobs newest first, without their logs, ``skip`` and ``limit`` for paging.

        ``worker``: jobs that worker runs or ran last. ``since``/``until``
        bound the creation time: a datetime, an ISO 8601 time, or a duration
        meaning that long ago (``"2 hours"``, ``"7d"``).
        """
        query = self._job_query(state, task, text, worker, since, until)
        return self.store.find(query, limit=limit, skip=skip)

    def count_jobs(
        self,
        state: str | None = None,
        task: str | None = None,
        text: str | None = None,
        *,
        worker: str | None = None,
        since: str | datetime | None = None,
        until: str | datetime | None = None,
    ) -> int:
        """How many jobs ``jobs`` would list without a limit: the total, for paging."""
        return self.store.count(self._job_query(state, task, text, worker, since, until))

    def _job_query(
        self,
        state: str | None,
        task: str | None,
        text: str | None,
        worker: str | None,
        since: str | datetime | None,
        until: str | datetime | None,
    ) -> Doc:
        now = utcnow()
        return job_query(
            state,
            task,
            text,
            worker,
            fleet.moment(since, "since", now),
            fleet.moment(until, "until", now),
        )

    def delete(self, job_id: str) -> Doc:
        """Delete a job that is not running, and return it; a running one must be cancelled first.

        Deleting a queued or waiting chain step stops its chain, as a cancel would.
        """
        return self.store.delete(job_id, utcnow())

    def purge(
        self, state: str, older_than: str | float | timedelta, *, dry_run: bool = False
    ) -> int:
        """Delete finished jobs in ``state`` that ended over ``older_than`` ago; how many.

        ``state`` is succeeded, failed or cancelled, ``older_than`` a duration
        (``"7 days"``): a clean-up sooner than retention's TTL. Waiting,
        queued and running jobs are never touched. ``dry_run`` only counts.
        """
        finished = [s.value for s in FINISHED_STATES]
        if state not in finished:
            raise InvalidJobError(
                f"purge deletes finished jobs: state must be one of {', '.join(finished)}, "
                f"not {state!r}",
                "state",
            )
        before = utcnow() - fleet.age(older_than, "older_than")
        return self.store.purge(JobState(state), before, dry_run=dry_run)

    # -- the fleet -------------------------------------------------------

    def workers(self, state: str | None = None) -> list[Doc]:
        """The worker registry, managed and standalone, live workers first.

        Each has ``status``: its ``state``, or ``lost`` when a running worker
        has not pinged for 3 ping intervals (a killed standalone worker, or
        any worker while no manager leads); ``live`` (status is running);
        and ``runningJobs``, the jobs it holds now. ``state`` filters on
        ``status``: running, lost, stopped or dead.
        """
        return fleet.workers(self.db[self.names.workers], self.db[self.names.jobs], state)

    def tasks(self) -> list[Doc]:
        """Every task announced by workers or named by jobs, with ``jobs`` counted by state.

        ``liveWorkers`` serve it now; ``valid`` and ``problems`` are the
        manager's check of its metadata (None for a task never announced).
        """
        return fleet.tasks(
            self.db[self.names.tasks], self.db[self.names.workers], self.db[self.names.jobs]
        )

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
