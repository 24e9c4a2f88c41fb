"""A worker run inside the test, in burst mode: the engine without a process.

It runs until nothing is due or running and returns, so a test queues its jobs,
runs the worker, and reads the outcomes: no process to start, no polling for an
end. Jobs due later (a retry's backoff, a delayed job) do not keep a burst
worker waiting; ``until`` runs it instead until what the test waits for holds.
What only a process shows (signals, children, exit codes, its log) stays in the
process-level tests. The running is ``qworker.testing``'s, as applications use it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from qworker.testing.running import drive, load_worker
from qworker.worker.daemon import Worker
from support.processes import TASKS


def run_burst(
    mongo_url: str,
    *tasks: str,
    concurrency: int = 16,
    paths: Sequence[Path] = (TASKS,),
    until: Callable[[], Any] | None = None,
) -> Worker:
    """Load ``tasks`` and run their jobs, until nothing is due or running (or, given
    ``until``, until it returns something truthy); the worker."""
    worker = load_worker(
        mongo_url,
        tasks,
        paths,
        worker_id="in-process",
        concurrency=concurrency,
        grace=1,
        burst=until is None,
    )
    drive(worker, until)
    return worker
