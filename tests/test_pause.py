"""Pausing a task fleet-wide: kept in MongoDB, honoured by managed and standalone workers
alike, surviving restarts of the manager and of the workers; other tasks run on."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from support.effects import effects_env
from support.logs import ready, wait_accepted, wait_leading
from support.processes import managed
from support.waits import wait_for

from qworker import Client, InvalidJobError
from qworker.cli.manager import main

# Longer than a worker takes to see a pause (its poll interval is 0.2 s in the tests).
SEEN = 2.0


def fleet(mongo_url: str, spawn_manager: Any, spawn_worker: Any) -> list[Any]:
    """A manager, a managed worker and a standalone one, all running double and noop."""
    manager = spawn_manager("m1")
    wait_leading(manager)
    member = managed(spawn_worker, mongo_url, "double", "noop", worker_id="wm")
    solo = spawn_worker("double", "noop", worker_id="ws")
    wait_accepted(member)
    ready(solo)
    return [manager, member, solo]


def test_a_paused_task_stays_queued_across_restarts_while_other_tasks_run(
    client: Client, mongo_url: str, spawn_manager: Any, spawn_worker: Any
) -> None:
    processes = fleet(mongo_url, spawn_manager, spawn_worker)
    assert client.pause_task("double")["paused"] is True
    time.sleep(SEEN)
    held = client.enqueue_many("double", [{"x": n} for n in range(5)])
    for _ in range(2):  # other tasks run on the same workers meanwhile
        assert client.wait(client.now("noop"), timeout=30)["state"] == "succeeded"
    assert {client.get(job_id)["state"] for job_id in held} == {"queued"}

    for process in processes:  # the pause is MongoDB's, not theirs
        process.stop()
    fleet(mongo_url, spawn_manager, spawn_worker)
    assert client.wait(client.now("noop"), timeout=30)["state"] == "succeeded"
    assert {client.get(job_id)["state"] for job_id in held} == {"queued"}
    [double] = [t for t in client.tasks() if t["_id"] == "double"]
    assert double["paused"] is True and double["jobs"]["queued"] == 5

    assert client.resume_task("double")["paused"] is False
    done = [client.wait(job_id, timeout=30) for job_id in held]
    assert [d["result"] for d in done] == [{"x": 2.0 * n} for n in range(5)]


def test_a_running_job_of_a_task_paused_meanwhile_finishes(
    client: Client, mongo_url: str, spawn_worker: Any
) -> None:
    ready(spawn_worker("record", env=effects_env(mongo_url)))
    running = client.now("record", {"sleep": 2})
    wait_for(lambda: client.get(running)["state"] == "running", 30, "the job to run")
    client.pause_task("record")
    assert client.wait(running, timeout=30)["state"] == "succeeded"


def test_pause_and_resume_from_the_cli_and_the_api(
    client: Client, mongo_url: str, spawn_manager: Any
) -> None:
    runner = CliRunner()
    paused = runner.invoke(main, ["--mongo", mongo_url, "tasks", "pause", "mailer"])
    assert paused.exit_code == 0, paused.output
    assert "mailer: paused" in paused.output
    listed = runner.invoke(main, ["--mongo", mongo_url, "tasks", "list", "--json"])
    assert '"paused": true' in listed.output
    manager = spawn_manager("m1", extra=["--http", "127.0.0.1:0"])
    wait_leading(manager)
    base = manager.api_url()
    headers = {"Content-Type": "application/json"}
    resumed = httpx.post(f"{base}/api/tasks/mailer/resume", headers=headers, timeout=30)
    assert resumed.status_code == 200 and resumed.json()["paused"] is False
    again = httpx.post(f"{base}/api/tasks/mailer/pause", headers=headers, timeout=30)
    assert again.json()["paused"] is True
    assert client.task_controls("mailer")["paused"] is True
    bad = runner.invoke(main, ["--mongo", mongo_url, "tasks", "pause", "Bad Task"])
    assert bad.exit_code != 0 and "not a valid task id" in bad.output


def test_a_bad_task_id_is_refused(client: Client) -> None:
    with pytest.raises(InvalidJobError, match="not a valid task id"):
        client.pause_task("Bad Task")
