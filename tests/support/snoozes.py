"""What the snoozing test tasks share: record each run, and snooze the first ones.

A snooze gives its attempt back, so ``job.attempt`` cannot tell the runs apart:
they are counted in the side-effect log (``support.effects``) instead.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from qworker import Job, Snooze
from support.effects import effects


def run_or_snooze(job: Job) -> dict[str, Any]:
    """``raise Snooze(data.delay)`` on the first ``data.snoozes`` runs (default 1),
    then return; every run is recorded with its attempt, time, process and thread."""
    data = job.data or {}
    earlier = effects().count_documents({"job": job.id})
    effects().insert_one(
        {
            "job": job.id,
            "run": earlier + 1,
            "attempt": job.attempt,
            "at": time.time(),
            "pid": os.getpid(),
            "thread": threading.current_thread().name,
        }
    )
    if earlier < int(data.get("snoozes", 1)):
        raise Snooze(data.get("delay", 0.2))
    return {"runs": earlier + 1, "attempt": job.attempt}
