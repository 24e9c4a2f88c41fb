"""Writes a worker owes MongoDB, batched: progress, log lines and outcomes.

Handlers report from threads, child-process relays and the event loop; the
outbox collects it under a lock and the worker flushes it in one ordered
``bulk_write``, so a busy worker pays one round trip for many jobs. Every
write is conditional on the claim's ``lockToken``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from pymongo import UpdateOne

from qworker.job import Job
from qworker.store import Outcome, log_update, owned
from qworker.when import utcnow


class Outbox:
    def __init__(self, lease: float, notify: Callable[[], None]) -> None:
        self.lease = lease
        self._notify = notify
        self._lock = threading.Lock()
        self._progress: dict[str, tuple[Job, float, str | None]] = {}
        self._logs: dict[str, tuple[Job, list[dict[str, Any]]]] = {}
        self._ops: list[UpdateOne] = []

    def progress(self, job: Job, percent: float, step: str | None) -> None:
        with self._lock:
            self._progress[job.id] = (job, percent, step)
        self._notify()

    def log(self, job: Job, level: str, text: str) -> None:
        entry = {"ts": utcnow(), "level": level, "msg": text}
        with self._lock:
            self._logs.setdefault(job.id, (job, []))[1].append(entry)
        self._notify()

    def add(self, op: UpdateOne) -> None:
        with self._lock:
            self._ops.append(op)
        self._notify()

    def finish(self, job: Job, outcome: Outcome) -> None:
        self.add(UpdateOne(_owned(job), outcome.update(utcnow())))

    def drain(self) -> list[UpdateOne]:
        """Everything pending, progress and logs before the outcomes they precede."""
        now = utcnow()
        with self._lock:
            progress, logs, ops = self._progress, self._logs, self._ops
            self._progress, self._logs, self._ops = {}, {}, []
        first = [
            UpdateOne(
                _owned(job),
                {
                    "$set": {
                        "progress": {"percent": value, "step": step},
                        "lockExpiresAt": now + timedelta(seconds=self.lease),
                    }
                },
            )
            for job, value, step in progress.values()
        ]
        first += [UpdateOne(_owned(job), log_update(entries)) for job, entries in logs.values()]
        return first + ops

    def restore(self, ops: list[UpdateOne]) -> None:
        """Put back writes that failed, ahead of newer ones, to try again."""
        with self._lock:
            self._ops[:0] = ops


def _owned(job: Job) -> dict[str, Any]:
    return owned(job.doc["_id"], job.doc["lockToken"])
