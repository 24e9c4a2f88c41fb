"""The manager under load: it never declares a live worker dead because it was busy.

A leader that falls behind its channel (a flood of forged pings, a stall of its
event loop) used to count the pings it had not read yet as missed, declare live
workers dead and requeue their running jobs, which then ran twice at once.
"""

from __future__ import annotations

import concurrent.futures
import time
from typing import Any

import httpx
from bson import ObjectId
from support.jobs import messages
from support.logs import wait_accepted, wait_leading
from support.processes import managed
from support.waits import wait_for

from qworker import Client, protocol
from qworker.channel import message


def _busy_worker(spawn_worker: Any, mongo_url: str, db: Any, client: Client) -> tuple[Any, str]:
    """A managed worker running a 12 s job."""
    worker = managed(spawn_worker, mongo_url, "tracked", worker_id="w1")
    wait_accepted(worker)
    job_id = client.now("tracked", {"sleeps": [12]})
    wait_for(lambda: db.effects.find_one({"job": job_id}), 30, "the job to start")
    return worker, job_id


def _never_dead(db: Any, client: Client, job_id: str, *processes: Any) -> None:
    said = "\n".join(process.output()[-4000:] for process in processes)
    assert [m for m in messages(db, protocol.WORKER_DEAD) if m["workerId"] == "w1"] == [], said
    done = client.wait(job_id, timeout=60)
    runs = list(db.effects.find({"job": job_id}))
    assert done["state"] == "succeeded" and len(runs) == 1, (done, runs, said)  # ran once
    assert done["attempts"] == 1, (done, runs, said)


def test_a_flood_of_forged_pings_declares_no_live_worker_dead(
    client: Client, db: Any, mongo_url: str, spawn_manager: Any, spawn_worker: Any
) -> None:
    # Pings every 2 s: dead after 4 s without one, which a leader 5,000 updates behind
    # reached; the worker's own pings must have time to get through the flood.
    manager = spawn_manager("m1", extra=["--ping-interval", "2"])
    wait_leading(manager)
    worker, job_id = _busy_worker(spawn_worker, mongo_url, db, client)
    forged = [
        message(
            protocol.WORKER_PING, {"workerId": f"forged-{n}", "nonce": f"{n:012x}", "running": 0}
        )
        for n in range(5_000)
    ]
    for start in range(0, len(forged), 1_000):
        db.channel.insert_many(forged[start : start + 1_000])
    _never_dead(db, client, job_id, manager, worker)
    ignored = [line for line in manager.output().splitlines() if "ignoring pings" in line]
    assert 1 <= len(ignored) <= 10, len(ignored)  # said, with counts, not 5,000 times


def test_slow_api_calls_and_a_worker_joining_stall_no_handshake_or_ping(
    client: Client, db: Any, mongo_url: str, spawn_manager: Any, spawn_worker: Any
) -> None:
    """Seven enqueues with long `when` phrases (dateparser took 8 s on 230 KB) and a
    worker joining stalled the manager's loop for 22 s: its API calls and its own
    handshake work shared the default thread pool."""
    manager = spawn_manager("m1")
    wait_leading(manager)
    base = manager.api_url()
    worker, job_id = _busy_worker(spawn_worker, mongo_url, db, client)
    phrase = "next monday at 10am " * 12_000

    def enqueue() -> httpx.Response:
        return httpx.post(f"{base}/api/jobs", json={"task": "noop", "when": phrase}, timeout=120)

    with concurrent.futures.ThreadPoolExecutor(7) as pool:
        answers = [pool.submit(enqueue) for _ in range(7)]
        time.sleep(0.5)
        joining = managed(spawn_worker, mongo_url, "noop", worker_id="w2")
        wait_accepted(joining, timeout=20)
        for answer in answers:
            refused = answer.result()
            assert refused.status_code == 422 and "at most 200" in refused.json()["error"]
    _never_dead(db, client, job_id, manager, worker)
    assert db.jobs.count_documents({"_id": {"$ne": ObjectId(job_id)}}) == 0
