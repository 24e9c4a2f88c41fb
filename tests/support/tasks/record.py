"""Each run inserts a side effect: {job, worker, start, end}. Data: {"sleep": seconds}."""

import os
import time

from support.effects import effects


def setup(worker, task):
    @worker.task(task.id)
    def run(job):
        start = time.time()
        time.sleep(float((job.data or {}).get("sleep", 0)))
        effects().insert_one(
            {
                "job": job.id,
                "worker": worker.id,
                "pid": os.getpid(),
                "start": start,
                "end": time.time(),
            }
        )
        return {"worker": worker.id}
