"""The worker registry with real processes: standalone workers list themselves.

A standalone worker (``qworker --standalone``) has no manager to record it,
so it keeps its own entry in ``workers``: listed at start, refreshed with its
lease upkeep (every third of ``--lease``), ``stopped`` on a graceful exit,
and shown ``lost`` once silent for 3 refresh intervals (killed, or cut off).
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from datetime import timedelta
from typing import Any

from support.effects import effects_env
from support.logs import count_logged, ready, wait_accepted, wait_leading, wait_logged
from support.processes import console_command, managed
from support.waits import wait_for

from qworker import Client
from qworker.fleet import KEEP_WORKER
from qworker.when import utcnow

# Standalone workers refresh their entry every third of the lease: every second here.
FAST = ["--lease", "3"]
MANAGER = console_command("qworker-manager", "qworker.cli.manager")


def entry(client: Client, worker_id: str) -> dict[str, Any] | None:
    return next((w for w in client.workers() if w["_id"] == worker_id), None)


def listed(client: Client, worker_id: str, status: str = "running") -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        doc = entry(client, worker_id)
        return doc if doc is not None and doc["status"] == status else None

    return wait_for(found, 30, f"worker {worker_id} listed as {status}")  # type: ignore[no-any-return]


def test_a_standalone_worker_lists_itself_pings_and_is_stopped_after_sigterm(
    client: Client, db: Any, spawn_worker: Any, mongo_url: str
) -> None:
    worker = spawn_worker("record", worker_id="solo", extra=FAST, env=effects_env(mongo_url))
    doc = listed(client, "solo")
    assert doc["standalone"] is True and doc["live"] is True
    assert (doc["host"], doc["pid"], doc["tasks"]) == (socket.gethostname(), worker.pid, ["record"])
    assert doc["pingInterval"] == 1.0 and doc["startedAt"] <= doc["pingedAt"]
    first_ping = doc["pingedAt"]

    # Its refresh carries the jobs it runs; runningJobs counts them in the jobs collection.
    client.now("record", {"sleep": 3})
    busy = wait_for(
        lambda: (e := entry(client, "solo")) and e["running"] == 1 and e,
        30,
        "a refresh with one running job",
    )
    assert busy["runningJobs"] == 1 and busy["pingedAt"] > first_ping

    # The real CLI, in a process of its own, shows it.
    done = subprocess.run(
        [*MANAGER, "--mongo", mongo_url, "workers", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert [(w["_id"], w["status"], w["standalone"]) for w in json.loads(done.stdout)] == [
        ("solo", "running", True)
    ]

    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0
    stopped = entry(client, "solo")
    assert stopped is not None
    assert (stopped["state"], stopped["status"], stopped["running"]) == ("stopped", "stopped", 0)
    assert stopped["stoppedAt"] >= busy["pingedAt"]
    assert db.jobs.find_one()["state"] == "succeeded"  # it finished the job before stopping


def test_a_killed_standalone_worker_is_lost_and_its_id_can_be_reused(
    client: Client, db: Any, spawn_worker: Any
) -> None:
    first = spawn_worker("noop", worker_id="solo", extra=FAST)
    listed(client, "solo")
    first.signal(signal.SIGKILL)
    first.wait()
    assert db.workers.find_one({"_id": "solo"})["state"] == "running"  # no goodbye
    db.workers.update_one({"_id": "solo"}, {"$set": {"pingedAt": utcnow() - timedelta(minutes=1)}})
    lost = entry(client, "solo")
    assert lost is not None and lost["status"] == "lost" and lost["live"] is False
    assert [w["_id"] for w in client.workers("lost")] == ["solo"]
    assert client.workers("running") == []

    # A new worker with the id takes the silent entry over.
    second = spawn_worker("noop", worker_id="solo", extra=FAST)
    doc = wait_for(
        lambda: (e := entry(client, "solo")) and e["pid"] == second.pid and e,
        30,
        "the new worker to take the entry over",
    )
    assert doc["status"] == "running" and "stoppedAt" not in doc


def test_a_second_live_worker_with_the_same_id_does_not_hide_the_first(
    client: Client, spawn_worker: Any
) -> None:
    first = spawn_worker("noop", worker_id="twin", extra=FAST)
    assert listed(client, "twin")["pid"] == first.pid
    second = spawn_worker("noop", worker_id="twin", extra=FAST)
    wait_logged(second, "another live worker is listed under this worker's id", 30)
    ready(second)
    # Refreshes later the entry is still the first one's, and the warning was logged once.
    pinged = entry(client, "twin")
    assert pinged is not None
    wait_for(
        lambda: (e := entry(client, "twin")) and e["pingedAt"] > pinged["pingedAt"],
        30,
        "another refresh",
    )
    assert entry(client, "twin")["pid"] == first.pid
    assert count_logged(second, "another live worker is listed") == 1
    # Once the first stops, the second lists itself.
    first.signal(signal.SIGTERM)
    assert first.wait() == 0
    doc = wait_for(
        lambda: (e := entry(client, "twin")) and e["pid"] == second.pid and e,
        30,
        "the second worker to list itself",
    )
    assert doc["status"] == "running"


def test_managed_and_standalone_workers_are_listed_together(
    client: Client, spawn_manager: Any, spawn_worker: Any, mongo_url: str
) -> None:
    manager = spawn_manager()
    wait_leading(manager)
    worker = managed(spawn_worker, mongo_url, "record", worker_id="managed-1")
    wait_accepted(worker)
    solo = spawn_worker("noop", worker_id="solo-1", extra=FAST)

    def both() -> list[dict[str, Any]] | None:
        found = {w["_id"]: w for w in client.workers()}
        return list(found.values()) if {"managed-1", "solo-1"} <= found.keys() else None

    workers = {w["_id"]: w for w in wait_for(both, 30, "both workers listed")}
    assert workers["managed-1"]["standalone"] is False
    assert workers["managed-1"]["status"] == "running" and workers["managed-1"]["pid"] == worker.pid
    assert workers["solo-1"]["standalone"] is True and workers["solo-1"]["pid"] == solo.pid
    tasks = {t["_id"]: t for t in client.tasks()}
    assert tasks["record"]["valid"] is True and "managed-1" in tasks["record"]["liveWorkers"]


def test_worker_entries_expire_a_day_after_the_worker_was_last_heard_from(
    client: Client, db: Any, spawn_manager: Any, spawn_worker: Any, mongo_url: str
) -> None:
    """A TTL index removes them, so stopped and lost workers leave the list."""
    wait_leading(spawn_manager())
    member = managed(spawn_worker, mongo_url, "record", worker_id="managed-2")
    wait_accepted(member)
    solo = spawn_worker("noop", worker_id="solo-3", extra=FAST)
    listed(client, "solo-3")
    (index,) = [i for i in db.workers.list_indexes() if i["name"] == "forget"]
    assert dict(index["key"]) == {"expireAt": 1} and index["expireAfterSeconds"] == 0
    for worker_id in ("managed-2", "solo-3"):
        running = listed(client, worker_id)
        assert running["expireAt"] - running["pingedAt"] == KEEP_WORKER
    member.stop()
    solo.stop()
    for worker_id in ("managed-2", "solo-3"):
        stopped = listed(client, worker_id, "stopped")
        assert abs(stopped["expireAt"] - stopped["stoppedAt"] - KEEP_WORKER) < timedelta(seconds=1)


def test_a_leading_manager_leaves_standalone_workers_alone(
    client: Client, db: Any, spawn_manager: Any, spawn_worker: Any, mongo_url: str
) -> None:
    manager = spawn_manager()  # pings every 0.5 s: dead after 1 s without one
    wait_leading(manager)
    solo = spawn_worker("record", worker_id="solo-2", env=effects_env(mongo_url))  # 10 s refresh
    listed(client, "solo-2")
    job_id = client.now("record", {"sleep": 4})
    wait_for(lambda: client.get(job_id)["state"] == "running", 30, "the job to start")
    time.sleep(3)
    assert entry(client, "solo-2")["state"] == "running"
    assert client.get(job_id)["state"] == "running"  # not taken back from a live worker
    solo.stop()
