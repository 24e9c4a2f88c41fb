"""Figures about the jobs in the store: counts by task and state, and recent outcomes.

One aggregation per question, so the dashboard, the API and ``/metrics`` read
the same numbers the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from pymongo.collection import Collection

from qworker.errors import InvalidJobError
from qworker.model import JobState
from qworker.operations import Call, Operation
from qworker.when import utcnow

Doc = dict[str, Any]
OUTCOME_FIELDS = {
    "name": 1,
    "state": 1,
    "createdAt": 1,
    "nextRunAt": 1,
    "lastRunAt": 1,
    "lastFinishedAt": 1,
}


# One row per task and state: read by ``job_counts`` (or as an operation's call).
COUNT_BY_TASK_AND_STATE: list[Doc] = [
    {"$group": {"_id": {"name": "$name", "state": "$state"}, "n": {"$sum": 1}}}
]


def job_counts(jobs: Collection[Doc]) -> dict[str, dict[str, int]]:
    """``{task: {state: count}}`` over every job in the store."""
    return counts_of(jobs.aggregate(COUNT_BY_TASK_AND_STATE))


def counts_of(rows: Iterable[Doc]) -> dict[str, dict[str, int]]:
    """``{task: {state: count}}`` from the rows of ``COUNT_BY_TASK_AND_STATE``."""
    counts: dict[str, dict[str, int]] = {}
    for row in rows:
        key = row["_id"]
        counts.setdefault(str(key["name"]), {})[str(key["state"])] = int(row["n"])
    return counts


def finished_between(jobs: Collection[Doc], after: datetime, until: datetime) -> list[Doc]:
    """Jobs whose last run ended in ``(after, until]``, with the times a run is measured by."""
    query = {"lastFinishedAt": {"$gt": after, "$lte": until}}
    return list(jobs.find(query, OUTCOME_FIELDS))


def run_seconds(doc: Doc) -> float | None:
    """How long the job's last run took."""
    start, end = doc.get("lastRunAt"), doc.get("lastFinishedAt")
    return (end - start).total_seconds() if start and end else None


def wait_seconds(doc: Doc) -> float | None:
    """Enqueue (or due time, if later) to start of the last run."""
    start, created = doc.get("lastRunAt"), doc.get("createdAt")
    if not start or not created:
        return None
    due = max(created, doc.get("nextRunAt") or created)
    return max(0.0, (start - due).total_seconds()) if start >= created else None


def overview(jobs: Collection[Doc], workers: list[Doc], window: float = 60.0) -> Doc:
    """The dashboard's headline: queue depth by task, recent throughput and failures."""
    now = utcnow()
    recent = finished_between(jobs, now - timedelta(seconds=window), now)
    succeeded = sum(1 for doc in recent if doc["state"] == JobState.SUCCEEDED.value)
    failed = sum(1 for doc in recent if doc["state"] == JobState.FAILED.value)
    counts = job_counts(jobs)
    totals: dict[str, int] = {}
    for by_state in counts.values():
        for state, n in by_state.items():
            totals[state] = totals.get(state, 0) + n
    return {
        "at": now,
        "jobs": totals,
        "tasks": counts,
        "window": window,
        "succeededPerSecond": succeeded / window,
        "failedInWindow": failed,
        "workers": {"live": sum(1 for w in workers if w.get("live")), "known": len(workers)},
    }


# -- charts per task -----------------------------------------------------------------

MAX_CHART_WINDOW = 86_400.0  # a day
MAX_CHART_BUCKETS = 1_440
MIN_BUCKET_SECONDS = 1.0
RAN = [JobState.SUCCEEDED.value, JobState.FAILED.value]
# Enqueue to start of a job's last run, in ms, as ``wait_seconds`` measures it: from its
# creation, or from its due time if later (a delayed job, a retry's backoff, a snooze).
WAIT_MS: Doc = {
    "$cond": [
        {
            "$and": [
                {"$eq": [{"$type": "$lastRunAt"}, "date"]},
                {"$eq": [{"$type": "$createdAt"}, "date"]},
                {"$gte": ["$lastRunAt", "$createdAt"]},
            ]
        },
        {
            "$max": [
                0,
                {
                    "$subtract": [
                        "$lastRunAt",
                        {"$max": ["$createdAt", {"$ifNull": ["$nextRunAt", "$createdAt"]}]},
                    ]
                },
            ]
        },
        None,
    ]
}


def chart_pipeline(since: datetime, until: datetime, bucket_ms: int, task: str | None) -> list[Doc]:
    """One aggregation: per task and bucket of finish time, the succeeded and failed jobs
    and the p50/p95 of their waits (``$percentile``, approximate: MongoDB 7.0+).

    It reads the jobs that ended succeeded or failed in the window: the ``state``
    prefix of the ``claim`` index takes the finished states (not the queue), and each
    of their documents is read to test ``lastFinishedAt`` (no index of its own: one
    would cost every enqueue). See docs/decisions.md, "Charts".
    """
    match: Doc = {"state": {"$in": RAN}, "lastFinishedAt": {"$gte": since, "$lt": until}}
    if task is not None:
        match["name"] = task
    offset = {"$subtract": ["$lastFinishedAt", since]}
    return [
        {"$match": match},
        {
            "$project": {
                "name": 1,
                "state": 1,
                "bucket": {"$toInt": {"$floor": {"$divide": [offset, bucket_ms]}}},
                "wait": WAIT_MS,
            }
        },
        {
            "$group": {
                "_id": {"task": "$name", "bucket": "$bucket"},
                "succeeded": {"$sum": {"$cond": [{"$eq": ["$state", RAN[0]]}, 1, 0]}},
                "failed": {"$sum": {"$cond": [{"$eq": ["$state", RAN[1]]}, 1, 0]}},
                "wait": {
                    "$percentile": {"input": "$wait", "p": [0.5, 0.95], "method": "approximate"}
                },
            }
        },
    ]


def task_charts(
    window: float = 3600.0, buckets: int = 60, task: str | None = None, now: datetime | None = None
) -> Operation[Doc]:
    """Per task, over the last ``window`` seconds in ``buckets`` equal buckets (oldest
    first): jobs that succeeded, jobs that failed (for good: a failed attempt that is
    retried is counted once its job ends), and the p50 and p95 of the enqueue-to-start
    wait (seconds, None without a job) of the jobs that ended in that bucket."""
    if isinstance(window, bool) or not isinstance(window, int | float):
        raise InvalidJobError("window must be a number of seconds", "window")
    if not 0 < window <= MAX_CHART_WINDOW:
        raise InvalidJobError(
            f"window must be more than 0 and at most {MAX_CHART_WINDOW:g} seconds", "window"
        )
    if isinstance(buckets, bool) or not isinstance(buckets, int):
        raise InvalidJobError("buckets must be a whole number", "buckets")
    if not 1 <= buckets <= MAX_CHART_BUCKETS or window / buckets < MIN_BUCKET_SECONDS:
        raise InvalidJobError(
            f"buckets must be from 1 to {MAX_CHART_BUCKETS}, each of at least "
            f"{MIN_BUCKET_SECONDS:g} second",
            "buckets",
        )
    now = now or utcnow()
    bucket_ms = max(1, round(window * 1000 / buckets))
    since = now - timedelta(milliseconds=bucket_ms * buckets)
    rows: list[Doc] = yield Call(
        "jobs", "aggregate", (chart_pipeline(since, now, bucket_ms, task),)
    )
    tasks: dict[str, Doc] = {}
    for row in rows:
        name, bucket = str(row["_id"]["task"]), int(row["_id"]["bucket"])
        if not 0 <= bucket < buckets:
            continue  # a clock's rounding at the window's edge
        chart = tasks.setdefault(name, _empty_chart(buckets))
        chart["succeeded"][bucket] = int(row["succeeded"])
        chart["failed"][bucket] = int(row["failed"])
        p50, p95 = (row.get("wait") or [None, None])[:2]
        chart["waitP50"][bucket] = None if p50 is None else float(p50) / 1000
        chart["waitP95"][bucket] = None if p95 is None else float(p95) / 1000
    return {
        "at": now,
        "since": since,
        "window": bucket_ms * buckets / 1000,
        "buckets": buckets,
        "bucketSeconds": bucket_ms / 1000,
        "tasks": {name: tasks[name] for name in sorted(tasks)},
    }


def _empty_chart(buckets: int) -> Doc:
    return {
        "succeeded": [0] * buckets,
        "failed": [0] * buckets,
        "waitP50": [None] * buckets,
        "waitP95": [None] * buckets,
    }
