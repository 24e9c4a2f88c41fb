"""Records each run (attempt, start, end, and the nextRunAt/failedAt it was claimed with),
then raises while job.attempt <= data["fail_times"]."""

import os
import time

from pymongo import MongoClient

_db = None


def setup(worker, task):
    @worker.task(task.id)
    def run(job):
        global _db
        if _db is None:
            _db = MongoClient(
                os.environ["QWORKER_TEST_EFFECTS_URL"], tz_aware=True
            ).get_default_database()
        start = time.time()
        failing = job.attempt <= int(job.data["fail_times"])
        _db.effects.insert_one(
            {
                "job": job.id,
                "attempt": job.attempt,
                "start": start,
                "end": time.time(),
                "nextRunAt": job.doc.get("nextRunAt"),
                "failedAt": job.doc.get("failedAt"),
                "failing": failing,
            }
        )
        if failing:
            raise RuntimeError(f"planned failure of attempt {job.attempt}")
        return {"attempt": job.attempt}
