"""An async def handler (on the worker's loop) that snoozes its first runs: support.snoozes."""

from support.snoozes import run_or_snooze


def setup(worker, task):
    @worker.task(task.id)
    async def run(job):
        return run_or_snooze(job)
