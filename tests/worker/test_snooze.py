"""``raise Snooze(seconds)``: the job runs again later, without using an attempt.

The handlers in tests/support/tasks/snoozing* snooze their first runs and then
succeed, in a thread, on the loop and in a child process; a worker runs them
here, in the test's own loop, against the real server.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from bson import ObjectId
from support.jobs import finished

from qworker import Client, Snooze
from qworker.errors import MAX_SNOOZE_SECONDS
from qworker.worker.metrics import _WorkerFigures


def job(db: Any, job_id: str) -> dict[str, Any]:
    doc: dict[str, Any] = db.jobs.find_one({"_id": ObjectId(job_id)})
    return doc


def runs(db: Any, job_id: str) -> list[dict[str, Any]]:
    return list(db.effects.find({"job": job_id}).sort("run", 1))


@pytest.mark.parametrize("task", ["snoozing", "snoozing_async", "snoozing_isolated"])
def test_a_snoozed_job_runs_again_after_its_delay_without_using_an_attempt(
    client: Client, db: Any, burst: Any, task: str
) -> None:
    job_id = client.now(task, {"snoozes": 2, "delay": 0.3})
    worker = burst(task, until=lambda: finished(db, job_id))
    done = job(db, job_id)

    assert done["state"] == "succeeded", done
    assert done["result"] == {"runs": 3, "attempt": 1}
    assert done["attempts"] == 1 and done["failCount"] == 0  # the snoozes used none
    assert "lockToken" not in done and "failReason" not in done
    assert [entry["msg"] for entry in done["logs"]] == ["snoozed for 0.3 s"] * 2
    ran = runs(db, job_id)
    assert [r["attempt"] for r in ran] == [1, 1, 1]  # each run is the first attempt again
    for before, after in itertools.pairwise(ran):
        assert after["at"] - before["at"] >= 0.3 - 0.01  # never before its time
    if task == "snoozing_async":
        assert {r["thread"] for r in ran} == {"MainThread"}  # on the worker's loop
    if task == "snoozing_isolated":
        assert len({r["pid"] for r in ran}) == 3  # a child process per run
    c = worker.counters
    assert (c.snoozed, c.succeeded, c.failed, c.retried) == (2, 1, 0, 0)


def test_snoozes_are_counted_apart_in_the_workers_metrics(
    client: Client, db: Any, burst: Any
) -> None:
    job_id = client.now("snoozing", {"snoozes": 1, "delay": 0.2})
    worker = burst("snoozing", until=lambda: finished(db, job_id))
    (runs_family,) = [
        m for m in _WorkerFigures(worker).collect() if m.name == "qworker_worker_jobs"
    ]
    by_outcome = {s.labels["outcome"]: s.value for s in runs_family.samples}
    assert by_outcome["snoozed"] == 1 and by_outcome["succeeded"] == 1
    assert by_outcome["failed"] == 0 and by_outcome["expired"] == 0


@pytest.mark.parametrize(
    ("delay", "reason"),
    [
        ("soon", "TypeError: Snooze takes a number of seconds, not str"),
        (0, f"ValueError: Snooze takes seconds above 0 and at most {MAX_SNOOZE_SECONDS:g}, not 0"),
    ],
)
def test_a_snooze_of_a_bad_delay_fails_the_job_with_a_clear_reason(
    client: Client, db: Any, burst: Any, delay: Any, reason: str
) -> None:
    job_id = client.now("snoozing", {"delay": delay})
    burst("snoozing", until=lambda: finished(db, job_id))
    done = job(db, job_id)
    assert done["state"] == "failed", done
    assert done["failReason"] == reason
    assert "support/snoozes.py" in done["error"]["traceback"]  # where it was raised


@pytest.mark.parametrize("seconds", [0, -1, float("nan"), float("inf"), MAX_SNOOZE_SECONDS + 1])
def test_snooze_takes_seconds_above_0_and_at_most_a_year(seconds: float) -> None:
    with pytest.raises(ValueError, match="Snooze takes seconds above 0"):
        Snooze(seconds)


def test_snooze_takes_numbers_only() -> None:
    for value in ("30", True, None):
        with pytest.raises(TypeError, match="Snooze takes a number of seconds"):
            Snooze(value)  # type: ignore[arg-type]
    assert Snooze(30).seconds == 30.0 and str(Snooze(1.5)) == "snoozed for 1.5 s"
