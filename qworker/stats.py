"""Figures about the jobs in the store: counts by task and state, and recent outcomes.

One aggregation per question, so the dashboard, the API and ``/metrics`` read
the same numbers the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from pymongo.collection import Collection

from qworker.model import JobState
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
