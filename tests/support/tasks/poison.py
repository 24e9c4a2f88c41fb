"""{"kill": true} ends its worker's process at once, as a crash would; else sleeps data.sleep."""

import os
import time


def setup(worker, task):
    @worker.task(task.id)
    def run(job):
        if job.data.get("kill"):
            os._exit(1)
        time.sleep(float(job.data.get("sleep", 0)))
        return {"lost": job.doc.get("lostCount", 0)}
