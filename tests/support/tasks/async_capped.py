import asyncio
import threading
import time

from support.effects import effects


def setup(worker, task):
    @worker.task(task.id)
    async def run(job):
        start = time.time()
        await asyncio.sleep(float((job.data or {}).get("sleep", 0)))
        effects().insert_one(
            {
                "job": job.id,
                "worker": worker.id,
                "start": start,
                "end": time.time(),
                "thread": threading.current_thread().name,
            }
        )
        return {"async": True}
