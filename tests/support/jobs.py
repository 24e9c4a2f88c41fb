"""What the tests read of jobs and channel messages in the test database."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from bson import ObjectId

from qworker.channel import opened
from qworker.model import FINISHED_STATES
from support.waits import wait_for

FINISHED = [s.value for s in FINISHED_STATES]


def finished(db: Any, job_id: str) -> dict[str, Any] | None:
    doc = db.jobs.find_one({"_id": ObjectId(job_id)})
    return doc if doc is not None and doc["state"] in FINISHED else None


def wait_finished(db: Any, job_id: str, timeout: float = 60) -> dict[str, Any]:
    return wait_for(lambda: finished(db, job_id), timeout, f"job {job_id} to finish")  # type: ignore[no-any-return]


def messages(db: Any, event: str) -> list[dict[str, Any]]:
    """The bodies of the channel messages of ``event``, oldest first, bundles opened."""
    found = db.channel.find({"$or": [{"event": event}, {"events": event}]}).sort("_id", 1)
    return [body for doc in found for kind, body in opened(doc) if kind == event]


def max_overlap(intervals: Iterable[tuple[float, float]]) -> int:
    """The most intervals open at one instant (one that ends as another starts: no overlap)."""
    spans = list(intervals)
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    # At equal times the -1 (an end) sorts first, so touching intervals do not count.
    open_now = best = 0
    for _, delta in events:
        open_now += delta
        best = max(best, open_now)
    return best
