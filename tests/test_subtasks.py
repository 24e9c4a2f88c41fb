"""worker.schedule_task: a job queues a sub-task, through the manager or directly."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for

from qworker import Client


@pytest.mark.parametrize("managed", [False, True], ids=["standalone", "through the manager"])
def test_a_job_schedules_a_sub_task_that_runs(
    client: Client, db: Any, mongo_url: str, spawn_worker: Any, tmp_path: Path, managed: bool
) -> None:
    manager = None
    if managed:
        log = tmp_path / "manager.log"
        with open(log, "wb") as out:
            manager = subprocess.Popen(
                [sys.executable, "-m", "qworker.cli.manager", "--mongo", mongo_url, "serve",
                 "--ping-interval", "0.5", "--lease", "2", "--log-format", "json"],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_for(lambda: "leading the fleet" in log.read_text(), 60, "the manager to lead")
    try:
        spawn_worker("parent", "record", standalone=not managed,
                     env={"QWORKER_TEST_EFFECTS_URL": mongo_url})  # fmt: skip
        parent = client.now("parent", {"when": "now"})
        done = client.wait(parent, timeout=60)
        assert done["state"] == "succeeded"
        child = done["result"]["child"]
        finished = client.wait(child, timeout=60)
        assert finished["state"] == "succeeded" and finished["name"] == "record"
        assert finished["data"] == {"from": parent}
        assert db.effects.count_documents({"job": child}) == 1
    finally:
        if manager is not None:
            manager.send_signal(signal.SIGTERM)
            manager.wait(30)


def test_a_bad_sub_task_fails_the_parent_and_stores_nothing(
    client: Client, db: Any, spawn_worker: Any
) -> None:
    spawn_worker("parent", "record")
    parent = client.now("parent", {"when": "whenever you like"})
    done = client.wait(parent, timeout=60)
    assert done["state"] == "failed"
    assert "cannot understand when='whenever you like'" in done["failReason"]
    assert db.jobs.count_documents({"name": "record"}) == 0
