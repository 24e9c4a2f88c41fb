import os
from pathlib import Path


def _mark(name, text=""):
    Path(os.environ["QWORKER_TEST_MARKERS"], name).write_text(text)


def setup(worker, task):
    worker.initializer(lambda: _mark("worker-init", str(os.getpid())))
    worker.finalizer(lambda: _mark("worker-final", str(os.getpid())))
    worker.task_initializer(task.id)(lambda: _mark("task-init", task.id))
    worker.task_finalizer(task.id)(lambda: _mark("task-final", task.id))

    @worker.before_job
    def before(job):
        _mark(f"before-{job.id}")
        if (job.data or {}).get("reject"):
            raise PermissionError("rejected by the before_job observer")

    @worker.after_job
    def after(job, result, error):
        _mark(f"after-{job.id}", type(error).__name__ if error else repr(result))

    @worker.task(task.id)
    def run(job):
        _mark(f"ran-{job.id}")
        return "ran"
