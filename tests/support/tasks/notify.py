def setup(worker, task):
    @worker.task(task.id)
    def run(job):
        job.progress(50, step="half")
        job.info("writing to %s", job.data["to"])
        if job.data.get("fail"):
            raise ValueError("asked to fail")
        return {"sent": True}
