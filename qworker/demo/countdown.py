"""A long job: reports progress while it counts down (an async handler)."""

import asyncio


def setup(worker, task):
    async def run(job):
        steps = int((job.data or {}).get("steps", 10))
        delay = float((job.data or {}).get("delay", 0.5))
        for done in range(steps):
            if job.cancelled:
                job.warn("cancelled at step %d", done)
                return {"stoppedAt": done}
            job.progress(done, total=steps, step=f"{steps - done} to go")
            await asyncio.sleep(delay)
        job.progress(100, step="lift-off")
        return {"steps": steps}

    worker.task(task.id, run)
