"""Running an application's jobs in its own test process, with the real worker and store.

A standalone worker in burst mode claims and runs what is due, then stops: a
test enqueues, runs, and reads the outcomes, with no process to start and no
polling for an end. The worker runs on an event loop of its own, in a thread of
its own when the caller already runs one (an async test), and takes no
signals: those stay the test runner's.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVarTuple

from pymongo.collection import Collection

from qworker.client import Client
from qworker.config import WorkerSettings
from qworker.errors import QworkerError, TaskDefinitionError
from qworker.job import Job
from qworker.model import JobState
from qworker.tasks import discover, select
from qworker.when import utcnow
from qworker.worker.daemon import Worker

POLL_INTERVAL = 0.2  # seconds between reads of the queue: a job due within one is waited for
# A worker stopped by a limit lets its last job finish: the job's timeout bounds it.
GRACE = 3600.0

Doc = dict[str, Any]
Args = TypeVarTuple("Args")


class WorkerExitError(QworkerError):
    """The in-process worker stopped with an error: task code called ``worker.fail``."""


@dataclass(frozen=True)
class JobOutcome:
    """A job that ``run_jobs`` ran, as it stands after the run.

    ``state`` is where it ended: ``succeeded``, ``failed``, ``cancelled``, or
    ``queued`` again when a failed run will be retried later (with its
    ``error``). ``doc`` is the whole job document.
    """

    id: str
    task: str
    state: JobState
    result: Any
    error: dict[str, str] | None
    doc: Doc


def run_jobs(
    client: Client,
    paths: Sequence[str | Path],
    tasks: Sequence[str] | None = None,
    limit: int | None = None,
) -> list[JobOutcome]:
    """Run the due jobs of ``tasks`` (default: every task in ``paths``) with their real
    code, one at a time, until none is due; their outcomes, in the order they ran.

    What they set off (a chain's next step, a workflow's node, a sub-task) runs too, when due.
    ``limit`` stops claiming once that many jobs have started. Jobs due later
    (a delayed job, the backoff of a retry) are not waited for: they stay
    queued. Called from a running event loop, it blocks that loop meanwhile.
    """
    url, folders = _url(client), _folders(paths)
    ids = _task_ids(folders, tasks)
    _check_limit(limit)
    worker_id = f"testing-{uuid.uuid4().hex[:12]}"
    jobs = client.db[client.names.jobs]
    started = 0
    # A burst ends when a read finds nothing due, which may be before the writes of the
    # last job's follow-ups: another burst runs them.
    while True:
        worker = load_worker(url, ids, folders, worker_id=worker_id, prefix=client.names.prefix)
        starts = _Starts(worker, None if limit is None else limit - started)
        drive(worker)
        started += starts.count
        if not starts.count or started == limit or not _due(jobs, ids):
            break
    ran = jobs.find({"lastWorker": worker_id}).sort([("lastRunAt", 1), ("_id", 1)])
    return [_outcome(doc) for doc in ran]


def load_worker(
    url: str,
    tasks: Sequence[str],
    paths: Sequence[Path],
    *,
    worker_id: str,
    prefix: str = "",
    concurrency: int = 1,
    grace: float = GRACE,
    burst: bool = True,
) -> Worker:
    """A standalone worker of ``tasks``, their code loaded: for ``drive``."""
    settings = WorkerSettings(
        mongo=url,
        worker_id=worker_id,
        tasks=tuple(tasks),
        paths=tuple(paths),
        prefix=prefix,
        standalone=True,
        burst=burst,
        concurrency=concurrency,
        grace=grace,
        poll_interval=POLL_INTERVAL,
    )
    worker = Worker(settings, select(settings.paths, settings.tasks))
    worker.load()
    return worker


def drive(worker: Worker, until: Callable[[], object] | None = None) -> None:
    """Run ``worker`` until it stops: in burst mode, when nothing is due or running; or
    once ``until()`` returns something truthy. ``WorkerExitError`` if it failed."""
    code = _run_apart(worker, until)
    if code != 0:
        reason = worker.failure or "see its log"
        raise WorkerExitError(f"the in-process worker stopped with exit code {code}: {reason}")


def _folders(paths: Sequence[str | Path]) -> list[Path]:
    """The task folders; a bare string or a missing folder is a mistake said at once."""
    if isinstance(paths, str | Path):
        raise TypeError(f"paths is a list of task folders: paths=[{str(paths)!r}]")
    folders = [Path(p) for p in paths]
    missing = [str(f) for f in folders if not f.is_dir()]
    if missing:
        raise TaskDefinitionError(
            f"no task folder {', '.join(missing)} (relative paths are read from {Path.cwd()})"
        )
    return folders


def _task_ids(folders: list[Path], tasks: Sequence[str] | None) -> list[str]:
    if isinstance(tasks, str):
        raise TypeError(f"tasks is a list of task ids: tasks=[{tasks!r}]")
    if tasks is not None:
        return list(tasks)
    found = discover(folders)
    ids = [*found.tasks, *found.errors]  # a broken task file is reported, not skipped
    if not ids:
        raise TaskDefinitionError(f"no task in {', '.join(map(str, folders))}")
    return ids


def _url(client: Client) -> str:
    if client.url is None:
        raise ValueError("run_jobs needs a Client made from a URL: its worker opens its own")
    return client.url


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a whole number of jobs, at least 1, not {limit!r}")


def _due(jobs: Collection[Doc], tasks: list[str]) -> bool:
    query = {
        "name": {"$in": tasks},
        "state": JobState.QUEUED.value,
        "nextRunAt": {"$lte": utcnow()},
    }
    return jobs.find_one(query, {"_id": 1}) is not None


class _Starts:
    """Counts the jobs a worker starts and, at ``limit``, asks it to stop claiming. It is
    the first ``before_job`` observer, so that one of the task's own that fails a job
    does not hide its start."""

    def __init__(self, worker: Worker, limit: int | None) -> None:
        self.count = 0
        self._worker, self._limit = worker, limit
        worker.registry.before.insert(0, self._started)

    async def _started(self, job: Job) -> None:
        self.count += 1
        if self.count == self._limit:
            self._worker.request_stop()


def _run_apart(worker: Worker, until: Callable[[], object] | None) -> int:
    """The worker's exit code, run on a loop of its own: in this thread, or in a new one
    when this thread already runs a loop (``asyncio.run`` does not nest)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _run(worker, until)
    with ThreadPoolExecutor(1, thread_name_prefix="qworker-testing") as pool:
        return pool.submit(_run, worker, until).result()


def _run(worker: Worker, until: Callable[[], object] | None) -> int:
    with asyncio.Runner(loop_factory=_NoSignalsLoop) as runner:
        return runner.run(_until_stopped(worker, until))


async def _until_stopped(worker: Worker, until: Callable[[], object] | None) -> int:
    running = asyncio.create_task(worker.run())
    if until is not None:
        # The predicate may block (it reads MongoDB): off the worker's loop.
        while not running.done() and not await asyncio.to_thread(until):
            await asyncio.sleep(0.05)
        worker.request_stop()
    return await running


class _NoSignalsLoop(asyncio.SelectorEventLoop):
    """A loop that ignores the worker's signal handlers: Ctrl-C stops the test run, not
    just the worker, and outside the main thread a loop cannot take signals at all."""

    def add_signal_handler(
        self, sig: int, callback: Callable[[*Args], object], *args: *Args
    ) -> None:
        pass


def _outcome(doc: Doc) -> JobOutcome:
    return JobOutcome(
        id=str(doc["_id"]),
        task=doc["name"],
        state=JobState(doc["state"]),
        result=doc.get("result"),
        error=doc.get("error"),
        doc=doc,
    )
