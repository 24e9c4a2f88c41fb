"""load -> validate (raises on a non-number) -> store; each step records its runs."""

from support.effects import effects


def load(job):
    effects().insert_one({"job": job.id, "step": "load", "attempt": job.attempt})
    return job.data["rows"]


def validate(job):
    effects().insert_one({"job": job.id, "step": "validate", "attempt": job.attempt})
    for n, row in enumerate(job.data, 1):
        if not isinstance(row, int):
            raise ValueError(f"row {n} is not a number: {row!r}")
    return job.data


def store(job):
    effects().insert_one({"job": job.id, "step": "store", "attempt": job.attempt})
    return {"stored": len(job.data)}


def setup(worker, task):
    worker.compose(task.id, [load, validate, store])
