def setup(worker, task):
    @worker.task(task.id)
    def run(job):
        if job.data.get("ok"):
            return "fine this time"
        job.warn("about to fail on purpose")
        raise ValueError(f"dash failure: {job.data.get('why', 'asked to')}")
