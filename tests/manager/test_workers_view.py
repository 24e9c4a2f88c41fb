"""The workers view: each worker with its running jobs, "stop gracefully", and entries that
expire so that the ``workers`` collection stops growing. Real worker and manager
processes, against the real server.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from support.effects import effects_env
from support.jobs import wait_finished
from support.logs import wait_accepted, wait_leading, wait_logged
from support.processes import managed, worker_ready
from support.waits import wait_for

from qworker import AsyncClient, Client
from qworker.channel import publish_sync
from qworker.errors import WorkerNotFound, WorkerStateError
from qworker.fleet import KEEP_WORKER
from qworker.manager.api import create_app
from qworker.when import utcnow

BASE = "http://127.0.0.1:8765"
SCRIPT = {"X-Qworker-Request": "1"}
# A short lease: a standalone worker refreshes its entry every third of it.
QUICK = ["--lease", "3", "--grace", "30"]


def entry(client: Client, worker_id: str) -> dict[str, Any] | None:
    return next((w for w in client.workers() if w["_id"] == worker_id), None)


def test_each_worker_lists_its_running_jobs(
    client: Client, mongo_url: str, spawn_worker: Any
) -> None:
    spawn_worker("cooperative", worker_id="solo", env=effects_env(mongo_url))
    running = [client.now("cooperative", {"limit": 60}) for _ in range(2)]
    client.schedule("in 1 hour", "cooperative")
    wait_for(lambda: (entry(client, "solo") or {}).get("runningJobs") == 2, 30, "two running")
    solo = entry(client, "solo")
    assert solo is not None
    assert sorted(str(job["id"]) for job in solo["jobs"]) == sorted(running)
    assert {job["task"] for job in solo["jobs"]} == {"cooperative"}
    starts = [job["startedAt"] for job in solo["jobs"]]
    assert starts == sorted(starts) and all(s <= utcnow() for s in starts)
    with TestClient(create_app(client), base_url=BASE) as api:
        (listed,) = [w for w in api.get("/api/workers").json() if w["_id"] == "solo"]
    assert sorted(job["id"] for job in listed["jobs"]) == sorted(running)
    assert "nonce" not in listed and listed["stopRequestedAt"] is None
    client.bulk("cancel", filter={"task": "cooperative"})


def test_a_standalone_worker_stops_gracefully_when_asked(
    client: Client, db: Any, spawn_worker: Any
) -> None:
    worker = spawn_worker("dash_slow", worker_id="solo", extra=QUICK)
    slow = client.now("dash_slow", {"steps": 5, "delay": 0.5})
    wait_for(lambda: client.get(slow)["state"] == "running", 30, "the slow job to start")
    asked = client.stop_worker("solo")
    assert asked["_id"] == "solo" and asked["standalone"] is True
    assert asked["alreadyAsked"] is False and "nonce" not in asked
    again = client.stop_worker("solo")  # a second ask does not force the stop
    assert again["alreadyAsked"] is True and again["stopRequestedAt"] == asked["stopRequestedAt"]
    assert worker.wait(60) == 0
    done = client.get(slow)
    assert done["state"] == "succeeded" and done["result"] == {
        "steps": 5
    }  # finished, not handed back
    later = client.now("dash_slow")
    stopped = entry(client, "solo")
    assert stopped is not None and stopped["status"] == "stopped"
    assert stopped["expireAt"] - utcnow() > KEEP_WORKER - timedelta(minutes=1)
    assert client.get(later)["state"] == "queued"
    assert "an operator asked this worker to stop" in worker.output()
    with pytest.raises(WorkerStateError, match="is stopped: nothing to stop"):
        client.stop_worker("solo")
    with pytest.raises(WorkerNotFound):
        client.stop_worker("nobody")


def test_a_stop_written_without_its_message_is_found_at_the_next_refresh(
    client: Client, db: Any, spawn_worker: Any
) -> None:
    """The message lost (or never sent): the request on the entry is enough."""
    worker = spawn_worker("noop", worker_id="solo", extra=QUICK)
    wait_for(lambda: worker_ready(worker) and entry(client, "solo"), 30, "the worker's entry")
    nonce = db.workers.find_one({"_id": "solo"})["nonce"]
    db.workers.update_one(
        {"_id": "solo"}, {"$set": {"stopRequested": {"nonce": nonce, "at": utcnow()}}}
    )
    assert worker.wait(30) == 0


def test_a_forged_or_stale_stop_is_ignored(client: Client, db: Any, spawn_worker: Any) -> None:
    """Anyone may write the channel: a stop the worker's entry does not hold, or one
    asked of an earlier instance with the same id, stops nothing."""
    worker = spawn_worker("noop", worker_id="solo", extra=QUICK)
    wait_for(lambda: worker_ready(worker) and entry(client, "solo"), 30, "the worker's entry")
    nonce = db.workers.find_one({"_id": "solo"})["nonce"]
    publish_sync(db.channel, "solo/stop", {"nonce": nonce})
    wait_logged(worker, "ignoring a stop request", 30)
    db.workers.update_one(
        {"_id": "solo"}, {"$set": {"stopRequested": {"nonce": "an-older-one", "at": utcnow()}}}
    )
    done = wait_finished(db, client.now("noop"))  # well past a refresh of its entry
    assert done["lastWorker"] == "solo" and worker.process.poll() is None
    assert entry(client, "solo")["stopRequestedAt"] is None


def test_a_managed_worker_stops_through_the_managers_api(
    client: Client, db: Any, mongo_url: str, spawn_manager: Any, spawn_worker: Any
) -> None:
    manager = spawn_manager("m1")
    wait_leading(manager)
    worker = managed(spawn_worker, mongo_url, "noop", worker_id="w1")
    wait_accepted(worker)
    base = manager.api_url()
    stop = httpx.post(f"{base}/api/workers/w1/stop", headers=SCRIPT, timeout=30)
    assert stop.status_code == 200, stop.text
    assert stop.json()["standalone"] is False and "nonce" not in stop.json()
    assert worker.wait(60) == 0
    wait_for(lambda: entry(client, "w1")["status"] == "stopped", 30, "the entry stopped")
    again = httpx.post(f"{base}/api/workers/w1/stop", headers=SCRIPT, timeout=30)
    assert again.status_code == 409 and "nothing to stop" in again.json()["error"]
    missing = httpx.post(f"{base}/api/workers/nobody/stop", headers=SCRIPT, timeout=30)
    assert missing.status_code == 404 and missing.json() == {"error": "no worker 'nobody'"}


def test_the_async_client_asks_a_stop_too(
    client: Client, mongo_url: str, spawn_worker: Any
) -> None:
    import asyncio

    worker = spawn_worker("noop", worker_id="solo", extra=QUICK)
    wait_for(lambda: worker_ready(worker) and entry(client, "solo"), 30, "the worker's entry")

    async def ask() -> dict[str, Any]:
        async with AsyncClient(mongo_url) as aclient:
            return await aclient.stop_worker("solo")

    assert asyncio.run(ask())["alreadyAsked"] is False
    assert worker.wait(30) == 0


# -- the collection stops growing -------------------------------------------------------


def test_stopped_and_dead_entries_expire_and_the_collection_stops_growing(
    client: Client, db: Any, mongo_url: str, spawn_manager: Any, spawn_worker: Any
) -> None:
    """Workers come and go under new ids (restarts, autoscaling): each entry they leave
    behind expires a day after it was last heard from, whatever its end. The TTL monitor
    runs every 60 s, so this takes up to a minute or two."""
    db.workers.insert_one({"_id": "from-an-old-version", "state": "stopped"})  # no expireAt
    manager = spawn_manager("m1")
    wait_leading(manager)
    wait_for(
        lambda: "expireAt" in db.workers.find_one({"_id": "from-an-old-version"}),
        30,
        "the old entry to get an expiry",
    )
    for n in range(3):  # standalone workers that stop
        worker = spawn_worker("noop", worker_id=f"s{n}", extra=QUICK)
        wait_for(lambda w=worker: worker_ready(w) and entry(client, w.worker_id), 30, "entry")
        worker.stop()
    killed = managed(spawn_worker, mongo_url, "noop", worker_id="m-killed")
    wait_accepted(killed)
    killed.process.kill()
    killed.process.wait()
    wait_for(lambda: entry(client, "m-killed")["status"] == "dead", 30, "the dead worker")
    live = managed(spawn_worker, mongo_url, "noop", worker_id="m-live")
    wait_accepted(live)
    now = utcnow()
    ended = list(db.workers.find({"_id": {"$ne": "m-live"}}))
    assert {w["_id"] for w in ended} == {"from-an-old-version", "s0", "s1", "s2", "m-killed"}
    for w in ended:
        assert now < w["expireAt"] <= now + KEEP_WORKER + timedelta(minutes=1), w
    dead = db.workers.find_one({"_id": "m-killed"})
    assert dead["expireAt"] - dead["diedAt"] == KEEP_WORKER
    index = db.workers.index_information()["forget"]
    assert index["key"] == [("expireAt", 1)] and index["expireAfterSeconds"] == 0
    # A day later, as far as the entries know: the server removes them, the live one stays.
    db.workers.update_many(
        {"_id": {"$ne": "m-live"}}, {"$set": {"expireAt": now - timedelta(seconds=1)}}
    )
    wait_for(lambda: db.workers.count_documents({}) == 1, 150, "the TTL monitor")
    assert [w["_id"] for w in client.workers()] == ["m-live"]
    assert db.workers.find_one()["expireAt"] > now  # a live worker's is pushed back
