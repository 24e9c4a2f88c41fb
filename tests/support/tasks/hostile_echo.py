"""Each run inserts a side effect {job, worker, pid}, like record.py, under another task id."""

import os

from support.effects import effects


def setup(worker, task):
    @worker.task(task.id)
    def run(job):
        effects().insert_one({"job": job.id, "worker": worker.id, "pid": os.getpid()})
        return {"worker": worker.id}
