"""End-to-end: real ``qworker`` processes against the real test server.

Side effects are recorded by the tasks in tests/support/tasks (the ``effects``
collection, marker files), and every assertion is on what the worker did:
job documents, effects, files, exit codes, CLI output. The engine's own decisions
(retries, priorities, due times, caps) are proved in process by test_engine.py.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from bson import ObjectId
from support.effects import effects_env
from support.jobs import max_overlap, wait_finished
from support.logs import ready
from support.processes import pid_alive
from support.waits import wait_for

from qworker import Client
from qworker.model import MAX_LOG_LINES

# -- throughput and exactly-once ------------------------------------------


def test_300_jobs_over_3_workers_each_run_exactly_once(
    client: Client, db: Any, spawn_worker: Any, mongo_url: str
) -> None:
    workers = [
        spawn_worker(
            "record", worker_id=f"w{n}", env=effects_env(mongo_url), extra=["--grace", "5"]
        )
        for n in range(3)
    ]
    ready(*workers)
    ids = client.enqueue_many("record", [{"n": n, "sleep": 0.01} for n in range(300)])
    assert len(set(ids)) == 300

    wait_for(
        lambda: (
            db.jobs.count_documents({"state": {"$in": ["succeeded", "failed", "cancelled"]}}) == 300
        ),
        120,
        "300 jobs to finish",
        every=0.5,
    )
    # Stop the workers so no run can still be in flight when effects are counted.
    for worker in workers:
        worker.stop()
        assert worker.process.returncode == 0, worker.output()

    jobs = {str(doc["_id"]): doc for doc in db.jobs.find()}
    assert set(jobs) == set(ids)
    assert Counter(doc["state"] for doc in jobs.values()) == {"succeeded": 300}
    assert all(doc["attempts"] == 1 and doc["failCount"] == 0 for doc in jobs.values())
    assert not any("lockedBy" in doc or "lockToken" in doc for doc in jobs.values())

    effects = list(db.effects.find())
    assert len(effects) == 300
    assert {e["job"] for e in effects} == set(ids)
    # Each job's single run is the one whose outcome was recorded.
    for effect in effects:
        assert jobs[effect["job"]]["result"] == {"worker": effect["worker"]}
    per_worker = Counter(e["worker"] for e in effects)
    assert set(per_worker) == {"w0", "w1", "w2"}, per_worker
    # The task's own cap (concurrency 4 in record.json) held in every worker.
    for worker_id in per_worker:
        runs = [(e["start"], e["end"]) for e in effects if e["worker"] == worker_id]
        assert max_overlap(runs) <= 4


# -- timeouts --------------------------------------------------------------


def test_thread_handler_past_its_timeout_fails_and_the_worker_goes_on(
    client: Client, db: Any, spawn_worker: Any, mongo_url: str
) -> None:
    worker = spawn_worker(
        "slow_thread", "record", env=effects_env(mongo_url), extra=["--grace", "1"]
    )
    ready(worker)
    started = time.monotonic()
    slow = client.now("slow_thread", {"sleep": 30})  # timeout 1 s in slow_thread.json
    per_job = client.now("record", {"sleep": 30}, timeout=1.5)  # record has no timeout
    slow_done = wait_finished(db, slow, 30)
    per_job_done = wait_finished(db, per_job, 30)
    assert time.monotonic() - started < 25

    for done, limit in ((slow_done, 1.0), (per_job_done, 1.5)):
        assert done["state"] == "failed", done
        assert done["failReason"] == "timeout"
        assert done["error"]["type"] == "JobTimeout"
        ran = (done["lastFinishedAt"] - done["lastRunAt"]).total_seconds()
        assert limit - 0.05 <= ran < limit + 10, ran
    assert per_job_done["timeout"] == 1.5

    # The worker is still alive and still runs jobs, though the slept-on threads linger.
    after = client.now("record", {"sleep": 0})
    assert wait_finished(db, after, 30)["state"] == "succeeded"
    assert worker.process.poll() is None


def test_process_isolated_job_past_its_timeout_is_killed(
    client: Client, db: Any, spawn_worker: Any, tmp_path: Path
) -> None:
    worker = spawn_worker("isolated", extra=["--grace", "1"])
    ready(worker)
    pidfile = tmp_path / "child.pid"
    job_id = client.now("isolated", {"pidfile": str(pidfile), "sleep": 60})  # timeout 2 s
    done = wait_finished(db, job_id, 60)

    assert done["state"] == "failed", done
    assert done["failReason"] == "timeout"
    child = int(pidfile.read_text())
    assert child != worker.pid
    # The child is killed (and reaped) before the outcome is recorded.
    assert not pid_alive(child), f"the job's process {child} is still alive"
    assert worker.process.poll() is None


def test_process_isolated_job_reports_from_its_child(
    client: Client, db: Any, spawn_worker: Any, tmp_path: Path
) -> None:
    worker = spawn_worker("isolated", extra=["--grace", "1"])
    ready(worker)
    pidfile = tmp_path / "child.pid"
    job_id = client.now("isolated", {"pidfile": str(pidfile), "sleep": 0})
    done = wait_finished(db, job_id, 60)

    assert done["state"] == "succeeded", done
    child = int(pidfile.read_text())
    assert done["result"] == {"pid": child, "previous": None, "previous_alive": False}
    assert child != worker.pid
    assert done["progress"]["step"] == "in the child"
    assert [(e["level"], e["msg"]) for e in done["logs"]] == [("info", f"hello from pid {child}")]


# -- progress, logs and the CLI --------------------------------------------


def _manager(mongo_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qworker.cli.manager", "--mongo", mongo_url, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_progress_and_log_lines_reach_the_job_and_the_cli(
    client: Client, db: Any, spawn_worker: Any, mongo_url: str, tmp_path: Path
) -> None:
    worker = spawn_worker("reporter", extra=["--grace", "1"])
    ready(worker)
    go = tmp_path / "go"
    job_id = client.now("reporter", {"go": str(go)})
    oid = ObjectId(job_id)

    running = wait_for(
        lambda: (
            (d := db.jobs.find_one({"_id": oid}))
            and d.get("progress", {}).get("step") == "waiting for go"
            and len(d.get("logs", [])) == 4
            and d
        ),
        30,
        "progress and logs of the running job",
    )
    assert running["state"] == "running"
    assert running["progress"] == {"percent": 75.0, "step": "waiting for go"}
    assert [(e["level"], e["msg"]) for e in running["logs"]] == [
        ("log", "plain line"),
        ("info", "info line formatted"),
        ("warn", "warn line"),
        ("error", "error line"),
    ]
    assert all(isinstance(e["ts"], datetime) for e in running["logs"])

    shown = _manager(mongo_url, "jobs", "show", job_id)
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert f"id:           {job_id}" in out
    assert "state:        running" in out
    assert "progress:     75% waiting for go" in out
    assert "locked by:    w0" in out
    for level, text in (
        ("log", "plain line"),
        ("info", "info line formatted"),
        ("warn", "warn line"),
        ("error", "error line"),
    ):
        assert any(level in line and line.endswith(text) for line in out.splitlines()), out

    go.touch()
    done = wait_finished(db, job_id, 30)
    assert done["state"] == "succeeded"
    assert done["result"] == "done"
    assert done["progress"] == {"percent": 100.0, "step": "waiting for go"}
    assert len(done["logs"]) == 4

    as_json = _manager(mongo_url, "jobs", "show", job_id, "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert '"state": "succeeded"' in as_json.stdout


def test_job_logs_are_bounded_to_the_latest_lines(
    client: Client, db: Any, spawn_worker: Any, tmp_path: Path
) -> None:
    worker = spawn_worker("reporter", extra=["--grace", "1"])
    ready(worker)
    go = tmp_path / "go"
    go.touch()
    extra = MAX_LOG_LINES + 50
    job_id = client.now("reporter", {"go": str(go), "lines": extra})
    done = wait_finished(db, job_id, 30)
    assert done["state"] == "succeeded"
    logs = [e["msg"] for e in done["logs"]]
    assert len(logs) == MAX_LOG_LINES
    # 4 fixed lines then `extra` numbered ones were written; the newest are kept.
    assert logs[-1] == f"line {extra - 1}"
    assert logs[0] == f"line {extra - MAX_LOG_LINES}"


# -- cancellation ------------------------------------------------------------


def test_cancelling_a_queued_job_means_it_never_runs(
    client: Client, db: Any, spawn_worker: Any, mongo_url: str
) -> None:
    doomed = client.now("record", {"sleep": 0})
    cancelled = client.cancel(doomed)
    assert cancelled["state"] == "cancelled"

    worker = spawn_worker("record", env=effects_env(mongo_url), extra=["--grace", "1"])
    ready(worker)
    later = client.now("record", {"sleep": 0})
    assert wait_finished(db, later, 30)["state"] == "succeeded"

    doc = db.jobs.find_one({"_id": ObjectId(doomed)})
    assert doc["state"] == "cancelled"
    assert doc["attempts"] == 0 and "lastRunAt" not in doc
    assert db.effects.count_documents({"job": doomed}) == 0
    assert db.effects.count_documents({"job": later}) == 1


def test_cancelling_a_running_cooperative_job(
    client: Client, db: Any, spawn_worker: Any, mongo_url: str
) -> None:
    worker = spawn_worker("cooperative", env=effects_env(mongo_url), extra=["--grace", "1"])
    ready(worker)
    job_id = client.now("cooperative", {"limit": 40})
    wait_for(lambda: db.effects.find_one({"job": job_id, "phase": "start"}), 30, "the job to start")
    asked = time.time()
    requested = client.cancel(job_id)
    assert requested["state"] == "running" and requested.get("cancelRequested") is True

    done = wait_finished(db, job_id, 20)  # far less than the job's own 40 s limit
    assert done["state"] == "cancelled", done
    assert done["failReason"] == "cancelled"
    assert "lockedBy" not in done
    end = db.effects.find_one({"job": job_id, "phase": "end"})
    assert end is not None and end["saw_cancel"] is True
    assert end["t"] >= asked
    assert worker.process.poll() is None


def test_cancelling_a_running_async_job(
    client: Client, db: Any, spawn_worker: Any, mongo_url: str
) -> None:
    worker = spawn_worker("async_capped", env=effects_env(mongo_url), extra=["--grace", "1"])
    ready(worker)
    job_id = client.now("async_capped", {"sleep": 40})
    wait_for(
        lambda: db.jobs.find_one({"_id": ObjectId(job_id), "state": "running"}),
        30,
        "the job to start",
    )
    client.cancel(job_id)
    done = wait_finished(db, job_id, 20)
    assert done["state"] == "cancelled", done
    assert db.effects.count_documents({"job": job_id}) == 0  # cut short, never finished
    assert worker.process.poll() is None


def test_cancelling_a_running_process_isolated_job_kills_its_process(
    client: Client, db: Any, spawn_worker: Any, tmp_path: Path
) -> None:
    worker = spawn_worker("isolated", extra=["--grace", "1"])
    ready(worker)
    pidfile = tmp_path / "child.pid"
    job_id = client.now("isolated", {"pidfile": str(pidfile), "sleep": 60}, timeout=60)
    child = int(wait_for(lambda: pidfile.exists() and pidfile.read_text(), 30, "the child's pid"))
    client.cancel(job_id)
    done = wait_finished(db, job_id, 20)
    assert done["state"] == "cancelled", done
    assert not pid_alive(child), f"the job's process {child} is still alive"
    assert worker.process.poll() is None


# -- lifecycle hooks -----------------------------------------------------------


def test_lifecycle_hooks_run_and_a_raising_before_job_fails_the_job(
    client: Client, db: Any, spawn_worker: Any, tmp_path: Path
) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    worker = spawn_worker(
        "hooks", env={"QWORKER_TEST_MARKERS": str(markers)}, extra=["--grace", "1"]
    )
    ready(worker)
    # Initializers ran before the worker announced it started.
    assert (markers / "worker-init").read_text() == str(worker.pid)
    assert (markers / "task-init").read_text() == "hooks"
    assert not (markers / "worker-final").exists()

    ok = client.now("hooks", {})
    rejected = client.now("hooks", {"reject": True})
    ok_done = wait_finished(db, ok, 30)
    rejected_done = wait_finished(db, rejected, 30)

    assert ok_done["state"] == "succeeded" and ok_done["result"] == "ran"
    assert (markers / f"before-{ok}").exists() and (markers / f"ran-{ok}").exists()
    assert (markers / f"after-{ok}").read_text() == "'ran'"

    assert rejected_done["state"] == "failed", rejected_done
    assert rejected_done["failReason"] == "PermissionError: rejected by the before_job observer"
    assert rejected_done["error"]["type"] == "PermissionError"
    assert (markers / f"before-{rejected}").exists()
    assert not (markers / f"ran-{rejected}").exists()  # the handler never ran
    assert (markers / f"after-{rejected}").read_text() == "PermissionError"

    worker.signal(__import__("signal").SIGTERM)
    assert worker.wait(30) == 0, worker.output()
    assert (markers / "worker-final").read_text() == str(worker.pid)
    assert (markers / "task-final").read_text() == "hooks"
