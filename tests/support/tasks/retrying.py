"""Records each run (attempt, start, end, and the nextRunAt/failedAt it was claimed with),
then raises while job.attempt <= data["fail_times"]."""

import time

from support.effects import effects


def setup(worker, task):
    @worker.task(task.id)
    def run(job):
        start = time.time()
        failing = job.attempt <= int(job.data["fail_times"])
        effects().insert_one(
            {
                "job": job.id,
                "attempt": job.attempt,
                "start": start,
                "end": time.time(),
                "nextRunAt": job.doc.get("nextRunAt"),
                "failedAt": job.doc.get("failedAt"),
                "failing": failing,
            }
        )
        if failing:
            raise RuntimeError(f"planned failure of attempt {job.attempt}")
        return {"attempt": job.attempt}
