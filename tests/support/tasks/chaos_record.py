"""Each run records a side effect in 'effects' *before* its work and marks it done *after*.

A run's document ``{_id, job, worker, pid, attempt, token, start}`` is inserted
before the work; ``end``, the time the work was done, is set after it. A run cut
short (its process killed) shows as a start without an end. ``token`` is the
claim's lockToken. The handler returns ``{"worker", "pid", "run"}``, so the
job's stored result names the run whose outcome was recorded.

The effect writes ride out a MongoDB outage or a network cut (they retry for
up to two minutes, and a retried insert that had landed is not written twice),
so that what the fault-injection tests observe is qworker's behaviour, not this
task's. Data: ``{"sleeps": [seconds for attempt 1, attempt 2, ...]}``
(the last entry serves later attempts too). As a chord's callback its data is
the list of the group's results: the run records how many it received
(``received``) and how many were missing (``missing``), and sleeps 0.2 s.
"""

import os
import time

from bson import ObjectId
from pymongo.errors import ConnectionFailure, DuplicateKeyError
from support.effects import effects

PATIENCE = 120.0


def _retrying(write):
    deadline = time.monotonic() + PATIENCE
    while True:
        try:
            return write()
        except DuplicateKeyError:
            return None  # an insert retried after it had landed
        except ConnectionFailure:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def setup(worker, task):
    @worker.task(task.id)
    def run(job):
        given = job.data if isinstance(job.data, dict) else {"sleeps": [0.2]}
        sleeps = given.get("sleeps") or [0]
        run_id = ObjectId()
        doc = {
            "_id": run_id,
            "job": job.id,
            "worker": worker.id,
            "pid": os.getpid(),
            "attempt": job.attempt,
            "token": job.doc.get("lockToken"),
            "start": time.time(),
        }
        if isinstance(job.data, list):  # a chord's callback: the group's results
            doc.update(received=len(job.data), missing=sum(r is None for r in job.data))
        _retrying(lambda: effects().insert_one(doc))
        time.sleep(float(sleeps[min(job.attempt, len(sleeps)) - 1]))
        end = time.time()  # the work is done; recording it may wait out an outage
        _retrying(lambda: effects().update_one({"_id": run_id}, {"$set": {"end": end}}))
        return {"worker": worker.id, "pid": os.getpid(), "run": str(run_id)}
