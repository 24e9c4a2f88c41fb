"""worker.compose: several handlers run in series as one task, in one job.

The end-to-end tests run real workers on the tasks tests/support/tasks/composed*;
the unit tests at the end call a composed handler directly.
"""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId
from support.effects import effects_env
from support.jobs import wait_finished
from support.logs import ready
from support.waits import wait_for

from qworker import Client
from qworker.job import Job
from qworker.worker.registry import Registry


def _steps(db: Any, job_id: str) -> list[str]:
    return [e["step"] for e in db.effects.find({"job": job_id}).sort("_id", 1)]


# -- end to end --------------------------------------------------------------


def test_a_composed_task_passes_each_result_to_the_next_step(
    client: Client, db: Any, spawn_worker: Any, mongo_url: str
) -> None:
    ready(spawn_worker("composed", env=effects_env(mongo_url), extra=["--grace", "1"]))
    job_id = client.now("composed", {"csv": "3,1,2"})
    done = wait_finished(db, job_id, 60)

    assert done["state"] == "succeeded", done
    assert done["result"] == {"squares": [9, 1, 4], "total": 14}
    assert done["attempts"] == 1
    assert done["data"] == {"csv": "3,1,2"}  # the stored job data is never touched
    assert done["progress"] == {"percent": 100.0, "step": "summarize"}
    runs = list(db.effects.find({"job": job_id}).sort("_id", 1))
    assert [(r["step"], r["data"]) for r in runs] == [
        ("parse", {"csv": "3,1,2"}),
        ("square", [3, 1, 2]),
        ("summarize", [9, 1, 4]),
        ("after_job", {"csv": "3,1,2"}),  # observers see the job's own data again
    ]
    # One job on one worker: all steps ran in the same handler thread.
    assert len({r["thread"] for r in runs[:3]}) == 1


def test_a_composition_with_async_steps_runs_on_the_loop(
    client: Client, db: Any, spawn_worker: Any, mongo_url: str
) -> None:
    ready(spawn_worker("composed_async", env=effects_env(mongo_url), extra=["--grace", "1"]))
    job_id = client.now("composed_async", {"n": 20})
    done = wait_finished(db, job_id, 60)

    assert done["state"] == "succeeded", done
    assert done["result"] == {"value": 42}
    assert done["progress"] == {"percent": 100.0, "step": "wrap"}
    runs = {e["step"]: e for e in db.effects.find({"job": job_id})}
    assert [runs[s]["data"] for s in ("fetch", "double", "wrap")] == [{"n": 20}, 21, 42]
    assert runs["fetch"]["thread"] == runs["wrap"]["thread"] == "MainThread"
    assert runs["double"]["thread"] != "MainThread"  # the plain step kept off the loop


def test_a_failing_step_fails_the_job_and_the_later_steps_never_run(
    client: Client, db: Any, spawn_worker: Any, mongo_url: str
) -> None:
    ready(spawn_worker("composed_failing", env=effects_env(mongo_url), extra=["--grace", "1"]))
    job_id = client.now("composed_failing", {"rows": [1, "two", 3]})
    done = wait_finished(db, job_id, 60)

    assert done["state"] == "failed", done
    # composed_failing.json: maxAttempts 2, and a retry runs the whole composition.
    assert done["attempts"] == 2 and done["failCount"] == 2
    assert done["failReason"] == "ValueError: row 2 is not a number: 'two'"
    assert done["error"]["type"] == "ValueError"
    assert done["error"]["message"] == "row 2 is not a number: 'two'"
    assert "in validate" in done["error"]["traceback"]
    assert _steps(db, job_id) == ["load", "validate", "load", "validate"]
    assert done["progress"]["step"] == "validate"
    errors = [e["msg"] for e in done["logs"] if e["level"] == "error"]
    assert errors == ["step 2/3 (validate) failed: ValueError: row 2 is not a number: 'two'"] * 2

    good = client.now("composed_failing", {"rows": [1, 2, 3]})
    assert client.wait(good, timeout=60)["result"] == {"stored": 3}


def test_progress_names_the_running_step(
    client: Client, db: Any, spawn_worker: Any, mongo_url: str, tmp_path: Path
) -> None:
    ready(spawn_worker("composed_waiting", env=effects_env(mongo_url), extra=["--grace", "1"]))
    go = tmp_path / "go"
    job_id = client.now("composed_waiting", {"go": str(go)})
    running = wait_for(
        lambda: db.jobs.find_one({"_id": ObjectId(job_id), "progress.step": "wait_for_go"}),
        30,
        "the job to report its second step",
    )
    assert running["state"] == "running"
    assert running["progress"] == {"percent": 33.0, "step": "wait_for_go"}

    go.touch()
    done = wait_finished(db, job_id, 30)
    assert done["state"] == "succeeded", done
    assert done["result"] == {"go": str(go), "prepared": True, "went": True}
    assert done["progress"] == {"percent": 100.0, "step": "finish"}


def test_a_cancelled_composition_stops_before_its_next_step(
    client: Client, db: Any, spawn_worker: Any, mongo_url: str, tmp_path: Path
) -> None:
    worker = spawn_worker("composed_waiting", env=effects_env(mongo_url), extra=["--grace", "1"])
    ready(worker)
    job_id = client.now("composed_waiting", {"go": str(tmp_path / "never")})
    wait_for(
        lambda: db.effects.find_one({"job": job_id, "step": "wait_for_go"}),
        30,
        "the second step to start",
    )
    client.cancel(job_id)
    done = wait_finished(db, job_id, 20)

    assert done["state"] == "cancelled", done
    assert _steps(db, job_id) == ["wait_for_go"]  # finish never ran
    assert [e["msg"] for e in done.get("logs", [])] == [
        "stopped before step 3/3 (finish): the job was cancelled or timed out"
    ]
    assert worker.process.poll() is None


def test_a_process_isolated_composition_runs_in_the_child(
    client: Client, db: Any, spawn_worker: Any
) -> None:
    worker = spawn_worker("composed_isolated", extra=["--grace", "1"])
    ready(worker)
    job_id = client.now("composed_isolated", {"n": 1})
    done = wait_finished(db, job_id, 60)

    assert done["state"] == "succeeded", done
    assert done["result"]["n"] == 2 and done["result"]["async"] is True
    assert done["result"]["pid"] != worker.pid
    assert done["progress"] == {"percent": 100.0, "step": "later"}


# -- unit: registration and the composed handler ------------------------------


class Recorder:
    """A Reporter keeping what a job reported."""

    def __init__(self) -> None:
        self.progress_calls: list[tuple[float, str | None]] = []
        self.lines: list[tuple[str, str]] = []

    def progress(self, job: Job, percent: float, step: str | None) -> None:
        self.progress_calls.append((percent, step))

    def log(self, job: Job, level: str, text: str) -> None:
        self.lines.append((level, text))


def _job(data: Any) -> tuple[Job, Recorder]:
    reporter = Recorder()
    return Job({"_id": ObjectId(), "name": "t", "data": data}, reporter), reporter


def _inc(job: Job) -> int:
    return int(job.data) + 1


def _double(job: Job) -> int:
    return int(job.data) * 2


async def _negate(job: Job) -> int:
    await asyncio.sleep(0)
    return -int(job.data)


@pytest.mark.parametrize(
    ("steps", "error", "message"),
    [
        ([], ValueError, "task 't' is composed of no steps"),
        ((), ValueError, "task 't' is composed of no steps"),
        (_inc, TypeError, "the steps of task 't' must be a list of callables, not function"),
        ("abc", TypeError, "the steps of task 't' must be a list of callables, not str"),
        (None, TypeError, "must be a list of callables, not NoneType"),
        ([_inc, 3], TypeError, "step 2 of task 't' must be callable, not int"),
    ],
)
def test_bad_steps_are_refused_at_registration(steps: Any, error: type, message: str) -> None:
    registry = Registry()
    with pytest.raises(error, match=message):
        registry.compose("t", steps)
    assert "t" not in registry.handlers


def test_a_task_id_that_has_a_handler_is_refused() -> None:
    registry = Registry()
    registry.task("t", _inc)
    with pytest.raises(ValueError, match="task 't' already has a handler"):
        registry.compose("t", [_double])
    registry.compose("u", [_double])
    with pytest.raises(ValueError, match="task 'u' already has a handler"):
        registry.task("u", _inc)


def test_the_composed_handler_chains_reports_and_restores_the_data() -> None:
    registry = Registry()
    steps = [_inc, _double]
    handler = registry.compose("t", steps)
    steps.append(_inc)  # the composition kept its own copy
    assert registry.handlers["t"] is handler
    assert not inspect.iscoroutinefunction(handler)
    job, reporter = _job(4)
    assert handler(job) == 10
    assert job.data == 4
    assert reporter.progress_calls == [(0.0, "_inc"), (50.0, "_double")]
    assert reporter.lines == []


def test_an_async_step_makes_the_composed_handler_async() -> None:
    handler = Registry().compose("t", [_inc, _negate, _double])
    assert inspect.iscoroutinefunction(handler)
    job, reporter = _job(4)
    assert asyncio.run(handler(job)) == -10
    assert job.data == 4
    assert [step for _, step in reporter.progress_calls] == ["_inc", "_negate", "_double"]


def test_a_failing_step_is_logged_and_raised_as_is() -> None:
    def boom(job: Job) -> int:
        raise KeyError("missing")

    ran: list[Any] = []
    handler = Registry().compose("t", [_inc, boom, ran.append])
    job, reporter = _job(1)
    with pytest.raises(KeyError, match="missing"):
        handler(job)
    assert ran == []
    assert reporter.lines == [("error", "step 2/3 (boom) failed: KeyError: 'missing'")]
    assert job.data == 1


def test_a_cancel_stops_the_composition_before_the_next_step() -> None:
    def cancel(job: Job) -> str:
        job.cancel()
        return "half done"

    ran: list[Any] = []
    handler = Registry().compose("t", [cancel, ran.append])
    job, reporter = _job(None)
    assert handler(job) is None
    assert ran == []
    assert reporter.lines == [
        ("warn", "stopped before step 2/2 (append): the job was cancelled or timed out")
    ]


def test_progress_stays_a_percentage_with_many_steps() -> None:
    # 100 * 1 / 200 is 0.5, which job.progress would read as a fraction (50 %).
    handler = Registry().compose("t", [_inc] * 200)
    job, reporter = _job(0)
    assert handler(job) == 200
    assert [p for p, _ in reporter.progress_calls[:3]] == [0.0, 0.0, 1.0]
    assert reporter.progress_calls[-1] == (99.0, "_inc")
