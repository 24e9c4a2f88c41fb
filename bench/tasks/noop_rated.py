def setup(worker, task):
    worker.task(task.id, lambda job: None)
