"""A plain handler (in a thread) that snoozes its first runs: support.snoozes."""

from support.snoozes import run_or_snooze


def setup(worker, task):
    worker.task(task.id, run_or_snooze)
