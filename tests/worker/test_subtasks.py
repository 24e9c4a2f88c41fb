"""worker.schedule_task: a job queues a sub-task, through the manager or directly."""

from __future__ import annotations

from typing import Any

import pytest
from support.effects import effects_env
from support.processes import leading

from qworker import Client


@pytest.mark.parametrize("managed", [False, True], ids=["standalone", "through the manager"])
def test_a_job_schedules_a_sub_task_that_runs(
    client: Client, db: Any, mongo_url: str, spawn_worker: Any, spawn_manager: Any, managed: bool
) -> None:
    if managed:
        leading(spawn_manager())
    spawn_worker("parent", "record", standalone=not managed, env=effects_env(mongo_url))
    parent = client.now("parent", {"when": "now"})
    done = client.wait(parent, timeout=60)
    assert done["state"] == "succeeded"
    child = done["result"]["child"]
    finished = client.wait(child, timeout=60)
    assert finished["state"] == "succeeded" and finished["name"] == "record"
    assert finished["data"] == {"from": parent}
    assert db.effects.count_documents({"job": child}) == 1


def test_a_bad_sub_task_fails_the_parent_and_stores_nothing(
    client: Client, db: Any, spawn_worker: Any
) -> None:
    spawn_worker("parent", "record")
    parent = client.now("parent", {"when": "whenever you like"})
    done = client.wait(parent, timeout=60)
    assert done["state"] == "failed"
    assert "cannot understand when='whenever you like'" in done["failReason"]
    assert db.jobs.count_documents({"name": "record"}) == 0
