"""End-to-end: the manager daemon (``qworker-manager serve``) with managed workers.

Managers and workers are real processes against the real test server; every
assertion is on what they did: the ``workers``, ``tasks``, ``leases`` and
``jobs`` documents, the messages in the channel, the side effects of the test
tasks, exit codes and log lines. Intervals are short (pings every 0.5 s, a
2 s lease) so that detection times can be asserted.
"""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bson import ObjectId
from support.effects import effects_env
from support.jobs import messages, wait_finished
from support.logs import (
    alive,
    count_logged,
    log_events,
    ready,
    wait_accepted,
    wait_leading,
    wait_logged,
)
from support.processes import LEASE, PING, WorkerProcess, leading, managed
from support.server import Server
from support.waits import wait_for

from qworker import Client
from qworker.channel import publish_sync
from qworker.lifecycle import MAX_LOST

# Time a process may need beyond the nominal figure on a loaded 2-core machine.
SLACK = 4.0


def nonce_of(db: Any, worker: WorkerProcess, worker_id: str) -> str:
    """The instance nonce a worker process announced (its worker:initialize)."""
    for body in messages(db, "worker:initialize"):
        if body.get("workerId") == worker_id and body.get("pid") == worker.pid:
            return str(body["nonce"])
    raise AssertionError(f"worker {worker_id} (pid {worker.pid}) sent no worker:initialize")


def job(db: Any, job_id: str) -> dict[str, Any]:
    doc = db.jobs.find_one({"_id": ObjectId(job_id)})
    assert doc is not None, job_id
    return doc  # type: ignore[no-any-return]


# -- the handshake ---------------------------------------------------------


def test_a_managed_worker_is_accepted_recorded_and_runs_its_jobs(
    client: Client, db: Any, spawn_manager: Any, spawn_worker: Any, mongo_url: str
) -> None:
    manager = spawn_manager("m1")
    wait_leading(manager)
    worker = managed(spawn_worker, mongo_url, "record", "tracked", worker_id="w1")
    wait_accepted(worker)

    nonce = nonce_of(db, worker, "w1")
    doc = db.workers.find_one({"_id": "w1"})
    assert doc is not None
    assert doc["state"] == "running"
    assert doc["nonce"] == nonce
    assert doc["host"] == socket.gethostname()
    assert doc["pid"] == worker.pid
    assert sorted(doc["tasks"]) == ["record", "tracked"]
    # The acceptance named this instance and carried the manager's ping interval.
    [start] = messages(db, "w1/start")
    assert start["nonce"] == nonce and start["pingInterval"] == PING
    assert start["managerId"] == "m1"

    for task_id in ("record", "tracked"):
        task = db.tasks.find_one({"_id": task_id})
        assert task is not None, task_id
        assert task["valid"] is True and task["problems"] == []
        assert task["workers"] == ["w1"]
    assert db.tasks.find_one({"_id": "record"})["metadata"]["concurrency"] == 4  # record.json

    ids = client.enqueue_many("record", [{"n": n} for n in range(5)])
    for job_id in ids:
        assert wait_finished(db, job_id, 30)["state"] == "succeeded"
    runs = list(db.effects.find())
    assert sorted(e["job"] for e in runs) == sorted(ids)
    assert {e["pid"] for e in runs} == {worker.pid}

    # Pings keep the registry entry fresh.
    first = db.workers.find_one({"_id": "w1"})["pingedAt"]
    wait_for(lambda: db.workers.find_one({"_id": "w1"})["pingedAt"] > first, 10, "a later ping")


def test_a_managed_worker_claims_nothing_until_a_manager_accepts_it(
    client: Client, db: Any, spawn_manager: Any, spawn_worker: Any, mongo_url: str
) -> None:
    job_id = client.now("record", {"n": 1})
    worker = managed(spawn_worker, mongo_url, "record", worker_id="w1")
    ready(worker)
    # It asks for a manager, gets no answer within its wait, and says so.
    wait_logged(worker, "no manager answered; waiting for one", 20)
    assert messages(db, "worker:initialize"), "the worker never announced itself"
    # It has been up for a few seconds with the job due, and claimed nothing.
    assert job(db, job_id)["state"] == "queued"
    assert db.effects.count_documents({}) == 0
    assert db.workers.count_documents({}) == 0
    assert count_logged(worker, "accepted by the manager") == 0

    manager = spawn_manager("m1")
    wait_leading(manager)
    wait_accepted(worker)
    done = wait_finished(db, job_id, 30)
    assert done["state"] == "succeeded"
    assert done["attempts"] == 1
    assert db.effects.count_documents({"job": job_id}) == 1
    assert db.workers.find_one({"_id": "w1"})["state"] == "running"


def test_a_second_worker_with_a_live_workers_id_is_rejected(
    client: Client, db: Any, spawn_manager: Any, spawn_worker: Any, mongo_url: str
) -> None:
    manager = spawn_manager("m1")
    wait_leading(manager)
    first = managed(spawn_worker, mongo_url, "record", worker_id="dup")
    wait_accepted(first)
    first_nonce = nonce_of(db, first, "dup")

    second = managed(spawn_worker, mongo_url, "record", worker_id="dup")
    code = second.wait(30)
    assert code == 3, second.output()
    stderr = second.stderr.read_text()
    assert "terminated by the manager" in stderr
    assert "already used by a live worker" in stderr
    assert count_logged(second, "accepted by the manager") == 0
    # The manager addressed the refusal to the second instance only.
    [refusal] = messages(db, "dup/terminate")
    assert refusal["nonce"] == nonce_of(db, second, "dup") != first_nonce
    assert "already used by a live worker" in refusal["reason"]

    # The first keeps its registry entry and keeps working.
    doc = db.workers.find_one({"_id": "dup"})
    assert doc["nonce"] == first_nonce and doc["pid"] == first.pid
    assert doc["state"] == "running"
    alive(first)
    job_id = client.now("record", {"n": 1})
    assert wait_finished(db, job_id, 30)["state"] == "succeeded"
    [run] = db.effects.find({"job": job_id})
    assert run["pid"] == first.pid
    alive(first)
    assert db.workers.find_one({"_id": "dup"})["state"] == "running"


def test_the_manager_rejects_workers_whose_tasks_are_unknown_or_invalid(
    db: Any, spawn_manager: Any, spawn_worker: Any, mongo_url: str
) -> None:
    """Real workers validate their tasks before announcing them, so the manager's
    own checks are driven here by forged announcements on the channel."""
    manager = spawn_manager("m1")
    wait_leading(manager)

    # A task nobody defined, announced again and again as a real worker does: a new
    # leader first gives the definitions it may have missed a while to come.
    ghost = {"workerId": "ghost", "nonce": "n-ghost", "host": "h", "pid": 1, "tasks": ["nowhere"]}

    def refused() -> list[dict[str, Any]]:
        publish_sync(db.channel, "worker:initialize", ghost)
        return messages(db, "ghost/terminate")

    [refusal, *_] = wait_for(refused, 30, "ghost/terminate", every=1.0)
    assert refusal["nonce"] == "n-ghost"
    assert refusal["reason"] == "task 'nowhere' is unknown: no worker defined it"

    # A task defined with metadata the manager finds invalid.
    bad = {"id": "broken", "name": "Broken", "concurrency": 0, "colour": "red"}
    publish_sync(
        db.channel, "define:tasks", {"workerId": "forger", "nonce": "n-forger", "tasks": [bad]}
    )
    publish_sync(
        db.channel,
        "worker:initialize",
        {"workerId": "forger", "nonce": "n-forger", "host": "h", "pid": 2, "tasks": ["broken"]},
    )
    [refusal] = wait_for(lambda: messages(db, "forger/terminate"), 20, "forger/terminate")
    assert refusal["nonce"] == "n-forger"
    assert refusal["reason"].startswith("task 'broken' has invalid metadata: ")
    assert "concurrency" in refusal["reason"] and "colour" in refusal["reason"]
    task = db.tasks.find_one({"_id": "broken"})
    assert task["valid"] is False
    assert any("concurrency" in p for p in task["problems"])
    assert any("unknown field 'colour'" in p for p in task["problems"])
    assert task["workers"] == ["forger"]

    # Neither was registered, and neither was accepted.
    assert db.workers.count_documents({}) == 0
    assert messages(db, "ghost/start") == [] and messages(db, "forger/start") == []

    # The manager goes on accepting real workers.
    worker = managed(spawn_worker, mongo_url, "record", worker_id="w1")
    wait_accepted(worker)
    assert db.workers.find_one({"_id": "w1"})["state"] == "running"
    alive(manager)


def test_a_worker_whose_definition_went_by_before_the_manager_led_is_accepted(
    client: Client, db: Any, spawn_manager: Any
) -> None:
    """Its define:tasks came while no manager led, its initialize just after one took
    the lease: it is not refused for an unknown task (which would stop it for good);
    the announcement it repeats on the manager's start is accepted."""
    me = {"workerId": "late", "nonce": "n-late", "host": "h", "pid": 3}
    task = {"id": "latecomer", "name": "Latecomer", "description": "defined before a leader"}
    publish_sync(db.channel, "define:tasks", {**me, "tasks": [task]})  # nobody listens
    manager = spawn_manager("m1")
    wait_leading(manager)
    publish_sync(db.channel, "worker:initialize", {**me, "tasks": ["latecomer"]})
    wait_logged(manager, "a worker's tasks are not known yet", 20)
    assert messages(db, "late/terminate") == []

    publish_sync(db.channel, "define:tasks", {**me, "tasks": [task]})
    publish_sync(db.channel, "worker:initialize", {**me, "tasks": ["latecomer"]})
    [start] = wait_for(lambda: messages(db, "late/start"), 20, "late/start")
    assert start["nonce"] == "n-late" and messages(db, "late/terminate") == []
    assert db.workers.find_one({"_id": "late"})["state"] == "running"


# -- the manager going away and coming back --------------------------------


def test_workers_pause_while_the_manager_is_stopped_and_resume_when_it_restarts(
    client: Client, db: Any, spawn_manager: Any, spawn_worker: Any, mongo_url: str
) -> None:
    manager = spawn_manager("m1")
    wait_leading(manager)
    workers = [managed(spawn_worker, mongo_url, "tracked", worker_id=f"w{n}") for n in (1, 2)]
    for worker in workers:
        wait_accepted(worker)
    before = client.now("tracked", {"sleeps": [0]})
    assert wait_finished(db, before, 30)["state"] == "succeeded"
    # A long job that is still running while the manager is away and comes back.
    long_job = client.now("tracked", {"sleeps": [8]})
    wait_for(lambda: db.effects.find_one({"job": long_job}), 20, "the long job to start")

    assert manager.stop() == 0, manager.output()
    assert [m["managerId"] for m in messages(db, "manager:stop")] == ["m1"]
    assert db.leases.count_documents({}) == 0  # released, not left to expire
    for worker in workers:
        wait_logged(worker, "manager stopped: pausing", 20)

    paused = client.now("tracked", {"sleeps": [0]})
    # The workers look for a manager, find none, and claim nothing meanwhile.
    for worker in workers:
        wait_logged(worker, "no manager answered; waiting for one", 20)
    assert job(db, paused)["state"] == "queued"
    assert db.effects.count_documents({"job": paused}) == 0
    assert job(db, long_job)["state"] == "running"  # running jobs go on while paused

    restarted = spawn_manager("m1")
    wait_leading(restarted)
    for worker in workers:
        wait_accepted(worker, times=2)
    assert wait_finished(db, paused, 30)["state"] == "succeeded"
    assert wait_finished(db, long_job, 30)["state"] == "succeeded"
    after = client.now("tracked", {"sleeps": [0]})
    assert wait_finished(db, after, 30)["state"] == "succeeded"

    # Nothing lost, nothing run twice.
    for job_id in (before, long_job, paused, after):
        runs = list(db.effects.find({"job": job_id}))
        assert len(runs) == 1, (job_id, runs)
        assert "end" in runs[0]
        assert job(db, job_id)["attempts"] == 1
    for worker in workers:
        alive(worker)
    assert {d["state"] for d in db.workers.find()} == {"running"}


def test_a_manager_restarted_at_once_finds_its_paused_workers_alive(
    client: Client, db: Any, spawn_manager: Any, spawn_worker: Any, mongo_url: str
) -> None:
    """The new manager starts while the paused workers still wait for an answer to
    the announcement nobody heard: they must join it, not be declared dead."""
    manager = spawn_manager("m1")
    wait_leading(manager)
    worker = managed(spawn_worker, mongo_url, "tracked", worker_id="w1")
    wait_accepted(worker)
    long_job = client.now("tracked", {"sleeps": [6]})
    wait_for(lambda: db.effects.find_one({"job": long_job}), 20, "the long job to start")

    assert manager.stop() == 0, manager.output()
    wait_logged(worker, "manager stopped: pausing", 20)
    restarted = spawn_manager("m1")
    wait_leading(restarted)
    wait_accepted(worker, times=2)

    assert wait_finished(db, long_job, 30)["state"] == "succeeded"
    [run] = db.effects.find({"job": long_job})
    assert "end" in run and job(db, long_job)["attempts"] == 1
    assert messages(db, "worker:dead") == []
    assert db.workers.find_one({"_id": "w1"})["state"] == "running"
    alive(worker)


def test_a_killed_workers_running_job_is_recovered_by_the_manager_at_once(
    client: Client, db: Any, spawn_manager: Any, spawn_worker: Any, mongo_url: str
) -> None:
    manager = spawn_manager("m1")
    wait_leading(manager)
    # A 60 s job lease: only the manager's detection can bring the job back soon.
    workers = {
        worker_id: managed(
            spawn_worker, mongo_url, "tracked", worker_id=worker_id, extra=["--lease", "60"]
        )
        for worker_id in ("a", "b")
    }
    for worker in workers.values():
        wait_accepted(worker)

    job_id = client.now("tracked", {"sleeps": [30, 0]})
    first = wait_for(lambda: db.effects.find_one({"job": job_id}), 20, "the job to start")
    victim_id = first["worker"]
    survivor_id = "b" if victim_id == "a" else "a"
    victim, survivor = workers[victim_id], workers[survivor_id]
    victim_nonce = db.workers.find_one({"_id": victim_id})["nonce"]

    victim.process.kill()
    victim.process.wait()
    killed_at = time.monotonic()

    wait_for(
        lambda: db.workers.find_one({"_id": victim_id, "state": "dead"}),
        2 * PING + SLACK,
        f"worker {victim_id} to be marked dead",
    )
    [dead] = wait_for(lambda: messages(db, "worker:dead"), 10, "a worker:dead message")
    assert dead["workerId"] == victim_id and dead["nonce"] == victim_nonce
    assert dead["recovered"] == [job_id]

    done = wait_finished(db, job_id, 30)
    recovered_in = time.monotonic() - killed_at
    assert done["state"] == "succeeded", done
    assert done["lostCount"] == 1
    assert done["result"] == {"worker": survivor_id}
    assert recovered_in < 20, recovered_in  # far inside the 60 s lease
    runs = sorted(db.effects.find({"job": job_id}), key=lambda r: r["start"])
    assert [(r["worker"], r["attempt"], "end" in r) for r in runs] == [
        (victim_id, 1, False),
        (survivor_id, 2, True),
    ]
    alive(survivor)
    assert db.workers.find_one({"_id": victim_id})["state"] == "dead"
    assert db.workers.find_one({"_id": survivor_id})["state"] == "running"


def test_a_standby_manager_takes_over_when_the_leader_is_killed(
    client: Client, db: Any, spawn_manager: Any, spawn_worker: Any, mongo_url: str
) -> None:
    leader = spawn_manager("m1")
    wait_leading(leader)
    standby = spawn_manager("m2")
    wait_logged(standby, "manager started", 30)
    worker = managed(spawn_worker, mongo_url, "tracked", worker_id="w1")
    wait_accepted(worker)
    assert db.leases.find_one({"_id": "manager"})["owner"] == "m1"
    assert messages(db, "w1/start")[0]["managerId"] == "m1"
    assert count_logged(standby, "leading the fleet") == 0

    # A job running through the failover: a live worker must not be declared dead.
    long_job = client.now("tracked", {"sleeps": [LEASE + 6]})
    wait_for(lambda: db.effects.find_one({"job": long_job}), 20, "the long job to start")

    leader.kill()
    killed_at = time.monotonic()
    wait_leading(standby, timeout=LEASE + 2 * SLACK)
    took = time.monotonic() - killed_at
    assert took < LEASE + SLACK, took
    assert db.leases.find_one({"_id": "manager"})["owner"] == "m2"
    assert [m["managerId"] for m in messages(db, "manager:start")][-1] == "m2"

    newcomer = managed(spawn_worker, mongo_url, "tracked", worker_id="w2")
    wait_accepted(newcomer)
    assert {m["managerId"] for m in messages(db, "w2/start")} == {"m2"}
    assert db.workers.find_one({"_id": "w2"})["state"] == "running"

    assert wait_finished(db, long_job, 30)["state"] == "succeeded"
    [run] = db.effects.find({"job": long_job})
    assert run["worker"] == "w1" and "end" in run
    assert messages(db, "worker:dead") == []
    assert db.workers.find_one({"_id": "w1"})["state"] == "running"
    alive(worker)


# -- the channel across a MongoDB restart ---------------------------------


def test_channel_subscribers_resume_after_the_mongodb_server_restarts(
    client: Client,
    db: Any,
    mongo_server: Server,
    spawn_manager: Any,
    spawn_worker: Any,
    mongo_url: str,
) -> None:
    if not mongo_server.managed:
        pytest.skip("QWORKER_TEST_MONGO_URL names an outside server: this test cannot restart it")
    # A 30 s poll: only a job:queued wake-up on the channel can start a job sooner.
    worker = spawn_worker(
        "record", worker_id="s1", env=effects_env(mongo_url), extra=["--poll-interval", "30"]
    )
    manager = spawn_manager("m1")
    wait_leading(manager)
    # A managed worker with a job running through the outage (its job lease outlasts it).
    member = managed(spawn_worker, mongo_url, "tracked", worker_id="w1", extra=["--lease", "60"])
    wait_accepted(member)
    ready(worker)
    warm = client.now("record", {"n": 0})
    assert wait_finished(db, warm, 20)["state"] == "succeeded"
    long_job = client.now("tracked", {"sleeps": [8]})
    wait_for(lambda: db.effects.find_one({"job": long_job}), 20, "the long job to start")

    try:
        mongo_server.stop()
        time.sleep(2)  # the outage
    finally:
        mongo_server.start()
    restored = time.monotonic()

    job_id = client.now("record", {"n": 1})
    done = wait_finished(db, job_id, 25)
    took = time.monotonic() - restored
    assert done["state"] == "succeeded"
    assert took < 12, took  # the wake-up, not the next 30 s poll:
    [started] = [e for e in log_events(worker.output()) if e["event"] == "worker started"]
    first_poll = datetime.fromisoformat(started["timestamp"]) + timedelta(seconds=30)
    assert done["lastRunAt"] < first_poll, (done["lastRunAt"], first_poll)
    assert db.effects.count_documents({"job": job_id}) == 1
    alive(worker)

    # The manager's subscription came back too: it answers a new worker, and it
    # did not take the managed worker, silent only while the server was down, for dead.
    newcomer = managed(spawn_worker, mongo_url, "record", worker_id="w2")
    wait_accepted(newcomer)
    assert wait_finished(db, long_job, 30)["state"] == "succeeded"
    [run] = db.effects.find({"job": long_job})
    assert "end" in run and job(db, long_job)["attempts"] == 1
    assert messages(db, "worker:dead") == []
    assert db.workers.find_one({"_id": "w1"})["state"] == "running"
    alive(manager)
    alive(member)


def test_a_cancel_reaches_the_managed_worker_running_the_job(
    client: Client, db: Any, mongo_url: str, spawn_worker: Any, spawn_manager: Any
) -> None:
    leading(spawn_manager("m1"))
    idle = managed(spawn_worker, mongo_url, "record", worker_id="idle")
    runner = managed(spawn_worker, mongo_url, "cooperative", worker_id="runner")
    wait_accepted(idle)
    wait_accepted(runner)
    job_id = client.now("cooperative", {"limit": 40})
    wait_for(lambda: db.effects.find_one({"job": job_id, "phase": "start"}), 30, "the job to start")
    client.cancel(job_id)
    done = wait_finished(db, job_id, 20)  # far less than the job's own 40 s
    assert done["state"] == "cancelled", done
    end = db.effects.find_one({"job": job_id, "phase": "end"})
    assert end is not None and end["saw_cancel"] is True

    # The worker announced it (after recording it).
    def cancels() -> list[dict[str, Any]]:
        return [
            n
            for n in messages(db, "worker:notification")
            if n["sourceId"] == job_id and n["type"] == "cancel"
        ]

    wait_for(cancels, 20, "the cancel notification")
    assert len(cancels()) == 1 and cancels()[0]["workerId"] == "runner"
    alive(idle)
    alive(runner)


def test_a_ping_sent_after_goodbye_does_not_revive_the_worker(
    db: Any, spawn_manager: Any, spawn_worker: Any, mongo_url: str
) -> None:
    """Pings and the goodbye race at a worker's stop; its id must be free at once after."""
    wait_leading(spawn_manager("m1"))
    worker = managed(spawn_worker, mongo_url, "noop", worker_id="w1")
    wait_accepted(worker)
    nonce = nonce_of(db, worker, "w1")
    worker.stop()
    wait_for(lambda: db.workers.find_one({"_id": "w1"})["state"] == "stopped", 10, "stopped")
    publish_sync(db.channel, "worker:ping", {"workerId": "w1", "nonce": nonce, "running": 0})
    again = managed(spawn_worker, mongo_url, "noop", worker_id="w1")
    wait_accepted(again)
    assert db.workers.find_one({"_id": "w1"})["nonce"] != nonce


def test_a_job_that_kills_its_worker_is_failed_after_five_losses_and_spares_its_batch(
    client: Client, db: Any, mongo_url: str, spawn_worker: Any, spawn_manager: Any
) -> None:
    """Under a supervisor that restarts the worker, as systemd does. Once lost, a job is
    claimed alone: the job claimed in the same batch the first time is lost only once."""
    leading(spawn_manager())
    poison, innocent = client.enqueue_many("poison", [{"kill": True}, {"sleep": 1}])
    for n in range(MAX_LOST + 3):  # the supervisor
        if client.get(poison)["state"] == "failed":
            break
        worker = managed(spawn_worker, mongo_url, "poison", worker_id=f"restarted-{n}")
        struck = lambda w=worker: (  # noqa: E731
            w.process.poll() is not None or client.get(poison)["state"] == "failed"
        )
        wait_for(struck, 60, "the poison job to strike")
        worker.stop()
    failed = client.wait(poison, timeout=60)
    assert failed["state"] == "failed", failed
    assert failed["failReason"] == f"lost with its worker {MAX_LOST} times"
    done = client.wait(innocent, timeout=60)
    assert done["state"] == "succeeded" and done["lostCount"] <= 1, done


def test_a_forged_lease_far_ahead_does_not_stop_leadership(
    db: Any, mongo_url: str, spawn_manager: Any, spawn_worker: Any
) -> None:
    """One document in leases, written by anyone, held every manager back for good."""
    far = datetime(2099, 1, 1, tzinfo=UTC)
    db.leases.insert_one({"_id": "manager", "owner": "evil", "expiresAt": far})
    manager = spawn_manager("m1")
    wait_leading(manager, 30)
    said = [e for e in log_events(manager.output()) if e["event"].startswith("took over a lease")]
    assert said and said[0]["held_by"] == "evil" and said[0]["level"] == "error"
    worker = managed(spawn_worker, mongo_url, "noop", worker_id="w1")
    wait_accepted(worker)  # handshakes are answered


def test_a_standby_says_so_when_the_lease_holder_is_no_running_manager(
    db: Any, spawn_manager: Any
) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=2 * LEASE)  # plausible, but nobody's
    db.leases.insert_one({"_id": "manager", "owner": "ghost", "expiresAt": soon})
    manager = spawn_manager("m1")
    wait_logged(manager, "the lease is held by no manager that runs", 30)
    wait_leading(manager, 30)  # and it leads once that lease has run out
