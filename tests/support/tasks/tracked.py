"""Each run inserts {job, worker, attempt, start} into 'effects' as it starts, and sets 'end'
when it finishes, so a run cut short (killed, released) shows as a start without an end."""

import os
import time

from support.effects import effects


def setup(worker, task):
    @worker.task(task.id)
    def run(job):
        sleeps = (job.data or {}).get("sleeps") or [0]
        doc = {
            "job": job.id,
            "worker": worker.id,
            "pid": os.getpid(),
            "attempt": job.attempt,
            "start": time.time(),
        }
        effects().insert_one(doc)
        time.sleep(float(sleeps[min(job.attempt, len(sleeps)) - 1]))
        effects().update_one({"_id": doc["_id"]}, {"$set": {"end": time.time()}})
        return {"worker": worker.id}
