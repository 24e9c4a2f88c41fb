"""Health probes, the self-watchdog and recycling, with real worker and manager processes:
/healthz and /readyz answered from memory, a worker that exits 5 when its claims stall on a
server that stopped answering or when its channel tail is dead, and one that recycles
itself (exit 0) after --max-jobs jobs or past --max-memory."""

from __future__ import annotations

import signal
import time
from typing import Any

import httpx
from pymongo import MongoClient
from support.logs import ready, wait_leading, wait_logged
from support.processes import managed
from support.server import Server, free_port
from support.waits import wait_for

from qworker import Client
from qworker.worker.watchdog import WATCHDOG_EXIT


def probe(port: int, path: str) -> tuple[int, dict[str, Any]]:
    """The status and body of a probe; 0 while nothing listens."""
    try:
        answer = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10)
    except httpx.ConnectError:
        return 0, {}
    return answer.status_code, answer.json()


def health_flags(port: int, *more: str) -> list[str]:
    return ["--health", f"127.0.0.1:{port}", *more]


def test_a_standalone_worker_answers_its_probes_from_memory(spawn_worker: Any) -> None:
    port = free_port()
    worker = spawn_worker("noop", extra=health_flags(port))
    ready(worker)
    assert probe(port, "/healthz")[0] == 200
    _, body = wait_for(lambda: (r := probe(port, "/readyz"))[0] == 200 and r, 30, "ready")
    assert body["status"] == "ready"
    assert probe(port, "/metrics")[0] == 404


def test_a_managed_worker_is_ready_once_a_manager_accepted_it(
    mongo_url: str, spawn_worker: Any, spawn_manager: Any
) -> None:
    port = free_port()
    managed(spawn_worker, mongo_url, "noop", worker_id="wm", extra=health_flags(port))
    wait_for(lambda: probe(port, "/healthz")[0] == 200, 30, "the worker to answer")
    status, body = probe(port, "/readyz")
    assert status == 503 and body["manager"] == "not accepted by a manager", body
    manager = spawn_manager("m1")
    wait_leading(manager)
    wait_for(lambda: probe(port, "/readyz")[0] == 200, 60, "the worker to be accepted")
    base = manager.api_url()
    for path in ("/healthz", "/readyz"):
        assert httpx.get(f"{base}{path}", timeout=10).status_code == 200


def test_claims_stalled_on_a_server_that_stopped_answering_make_the_worker_exit_5(
    own_server: Server, spawn_worker: Any
) -> None:
    assert own_server.process is not None
    url = f"{own_server.url}/stall"
    port = free_port()
    worker = spawn_worker(
        "chaos_sleep", mongo=url, extra=health_flags(port, "--watchdog", "3", "--lease", "3")
    )
    ready(worker)
    with Client(url) as client:
        client.enqueue_many("chaos_sleep", [{"sleep": 1}] * 40)
    wait_logged(worker, "job started", 30)
    own_server.process.send_signal(signal.SIGSTOP)  # accepts, never answers
    try:
        time.sleep(4)  # the runs end; their claims of the next jobs hang
        status, body = probe(port, "/readyz")
        assert status == 503 and "mongodb" in body, body
        assert worker.wait(60) == WATCHDOG_EXIT
    finally:
        own_server.process.send_signal(signal.SIGCONT)
    assert "claims stalled" in worker.output()


def test_a_dead_channel_tail_makes_the_worker_exit_5_while_mongodb_answers(
    mongo_url: str, spawn_worker: Any
) -> None:
    worker = spawn_worker("noop", extra=["--watchdog", "3", "--lease", "3"])
    ready(worker)
    mongo: MongoClient[dict[str, Any]] = MongoClient(mongo_url)
    db = mongo.get_default_database()
    db.drop_collection("channel")
    db.create_collection("channel")  # not capped: no tailable cursor opens on it
    db.channel.insert_one({"event": "nothing"})
    try:
        assert worker.wait(60) == WATCHDOG_EXIT
    finally:
        mongo.close()
    assert "the channel tail has been dead" in worker.output()


def test_a_worker_recycles_after_max_jobs(client: Client, spawn_worker: Any) -> None:
    ids = client.enqueue_many("noop", [None] * 6)
    worker = spawn_worker("noop", extra=["--max-jobs", "3", "--concurrency", "4"])
    assert worker.wait(60) == 0
    states = sorted(client.get(job_id)["state"] for job_id in ids)
    assert states == ["queued"] * 3 + ["succeeded"] * 3
    assert "claimed 3 jobs (--max-jobs 3)" in worker.output()


def test_a_worker_recycles_past_max_memory_once_its_job_finished(
    client: Client, spawn_worker: Any
) -> None:
    job_id = client.now("hog", {"mb": 300})
    worker = spawn_worker("hog", extra=["--max-memory", "250"])
    assert worker.wait(60) == 0
    assert client.get(job_id)["state"] == "succeeded"
    assert "is over --max-memory 250" in worker.output()
