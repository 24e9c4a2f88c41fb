"""A worker that stalls past its lease and claims the same job again keeps both claims apart."""

from __future__ import annotations

import signal
from typing import Any

from support.effects import effects_env
from support.jobs import wait_finished
from support.logs import ready
from support.waits import wait_for

from qworker import Client


def test_a_stalled_worker_reclaiming_its_own_job_renews_the_new_claim(
    client: Client, db: Any, mongo_url: str, spawn_worker: Any
) -> None:
    env = effects_env(mongo_url)
    # Only "a" serves the task; "b" serves another but, like every worker, returns
    # jobs whose lease ran out to the queue.
    a = spawn_worker("tracked", worker_id="a", extra=["--lease", "2"], env=env)
    b = spawn_worker("noop", worker_id="b", extra=["--lease", "2"], env=env)
    ready(a, b)
    # Run 1 sleeps 6 s; every later run sleeps 8 s, longer than the lease, so it
    # succeeds only if its own claim is renewed while it runs.
    job_id = client.now("tracked", {"sleeps": [6, 8]})
    wait_for(lambda: db.effects.find_one({"job": job_id}), 30, "the first run to start")
    a.signal(signal.SIGSTOP)
    try:
        wait_for(lambda: client.get(job_id)["state"] == "queued", 30, "b to recover the job")
    finally:
        a.signal(signal.SIGCONT)
    # "a" wakes with run 1 still sleeping, claims the job again (run 2), and run 1
    # ends first: that must not end run 2's claim.
    done = wait_finished(db, job_id, 90)
    assert done["state"] == "succeeded", done
    assert done["attempts"] == 2
    runs = list(db.effects.find({"job": job_id}).sort("attempt", 1))
    assert [r["attempt"] for r in runs] == [1, 2]
    assert all(r["worker"] == "a" for r in runs)
