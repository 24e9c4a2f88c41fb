def setup(worker, task):
    @worker.task(task.id)
    def run(job):
        child = worker.schedule_task(job.data.get("when"), "record", {"from": job.id})
        return {"child": child}
