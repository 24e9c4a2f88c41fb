import time


def setup(worker, task):
    @worker.task(task.id)
    def run(job):
        steps = int(job.data.get("steps", 5))
        delay = float(job.data.get("delay", 0.6))
        for n in range(1, steps + 1):
            if job.cancelled:
                return {"stopped at": n}
            job.progress(100 * (n - 1) // steps, step=f"step {n} of {steps}")
            job.info("step %d of %d", n, steps)
            time.sleep(delay)
        return {"steps": steps}
