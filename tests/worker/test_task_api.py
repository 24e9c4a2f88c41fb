"""The API task code sees, the same in a thread, on the loop and in a child process.

``setup(worker, task)`` gets the worker and the task; a handler gets the job.
All three have ``log``/``info``/``warn``/``error`` and ``fail``; the worker has
``schedule_task``. The seed's example task (written as the seed's README shows
it) runs in every place a handler can run, standalone and managed.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support.effects import effects_env
from support.logs import log_events, ready, wait_accepted
from support.processes import TASKS, console_command, leading, process_env
from support.waits import wait_for

from qworker import Client

# The seed's example: setup logs through the task, the handler through the job,
# and a sub-task is queued through the worker.
SEED_EXAMPLE = """
version = "1.2"


def setup(worker, task):
    task.info("Defining task: %s (v.%s)", task.name, version)
    worker.info("worker %s loads %s", worker.id, task.id)

    @worker.task(task.id)
    def run(job):
        job.info("greeting %s", job.data["name"])
        worker.warn("job %s runs on %s", job.id, worker.id)
        task.info("task %s runs job %s", task.id, job.id)
        if job.data.get("fail"):
            job.fail("no greeting for %s", job.data["name"])
        if job.data.get("stop"):
            worker.fail("the %s is gone", "printer")
        job.progress(1, total=2, step="greeting")
        child = worker.schedule_task("now", "record", {"from": job.id})
        return {"greeting": "Hello, " + job.data["name"], "child": child}
"""

# The same handler, as ``async def``: it runs on the worker's event loop.
ASYNC_EXAMPLE = SEED_EXAMPLE.replace("    def run(job):", "    async def run(job):")

FLAVOURS = {
    "thread": (SEED_EXAMPLE, {}),
    "loop": (ASYNC_EXAMPLE, {}),
    "process": (SEED_EXAMPLE, {"isolation": "process"}),
}


def write_seed_task(folder: Path, flavour: str, **metadata: Any) -> Path:
    code, extra = FLAVOURS[flavour]
    folder.mkdir(exist_ok=True)
    (folder / "seed.py").write_text(code)
    (folder / "seed.json").write_text(
        json.dumps({"description": "the seed's example", **extra, **metadata})
    )
    return folder


@pytest.mark.parametrize("flavour", list(FLAVOURS))
@pytest.mark.parametrize("managed", [False, True], ids=["standalone", "managed"])
def test_the_seed_example_runs_and_its_sub_task_exists_at_once(
    client: Client,
    db: Any,
    mongo_url: str,
    spawn_worker: Any,
    spawn_manager: Any,
    tmp_path: Path,
    flavour: str,
    managed: bool,
) -> None:
    folder = write_seed_task(tmp_path / "tasks", flavour)
    if managed:
        leading(spawn_manager())
    worker = spawn_worker(
        "seed", "record", standalone=not managed, paths=[folder, TASKS], env=effects_env(mongo_url)
    )
    (wait_accepted if managed else ready)(worker)
    job_id = client.now("seed", {"name": "Ada"})
    done = client.wait(job_id, timeout=60)
    assert done["state"] == "succeeded", done
    assert done["result"]["greeting"] == "Hello, Ada"
    assert done["progress"] == {"percent": 100.0, "step": "greeting"}
    # The sub-task was written with the job's own outcome: it exists the moment
    # the job is seen finished, managed or not.
    child = client.get(done["result"]["child"])
    assert child["name"] == "record" and child["data"] == {"from": job_id}
    assert client.wait(child["_id"], timeout=60)["state"] == "succeeded"
    assert db.effects.count_documents({"job": str(child["_id"])}) == 1

    events = log_events(worker.output())
    said = {e["event"]: e for e in events}
    assert said["Defining task: Seed (v.1.2)"]["task"] == "seed"
    assert said["Defining task: Seed (v.1.2)"]["worker_id"] == worker.worker_id
    assert said[f"worker {worker.worker_id} loads seed"]["worker_id"] == worker.worker_id
    ran = said[f"job {job_id} runs on {worker.worker_id}"]
    assert ran["level"] == "warning" and ran["worker_id"] == worker.worker_id
    assert said[f"task seed runs job {job_id}"]["task"] == "seed"
    assert said["greeting Ada"]["job_id"] == job_id
    assert [line for line in done["logs"] if line["msg"] == "greeting Ada"]


@pytest.mark.parametrize("flavour", list(FLAVOURS))
def test_job_fail_fails_the_run_with_the_reason_and_follows_the_retry_rules(
    client: Client, db: Any, mongo_url: str, spawn_worker: Any, tmp_path: Path, flavour: str
) -> None:
    folder = write_seed_task(tmp_path / "tasks", flavour, maxAttempts=2, backoff=0.1)
    worker = spawn_worker("seed", paths=[folder], env=effects_env(mongo_url))
    ready(worker)
    done = client.wait(client.now("seed", {"name": "Bob", "fail": True}), timeout=60)
    assert done["state"] == "failed"
    assert done["failReason"] == "no greeting for Bob"
    assert done["error"] == {"type": "JobFailed", "message": "no greeting for Bob"}
    assert done["attempts"] == 2 and done["failCount"] == 2  # retried once, as maxAttempts says
    assert "Traceback" not in json.dumps(done, default=str)
    levels = [
        e["level"]
        for e in log_events(worker.output())
        if e.get("job_id") == str(done["_id"]) and e["event"] in ("job will retry", "job failed")
    ]
    assert levels == ["warning", "error"]


@pytest.mark.parametrize("flavour", list(FLAVOURS))
def test_worker_fail_stops_the_worker_and_hands_the_job_back(
    client: Client, db: Any, mongo_url: str, spawn_worker: Any, tmp_path: Path, flavour: str
) -> None:
    folder = write_seed_task(tmp_path / "tasks", flavour)
    worker = spawn_worker("seed", paths=[folder], env=effects_env(mongo_url))
    ready(worker)
    job_id = client.now("seed", {"name": "Cy", "stop": True})
    assert worker.wait(60) == 1
    assert "qworker: stopped by its task code: the printer is gone" in worker.stderr.read_text()
    job = client.get(job_id)
    assert job["state"] == "queued" and job["failCount"] == 0, job  # not the job's fault
    assert "lockedBy" not in job


def test_task_fail_in_setup_rejects_the_task_before_mongodb_is_touched(tmp_path: Path) -> None:
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "picky.json").write_text("{}")
    (folder / "picky.py").write_text(
        "def setup(worker, task):\n    task.fail('needs %s to be set', 'PICKY_HOME')\n"
    )
    # Nothing listens on port 1: touching MongoDB would be a different error.
    done = _qworker(folder, "picky")
    assert done.returncode == 2, done.stderr
    path = folder / "picky.py"
    assert done.stderr.strip() == (
        f"qworker: error: {path}:2: task 'picky' rejected: needs PICKY_HOME to be set"
    )


def test_worker_fail_in_setup_stops_the_worker_with_the_reason(tmp_path: Path) -> None:
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "needy.json").write_text("{}")
    (folder / "needy.py").write_text("def setup(worker, task):\n    worker.fail('no licence')\n")
    done = _qworker(folder, "needy")
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines()[-1] == "qworker: stopped by its task code: no licence"


def _qworker(folder: Path, task: str) -> subprocess.CompletedProcess[str]:
    """``qworker`` for ``task`` against a port where no MongoDB listens."""
    return subprocess.run(
        [
            *console_command("qworker", "qworker.cli.worker"),
            "--standalone",
            "--mongo",
            "mongodb://127.0.0.1:1/x",
            "--paths",
            str(folder),
            task,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=process_env(),
    )


def test_a_process_isolated_job_logs_json_like_its_worker(
    client: Client, mongo_url: str, spawn_worker: Any, tmp_path: Path
) -> None:
    folder = write_seed_task(tmp_path / "tasks", "process")
    worker = spawn_worker("seed", "record", paths=[folder, TASKS], env=effects_env(mongo_url))
    ready(worker)
    client.wait(client.now("seed", {"name": "Di"}), timeout=60)
    wait_for(lambda: "task seed runs job" in worker.stderr.read_text(), 30, "the child's log")
    lines = worker.stderr.read_text().splitlines()
    assert lines and all(isinstance(json.loads(line), dict) for line in lines), lines
