"""What fleet-wide limits cost, for ``compare.py --parts limits``.

* ``limit_overhead``: N no-op jobs on K workers, three times on fresh
  databases: unlimited (``noop``), under a concurrency limit that never binds
  (``noop_slotted``: a slot taken and given back per job) and under a rate
  limit that never binds (``noop_metered``: a start counted per job). The
  seconds per job of each and their ratio to the unlimited run: the claim's
  overhead.
* ``limited_neighbour``: N no-op jobs on K workers that also serve
  ``slow_capped`` (0.5 s jobs, at most 2 at once fleet-wide: 4 a second),
  alone and then with a backlog of capped jobs queued beside them: the no-op
  task's throughput with its neighbour held at its limit, against without it.
  The neighbour's own work is kept small, so the figure shows what its limit
  costs the others (workers asking for slots), not what its jobs cost.
* ``rate_accuracy``: a backlog of a task limited to 20 starts a second on K
  workers: the most starts seen in any sliding second and the rate kept,
  against the limit.

Each figure is the median of ``ROUNDS`` runs taking turns, each on a fresh
server (unless ``compare.py`` was given one): one run of 1,000 jobs takes
about ten seconds, this machine's speed drifts within minutes, and
SecantusDB slows with each run it has served.
"""

from __future__ import annotations

import bisect
import statistics
import time
from typing import Any

from common import fresh, qworker_fleet, server

from qworker import Client
from qworker.when import utcnow

Doc = dict[str, Any]
BATCH = 500
POLL = 0.2
CAPPED_BACKLOG = 100  # 25 s of slow_capped at its limit: more than the no-op run lasts
OVERHEAD_TASKS = ("noop", "noop_slotted", "noop_metered")
RATED_JOBS, RATED_LIMIT = 300, 20  # bench/tasks/noop_rated.json: 15 s at its limit
ROUNDS = 3  # each figure's runs, taking turns: this machine's speed drifts within minutes


def _run(client: Client, db: Any, task: str, jobs: int, timeout: float) -> float:
    """Seconds from the first enqueue until the last job of ``task`` finished."""
    started = utcnow()
    for start in range(0, jobs, BATCH):
        client.enqueue_many(task, [None] * min(BATCH, jobs - start))
    deadline = time.monotonic() + timeout
    while db.jobs.count_documents({"name": task, "state": {"$in": ["queued", "running"]}}):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{task} jobs did not finish")
        time.sleep(POLL)
    last = db.jobs.find_one({"name": task, "state": "succeeded"}, sort=[("lastFinishedAt", -1)])
    return float((last["lastFinishedAt"] - started).total_seconds())


def _measured(given: str | None, name: str, workers: int, tasks: list[str], measure: Any) -> Any:
    """``measure`` on K workers, on a fresh server (or a fresh database of ``given``):
    SecantusDB slows with each run it has served, which would favour the first."""
    with server(given) as url:
        db_url, db = fresh(url, name)
        Client(db_url).close()
        with Client(db_url) as client, qworker_fleet(db_url, workers, tasks=tasks):
            time.sleep(1)
            value = measure(client, db)
        db.client.drop_database(db.name)
    return value


def limit_overhead(given: str | None, jobs: int, workers: int, timeout: float) -> Doc:
    """Seconds per job unlimited, with a slot per job, with a start counted per job:
    each ``ROUNDS`` times, the three taking turns, and the median of each."""
    seconds: dict[str, list[float]] = {task: [] for task in OVERHEAD_TASKS}
    for n in range(ROUNDS):
        for task in OVERHEAD_TASKS:

            def one(client: Client, db: Any, task: str = task) -> float:
                return _run(client, db, task, jobs, timeout)

            seconds[task].append(_measured(given, f"bench_limits_{task}_{n}", workers, [task], one))
    median = {task: statistics.median(values) for task, values in seconds.items()}
    return {
        "jobs": jobs,
        "workers": workers,
        "queue_depth_at_start": jobs,
        "rounds": ROUNDS,
        "ms_per_job": {task: round(s / jobs * 1000, 3) for task, s in median.items()},
        "seconds": seconds,
        "slot_vs_unlimited": round(median["noop_slotted"] / median["noop"], 3),
        "rate_vs_unlimited": round(median["noop_metered"] / median["noop"], 3),
    }


def limited_neighbour(given: str | None, jobs: int, workers: int, timeout: float) -> Doc:
    """The no-op task's jobs per second alone, and beside a task held at its limit
    (``ROUNDS`` times each, taking turns; the medians)."""
    tasks = ["noop", "slow_capped"]
    alone: list[float] = []
    beside: list[float] = []
    capped_done: list[int] = []

    def only(client: Client, db: Any) -> float:
        return _run(client, db, "noop", jobs, timeout)

    def next_to_capped(client: Client, db: Any) -> float:
        client.enqueue_many("slow_capped", [None] * CAPPED_BACKLOG)
        seconds = _run(client, db, "noop", jobs, timeout)
        capped_done.append(db.jobs.count_documents({"name": "slow_capped", "state": "succeeded"}))
        return seconds

    for n in range(ROUNDS):
        alone.append(_measured(given, f"bench_alone_{n}", workers, tasks, only))
        beside.append(_measured(given, f"bench_beside_{n}", workers, tasks, next_to_capped))
    rate_alone, rate_beside = jobs / statistics.median(alone), jobs / statistics.median(beside)
    return {
        "jobs": jobs,
        "workers": workers,
        "queue_depth_at_start": jobs,
        "rounds": ROUNDS,
        "capped_backlog_at_start": CAPPED_BACKLOG,
        "capped_done": capped_done,
        "alone_jobs_per_second": round(rate_alone, 1),
        "beside_jobs_per_second": round(rate_beside, 1),
        "beside_vs_alone": round(rate_beside / rate_alone, 3),
    }


def rate_accuracy(given: str | None, workers: int, timeout: float) -> Doc:
    """``RATED_JOBS`` jobs of ``noop_rated`` (20 starts a second, fleet-wide) queued at
    once on K workers: the most starts in any sliding second (by the jobs' own start
    stamps) and the rate kept over the run, against the limit."""

    def starts(client: Client, db: Any) -> list[float]:
        _run(client, db, "noop_rated", RATED_JOBS, timeout)
        found = db.jobs.find({"name": "noop_rated"}, {"lastRunAt": 1})
        return sorted(doc["lastRunAt"].timestamp() for doc in found)

    stamps = _measured(given, "bench_rated", workers, ["noop_rated"], starts)
    most = max(bisect.bisect_left(stamps, t + 1.0) - i for i, t in enumerate(stamps))
    kept = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    return {
        "jobs": RATED_JOBS,
        "workers": workers,
        "queue_depth_at_start": RATED_JOBS,
        "limit_per_second": RATED_LIMIT,
        "most_in_any_second": most,
        "kept_per_second": round(kept, 2),
        "kept_vs_limit": round(kept / RATED_LIMIT, 3),
    }
