import time
from pathlib import Path


def setup(worker, task):
    @worker.task(task.id)
    def run(job):
        job.progress(40, "loading")
        job.log("plain line")
        job.info("info line %s", "formatted")
        job.warn("warn line")
        job.error("error line")
        for n in range(int(job.data.get("lines", 0))):
            job.info("line %d", n)
        job.progress(3, total=4, step="waiting for go")
        go = Path(job.data["go"])
        deadline = time.monotonic() + 30
        while not go.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return "done"
