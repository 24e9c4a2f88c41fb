"""An async step, a plain one, an async one: the composition runs on the loop, the
plain step in a thread of its own."""

import asyncio
import threading

from support.effects import effects


def _record(job, step):
    effects().insert_one(
        {"job": job.id, "step": step, "data": job.data, "thread": threading.current_thread().name}
    )


async def fetch(job):
    await asyncio.sleep(0.01)
    _record(job, "fetch")
    return job.data["n"] + 1


def double(job):
    _record(job, "double")
    return job.data * 2


async def wrap(job):
    _record(job, "wrap")
    return {"value": job.data}


def setup(worker, task):
    worker.compose(task.id, [fetch, double, wrap])
