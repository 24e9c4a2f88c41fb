"""Succeeds, or fails when data says {"fail": true}."""


def setup(worker, task):
    @worker.task(task.id)
    def run(job):
        if (job.data or {}).get("fail"):
            raise RuntimeError("asked to fail")
        return "done"
