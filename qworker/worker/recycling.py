"""Recycling a worker before a slow leak hurts (``--max-jobs N``, ``--max-memory MB``).

Past either bound the worker stops claiming, lets its running jobs finish
within its grace (handing back any that do not, as on SIGTERM), and exits 0,
logging which bound it passed; systemd (``Restart=always``) or Kubernetes
starts a fresh one. With ``--max-jobs`` it never claims more than that many.
"""

from __future__ import annotations

import os
import resource

UNBOUNDED = 1 << 30


class Recycling:
    def __init__(self, max_jobs: int | None, max_memory_mb: float | None) -> None:
        self.max_jobs, self.max_memory_mb = max_jobs, max_memory_mb
        self.started = 0  # jobs claimed by this worker
        self.reason: str | None = None  # once it is recycling

    def room(self) -> int:
        """How many more jobs it may claim."""
        return UNBOUNDED if self.max_jobs is None else max(0, self.max_jobs - self.started)

    def claimed(self, count: int) -> None:
        self.started += count

    def due(self) -> str | None:
        """Why it must recycle now, if it must."""
        if self.max_jobs is not None and self.started >= self.max_jobs:
            return f"claimed {self.started} jobs (--max-jobs {self.max_jobs})"
        if self.max_memory_mb is not None:
            used = resident_mb()
            if used > self.max_memory_mb:
                return f"resident memory {used:.0f} MB is over --max-memory {self.max_memory_mb:g}"
        return None


def resident_mb() -> float:
    """This process's resident memory now (its peak, where /proc is not there)."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
