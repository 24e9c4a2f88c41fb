import time


def setup(worker, task):
    worker.task(task.id, lambda job: time.sleep(0.5))
