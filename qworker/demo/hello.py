"""A quick job: returns a greeting."""


def setup(worker, task):
    @worker.task(task.id)
    def run(job):
        name = (job.data or {}).get("name", "world")
        job.info("greeting %s", name)
        return {"greeting": f"Hello, {name}!"}
