import time

from support.effects import effects


def setup(worker, task):
    @worker.task(task.id)
    def run(job):
        effects().insert_one({"job": job.id, "phase": "start", "t": time.time()})
        deadline = time.monotonic() + float((job.data or {}).get("limit", 30))
        while not job.cancelled and time.monotonic() < deadline:
            time.sleep(0.05)
        effects().insert_one(
            {"job": job.id, "phase": "end", "t": time.time(), "saw_cancel": job.cancelled}
        )
        return {"saw_cancel": job.cancelled}
