"""Recurring schedules: what they are, and how they are kept in APScheduler's job store.

A schedule is an APScheduler 3 job in its MongoDB job store (collection
``schedules``): the trigger (interval or cron, with a time zone) and, as the
job's keyword arguments, a plain :class:`Schedule` that says which qworker job
each fire enqueues. Any process may edit the store through a
:class:`ScheduleBook`; only the leader manager runs it (``scheduler.py``).

Beside APScheduler's two fields, a schedule's document may hold what the leader
keeps of it between fires: ``buffered`` (the fire that ``overlap: buffer-one``
holds back while the previous one runs), ``pausedFor`` (why ``pauseOnFailure``
paused it) and ``forgivenUntil`` (the newest failed fire a resume or a replace
let go of). APScheduler writes its fields with ``$set``: these stay.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import structlog
from apscheduler.jobstores.base import ConflictingIdError, JobLookupError
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from pymongo import DESCENDING, MongoClient
from pymongo.collection import Collection

from qworker import lifecycle
from qworker.errors import (
    InvalidJobError,
    InvalidScheduleError,
    ScheduleExists,
    ScheduleNotFound,
)
from qworker.model import FINISHED_STATES, JobState, new_job
from qworker.schedulestore import ScheduleStore
from qworker.when import format_duration, parse_duration, parse_when, utcnow

Doc = dict[str, Any]
log = structlog.get_logger("qworker.schedules")

# The APScheduler job of every schedule calls this; keep the reference stable,
# since the job store drops jobs whose function it cannot import.
FIRE = "qworker.scheduler:fire"
EXECUTOR = "qworker"
MISFIRE_POLICIES = ("coalesce", "skip")
# Whether a fire starts while the previous fire's job is still queued or running
# (Temporal's overlap policies): yes; no, dropped; or kept, one only, until it ends.
OVERLAP_POLICIES = ("allow", "skip", "buffer-one")
# The unique key of a fire's job under skip and buffer-one: one queued or running at
# a time; and of a fire buffered-one (waiting), one at a time, until it is released.
ACTIVE_KEY = "schedule:{}"
BUFFER_KEY = "schedule-buffer:{}"
MAX_REASON_CHARS = 500
DEFAULT_GRACE = 60.0
MIN_INTERVAL = 1.0
MAX_INTERVAL = 10 * 366 * 86400.0
# A start_at this recent (``"now"``, parsed a moment ago) is the first fire.
START_SLACK = timedelta(seconds=5)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@/-]{0,199}$")

_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_DAY_NAMES = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")
_DAY_PART = re.compile(r"^(\*|[a-z]+|\d+)(?:-([a-z]+|\d+))?(?:/(\d+))?$")


@dataclass(frozen=True)
class Schedule:
    """A recurring schedule: when it fires (``every`` or ``cron``) and the job it enqueues."""

    name: str
    task: str
    data: Any = None
    every: float | None = None  # seconds
    cron: str | None = None  # five fields, or six with seconds first, or @daily...
    timezone: str = "UTC"
    start_at: datetime | None = None
    misfire: str = "coalesce"  # after downtime: one run for the missed window, or none
    grace: float = DEFAULT_GRACE  # seconds late that still count as on time
    unique: bool = False  # overlap == "skip", kept for the stores and readers of before
    priority: int | str | None = None
    max_attempts: int | None = None
    timeout: float | None = None
    description: str | None = None
    origin: str = "client"  # or "metadata": installed from a task's metadata
    overlap: str = "allow"  # a fire while the last one's job is queued or running
    pause_on_failure: bool = False  # a fire's job failed for good: pause the schedule

    def __post_init__(self) -> None:
        # ``unique`` is overlap ``skip`` by another name (as schedules were stored before
        # ``overlap``): the two always agree.
        if self.unique and self.overlap == "allow":
            object.__setattr__(self, "overlap", "skip")
        object.__setattr__(self, "unique", self.overlap == "skip")

    def trigger(self) -> BaseTrigger:
        zone = _zone(self.timezone)
        if self.cron is not None:
            return cron_trigger(self.cron, zone)
        assert self.every is not None
        return IntervalTrigger(seconds=self.every, start_date=self.start_at, timezone=zone)

    def describe(self) -> str:
        if self.cron is not None:
            return f"cron {self.cron} ({self.timezone})"
        assert self.every is not None
        start = f" from {self.start_at.isoformat()}" if self.start_at else ""
        return f"every {format_duration(self.every)}{start}"

    def job(self, now: datetime, buffered: bool = False) -> Doc:
        """A job document for a fire at ``now`` (validated as a client's would be).

        Under ``skip`` and ``buffer-one`` it holds the schedule's active key, so it is
        refused while another fire's job is queued or running. ``buffered``: the fire
        that ``buffer-one`` keeps, ``waiting`` (no worker claims it) under a key of its
        own, until the leader releases it (``overlap.Buffers.release``).
        """
        key = None
        if buffered:
            key = BUFFER_KEY.format(self.name)
        elif self.overlap in ("skip", "buffer-one"):
            key = ACTIVE_KEY.format(self.name)
        doc = new_job(
            self.task,
            self.data,
            now=now,
            run_at=now,
            priority=self.priority,
            max_attempts=self.max_attempts,
            timeout=self.timeout,
            description=self.description,
            unique=key,
        )
        if buffered:
            doc["state"] = JobState.WAITING.value
        return doc

    def stored(self) -> Doc:
        return dataclasses.asdict(self)

    @classmethod
    def from_stored(cls, fields: Doc) -> Schedule:
        """The schedule a store holds; one stored before ``overlap`` existed reads
        ``unique`` as overlap ``skip`` (true) or ``allow``."""
        known = {f.name for f in dataclasses.fields(cls)}
        kept = {k: v for k, v in fields.items() if k in known}
        if kept.get("overlap") not in OVERLAP_POLICIES:
            kept["overlap"] = "skip" if kept.get("unique") is True else "allow"
        return cls(**kept)


def make_schedule(
    name: str,
    task: str,
    data: Any = None,
    *,
    every: str | float | None = None,
    cron: str | None = None,
    timezone: str | None = None,
    start_at: str | datetime | None = None,
    misfire: str = "coalesce",
    grace: str | float = DEFAULT_GRACE,
    unique: bool = False,
    priority: int | str | None = None,
    max_attempts: int | None = None,
    timeout: float | None = None,
    description: str | None = None,
    origin: str = "client",
    overlap: str | None = None,
    pause_on_failure: bool = False,
) -> Schedule:
    """A validated :class:`Schedule`; every problem is an ``InvalidScheduleError``.

    ``overlap``: what a fire does while the previous fire's job is still queued or
    running: ``allow`` it to start (the default), ``skip`` it (``unique=True`` says
    the same), or ``buffer-one``: keep it, one only, to start once that job has
    ended. ``pause_on_failure``: a fire's job that fails for good pauses the schedule.
    """
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidScheduleError(
            f"schedule name {name!r}: use 1-200 letters, digits and '_.:@/-', "
            "starting with a letter or digit"
        )
    if (every is None) == (cron is None):
        given = "both" if every is not None else "neither"
        raise InvalidScheduleError(f"schedule {name!r}: give one of every or cron, not {given}")
    if start_at is not None and cron is not None:
        raise InvalidScheduleError(f"schedule {name!r}: start_at is for every, not cron")
    if not isinstance(unique, bool):
        raise InvalidScheduleError(f"schedule {name!r}: unique must be true or false")
    overlap = _overlap(name, overlap, unique)
    if not isinstance(pause_on_failure, bool):
        raise InvalidScheduleError(
            f"schedule {name!r}: pause_on_failure (pauseOnFailure) must be true or false, "
            f"not {pause_on_failure!r}"
        )
    seconds = None
    if every is not None:
        try:
            seconds = parse_duration(every)
        except ValueError as exc:
            raise InvalidScheduleError(f"schedule {name!r}: every: {exc}") from None
        if not MIN_INTERVAL <= seconds <= MAX_INTERVAL:
            raise InvalidScheduleError(
                f"schedule {name!r}: every must be between {MIN_INTERVAL:g} second and 10 years"
            )
    zone = "UTC" if timezone is None or timezone == "" else timezone
    _zone(zone)
    if cron is not None:
        cron = " ".join(str(cron).split())
        if cron_trigger(cron, ZoneInfo("UTC")).get_next_fire_time(None, utcnow()) is None:
            raise InvalidScheduleError(f"cron {cron!r} never fires")
    if misfire not in MISFIRE_POLICIES:
        raise InvalidScheduleError(
            f"schedule {name!r}: misfire must be one of {', '.join(MISFIRE_POLICIES)}, "
            f"not {misfire!r}"
        )
    try:
        grace_seconds = parse_duration(grace)
    except ValueError as exc:
        raise InvalidScheduleError(f"schedule {name!r}: grace: {exc}") from None
    try:
        start = None if start_at is None else parse_when(start_at)
        schedule = Schedule(
            name=name,
            task=task,
            data=data,
            every=seconds,
            cron=cron,
            timezone=zone,
            start_at=start,
            misfire=misfire,
            grace=grace_seconds,
            unique=overlap == "skip",
            priority=priority,
            max_attempts=max_attempts,
            timeout=timeout,
            description=description,
            origin=origin,
            overlap=overlap,
            pause_on_failure=pause_on_failure,
        )
        schedule = dataclasses.replace(schedule, data=schedule.job(utcnow())["data"])
    except InvalidJobError as exc:
        raise InvalidScheduleError(f"schedule {name!r}: {exc}") from None
    return schedule


def _overlap(name: str, overlap: Any, unique: bool) -> str:
    """The overlap policy: ``overlap``, or ``unique`` as its alias (true: ``skip``)."""
    if overlap is None:
        return "skip" if unique else "allow"
    if not isinstance(overlap, str) or overlap not in OVERLAP_POLICIES:
        raise InvalidScheduleError(
            f"schedule {name!r}: overlap must be one of {', '.join(OVERLAP_POLICIES)}, "
            f"not {overlap!r}"
        )
    if unique and overlap != "skip":
        raise InvalidScheduleError(
            f"schedule {name!r}: unique is overlap 'skip', which overlap {overlap!r} "
            "contradicts: give one of them"
        )
    return overlap


def _zone(name: str) -> ZoneInfo:
    try:
        if not isinstance(name, str):  # ZoneInfo's cache answers some non-strings
            raise TypeError(name)
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError, OSError):  # OSError: "Europe", a folder
        raise InvalidScheduleError(
            f"unknown time zone {name!r}: use an IANA name such as 'UTC' or 'Europe/Paris'"
        ) from None


def cron_trigger(expr: str, zone: ZoneInfo) -> CronTrigger:
    """A trigger for crontab ``expr``: 5 fields, or 6 with seconds first, or a @macro.

    Day-of-week numbers keep crontab's meaning (0 and 7 are Sunday), which
    APScheduler 3 does not: they are translated to day names.
    """
    text = _MACROS.get(expr.strip().lower(), expr)
    fields = text.split()
    if len(fields) not in (5, 6):
        raise InvalidScheduleError(
            f"cron {expr!r}: expected 5 fields (minute hour day month weekday), "
            f"or 6 with seconds first; got {len(fields)}"
        )
    if len(fields) == 5:
        fields.insert(0, "0")
    second, minute, hour, day, month, weekday = fields
    try:
        return CronTrigger(
            second=second,
            minute=minute,
            hour=hour,
            day=day,
            month=month,
            day_of_week=_weekdays(weekday),
            timezone=zone,
        )
    except ValueError as exc:
        raise InvalidScheduleError(f"cron {expr!r}: {exc}") from None


def _weekdays(field: str) -> str:
    """Crontab's day-of-week field (``0-7``, names, ranges, steps) as APScheduler day names."""
    if field == "*":
        return field
    days: set[int] = set()
    for part in field.lower().split(","):
        match = _DAY_PART.match(part)
        if match is None:
            raise InvalidScheduleError(f"cron weekday field {field!r}: cannot read {part!r}")
        first, last, step = match.groups()
        if step is not None and int(step) < 1:
            raise InvalidScheduleError(f"cron weekday field {field!r}: a step must be >= 1")
        if first == "*":
            low, high = 0, 6
        else:
            low = _day(first, field)
            high = _day(last, field) if last else (6 if step else low)
        if high < low:
            raise InvalidScheduleError(f"cron weekday field {field!r}: {part!r} runs backwards")
        days.update(d % 7 for d in range(low, high + 1, int(step or 1)))
    return ",".join(_DAYS[d] for d in sorted(days))


def _day(token: str, field: str) -> int:
    if token.isdigit() and int(token) <= 7:
        return int(token)
    if token in _DAYS or token in _DAY_NAMES:
        return _DAYS.index(token[:3])
    raise InvalidScheduleError(
        f"cron weekday field {field!r}: {token!r} is not a day (0-7, sun-sat)"
    )


def job_store(client: MongoClient[Doc], database: str, collection: str) -> ScheduleStore:
    return ScheduleStore(database=database, collection=collection, client=client)


class _Editor(BaseScheduler):  # type: ignore[misc]
    """A scheduler that never runs jobs: APScheduler's API for editing its job store."""

    def shutdown(self, wait: bool = True) -> None:
        super().shutdown(wait)

    def wakeup(self) -> None:
        """Nothing to wake: the leader manager runs the schedules (it is told separately)."""


class ScheduleBook:
    """Add, list, pause, resume and remove schedules, through an APScheduler scheduler.

    ``ScheduleBook.editor(...)`` edits the store from any process; the leader
    manager passes the scheduler it runs.
    """

    def __init__(
        self, scheduler: BaseScheduler, jobs: Collection[Doc], store: ScheduleStore
    ) -> None:
        self._scheduler, self.jobs, self.store = scheduler, jobs, store
        # The documents themselves, for what the leader keeps beside APScheduler's fields.
        self.schedules: Collection[Doc] = store.collection

    @classmethod
    def editor(
        cls, client: MongoClient[Doc], database: str, collection: str, jobs: Collection[Doc]
    ) -> ScheduleBook:
        editor = _Editor(timezone=ZoneInfo("UTC"))
        store = job_store(client, database, collection)
        editor.add_jobstore(store)
        editor.start(paused=True)
        return cls(editor, jobs, store)

    def close(self) -> None:
        """Stop editing; the MongoDB client stays open (it belongs to the caller)."""
        if self._scheduler.running:
            self._scheduler.remove_jobstore("default", shutdown=False)
            self._scheduler.shutdown(wait=False)

    def wakeup(self) -> None:
        self._scheduler.wakeup()

    def add(self, schedule: Schedule, replace: bool = True) -> Doc:
        """Install ``schedule``; one with the same name is replaced, or ``ScheduleExists``.

        It runs from now on: a replaced one that a failure paused runs again, and that
        failure no longer pauses it (``forgive``).
        """
        first = {}
        if schedule.start_at is not None and schedule.start_at >= utcnow() - START_SLACK:
            first["next_run_time"] = schedule.start_at  # start_at="now" runs at once
        try:
            self._scheduler.add_job(
                FIRE,
                trigger=schedule.trigger(),
                id=schedule.name,
                name=schedule.name,
                **first,
                kwargs={"schedule": schedule.stored()},
                executor=EXECUTOR,
                coalesce=True,
                misfire_grace_time=None,
                max_instances=1,
                replace_existing=replace,
            )
        except ConflictingIdError:
            raise ScheduleExists(
                f"a schedule named {schedule.name!r} exists: remove it, or replace it"
            ) from None
        self.forgive(schedule.name)
        return self.show(schedule.name)

    def names(self) -> list[str]:
        return [job.id for job in self._scheduler.get_jobs()]

    def get(self, name: str) -> Schedule:
        return Schedule.from_stored(self.job(name).kwargs["schedule"])

    def show(self, name: str) -> Doc:
        job = self.job(name)
        return self._view(job, self.schedules.find_one({"_id": name}, KEPT_FIELDS))

    def list(self) -> list[Doc]:
        kept = {doc["_id"]: doc for doc in self.schedules.find({}, KEPT_FIELDS)}
        jobs = sorted(self._scheduler.get_jobs(), key=lambda j: j.id)
        return [self._view(job, kept.get(job.id)) for job in jobs]

    def pause(self, name: str) -> Doc:
        self.job(name).pause()
        return self.show(name)

    def resume(self, name: str) -> Doc:
        """Fire again from the next fire time; the failures so far no longer pause it."""
        job = self.job(name)
        self.forgive(name)
        job.resume()
        return self.show(name)

    def remove(self, name: str) -> None:
        """Delete the schedule; its jobs stay, but for a fire still buffered (``buffer-one``),
        which never started: it is cancelled."""
        tasks = set()
        with contextlib.suppress(ScheduleNotFound):
            tasks.add(self.get(name).task)
        kept = self.schedules.find_one({"_id": name}, KEPT_FIELDS) or {}
        buffered = kept.get("buffered")
        if isinstance(buffered, dict) and isinstance(buffered.get("task"), str):
            tasks.add(buffered["task"])
        try:
            self._scheduler.remove_job(name)
        except JobLookupError:
            raise ScheduleNotFound(f"no schedule named {name!r}") from None
        if tasks:  # after the removal: no fire can be buffered after this
            outcome = lifecycle.Outcome(JobState.CANCELLED, reason=REMOVED_REASON)
            self.jobs.update_many(
                {
                    "name": {"$in": sorted(tasks)},
                    "uniqueKey": BUFFER_KEY.format(name),
                    "state": JobState.WAITING.value,
                },
                outcome.update(utcnow()),
            )

    def job(self, name: str) -> Any:
        """The APScheduler job of schedule ``name``."""
        job = self._scheduler.get_job(name)
        if job is None:
            raise ScheduleNotFound(f"no schedule named {name!r}")
        return job

    # -- pauseOnFailure ----------------------------------------------------

    def forgive(self, name: str) -> None:
        """The failures of ``name``'s fires so far pause it no more: it was resumed or
        replaced. Its pause's reason goes."""
        newest = last_fire(self.jobs, name, JobState.FAILED)
        update: Doc = {"$unset": {"pausedFor": ""}}
        if newest is not None and isinstance(newest.get("scheduledFor"), datetime):
            update["$set"] = {"forgivenUntil": newest["scheduledFor"]}
        self.schedules.update_one({"_id": name}, update)

    def pause_for_failure(self, name: str, failed: Doc) -> bool:
        """Pause ``name`` because the job of one of its fires, ``failed``, failed for good:
        if its ``pause_on_failure`` says so, if no resume since forgave that failure, and
        if no failure paused it already.

        The reason is written first, then the pause: a crash between the two leaves the
        schedule running with a reason no view shows (it is shown while paused only),
        and its next fire, which finds that failure not forgiven, pauses it then.
        """
        try:
            job = self.job(name)
        except ScheduleNotFound:
            return False
        schedule = Schedule.from_stored(job.kwargs["schedule"])
        kept = self.schedules.find_one({"_id": name}, KEPT_FIELDS)
        if not schedule.pause_on_failure or kept is None or forgiven(failed, kept):
            return False
        if job.next_run_time is None and kept.get("pausedFor"):
            return False  # paused for a failure already
        paused = {
            "reason": failure_reason(failed),
            "jobId": failed.get("_id"),
            "scheduledFor": failed.get("scheduledFor"),
            "at": utcnow(),
        }
        self.schedules.update_one({"_id": name}, {"$set": {"pausedFor": paused}})
        try:
            job.pause()
        except JobLookupError:
            return False  # removed meanwhile
        log.warning(
            "schedule paused: a fire's job failed", schedule=name, job_id=str(failed.get("_id"))
        )
        return True

    def _view(self, job: Any, kept: Doc | None) -> Doc:
        """A schedule as operators see it: its trigger, next fire and its last jobs."""
        schedule = Schedule.from_stored(job.kwargs["schedule"])
        paused = job.next_run_time is None
        reason = (kept or {}).get("pausedFor") if paused else None
        buffered = (kept or {}).get("buffered")
        return {
            **schedule.stored(),
            "trigger": schedule.describe(),
            "paused": paused,
            "pauseReason": reason.get("reason") if isinstance(reason, dict) else None,
            "pausedAt": reason.get("at") if isinstance(reason, dict) else None,
            "nextRunAt": job.next_run_time and job.next_run_time.astimezone(UTC),
            "bufferedFire": buffered.get("at") if isinstance(buffered, dict) else None,
            "lastJob": self._last(schedule.name),
            "lastSuccess": self._last(schedule.name, JobState.SUCCEEDED),
            "lastFailure": self._last(schedule.name, JobState.FAILED),
        }

    def _last(self, name: str, state: JobState | None = None) -> Doc | None:
        return last_fire(self.jobs, name, state)


# What the leader keeps on a schedule's document beside APScheduler's fields.
KEPT_FIELDS = {"buffered": 1, "pausedFor": 1, "forgivenUntil": 1}
REMOVED_REASON = "its schedule was removed before this buffered fire started"
LAST_FIELDS = {
    "state": 1,
    "scheduledFor": 1,
    "createdAt": 1,
    "lastFinishedAt": 1,
    "failReason": 1,
}


def fires_of(name: str) -> Doc:
    """The query of ``name``'s fires: their keys are "<name>@<UTC time>", which the
    fire_key index holds in order."""
    return {"fireKey": {"$gt": f"{name}@", "$lt": f"{name}A"}, "scheduleId": name}


def last_fire(
    jobs: Collection[Doc], name: str, state: JobState | list[str] | None = None
) -> Doc | None:
    """The job of ``name``'s latest fire (in ``state``, or one of those states)."""
    query = fires_of(name)
    if isinstance(state, JobState):
        query["state"] = state.value
    elif state is not None:
        query["state"] = {"$in": state}
    return jobs.find_one(query, LAST_FIELDS, sort=[("fireKey", DESCENDING)])


def last_ended(jobs: Collection[Doc], name: str) -> Doc | None:
    """The job of ``name``'s latest fire that has ended, however it ended."""
    return last_fire(jobs, name, [s.value for s in FINISHED_STATES])


def forgiven(failed: Doc, kept: Doc) -> bool:
    """Whether a resume or a replace since let go of the failure of job ``failed``."""
    until, scheduled = kept.get("forgivenUntil"), failed.get("scheduledFor")
    return isinstance(until, datetime) and isinstance(scheduled, datetime) and scheduled <= until


def failure_reason(failed: Doc) -> str:
    """Why a failure paused a schedule, as its views show it."""
    at = failed.get("scheduledFor")
    when = at.astimezone(UTC).isoformat() if isinstance(at, datetime) else "?"
    why = failed.get("failReason") or "failed"
    text = f"job {failed.get('_id')} (fire of {when}) failed: {why}"
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 1] + "…"
