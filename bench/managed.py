"""What a managed fleet costs against a standalone one, for ``compare.py --parts managed``.

``managed``: N no-op jobs on K workers four times in one database of one
server: standalone twice, then managed (a ``qworker-manager serve`` accepting
the workers, every job's start and success announced on the channel and
relayed to the manager's log), then standalone again. The first two show how
much the server itself slows from one run to the next (SecantusDB does); the
second and third give the managed/standalone ratio; the fourth against the
second shows whether what the managed run left in the channel keeps slowing the
runs after it. The channel's own cost is counted too: the documents and bytes
the managed run added to it, per job, and the time per job it added.
"""

from __future__ import annotations

import sys
import time
from contextlib import ExitStack
from typing import Any

from common import Fleet, cpu_seconds, fresh, qworker_fleet, server, wait_count

from qworker import Client

BATCH = 500
SERVE = ["serve", "--http", "off", "--log-format", "json"]


def _channel(db: Any) -> tuple[int, int]:
    """Documents and bytes in the channel now."""
    stats = db.command("collStats", "channel")
    return int(stats.get("count", 0)), int(stats.get("size", 0))


def _run(db_url: str, db: Any, jobs: int, workers: int, timeout: float, managed: bool) -> Any:
    db.jobs.drop()
    Client(db_url).close()  # the indexes, as a deployment has them
    before = _channel(db)
    with ExitStack() as stack:
        manager = None
        if managed:
            serve = [sys.executable, "-m", "qworker.cli.manager", "--mongo", db_url, *SERVE]
            manager = stack.enter_context(Fleet([serve], b"manager started"))
        fleet = stack.enter_context(qworker_fleet(db_url, workers, standalone=not managed))
        pids = fleet.pids + (manager.pids if manager else [])
        cpu = [cpu_seconds(pid) for pid in pids]
        started = time.time()
        with Client(db_url) as client:
            for start in range(0, jobs, BATCH):
                client.enqueue_many("noop", [None] * min(BATCH, jobs - start))
        succeeded = {"state": "succeeded"}
        wait_count(lambda: db.jobs.count_documents(succeeded), jobs, time.monotonic() + timeout)
        used = [cpu_seconds(pid) - c for pid, c in zip(pids, cpu, strict=True)]
    done = db.jobs.count_documents({"state": "succeeded"})
    last = db.jobs.find_one({"state": "succeeded"}, sort=[("lastFinishedAt", -1)])
    seconds = (last["lastFinishedAt"].timestamp() if last else time.time()) - started
    after = _channel(db)
    return {
        "managed": managed,
        "finished": done,
        "complete": done >= jobs,
        "seconds": round(seconds, 3),
        "jobs_per_second": round(done / seconds, 1) if seconds > 0 else None,
        "workers_cpu_s": round(sum(used[:workers]), 2),
        "manager_cpu_s": round(sum(used[workers:]), 2),
        "channel_documents_added": after[0] - before[0],
        "channel_bytes_added": after[1] - before[1],
    }


def _per_job(run: dict[str, Any]) -> float:
    return float(run["seconds"]) / max(1, run["finished"])


def managed(url: str | None, jobs: int, workers: int, timeout: float) -> dict[str, Any]:
    """Standalone twice, managed, standalone again: see the module's docstring."""
    with server(url) as where:
        db_url, db = fresh(where, f"cmp_managed_{jobs}_{workers}")
        order = (False, False, True, False)
        runs = [_run(db_url, db, jobs, workers, timeout, m) for m in order]
        db.client.drop_database(db.name)
        db.client.close()
    first, before, middle, last = runs
    added = middle["channel_documents_added"]
    return {
        "jobs": jobs,
        "workers": workers,
        "queue_depth_at_start": jobs,
        "runs": runs,
        "second_over_first": round(before["jobs_per_second"] / first["jobs_per_second"], 3),
        "managed_over_standalone": round(middle["jobs_per_second"] / before["jobs_per_second"], 3),
        "after_over_before": round(last["jobs_per_second"] / before["jobs_per_second"], 3),
        "channel_documents_per_job": round(added / jobs, 3),
        "channel_bytes_per_job": round(middle["channel_bytes_added"] / jobs, 1),
        "channel_ms_per_job": round((_per_job(middle) - _per_job(before)) * 1000, 3),
    }


if __name__ == "__main__":
    import json

    print(json.dumps(managed(None, int(sys.argv[1]), int(sys.argv[2]), 300), indent=2))
