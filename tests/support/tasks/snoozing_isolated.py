"""The snoozing handler in a child process: the snooze crosses the pipe to the worker."""

from support.snoozes import run_or_snooze


def setup(worker, task):
    worker.task(task.id, run_or_snooze)
