"""Fault injection: the MongoDB server stops for 10 s in the middle of a run.

A manager, a managed worker and a standalone worker are busy with jobs when the
server stops; it starts again 10 s later on the same data. Nobody is restarted:
every process must come back by itself, every job enqueued before the outage
(and one enqueued during it, by a client that waits for the server) must end
``succeeded`` by exactly one completed run, no two runs of a job may overlap,
and new jobs must run afterwards on both workers.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import pytest
from bson import ObjectId
from support.chaos import audit
from support.effects import effects_env
from support.jobs import FINISHED, messages
from support.logs import alive, log_events, ready, wait_accepted, wait_leading, wait_logged
from support.processes import managed
from support.server import Server
from support.waits import wait_for

from qworker import Client

pytestmark = pytest.mark.timeout(240)

OUTAGE = 10.0
# Half the outage: every lease runs out while the server is down, so the workers
# must renew theirs (running and finished-but-unwritten runs alike) before anyone
# takes them back once it answers again.
LEASE = 5


def test_a_10s_mongodb_outage_mid_run_loses_nothing_and_everyone_recovers(
    client: Client,
    db: Any,
    mongo_server: Server,
    spawn_manager: Any,
    spawn_worker: Any,
    mongo_url: str,
) -> None:
    if not mongo_server.managed:
        pytest.skip("QWORKER_TEST_MONGO_URL names an outside server: this test cannot restart it")
    manager = spawn_manager("m1")
    wait_leading(manager)
    # Leases shorter than the outage (see LEASE).
    lease = ["--lease", str(LEASE)]
    member = managed(spawn_worker, mongo_url, "chaos_record", worker_id="w1", extra=lease)
    solo = spawn_worker("chaos_record", worker_id="s1", env=effects_env(mongo_url), extra=lease)
    wait_accepted(member)
    ready(solo)

    # Long jobs, which both workers are running when the server stops, and short ones.
    # Long enough to be still running once 20 short ones have ended, on a slow machine too.
    before = client.enqueue_many("chaos_record", [{"sleeps": [15]} for _ in range(6)])
    before += client.enqueue_many("chaos_record", [{"sleeps": [0.05]} for _ in range(300)])
    long_runs = {"job": {"$in": before[:6]}, "end": {"$exists": False}}
    wait_for(
        lambda: (
            {r["worker"] for r in db.effects.find(long_runs)} == {"w1", "s1"}
            and db.effects.count_documents({"end": {"$exists": True}}) >= 20
        ),
        60,
        "both workers to be in the middle of long runs",
    )

    # A client that waits for the server (longer than the outage) enqueues during it.
    waiting = Client(f"{mongo_url}?serverSelectionTimeoutMS=90000")
    during: list[str] = []
    enqueuer = threading.Thread(
        target=lambda: during.extend(
            waiting.enqueue_many("chaos_record", [{"sleeps": [0.05]} for _ in range(50)])
        )
    )
    try:
        mongo_server.stop()
        stopped = time.time()
        enqueuer.start()
        time.sleep(OUTAGE)  # the outage itself: nothing to wait for
    finally:
        mongo_server.start()
    restarted = time.time()
    enqueuer.join(90)
    waiting.close()
    assert len(during) == 50, "the enqueue made during the outage did not complete"

    everything = before + during
    wait_for(
        lambda: db.jobs.count_documents({"state": {"$in": FINISHED}}) == len(everything),
        120,
        "every job enqueued before and during the outage to finish",
    )
    report = audit(db, everything, {}, [member, solo])  # no process was killed
    assert report.interrupted == 0 and report.completed_twice == []
    assert db.jobs.count_documents({"state": "succeeded"}) == len(everything)
    # The premise: both workers were in the middle of runs when the server went away.
    cut = [r for r in db.effects.find() if r["start"] < stopped < r["end"]]
    print(
        f"\nserver down for {restarted - stopped:.1f}s; {len(everything)} jobs, "
        f"{report.runs} runs, {len(cut)} of them in progress as it stopped"
    )
    assert {r["worker"] for r in cut} == {"w1", "s1"}, cut

    # Everyone is still up and working: new jobs run, on both workers.
    for process in (manager, member, solo):
        alive(process)
    after = client.enqueue_many("chaos_record", [{"sleeps": [0.2]} for _ in range(40)])
    wait_for(
        lambda: db.jobs.count_documents({"state": {"$in": FINISHED}}) == len(everything) + 40,
        60,
        "the jobs enqueued after the outage to finish",
    )
    audit(db, after, {}, [member, solo])
    ran_on = {doc["result"]["worker"] for doc in db.jobs.find({"_id": {"$in": _oids(after)}})}
    assert ran_on == {"w1", "s1"}, ran_on
    assert db.workers.find_one({"_id": "w1"})["state"] == "running"
    assert messages(db, "worker:dead") == []  # the manager took no one for dead
    lease = db.leases.find_one({"_id": "manager"})
    assert lease["owner"] == "m1" and lease["renewedAt"].timestamp() > restarted


def _oids(ids: list[str]) -> list[ObjectId]:
    return [ObjectId(i) for i in ids]


def test_an_outcome_waiting_out_an_outage_is_not_taken_for_a_lost_run(
    client: Client, db: Any, mongo_server: Server, spawn_worker: Any, mongo_url: str
) -> None:
    """One worker, a 2 s lease, and a run that ends while the server does not answer.

    The server is frozen (SIGSTOP) rather than stopped so that it answers again the
    moment it is resumed. The run's success cannot be written meanwhile; the worker
    retries the write, backing off up to 5 s, and the server is resumed as that
    back-off reaches 5 s (the 7th failed try), long after the 2 s lease ran out.
    The worker must keep renewing the lease of the finished run whose outcome it
    holds, and must not take back expired leases until the server has answered for
    a whole lease: the success is written, and the job runs once.
    """
    if not mongo_server.managed or mongo_server.process is None:
        pytest.skip("QWORKER_TEST_MONGO_URL names an outside server: this test cannot freeze it")
    # Short timeouts, so that writes to the frozen server fail (and are retried) quickly.
    url = f"{mongo_url}?serverSelectionTimeoutMS=1000&connectTimeoutMS=1000&socketTimeoutMS=2000"
    worker = spawn_worker("chaos_sleep", worker_id="s1", extra=["--lease", "2", "--mongo", url])
    ready(worker)
    job_id = client.now("chaos_sleep", {"sleep": 1})
    oid = _oids([job_id])[0]
    # The handler's own start, not the job's state: a claim is an update and then a read of
    # what it took, and a server frozen between the two leaves the job running in MongoDB
    # but unknown to the worker (taken back after its lease), with no outcome to retry.
    wait_logged(worker, "job started", 30)
    server = mongo_server.process
    server.send_signal(signal.SIGSTOP)
    try:
        wait_logged(worker, "cannot record job updates; retrying", 60, times=7)
    finally:
        server.send_signal(signal.SIGCONT)
    done = wait_for(
        lambda: db.jobs.find_one({"_id": oid, "state": {"$in": FINISHED}}), 60, "the job to finish"
    )
    alive(worker)
    assert done["state"] == "succeeded"
    ran = [e for e in log_events(worker.output()) if e["event"] == "job succeeded"]
    assert len(ran) == 1, f"the job ran {len(ran)} times: {done}"
    assert done["attempts"] == 1 and "lostCount" not in done, done
