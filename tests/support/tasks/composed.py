"""Three plain steps composed into one handler; each records the data it was given."""

import threading

from support.effects import effects


def _record(job, step):
    effects().insert_one(
        {
            "job": job.id,
            "step": step,
            "attempt": job.attempt,
            "data": job.data,
            "thread": threading.current_thread().name,
        }
    )


def parse(job):
    _record(job, "parse")
    return [int(x) for x in job.data["csv"].split(",")]


def square(job):
    _record(job, "square")
    return [n * n for n in job.data]


def summarize(job):
    _record(job, "summarize")
    return {"squares": job.data, "total": sum(job.data)}


def setup(worker, task):
    worker.compose(task.id, [parse, square, summarize])

    @worker.after_job
    def seen(job, result, error):
        if job.task == task.id:
            effects().insert_one({"job": job.id, "step": "after_job", "data": job.data})
