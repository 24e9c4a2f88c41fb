import os
import time
from pathlib import Path


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie answers signal 0 but is not running
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def setup(worker, task):
    @worker.task(task.id)
    def run(job):
        pidfile = Path(job.data["pidfile"])
        # A run before this one (of the same job) left its pid: is that process still going?
        previous = int(pidfile.read_text()) if pidfile.exists() else None
        previous_alive = previous is not None and _alive(previous)
        pidfile.write_text(str(os.getpid()))
        job.progress(50, "in the child")
        job.info("hello from pid %d", os.getpid())
        sleeps = job.data.get("sleeps") or [job.data.get("sleep", 0)]
        time.sleep(float(sleeps[min(job.attempt, len(sleeps)) - 1]))
        return {"pid": os.getpid(), "previous": previous, "previous_alive": previous_alive}
