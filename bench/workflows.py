"""What a workflow's fan-in costs, for ``compare.py --parts workflows``.

* ``fan_in``: N no-op jobs run by K workers twice, as a plain batch and as
  one group whose ``on_success`` callback waits for all of them: the seconds
  per job of each, their ratio (the fan-in's cost per child), and the time
  from the last child's finish to the callback's start. Each half runs on a
  fresh server of its own (``server(None)``, unless ``compare.py`` was given
  one): SecantusDB is slower after a 10,000-job run, so the half run second
  on the first one's server would pay for the first.
* ``callback_gaps``: that last figure again over many small groups, for its
  p50 (to hold beside the enqueue → start p50 of the same run).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any, TypeVar

from bson import ObjectId
from common import fresh, percentile, qworker_fleet, server

from qworker import Client
from qworker.when import utcnow
from qworker.workflows import node_range

Doc = dict[str, Any]
T = TypeVar("T")
BATCH = 500
POLL = 0.2


def _quiet(db: Any, timeout: float) -> None:
    """Until no job is queued or running."""
    deadline = time.monotonic() + timeout
    while db.jobs.count_documents({"state": {"$in": ["queued", "running", "waiting"]}}):
        if time.monotonic() > deadline:
            raise TimeoutError("jobs did not finish")
        time.sleep(POLL)


def _plain(client: Client, db: Any, jobs: int, timeout: float) -> float:
    started = utcnow()
    for start in range(0, jobs, BATCH):
        client.enqueue_many("noop", [None] * min(BATCH, jobs - start))
    _quiet(db, timeout)
    last = db.jobs.find_one({"state": "succeeded"}, sort=[("lastFinishedAt", -1)])
    return float((last["lastFinishedAt"] - started).total_seconds())


def _group(client: Client, db: Any, jobs: int, timeout: float) -> tuple[float, float]:
    """Seconds until the last child finished, and from then to the callback's start."""
    started = utcnow()
    group_id = client.group([("noop", None)] * jobs, on_success="noop", check_tasks=False)
    _quiet(db, timeout)
    nodes = {"_id": node_range(ObjectId(group_id))}
    callback = db.jobs.find_one({**nodes, "flow.over": {"$exists": True}})
    last = db.jobs.find_one({**nodes, "flow.over": None}, sort=[("lastFinishedAt", -1)])
    if callback["state"] != "succeeded":
        raise RuntimeError(f"the callback ended {callback['state']}")
    children = (last["lastFinishedAt"] - started).total_seconds()
    gap = (callback["lastRunAt"] - last["lastFinishedAt"]).total_seconds()
    return float(children), float(gap)


def _half(given: str | None, workers: int, run: Callable[[Client, Any], T]) -> T:
    """``run`` on K workers, on a fresh database of a fresh server (or of ``given``)."""
    with server(given) as url:
        db_url, db = fresh(url, f"bench_fanin_{workers}")
        Client(db_url).close()
        with Client(db_url) as client, qworker_fleet(db_url, workers):
            time.sleep(1)
            result = run(client, db)
        db.client.drop_database(db.name)
    return result


def fan_in(given: str | None, jobs: int, workers: int, timeout: float) -> Doc:
    """The same N jobs as a plain batch and as a chord's children, on K workers."""
    plain = _half(given, workers, lambda client, db: _plain(client, db, jobs, timeout))
    children, gap = _half(given, workers, lambda client, db: _group(client, db, jobs, timeout))
    return {
        "jobs": jobs,
        "workers": workers,
        "queue_depth_at_start": jobs,
        "plain_ms_per_job": round(plain / jobs * 1000, 3),
        "group_ms_per_child": round(children / jobs * 1000, 3),
        "cost_per_child_vs_plain": round(children / plain, 3),
        "last_child_to_callback_ms": round(gap * 1000, 2),
    }


def callback_gaps(url: str, samples: int, children: int = 100) -> Doc:
    """Last child's finish → callback's start, over ``samples`` groups, one worker."""
    db_url, db = fresh(url, "bench_gaps")
    Client(db_url).close()
    gaps = []
    with Client(db_url) as client, qworker_fleet(db_url, 1):
        time.sleep(1)
        for _ in range(samples):
            gaps.append(_group(client, db, children, 120)[1] * 1000)
    db.client.drop_database(db.name)
    return {
        "groups": samples,
        "children": children,
        "workers": 1,
        "p50_ms": round(statistics.median(gaps), 2),
        "p95_ms": round(percentile(gaps, 0.95), 2),
        "ms": [round(g, 2) for g in gaps],
    }
