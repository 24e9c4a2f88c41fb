"""End-to-end: workers that die or are stopped lose no job and never run one twice at once.

Uses the ``tracked`` task, which records a run's start as it begins and its
end when it finishes, so a run cut short shows as a start without an end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any

from bson import ObjectId
from support.effects import effects_env
from support.jobs import wait_finished
from support.logs import log_events, ready
from support.processes import TASKS, WorkerProcess, pid_alive, process_env, qworker_command
from support.server import Server
from support.waits import wait_for

from qworker import Client
from qworker.mongo import CLOSE_WAIT
from qworker.worker.stopping import CLAIM_WAIT, STOP_WAIT

LOCK_FIELDS = ("lockedBy", "lockToken", "lockedAt", "lockExpiresAt")


def _first_run_started(db: Any, job_id: str, worker_id: str) -> Any:
    return wait_for(
        lambda: db.effects.find_one({"job": job_id, "attempt": 1, "worker": worker_id}),
        30,
        f"job {job_id} to start in {worker_id}",
    )


def test_a_job_of_a_killed_worker_runs_again_elsewhere_after_its_lease(
    client: Client, db: Any, spawn_worker: Any, mongo_url: str
) -> None:
    env = effects_env(mongo_url)
    a = spawn_worker("tracked", worker_id="a", env=env, extra=["--lease", "2", "--grace", "1"])
    ready(a)
    job_id = client.now("tracked", {"sleeps": [60, 0.3]})
    _first_run_started(db, job_id, "a")
    b = spawn_worker("tracked", worker_id="b", env=env, extra=["--lease", "2", "--grace", "1"])
    ready(b)
    running = db.jobs.find_one({"_id": ObjectId(job_id)})
    assert running["state"] == "running" and running["lockedBy"] == "a"

    a.signal(signal.SIGKILL)
    assert a.wait(30) == -signal.SIGKILL
    dead_at = time.time()

    done = wait_finished(db, job_id, 30)
    assert done["state"] == "succeeded", done
    assert done["result"] == {"worker": "b"}
    assert done["attempts"] == 2
    assert done["failCount"] == 0  # a lost worker is not a failed attempt
    assert done["lostCount"] == 1

    first, second = sorted(db.effects.find({"job": job_id}), key=lambda e: e["attempt"])
    assert (first["worker"], second["worker"]) == ("a", "b")
    assert "end" not in first  # killed mid-run
    # The second run began only after the first worker was dead: no overlap.
    assert second["start"] > dead_at
    assert second["end"] > second["start"]
    assert db.effects.count_documents({"job": job_id}) == 2


def test_a_job_longer_than_its_lease_keeps_it_by_renewal(
    client: Client, db: Any, spawn_worker: Any, mongo_url: str
) -> None:
    env = effects_env(mongo_url)
    a = spawn_worker("tracked", worker_id="a", env=env, extra=["--lease", "2", "--grace", "1"])
    ready(a)
    job_id = client.now("tracked", {"sleeps": [5]})  # 2.5 leases
    _first_run_started(db, job_id, "a")
    # Another worker that would recover an expired lease is watching all along.
    b = spawn_worker("tracked", worker_id="b", env=env, extra=["--lease", "2", "--grace", "1"])
    ready(b)

    done = wait_finished(db, job_id, 30)
    assert done["state"] == "succeeded", done
    assert done["result"] == {"worker": "a"}
    assert done["attempts"] == 1 and "lostCount" not in done
    (run,) = db.effects.find({"job": job_id})
    assert run["end"] - run["start"] >= 5


def test_a_worker_that_lost_its_lease_cannot_overwrite_the_new_run(
    client: Client, db: Any, spawn_worker: Any, mongo_url: str
) -> None:
    env = effects_env(mongo_url)
    a = spawn_worker("tracked", worker_id="a", env=env, extra=["--lease", "2", "--grace", "1"])
    ready(a)
    job_id = client.now("tracked", {"sleeps": [3, 6]})
    _first_run_started(db, job_id, "a")
    a.signal(signal.SIGSTOP)  # frozen: its lease runs out, but it is not dead
    try:
        b = spawn_worker("tracked", worker_id="b", env=env, extra=["--lease", "2", "--grace", "1"])
        ready(b)
        wait_for(
            lambda: db.effects.find_one({"job": job_id, "attempt": 2, "worker": "b"}),
            30,
            "the job to be recovered and started again in b",
        )
    finally:
        a.signal(signal.SIGCONT)
    # a wakes up and finishes its stale run while b's run is still going on.
    wait_for(
        lambda: db.effects.find_one({"job": job_id, "worker": "a", "end": {"$exists": True}}),
        30,
        "the stale run in a to finish",
    )
    done = wait_finished(db, job_id, 30)
    assert done["state"] == "succeeded", done
    assert done["result"] == {"worker": "b"}  # not a's late result
    assert done["attempts"] == 2 and done["lostCount"] == 1
    stale, fresh = sorted(db.effects.find({"job": job_id}), key=lambda e: e["attempt"])
    assert stale["end"] < fresh["end"]
    assert done["lastFinishedAt"].timestamp() >= fresh["end"] - 0.01
    assert a.process.poll() is None and b.process.poll() is None


def test_a_killed_worker_takes_its_process_isolated_job_down_with_it(
    client: Client, db: Any, spawn_worker: Any, tmp_path: Any
) -> None:
    a = spawn_worker("isolated", worker_id="a", extra=["--lease", "2", "--grace", "1"])
    ready(a)
    pidfile = tmp_path / "child.pid"
    job_id = client.now("isolated", {"pidfile": str(pidfile), "sleeps": [60, 0]}, timeout=90)
    child = int(wait_for(lambda: pidfile.exists() and pidfile.read_text(), 30, "the child's pid"))
    b = spawn_worker("isolated", worker_id="b", extra=["--lease", "2", "--grace", "1"])
    ready(b)

    a.signal(signal.SIGKILL)
    assert a.wait(30) == -signal.SIGKILL
    done = wait_finished(db, job_id, 30)
    assert done["state"] == "succeeded", done
    assert done["attempts"] == 2 and done["lostCount"] == 1
    result = done["result"]
    assert result["previous"] == child and result["pid"] != child
    # The orphaned child of the killed worker must not run on beside the new run.
    assert result["previous_alive"] is False, f"the killed worker's job process {child} lived on"
    assert not pid_alive(child)


def test_sigterm_past_the_grace_returns_the_job_to_the_queue_at_once(
    client: Client, db: Any, spawn_worker: Any, mongo_url: str
) -> None:
    env = effects_env(mongo_url)
    a = spawn_worker("tracked", worker_id="a", env=env, extra=["--grace", "0.5"])
    ready(a)
    job_id = client.now("tracked", {"sleeps": [30, 0.3]})
    _first_run_started(db, job_id, "a")

    asked = time.monotonic()
    a.signal(signal.SIGTERM)
    assert a.wait(20) == 0, a.output()
    assert time.monotonic() - asked < 10  # the grace, not the 30 s job
    exited_at = time.time()

    # Already back in the queue when the worker has exited: nothing waits for a lease.
    released = db.jobs.find_one({"_id": ObjectId(job_id)})
    assert released["state"] == "queued", released
    for name in LOCK_FIELDS:
        assert name not in released, name
    assert released["attempts"] == 1 and released["failCount"] == 0
    assert released["nextRunAt"].timestamp() <= exited_at
    assert "job returned to queue" in a.output()

    b = spawn_worker("tracked", worker_id="b", env=env, extra=["--grace", "1"])
    done = wait_finished(db, job_id, 30)
    assert done["state"] == "succeeded", done
    assert done["result"] == {"worker": "b"}
    assert done["attempts"] == 2
    first, second = sorted(db.effects.find({"job": job_id}), key=lambda e: e["attempt"])
    assert (first["worker"], second["worker"]) == ("a", "b")
    assert "end" not in first
    assert second["start"] > exited_at
    assert b.process.poll() is None


def test_sigterm_lets_a_job_that_finishes_within_the_grace_succeed(
    client: Client, db: Any, spawn_worker: Any, mongo_url: str
) -> None:
    a = spawn_worker("tracked", env=effects_env(mongo_url), extra=["--grace", "20"])
    ready(a)
    job_id = client.now("tracked", {"sleeps": [1.5]})
    _first_run_started(db, job_id, "w0")

    a.signal(signal.SIGTERM)
    assert a.wait(30) == 0, a.output()
    exited_at = time.time()

    done = db.jobs.find_one({"_id": ObjectId(job_id)})  # recorded before the exit
    assert done["state"] == "succeeded", done
    assert done["attempts"] == 1 and done["result"] == {"worker": "w0"}
    (run,) = db.effects.find({"job": job_id})
    assert run["end"] - run["start"] >= 1.5
    # The worker left once the job was done, without sitting out the 20 s grace.
    assert exited_at - run["end"] < 10


def test_a_second_sigterm_stops_at_once_and_still_returns_the_job(
    client: Client, db: Any, spawn_worker: Any, mongo_url: str
) -> None:
    a = spawn_worker("tracked", env=effects_env(mongo_url), extra=["--grace", "60"])
    ready(a)
    job_id = client.now("tracked", {"sleeps": [45]})
    _first_run_started(db, job_id, "w0")

    a.signal(signal.SIGTERM)
    wait_for(lambda: "finishing running jobs" in a.output(), 20, "the first signal to be handled")
    asked = time.monotonic()
    a.signal(signal.SIGTERM)
    assert a.wait(20) == 0, a.output()
    assert time.monotonic() - asked < 10  # neither the 60 s grace nor the 45 s job

    released = db.jobs.find_one({"_id": ObjectId(job_id)})
    assert released["state"] == "queued", released
    for name in LOCK_FIELDS:
        assert name not in released, name
    assert released["attempts"] == 1 and released["failCount"] == 0
    (run,) = db.effects.find({"job": job_id})
    assert "end" not in run


def test_sigterm_kills_a_process_isolated_job_and_returns_it(
    client: Client, db: Any, spawn_worker: Any, tmp_path: Any
) -> None:
    a = spawn_worker("isolated", extra=["--grace", "0.5"])
    ready(a)
    pidfile = tmp_path / "child.pid"
    job_id = client.now("isolated", {"pidfile": str(pidfile), "sleep": 60}, timeout=60)
    child = int(wait_for(lambda: pidfile.exists() and pidfile.read_text(), 30, "the child's pid"))

    a.signal(signal.SIGTERM)
    assert a.wait(20) == 0, a.output()
    released = db.jobs.find_one({"_id": ObjectId(job_id)})
    assert released["state"] == "queued", released
    for name in LOCK_FIELDS:
        assert name not in released, name
    wait_for(lambda: not pid_alive(child), 10, f"the job's process {child} to be gone")


def _sigint_at_default() -> None:
    """In the worker about to start: SIGINT as in a terminal (a test runner may ignore it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_is_the_workers_alone_and_a_process_isolated_job_still_finishes(
    client: Client, db: Any, mongo_url: str, tmp_path: Any
) -> None:
    """Ctrl-C in a terminal signals the whole foreground process group, the job's
    child process too; only the worker may decide: finish within the grace."""
    out, err = tmp_path / "w.out", tmp_path / "w.err"
    args = qworker_command(
        "--standalone",
        "--mongo",
        mongo_url,
        "--paths",
        str(TASKS),
        "--grace",
        "20",
        "--log-format",
        "json",
        "--id",
        "ctrl-c",
        "isolated",
    )
    with open(out, "wb") as o, open(err, "wb") as e:
        process = subprocess.Popen(
            args,
            stdout=o,
            stderr=e,
            env=process_env(),
            cwd=tmp_path,
            process_group=0,
            preexec_fn=_sigint_at_default,
        )
    worker = WorkerProcess(process, out, err, args)
    try:
        ready(worker)
        pidfile = tmp_path / "child.pid"
        job_id = client.now("isolated", {"pidfile": str(pidfile), "sleep": 4}, timeout=60)
        wait_for(lambda: pidfile.exists() and pidfile.read_text(), 30, "the child's pid")
        os.killpg(process.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        assert worker.wait(30) == 0, worker.output()
    finally:
        worker.stop()
    done = db.jobs.find_one({"_id": ObjectId(job_id)})
    assert done["state"] == "succeeded", done
    assert done["attempts"] == 1 and done["failCount"] == 0
    assert "KeyboardInterrupt" not in worker.output()


def test_sigterm_stops_a_worker_whose_mongodb_is_gone_and_says_what_it_could_not_write(
    own_server: Server, tmp_path: Any
) -> None:
    """A job finishes while MongoDB is down: its outcome cannot be written. SIGTERM must
    still stop the worker, within the grace and a bounded wait for the server, and the
    job, still held by the dead worker's lease, runs again once the server is back."""
    url = f"{own_server.url}/outage"
    worker = _plain_worker(url, tmp_path, "a", "--lease", "3", "--grace", "5")
    with Client(url) as client:
        ready(worker)
        job_id = client.now("slow_thread", {"sleep": 2}, timeout=30)
        wait_for(lambda: client.get(job_id)["state"] == "running", 30, "the job to start")
    own_server.stop()
    wait_for(lambda: "job succeeded" in worker.output(), 30, "the run to end, unrecorded")
    asked = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(40) == 0, worker.output()
    # The grace was not needed (nothing ran); the wait for the server is bounded.
    assert time.monotonic() - asked < CLAIM_WAIT + STOP_WAIT + CLOSE_WAIT + 5, worker.output()
    (said,) = [e for e in log_events(worker.output()) if e["event"].startswith("stopping without")]
    assert said["level"] == "error"
    assert f"outcome of job {job_id} (success)" in said["unwritten"], said

    own_server.start()
    other = _plain_worker(url, tmp_path, "b")
    with Client(url) as client:
        done = client.wait(job_id, timeout=60)  # after the first worker's lease expired
    other.stop()
    assert done["state"] == "succeeded" and done["attempts"] == 2, done


def test_a_second_signal_ends_the_wait_for_an_unreachable_server(
    own_server: Server, tmp_path: Any
) -> None:
    url = f"{own_server.url}/outage"
    worker = _plain_worker(url, tmp_path, "a", "--grace", "30")
    with Client(url) as client:
        ready(worker)
        job_id = client.now("slow_thread", {"sleep": 60}, timeout=90)
        wait_for(lambda: client.get(job_id)["state"] == "running", 30, "the job to start")
    own_server.stop()
    worker.signal(signal.SIGTERM)
    wait_for(lambda: "finishing running jobs" in worker.output(), 20, "the first signal")
    asked = time.monotonic()
    worker.signal(signal.SIGINT)  # skip the grace: the job is handed back, unwritten
    wait_for(lambda: "stopping now" in worker.output(), 20, "the second signal")
    worker.signal(signal.SIGINT)  # and do not wait for the server either
    assert worker.wait(20) == 0, worker.output()
    assert time.monotonic() - asked < 8, worker.output()
    (said,) = [e for e in log_events(worker.output()) if e["event"].startswith("stopping without")]
    assert f"hand-back of job {job_id}" in said["unwritten"], said


def _plain_worker(url: str, folder: Any, worker_id: str, *extra: str) -> WorkerProcess:
    """A standalone worker of ``slow_thread`` on ``url``, with SIGINT at its default."""
    args = qworker_command(
        "--standalone",
        "--mongo",
        url,
        "--paths",
        str(TASKS),
        "--id",
        worker_id,
        "--log-format",
        "json",
        "--poll-interval",
        "0.2",
        *extra,
        "slow_thread",
    )
    out, err = folder / f"{worker_id}.out", folder / f"{worker_id}.err"
    with open(out, "wb") as o, open(err, "wb") as e:
        process = subprocess.Popen(
            args, stdout=o, stderr=e, env=process_env(), cwd=folder, preexec_fn=_sigint_at_default
        )
    return WorkerProcess(process, out, err, args)
