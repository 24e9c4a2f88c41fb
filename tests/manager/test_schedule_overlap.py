"""Overlap policies and pauseOnFailure of recurring schedules, run by real processes.

A fire comes while the previous fire's job is still queued or running: ``allow``
starts it, ``skip`` drops it, ``buffer-one`` keeps one (``waiting``) and starts it
once that job has ended. ``pauseOnFailure`` pauses the schedule once a fire's job
fails for good. Managed workers announce their jobs' ends (the prompt path);
standalone ones announce nothing, which leaves the correctness paths alone: the
leader's sweep of buffered fires, and the check of the last run at the next fire.
"""

from __future__ import annotations

import os
import pickle
import time
from collections.abc import Iterator
from datetime import timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest
from bson import Binary
from click.testing import CliRunner, Result
from support.effects import effects_env
from support.logs import log_events, wait_accepted, wait_leading, wait_logged
from support.processes import LEASE, ManagerProcess, managed
from support.waits import wait_for
from test_scheduling import fires, gaps, wait_fires

from qworker import Client
from qworker.cli.manager import main
from qworker.errors import InvalidScheduleError, TaskDefinitionError
from qworker.schedules import make_schedule
from qworker.schedulestore import loads
from qworker.tasks import check_metadata

SECOND = timedelta(seconds=1)

# The first run of a tag sleeps data.sleep seconds, the later ones not at all (or
# every run does, with data.always); each run is recorded in the effects collection.
SLOW_TASK = """
import time

from support.effects import effects


def setup(worker, task):
    @worker.task(task.id)
    def run(job):
        data = job.data or {}
        runs = effects()
        runs.insert_one({"job": job.id, "tag": data.get("tag"), "start": time.time()})
        if data.get("always") or runs.count_documents({"tag": data.get("tag")}) == 1:
            time.sleep(float(data.get("sleep", 0)))
        return "done"
"""
FAIL_TASK = """
def setup(worker, task):
    @worker.task(task.id)
    def run(job):
        raise RuntimeError("overlap test failure")
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """The tasks of these tests: ovl_slow, and ovl_fail (one attempt, always fails)."""
    tasks = tmp_path / "overlap-tasks"
    tasks.mkdir()
    (tasks / "ovl_slow.json").write_text('{"description": "slow first run", "concurrency": 8}')
    (tasks / "ovl_slow.py").write_text(SLOW_TASK)
    (tasks / "ovl_fail.json").write_text('{"description": "always fails", "maxAttempts": 1}')
    (tasks / "ovl_fail.py").write_text(FAIL_TASK)
    return tasks


@pytest.fixture
def fleet(
    spawn_manager: Any, spawn_worker: Any, mongo_url: str, folder: Path
) -> Iterator[ManagerProcess]:
    """A leading manager and a managed worker of the test tasks (it notifies job ends)."""
    manager = spawn_manager("m1")
    wait_leading(manager)
    worker = managed(
        spawn_worker, mongo_url, "ovl_slow", "ovl_fail", worker_id="w1", paths=[folder]
    )
    wait_accepted(worker)
    yield manager


def standalone(spawn_worker: Any, mongo_url: str, folder: Path) -> Any:
    """A standalone worker: it publishes no notifications at all."""
    return spawn_worker(
        "ovl_slow", "ovl_fail", worker_id="s1", paths=[folder], env=effects_env(mongo_url)
    )


def ended(db: Any, name: str) -> list[dict[str, Any]]:
    return [job for job in fires(db, name) if job["state"] in ("succeeded", "failed")]


def skipped(manager: ManagerProcess, name: str, reason: str) -> int:
    """How many fires of ``name`` the manager logged as skipped for ``reason``."""
    return sum(
        1
        for e in log_events(manager.output())
        if e["event"] == "schedule fire skipped"
        and e.get("schedule") == name
        and reason in str(e.get("reason"))
    )


def runs_never_overlap(jobs: list[dict[str, Any]]) -> None:
    """Each run starts once the one before it has ended (its stored times)."""
    runs = sorted(jobs, key=lambda job: job["lastRunAt"])
    for before, after in pairwise(runs):
        assert after["lastRunAt"] >= before["lastFinishedAt"], (before, after)


def settle(client: Client, db: Any, *names: str) -> None:
    """Pause ``names`` and wait until none of their jobs is active (a buffered fire, kept
    before the pause, is still released and run)."""
    for name in names:
        client.pause_schedule(name)
    states = ["waiting", "queued", "running"]
    active = {"scheduleId": {"$in": list(names)}, "state": {"$in": states}}
    wait_for(lambda: db.jobs.count_documents(active) == 0, 30, "the last runs to end")


def test_skip_buffer_one_and_allow_side_by_side(
    client: Client, db: Any, fleet: ManagerProcess
) -> None:
    """The same slow first run under each policy: dropped, kept once, overlapped."""
    slow = {"sleep": 4}
    client.every(1, "ovl_slow", {**slow, "tag": "skip"}, name="skip", overlap="skip")
    client.every(1, "ovl_slow", {**slow, "tag": "buffer"}, name="buffer", overlap="buffer-one")
    allow = {"sleep": 2.5, "always": True, "tag": "allow"}
    client.every(1, "ovl_slow", allow, name="allow")  # the default
    assert client.schedule_info("buffer")["overlap"] == "buffer-one"
    assert client.schedule_info("skip")["unique"] is True  # skip's old name
    wait_for(lambda: len(ended(db, "skip")) >= 3, 40, "skip's slow run and two more")
    wait_for(lambda: len(ended(db, "buffer")) >= 4, 40, "buffer's slow run and three more")
    wait_for(lambda: len(ended(db, "allow")) >= 3, 40, "three of allow's runs")
    settle(client, db, "skip", "buffer", "allow")

    # skip: while the slow run was queued or running, its fires were dropped.
    jobs = fires(db, "skip")
    first, end = jobs[0], jobs[0]["lastFinishedAt"]
    assert [j for j in jobs[1:] if j["scheduledFor"] < end] == []
    assert skipped(fleet, "skip", "the last run is still active") >= 2
    assert jobs[1]["scheduledFor"] - first["scheduledFor"] >= 4 * SECOND
    runs_never_overlap(jobs)

    # buffer-one: exactly one fire kept while the slow run ran, started once it had
    # ended; the fires after it while it was kept were dropped.
    jobs = fires(db, "buffer")
    first, end = jobs[0], jobs[0]["lastFinishedAt"]
    kept = [j for j in jobs[1:] if j["scheduledFor"] < end]
    assert len(kept) == 1, [(j["scheduledFor"], j["state"]) for j in jobs]
    buffered = kept[0]
    assert buffered["scheduledFor"] - first["scheduledFor"] == SECOND  # the next fire
    assert buffered["state"] == "succeeded"
    assert buffered["releasedAt"] >= end and buffered["lastRunAt"] >= end
    assert buffered["lastRunAt"] - end < 3 * SECOND  # released when the slow run ended
    assert skipped(fleet, "buffer", "a fire is buffered already") >= 2
    runs_never_overlap(jobs)
    assert all(j["uniqueKey"] == "schedule:buffer" for j in jobs)
    assert db.jobs.count_documents({"scheduleId": "buffer", "state": "waiting"}) == 0
    assert db.schedules.find_one({"_id": "buffer"}).get("buffered") is None
    # Each job ran once.
    for job in jobs:
        assert db.effects.count_documents({"job": str(job["_id"])}) == 1

    # allow: a fire every second, each started while the one before still ran.
    jobs = fires(db, "allow")
    assert gaps(jobs[:4]) == [SECOND] * 3
    assert any(b["lastRunAt"] < a["lastFinishedAt"] for a, b in pairwise(jobs))
    assert skipped(fleet, "allow", "") == 0


def cli(mongo_url: str, *args: str) -> Result:
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("QWORKER_")}
    return CliRunner().invoke(
        main, ["--mongo", mongo_url, "schedules", *args], prog_name="qworker-manager", env=env
    )


def shown(result: Result) -> dict[str, str]:
    assert result.exit_code == 0, (result.output, result.exception)
    pairs = (line.split(":", 1) for line in result.stdout.strip().splitlines())
    return {key.strip(): value.strip() for key, value in pairs}


def test_pause_on_failure_pauses_after_a_failing_run(
    client: Client, db: Any, fleet: ManagerProcess, mongo_url: str
) -> None:
    api = fleet.api_url()
    body = {"name": "flaky", "task": "ovl_fail", "every": 1, "pause_on_failure": True}
    added = httpx.post(f"{api}/api/schedules", json={**body, "start_at": "now"}, timeout=30)
    assert added.status_code == 201, added.text
    assert added.json()["pause_on_failure"] is True and added.json()["pauseReason"] is None

    wait_for(lambda: client.schedule_info("flaky")["paused"], 30, "the schedule to pause")
    view = client.schedule_info("flaky")
    failed = db.jobs.find_one({"scheduleId": "flaky", "state": "failed"}, sort=[("fireKey", 1)])
    assert str(failed["_id"]) in view["pauseReason"]
    assert "overlap test failure" in view["pauseReason"]
    assert view["nextRunAt"] is None and view["pausedAt"] is not None
    wait_logged(fleet, "schedule paused: a fire's job failed", 10)
    count = len(fires(db, "flaky"))
    assert count <= 3  # paused at once by the notification (a slow claim lets a fire race)
    time.sleep(2.5)
    assert len(fires(db, "flaky")) == count  # no more fires

    # Shown by the API, and by the CLI's show and list.
    listed = httpx.get(f"{api}/api/schedules/flaky", timeout=30).json()
    assert listed["paused"] is True and listed["pauseReason"] == view["pauseReason"]
    detail = shown(cli(mongo_url, "show", "flaky"))
    assert detail["next run"] == "paused" and str(failed["_id"]) in detail["paused for"]
    assert detail["on failure"] == "pause the schedule"
    rows = cli(mongo_url, "list").stdout
    assert "paused (a run failed)" in rows

    # Resumed: the failure so far is let go of; the next failing run pauses it again.
    assert client.resume_schedule("flaky")["pauseReason"] is None
    wait_for(lambda: len(fires(db, "flaky")) > count, 10, "a fire after the resume")
    wait_for(lambda: client.schedule_info("flaky")["paused"], 30, "the schedule to pause again")
    again = client.schedule_info("flaky")["pauseReason"]
    assert again and str(failed["_id"]) not in again


def test_without_notifications_the_next_fire_pauses_and_the_sweep_releases(
    client: Client, db: Any, spawn_manager: Any, spawn_worker: Any, mongo_url: str, folder: Path
) -> None:
    """A standalone worker announces no end: the correctness paths do the work alone."""
    manager = spawn_manager("m1")
    wait_leading(manager)
    standalone(spawn_worker, mongo_url, folder)
    client.every(1, "ovl_fail", name="flaky", pause_on_failure=True, start_at="now")
    client.every(1, "ovl_slow", {"sleep": 3, "tag": "b"}, name="buffer", overlap="buffer-one")

    wait_for(lambda: client.schedule_info("flaky")["paused"], 30, "the schedule to pause")
    assert skipped(manager, "flaky", "the last run failed") >= 1
    # The reason names the failed fire the pausing one saw: on a slow machine a second
    # fire may start, and fail, before the first one's failure is written.
    failed = {str(j["_id"]) for j in fires(db, "flaky") if j["state"] == "failed"}
    reason = client.schedule_info("flaky")["pauseReason"]
    assert any(job_id in reason for job_id in failed), (reason, failed)

    wait_for(lambda: len(ended(db, "buffer")) >= 3, 40, "the slow run and two more")
    settle(client, db, "buffer")
    jobs = fires(db, "buffer")
    end = jobs[0]["lastFinishedAt"]
    [buffered] = [j for j in jobs[1:] if j["scheduledFor"] < end]
    assert buffered["lastRunAt"] >= end
    assert buffered["releasedAt"] - end < SECOND * 3  # the sweep, every second
    runs_never_overlap(jobs)


def test_a_buffered_fire_survives_the_leaders_kill(
    client: Client, db: Any, spawn_manager: Any, spawn_worker: Any, mongo_url: str, folder: Path
) -> None:
    """SIGKILL while a fire is buffered: the next leader releases it, once."""
    first = spawn_manager("m1")
    wait_leading(first)
    standalone(spawn_worker, mongo_url, folder)
    data = {"sleep": 5, "tag": "k"}
    client.every(1, "ovl_slow", data, name="buffer", overlap="buffer-one", start_at="now")
    waiting = {"scheduleId": "buffer", "state": "waiting"}
    wait_for(lambda: db.jobs.find_one(waiting), 30, "a buffered fire")
    first.kill()
    second = spawn_manager("m2")
    wait_leading(second, timeout=LEASE + 30)
    wait_for(lambda: len(ended(db, "buffer")) >= 3, 40, "the slow run and two more")
    settle(client, db, "buffer")
    jobs = fires(db, "buffer")
    end = jobs[0]["lastFinishedAt"]
    [buffered] = [j for j in jobs[1:] if j["scheduledFor"] < end]
    assert buffered["lastRunAt"] >= end and buffered["state"] == "succeeded"
    runs_never_overlap(jobs)
    for job in jobs:  # none released twice: each ran once
        assert db.effects.count_documents({"job": str(job["_id"])}) == 1
    assert "buffered fire released" in second.output()


def strip_new_fields(db: Any, name: str) -> None:
    """Make ``name``'s stored schedule as an earlier version wrote it: no overlap, no
    pause_on_failure."""
    doc = db.schedules.find_one({"_id": name})
    state = loads(doc["job_state"])
    for field in ("overlap", "pause_on_failure"):
        del state["kwargs"]["schedule"][field]
    db.schedules.update_one(
        {"_id": name}, {"$set": {"job_state": Binary(pickle.dumps(state, pickle.HIGHEST_PROTOCOL))}}
    )


def test_a_schedule_stored_without_the_new_fields_still_fires(
    client: Client, db: Any, spawn_manager: Any
) -> None:
    client.every(1, "noop", name="old", start_at="now")
    client.every(1, "noop", name="old-unique", unique=True, start_at="now")
    for name in ("old", "old-unique"):
        strip_new_fields(db, name)
    assert client.schedules.get("old").overlap == "allow"
    assert client.schedule_info("old-unique")["overlap"] == "skip"
    wait_leading(spawn_manager("m1"))
    jobs = wait_fires(db, "old", 3)
    assert gaps(jobs) == [SECOND] * (len(jobs) - 1) and "uniqueKey" not in jobs[0]
    # unique: true is skip: its one queued job (no worker runs it) holds the later fires.
    [held] = fires(db, "old-unique")
    assert held["uniqueKey"] == "schedule:old-unique" and held["state"] == "queued"


def test_overlap_and_pause_on_failure_are_validated_and_wired(
    client: Client, mongo_url: str
) -> None:
    with pytest.raises(InvalidScheduleError, match="overlap must be one of allow, skip, buffer"):
        make_schedule("s", "noop", every=60, overlap="sometimes")
    with pytest.raises(InvalidScheduleError, match="pauseOnFailure"):
        make_schedule("s", "noop", every=60, pause_on_failure="yes")
    with pytest.raises(InvalidScheduleError, match="unique is overlap 'skip'"):
        make_schedule("s", "noop", every=60, unique=True, overlap="buffer-one")
    assert make_schedule("s", "noop", every=60, unique=True, overlap="skip").overlap == "skip"

    path = Path("/tasks/report.json")
    spec = {"every": "1 minute", "overlap": "buffer-one", "pauseOnFailure": True}
    meta = check_metadata({"schedule": spec}, path, code=False)
    assert meta is not None and meta.schedule is not None
    assert meta.schedule.overlap == "buffer-one" and meta.schedule.pause_on_failure is True
    with pytest.raises(TaskDefinitionError, match="overlap must be one of"):
        check_metadata({"schedule": {**spec, "overlap": "queue"}}, path, code=False)

    out = shown(
        cli(mongo_url, "add", "nightly", "noop", "--cron", "0 3 * * *", "--overlap", "buffer-one")
    )
    assert out["overlap"] == "buffer-one" and "on failure" not in out
    out = shown(cli(mongo_url, "add", "hourly", "noop", "--every", "1h", "--pause-on-failure"))
    assert out["on failure"] == "pause the schedule" and "overlap" not in out
    refused = cli(mongo_url, "add", "x", "noop", "--every", "1h", "--overlap", "never")
    assert refused.exit_code == 2 and "--overlap" in refused.stderr
    assert client.schedule_info("nightly")["overlap"] == "buffer-one"
    assert client.cron("0 4 * * *", "noop", name="c", overlap="skip")["unique"] is True
