"""A job that fails on some input: {"fail": true} raises."""


class Refused(Exception):
    pass


def setup(worker, task):
    @worker.task(task.id)
    def run(job):
        if (job.data or {}).get("fail"):
            job.error("refusing input %r", job.data)
            raise Refused("the data asked this job to fail")
        return {"ok": True}
