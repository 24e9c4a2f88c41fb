"""APScheduler's MongoDB job store, reading only what a schedule can hold.

APScheduler keeps each job as a pickle (``job_state``), and unpickling runs
whatever the pickle says: anyone who could write ``schedules`` had code run
in the leader manager, in every ``GET /api/schedules`` and in an operator's
``schedules list``; and APScheduler deleted the document it could not read,
so the evidence was gone too. Here a pickle may name only what a qworker
schedule is made of (APScheduler's triggers and their fields, dates, time
zones); anything else is refused before it runs, logged, and left where it is
for the operator to look at (``schedules remove NAME`` deletes it). Stores
written by earlier versions hold exactly these and read as before.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import structlog
from apscheduler.job import Job
from apscheduler.jobstores.mongodb import MongoDBJobStore
from apscheduler.util import utc_timestamp_to_datetime
from pymongo import ASCENDING

log = structlog.get_logger("qworker.schedules")

ALLOWED: dict[str, frozenset[str]] = {
    "apscheduler.triggers.cron": frozenset({"CronTrigger"}),
    "apscheduler.triggers.cron.fields": frozenset(
        {
            "BaseField",
            "WeekField",
            "DayOfMonthField",
            "DayOfWeekField",
            "MonthField",
        }
    ),
    "apscheduler.triggers.cron.expressions": frozenset(
        {
            "AllExpression",
            "RangeExpression",
            "MonthRangeExpression",
            "WeekdayRangeExpression",
            "WeekdayPositionExpression",
            "LastDayOfMonthExpression",
        }
    ),
    "apscheduler.triggers.interval": frozenset({"IntervalTrigger"}),
    "apscheduler.triggers.date": frozenset({"DateTrigger"}),
    "datetime": frozenset({"datetime", "date", "time", "timedelta", "timezone"}),
    "zoneinfo": frozenset({"ZoneInfo"}),
}


class RefusedPickle(pickle.UnpicklingError):
    """A stored schedule names something no schedule is made of."""


def _zone_unpickle(owner: Any, name: str) -> Any:
    """``getattr``, as a pickle of a ``ZoneInfo`` uses it: for ``ZoneInfo._unpickle`` only.

    A free ``getattr`` would let a pickle walk from any allowed class to anything.
    """
    from zoneinfo import ZoneInfo

    if owner is ZoneInfo and name == "_unpickle":
        return ZoneInfo._unpickle  # type: ignore[attr-defined]
    raise RefusedPickle(f"getattr({owner!r}, {name!r})")


class _ScheduleUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "builtins" and name == "getattr":
            return _zone_unpickle
        if name in ALLOWED.get(module, ()):
            return super().find_class(module, name)
        raise RefusedPickle(f"{module}.{name}")


def loads(data: bytes) -> Any:
    """``pickle.loads`` of a stored schedule, refusing what no schedule holds."""
    return _ScheduleUnpickler(io.BytesIO(data)).load()


class ScheduleStore(MongoDBJobStore):  # type: ignore[misc]
    """``MongoDBJobStore`` with ``loads`` for ``pickle.loads``, and nothing deleted.

    A document it refused is skipped from then on, its next run time too (or
    the scheduler would wake for it again and again).
    """

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.refused: set[Any] = set()

    def lookup_job(self, job_id: str) -> Job | None:
        document = self.collection.find_one(job_id, ["job_state"])
        return None if document is None else self._read(document)

    def get_next_run_time(self) -> Any:
        document = self.collection.find_one(
            {"next_run_time": {"$ne": None}, "_id": {"$nin": list(self.refused)}},
            projection=["next_run_time"],
            sort=[("next_run_time", ASCENDING)],
        )
        return utc_timestamp_to_datetime(document["next_run_time"]) if document else None

    def _reconstitute_job(self, job_state: bytes) -> Job:
        job = Job.__new__(Job)
        job.__setstate__(loads(job_state))
        job._scheduler = self._scheduler
        job._jobstore_alias = self._alias
        return job

    def _get_jobs(self, conditions: dict[str, Any]) -> list[Job]:
        found = self.collection.find(
            conditions, ["_id", "job_state"], sort=[("next_run_time", ASCENDING)]
        )
        return [job for document in found if (job := self._read(document)) is not None]

    def _read(self, document: dict[str, Any]) -> Job | None:
        try:
            return self._reconstitute_job(document["job_state"])
        except Exception as exc:
            if document["_id"] not in self.refused:
                self.refused.add(document["_id"])
                log.error(
                    "a stored schedule could not be read safely and was left alone: if no one "
                    "wrote it on purpose, someone else can write the schedules collection",
                    schedule=str(document["_id"])[:200],
                    refused=f"{type(exc).__name__}: {exc}"[:300],
                )
            return None
