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
        _db.effects.insert_one({"job": job.id, "phase": "start", "t": time.time()})
        deadline = time.monotonic() + float((job.data or {}).get("limit", 30))
        while not job.cancelled and time.monotonic() < deadline:
            time.sleep(0.05)
        _db.effects.insert_one(
            {"job": job.id, "phase": "end", "t": time.time(), "saw_cancel": job.cancelled}
        )
        return {"saw_cancel": job.cancelled}
