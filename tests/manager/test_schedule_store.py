"""The schedule store runs no code that a writer of ``schedules`` put there.

APScheduler stores each schedule as a pickle; unpickling one written by anyone
who can write the collection ran their code in the leader manager, in the API
and in the CLI, and APScheduler then deleted the document.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from bson import Binary
from support.logs import wait_leading, wait_logged
from support.waits import wait_for

from qworker import Client
from qworker.schedulestore import RefusedPickle, loads


class Walk:
    """A step of the usual escape from a restricted unpickler: getattr from a class."""

    def __reduce__(self) -> tuple[Any, tuple[Any, str]]:
        return (getattr, (datetime, "__class__"))


class Payload:
    """What an attacker pickles: unpickled, it runs a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def plant(db: Any, marker: Path) -> None:
    state = pickle.dumps({"version": 1, "id": "evil", "trigger": Payload(marker)})
    db.schedules.insert_one(
        {"_id": "evil", "next_run_time": time.time() - 5, "job_state": Binary(state)}
    )


def test_a_planted_pickle_runs_nowhere_and_stays_for_the_operator(
    client: Client, db: Any, mongo_url: str, spawn_manager: Any, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    plant(db, marker)
    manager = spawn_manager("m1")
    wait_leading(manager)
    wait_logged(manager, "a stored schedule could not be read safely", 30)
    listed = httpx.get(f"{manager.api_url()}/api/schedules", timeout=30)
    assert listed.status_code == 200 and listed.json() == []
    command = [
        sys.executable,
        "-m",
        "qworker.cli.manager",
        "--mongo",
        mongo_url,
        "schedules",
        "list",
    ]
    cli = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    assert client.schedule_list() == []
    # The scheduler goes on, and does not spin on the document it cannot read.
    client.every("1 second", "noop", name="tick")
    wait_for(lambda: db.jobs.count_documents({"scheduleId": "tick"}) >= 2, 30, "tick to fire")
    assert not marker.exists()
    assert db.schedules.find_one({"_id": "evil"}) is not None  # evidence kept
    client.remove_schedule("evil")  # and the operator can delete it
    assert db.schedules.find_one({"_id": "evil"}) is None


def test_what_a_schedule_holds_reads_back(client: Client, db: Any) -> None:
    """Every trigger qworker makes, with time zones: stores of earlier versions too."""
    client.cron("0 9 * * 1-5", "noop", name="weekdays", tz="Europe/Paris")
    client.cron("*/10 * * * * *", "noop", name="seconds")
    client.every("90 minutes", "noop", name="interval", start_at="2031-01-01T00:00:00Z")
    for doc in db.schedules.find():
        assert loads(doc["job_state"])["id"] == doc["_id"]
    assert {s["name"] for s in client.schedule_list()} == {"weekdays", "seconds", "interval"}


@pytest.mark.parametrize(
    "payload",
    [Payload(Path("/nonexistent/x")), Walk(), subprocess.Popen],
    ids=["reduce", "getattr", "class"],
)
def test_the_unpickler_refuses_what_no_schedule_holds(payload: Any) -> None:
    with pytest.raises(RefusedPickle):
        loads(pickle.dumps(payload))


def test_schedules_stored_before_the_manager_moved_still_find_their_function(
    client: Client, db: Any
) -> None:
    """APScheduler drops a stored schedule whose function it cannot import: every store
    names ``qworker.scheduler:fire``, which stays where it was."""
    import qworker.manager.scheduler
    import qworker.scheduler

    client.every("1 hour", "noop", name="old")
    assert loads(db.schedules.find_one({"_id": "old"})["job_state"])["func"] == (
        "qworker.scheduler:fire"
    )
    assert qworker.scheduler.fire is qworker.manager.scheduler.fire
