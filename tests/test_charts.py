"""Charts per task over a window: jobs succeeded and failed per bucket, and the p50/p95 of
their enqueue-to-start wait, from one aggregation; ``Client``, ``AsyncClient`` and
``GET /api/charts`` against the real server, and jobs run by a real worker process.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from bson import ObjectId
from fastapi.testclient import TestClient
from support.jobs import wait_finished

from qworker import AsyncClient, Client
from qworker.errors import InvalidJobError
from qworker.manager.api import create_app
from qworker.model import new_job
from qworker.when import utcnow

SECOND = timedelta(seconds=1)
MINUTE = timedelta(minutes=1)


def finished(
    db: Any,
    task: str,
    state: str,
    ended: datetime,
    waited: timedelta,
    *,
    delayed: timedelta = timedelta(0),
) -> None:
    """A job that was created, due ``delayed`` later, started after ``waited`` and ended
    a second later at ``ended``."""
    started = ended - SECOND
    created = started - waited - delayed
    doc = new_job(task, None, now=created, run_at=created + delayed)
    doc.update(state=state, lastRunAt=started, lastFinishedAt=ended)
    db.jobs.insert_one(doc)


def test_counts_and_waits_per_task_and_bucket(client: Client, db: Any) -> None:
    now = utcnow()
    for _ in range(19):  # in the last minute: waits of 1 s, one of 10 s
        finished(db, "mailer", "succeeded", now - 10 * SECOND, SECOND)
    finished(db, "mailer", "succeeded", now - 10 * SECOND, 10 * SECOND)
    finished(db, "mailer", "failed", now - 10 * SECOND, 3 * SECOND)
    for _ in range(2):  # 30 minutes ago, in bucket 29 of 60
        finished(db, "mailer", "failed", now - 30 * MINUTE - 5 * SECOND, 2 * SECOND)
    # A job due in 5 minutes that started 4 s after it was due: it waited 4 s, not 5 min.
    finished(
        db, "report", "succeeded", now - 2 * MINUTE - 30 * SECOND, 4 * SECOND, delayed=5 * MINUTE
    )
    finished(db, "mailer", "succeeded", now - 2 * 60 * MINUTE, SECOND)  # before the window
    client.now("mailer")  # queued: not finished
    client.cancel(client.now("mailer"))  # cancelled: neither succeeded nor failed

    charts = client.task_charts(3600, 60)
    assert charts["buckets"] == 60 and charts["bucketSeconds"] == 60.0
    assert charts["window"] == 3600.0 and charts["since"] == charts["at"] - 60 * MINUTE
    mailer, report = charts["tasks"]["mailer"], charts["tasks"]["report"]
    assert set(charts["tasks"]) == {"mailer", "report"}
    assert mailer["succeeded"][59] == 20 and mailer["failed"][59] == 1
    assert sum(mailer["succeeded"]) == 20 and sum(mailer["failed"]) == 3
    assert mailer["failed"][29] == 2 and mailer["waitP50"][29] == pytest.approx(2.0)
    assert mailer["waitP50"][59] == pytest.approx(1.0)
    assert 1.0 <= mailer["waitP95"][59] <= 10.0
    assert mailer["waitP50"][0] is None and mailer["succeeded"][0] == 0
    assert report["succeeded"][57] == 1 and report["waitP50"][57] == pytest.approx(4.0)
    only = client.task_charts(600, 10, task="report")
    assert list(only["tasks"]) == ["report"] and only["tasks"]["report"]["succeeded"][7] == 1


@pytest.mark.parametrize(
    ("window", "buckets", "field"),
    [(0, 10, "window"), (86_401, 10, "window"), (60, 0, "buckets"), (60, 61, "buckets")],
)
def test_a_window_or_buckets_out_of_range_are_refused(
    client: Client, window: float, buckets: int, field: str
) -> None:
    with pytest.raises(InvalidJobError) as refused:
        client.task_charts(window, buckets)
    assert refused.value.field == field


def test_the_async_client_and_the_route_chart_the_same(
    client: Client, db: Any, mongo_url: str
) -> None:
    now = utcnow()
    finished(db, "mailer", "succeeded", now - 5 * SECOND, 2 * SECOND)

    async def charted() -> dict[str, Any]:
        async with AsyncClient(mongo_url) as aclient:
            return await aclient.task_charts(60, 6)

    chart = asyncio.run(charted())["tasks"]["mailer"]
    assert chart["succeeded"] == [0, 0, 0, 0, 0, 1]
    with TestClient(create_app(client), base_url="http://127.0.0.1:8765") as api:
        answer = api.get("/api/charts", params={"window": 60, "buckets": 6})
        assert answer.status_code == 200, answer.text
        assert answer.json()["tasks"]["mailer"]["waitP50"][5] == pytest.approx(2.0)
        assert answer.json()["since"].endswith("+00:00")
        assert api.get("/api/charts", params={"buckets": 0}).status_code == 422
        too_fine = api.get("/api/charts", params={"window": 10, "buckets": 60})
        assert too_fine.status_code == 422 and too_fine.json()["field"] == "query.buckets"


def test_jobs_run_by_a_real_worker_are_charted(
    client: Client, db: Any, spawn_manager: Any, spawn_worker: Any
) -> None:
    ok = [client.now("dash_fail", {"ok": True}) for _ in range(3)]
    bad = client.now("dash_fail", {"why": "charted"})
    spawn_worker("dash_fail")
    for job_id in [*ok, bad]:
        wait_finished(db, job_id)
    base = spawn_manager("m1").api_url()
    charts = httpx.get(f"{base}/api/charts", params={"window": 600, "buckets": 10}, timeout=30)
    chart = charts.json()["tasks"]["dash_fail"]
    assert sum(chart["succeeded"]) == 3 and sum(chart["failed"]) == 1
    last = max(n for n in range(10) if chart["succeeded"][n] or chart["failed"][n])
    docs = list(db.jobs.find({"_id": {"$in": [ObjectId(i) for i in [*ok, bad]]}}))
    waits = sorted((d["lastRunAt"] - d["createdAt"]).total_seconds() for d in docs)
    assert waits[0] - 0.01 <= chart["waitP50"][last] <= waits[-1] + 0.01
