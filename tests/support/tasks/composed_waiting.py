"""prepare -> wait_for_go (until data.go exists, or the job is cancelled) -> finish."""

import time
from pathlib import Path

from support.effects import effects


def prepare(job):
    return {"go": job.data["go"], "prepared": True}


def wait_for_go(job):
    effects().insert_one({"job": job.id, "step": "wait_for_go"})
    go = Path(job.data["go"])
    deadline = time.monotonic() + 30
    while not go.exists() and not job.cancelled and time.monotonic() < deadline:
        time.sleep(0.05)
    return {**job.data, "went": go.exists()}


def finish(job):
    effects().insert_one({"job": job.id, "step": "finish"})
    return job.data


def setup(worker, task):
    worker.compose(task.id, [prepare, wait_for_go, finish])
