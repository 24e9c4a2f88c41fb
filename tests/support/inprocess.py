"""A worker driven in the test's own event loop, in burst mode: the engine without a process.

It runs until nothing is due or running and returns, so a test queues its jobs,
runs the worker, and reads the outcomes: no process to start, no polling for an
end. Jobs due later (a retry's backoff, a delayed job) do not keep a burst
worker waiting; ``until`` runs it instead until what the test waits for holds.
What only a process shows (signals, children, exit codes, its log) stays in the
process-level tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from qworker.config import WorkerSettings
from qworker.tasks import select
from qworker.worker.daemon import Worker
from support.processes import TASKS


def run_burst(
    mongo_url: str,
    *tasks: str,
    concurrency: int = 16,
    paths: Sequence[Path] = (TASKS,),
    until: Callable[[], Any] | None = None,
) -> Worker:
    """Load ``tasks`` and run their jobs in this thread's loop, until nothing is due or
    running (or, given ``until``, until it returns something truthy); the worker."""
    settings = WorkerSettings(
        mongo=mongo_url,
        worker_id="in-process",
        tasks=tasks,
        paths=tuple(paths),
        standalone=True,
        burst=until is None,
        concurrency=concurrency,
        grace=1,
        poll_interval=0.2,
    )
    worker = Worker(settings, select(settings.paths, settings.tasks))
    worker.load()
    code = asyncio.run(_drive(worker, until))
    assert code == 0, f"the in-process worker exited with {code}"
    return worker


async def _drive(worker: Worker, until: Callable[[], Any] | None) -> int:
    running = asyncio.create_task(worker.run())
    if until is not None:
        # The predicate reads MongoDB with the blocking client: off the worker's loop.
        while not running.done() and not await asyncio.to_thread(until):
            await asyncio.sleep(0.05)
        worker.request_stop()
    return await running
