"""Workers learn of new jobs from a change stream on ``jobs``: one write per enqueue.

With a 30 s poll, only the stream (or a wake-up, which the client no longer
publishes on this server) can start a job within seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from support.commands import CommandCounter
from support.effects import effects_env
from support.logs import ready, wait_logged
from support.server import Server
from support.waits import wait_for

from qworker import Client
from qworker.worker.jobfeed import JobFeed

SLOW_POLL = ["--poll-interval", "30"]


def test_a_new_job_and_a_retried_one_start_without_a_wake_up_or_a_poll(
    client: Client, db: Any, spawn_worker: Any
) -> None:
    worker = spawn_worker("double", extra=SLOW_POLL)
    ready(worker)
    wait_logged(worker, "new jobs come from a change stream on jobs", 30)
    job_id = client.now("double", {"x": 2})
    assert client.wait(job_id, timeout=10)["state"] == "succeeded"
    bad = client.now("double", {"x": "two"})  # fails: no number
    assert client.wait(bad, timeout=10)["state"] == "failed"
    db.jobs.update_one({"_id": db.jobs.find_one({"data.x": "two"})["_id"]}, {"$set": {"data.x": 3}})
    client.retry(bad)  # an update, not an insert: the stream asks for a read
    assert client.wait(bad, timeout=10)["result"] == {"x": 6.0}
    assert db.channel.count_documents({"event": "job:queued"}) == 0  # one write per enqueue


def test_with_no_watch_jobs_the_channel_wakes_the_worker(
    mongo_url: str, db: Any, spawn_worker: Any
) -> None:
    worker = spawn_worker("double", extra=[*SLOW_POLL, "--no-watch-jobs"])
    ready(worker)
    with Client(mongo_url, wakeups="channel") as client:
        job_id = client.now("double", {"x": 2})
        assert client.wait(job_id, timeout=10)["state"] == "succeeded"
    assert db.channel.count_documents({"event": "job:queued"}) == 1
    assert "change stream" not in worker.output()


def test_a_stream_broken_by_a_server_restart_resumes(own_server: Server, spawn_worker: Any) -> None:
    url = f"{own_server.url}/restart"
    worker = spawn_worker("double", extra=SLOW_POLL, mongo=url)
    ready(worker)
    wait_logged(worker, "new jobs come from a change stream on jobs", 30)
    own_server.stop()
    own_server.start()
    with Client(url) as client:
        job_id = client.now("double", {"x": 2})
        # Within seconds, not the 30 s poll: the reopened stream saw the insert.
        assert client.wait(job_id, timeout=10)["state"] == "succeeded"


def test_a_cancel_reaches_a_running_job_through_the_stream(
    mongo_url: str, client: Client, db: Any, spawn_worker: Any
) -> None:
    """No job:cancel on the channel here, and a 60 s lease renews every 20 s: only the
    stream can tell the worker within seconds."""
    worker = spawn_worker(
        "cooperative", extra=[*SLOW_POLL, "--lease", "60"], env=effects_env(mongo_url)
    )
    ready(worker)
    wait_logged(worker, "new jobs come from a change stream on jobs", 30)
    job_id = client.now("cooperative", {"limit": 40})
    wait_for(lambda: client.get(job_id)["state"] == "running", 10, "the job to start")
    client.cancel(job_id)
    done = client.wait(job_id, timeout=8)
    assert done["state"] == "cancelled", done
    (end,) = db.effects.find({"job": job_id, "phase": "end"})
    assert end["saw_cancel"] is True  # the handler saw job.cancelled, as asked
    assert db.channel.count_documents({"event": "job:cancel"}) == 0


async def _stream_reads(mongo_url: str, busy: bool, seconds: float) -> int:
    """The stream's getMores over ``seconds`` while another client writes elsewhere."""
    listener = CommandCounter("getMore")
    watcher: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        mongo_url, event_listeners=[listener]
    )
    writer: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url)
    feed = JobFeed(
        watcher.get_default_database().jobs,
        ["double"],
        1.0,
        on_jobs=lambda _: None,
        on_requeued=lambda: None,
        on_cancel=lambda _: None,
        busy=lambda: busy,
    )
    assert await feed.open()
    running = asyncio.create_task(feed.run())
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:  # writes end every awaited getMore here
            await writer.get_default_database().elsewhere.insert_one({})
            await asyncio.sleep(0.01)
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        await watcher.close()
        await writer.close()
    return listener.count


def test_a_busy_workers_stream_reads_about_once_a_second_whatever_others_write(
    mongo_url: str,
) -> None:
    idle = asyncio.run(_stream_reads(mongo_url, busy=False, seconds=3))
    if idle < 10:
        pytest.skip(f"this server holds awaited reads ({idle} in 3 s), as MongoDB does")
    busy = asyncio.run(_stream_reads(mongo_url, busy=True, seconds=3))
    assert busy <= 5, f"{busy} reads in 3 s (an idle worker's stream made {idle})"
