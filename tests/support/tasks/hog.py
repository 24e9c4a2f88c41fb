"""Keeps ``data.mb`` megabytes in a module-level list: a leak, for --max-memory."""

HELD = []


def setup(worker, task):
    @worker.task(task.id)
    def run(job):
        HELD.append(bytearray(int(job.data["mb"]) * 2**20))  # zero pages are not resident
        HELD[-1][::4096] = b"\x01" * len(range(0, len(HELD[-1]), 4096))
        return {"held_mb": sum(len(b) for b in HELD) // 2**20}
