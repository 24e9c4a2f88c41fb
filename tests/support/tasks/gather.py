"""Returns what it was given: its data and its upstream (a failure as a dict), and records
each run in the 'effects' collection, for exactly-once checks of workflow callbacks."""

import time

from support.effects import effects

from qworker import UpstreamFailure


def setup(worker, task):
    @worker.task(task.id)
    def run(job):
        effects().insert_one({"job": job.id, "task": task.id, "at": time.time()})
        upstream = {
            name: {"failed": value.state, "reason": value.reason}
            if isinstance(value, UpstreamFailure)
            else value
            for name, value in job.upstream.items()
        }
        return {"data": job.data, "upstream": upstream}
