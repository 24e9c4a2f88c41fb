"""Doubles data["x"]; fails when there is no number to double."""


def setup(worker, task):
    @worker.task(task.id)
    def run(job):
        return {"x": 2 * float(job.data["x"])}
