"""Each run inserts a side effect: {job, worker, start, end}. Data: {"sleep": seconds}."""

import os
import time

from pymongo import MongoClient

_db = None


def setup(worker, task):
    @worker.task(task.id)
    def run(job):
        global _db
        if _db is None:
            _db = MongoClient(os.environ["QWORKER_TEST_EFFECTS_URL"]).get_default_database()
        start = time.time()
        time.sleep(float((job.data or {}).get("sleep", 0)))
        _db.effects.insert_one({
            "job": job.id, "worker": worker.id, "pid": os.getpid(),
            "start": start, "end": time.time(),
        })  # fmt: skip
        return {"worker": worker.id}
