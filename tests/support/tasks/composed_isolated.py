"""With isolation: process the child runs setup() again, so compose() registers there too."""

import asyncio
import os


def where(job):
    return {"pid": os.getpid(), "n": job.data["n"]}


async def later(job):
    await asyncio.sleep(0.01)
    return {**job.data, "n": job.data["n"] + 1, "async": True}


def setup(worker, task):
    worker.compose(task.id, [where, later])
