"""Two workers that define one task differently: the first definition stands.

The manager refuses a worker whose metadata for a task differs from the one a
live worker holds, naming the fields, and accepts it once no live worker does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from support.logs import wait_accepted
from support.processes import leading, managed

from qworker import Client
from qworker.worker.daemon import REFUSED_FOR_NOW


def _task(folder: Path, **metadata: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps({"description": "a report", **metadata}))
    (folder / "report.py").write_text("def setup(worker, task):\n    worker.task(task.id, str)\n")
    return folder


def test_a_worker_defining_a_task_differently_is_refused_until_the_holder_stops(
    client: Client,
    db: Any,
    mongo_url: str,
    spawn_worker: Any,
    spawn_manager: Any,
    tmp_path: Path,
) -> None:
    leading(spawn_manager())
    three = _task(tmp_path / "a", maxAttempts=3)
    one = _task(tmp_path / "b", maxAttempts=1, timeout=60)
    w1 = managed(spawn_worker, mongo_url, "report", worker_id="w1", paths=[three])
    wait_accepted(w1)

    w2 = managed(spawn_worker, mongo_url, "report", worker_id="w2", paths=[one])
    assert w2.wait(60) == REFUSED_FOR_NOW, w2.output()
    said = w2.stderr.read_text().splitlines()[-1]
    assert said.startswith(
        "qworker: terminated by the manager: task 'report' is defined "
        "differently by live worker(s) w1: "
    ), said
    assert "maxAttempts (1 here, 3 there)" in said and "timeout (60 here, unset there)" in said
    assert db.tasks.find_one({"_id": "report"})["metadata"]["maxAttempts"] == 3

    same = managed(spawn_worker, mongo_url, "report", worker_id="w3", paths=[three])
    wait_accepted(same)  # the same definition is welcome
    same.stop()

    w1.stop()
    again = managed(spawn_worker, mongo_url, "report", worker_id="w2", paths=[one])
    wait_accepted(again)  # nobody holds the old definition now: the new one stands
    assert db.tasks.find_one({"_id": "report"})["metadata"]["maxAttempts"] == 1
