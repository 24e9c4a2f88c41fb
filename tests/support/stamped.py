"""A test task that stamps each run with its claim's time and what its dependencies gave it.

``chaos_record`` (tests/support/tasks) records when a run's work began and ended; the
fault-injection tests of fleet-wide limits and of workflows need two things more:

* ``claimed``, the claim's time (the job's ``lastRunAt``), which is the start a rate
  limit counts. A handler begins some time after its claim, and by a different delay
  each time, so the handlers' own start times cannot show whether a window held more
  starts than the limit;
* ``node`` and ``upstream``: a workflow node's name and the results it found in
  ``job.upstream`` as it started.

``task_folder`` writes a task folder whose tasks run this code under the metadata a
test gives (a ``globalConcurrency``, a ``rateLimit``). Each run inserts its
``effects`` document ``{_id, job, node, worker, pid, attempt, token, claimed, start,
upstream}`` before its work and sets ``end`` after it, as ``chaos_record`` does, so
``support.chaos.audit`` reads these runs too; the handler returns ``{"worker", "pid",
"run", "node"}``. Data: ``{"sleep": seconds}``.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bson import ObjectId

from support.effects import effects

# The code file of each task that ``task_folder`` writes: this module's ``setup``.
CODE = "from support.stamped import setup  # noqa: F401\n"


def task_folder(folder: Path, tasks: dict[str, dict[str, Any]]) -> Path:
    """``folder`` with a task per entry of ``tasks`` (its id -> its metadata)."""
    folder.mkdir(parents=True, exist_ok=True)
    for task_id, metadata in tasks.items():
        (folder / f"{task_id}.json").write_text(json.dumps(metadata))
        (folder / f"{task_id}.py").write_text(CODE)
    return folder


def _plain(value: Any) -> Any:
    """An upstream value as a document can hold it (an ``UpstreamFailure`` as text)."""
    return (
        value
        if value is None or isinstance(value, dict | list | str | int | float)
        else repr(value)
    )


def _seconds(when: Any) -> float | None:
    """A BSON date as seconds since the epoch (a naive one is UTC, as BSON's are)."""
    if not isinstance(when, datetime):
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def setup(worker: Any, task: Any) -> None:
    @worker.task(task.id)
    def run(job: Any) -> dict[str, Any]:
        data = job.data if isinstance(job.data, dict) else {}
        claimed = job.doc.get("lastRunAt")
        node = (job.doc.get("flow") or {}).get("node")
        run_id = ObjectId()
        effects().insert_one(
            {
                "_id": run_id,
                "job": job.id,
                "node": node,
                "worker": worker.id,
                "pid": os.getpid(),
                "attempt": job.attempt,
                "token": job.doc.get("lockToken"),
                "claimed": _seconds(claimed),
                "start": time.time(),
                "upstream": {name: _plain(value) for name, value in job.upstream.items()},
            }
        )
        time.sleep(float(data.get("sleep", 0)))
        effects().update_one({"_id": run_id}, {"$set": {"end": time.time()}})
        return {"worker": worker.id, "pid": os.getpid(), "run": str(run_id), "node": node}
