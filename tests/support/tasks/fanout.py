"""Fans out from inside a job: a group of doubles collected by gather, or (data
{"dag": true}) a two-node DAG; returns the id of what it started."""

from qworker import Workflow


def setup(worker, task):
    @worker.task(task.id)
    def run(job):
        xs = (job.data or {}).get("xs", [1, 2, 3])
        if (job.data or {}).get("dag"):
            wf = Workflow("sub")
            first = wf.add("double", {"x": xs[0]}, name="first")
            wf.add("gather", name="then", deps=[first])
            return {"started": worker.schedule_workflow(wf)}
        steps = [("double", {"x": x}) for x in xs]
        return {"started": worker.schedule_group(steps, on_success="gather")}
