"""Sleeps ``data["sleep"]`` seconds and returns who ran it; writes nothing itself,
so a run can end while MongoDB is unreachable and leave only its outcome to record."""

import os
import time


def setup(worker, task):
    @worker.task(task.id)
    def run(job):
        time.sleep(float(job.data["sleep"]))
        return {"worker": worker.id, "pid": os.getpid(), "attempt": job.attempt}
