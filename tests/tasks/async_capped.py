import asyncio
import os
import threading
import time

from pymongo import MongoClient

_db = None


def setup(worker, task):
    @worker.task(task.id)
    async def run(job):
        global _db
        if _db is None:
            _db = MongoClient(os.environ["QWORKER_TEST_EFFECTS_URL"]).get_default_database()
        start = time.time()
        await asyncio.sleep(float((job.data or {}).get("sleep", 0)))
        _db.effects.insert_one(
            {
                "job": job.id,
                "worker": worker.id,
                "start": start,
                "end": time.time(),
                "thread": threading.current_thread().name,
            }
        )
        return {"async": True}
