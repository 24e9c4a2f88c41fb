import time


def setup(worker, task):
    @worker.task(task.id)
    def run(job):
        time.sleep(float(job.data["sleep"]))
        return "woke up"
