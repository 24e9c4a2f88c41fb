"""Helpers shared by the end-to-end worker tests (not fixtures: see conftest.py)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from conftest import WorkerProcess, wait_for, worker_ready

EFFECTS = "QWORKER_TEST_EFFECTS_URL"
FINISHED = ["succeeded", "failed", "cancelled"]


def effects_env(mongo_url: str, **more: str) -> dict[str, str]:
    """The environment that lets the test tasks record side effects in this test's database."""
    return {EFFECTS: mongo_url, **more}


def ready(*workers: WorkerProcess, timeout: float = 60) -> None:
    for worker in workers:
        wait_for(lambda w=worker: worker_ready(w), timeout, f"worker {worker.args} to start")


def finished(db: Any, job_id: str) -> dict[str, Any] | None:
    from bson import ObjectId

    doc = db.jobs.find_one({"_id": ObjectId(job_id)})
    return doc if doc is not None and doc["state"] in FINISHED else None


def wait_finished(db: Any, job_id: str, timeout: float = 60) -> dict[str, Any]:
    return wait_for(lambda: finished(db, job_id), timeout, f"job {job_id} to finish")  # type: ignore[no-any-return]


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


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers signal 0: look at its state where /proc exists.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True
