"""``job.progress``: a percentage, or a count out of a total; never a guess between them."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
from bson import ObjectId
from support.processes import REPO

from qworker.job import Job, percent
from qworker.tasks import import_code, parse_task
from qworker.worker.taskapi import TaskHandle, TaskSetup, run_setup

DEMO = REPO / "qworker" / "demo"


class Recorder:
    """A job's reporter that keeps what the handler reported."""

    def __init__(self) -> None:
        self.reported: list[tuple[float, str | None]] = []

    def percents(self) -> list[float]:
        return [value for value, _ in self.reported]

    def progress(self, job: Job, value: float, step: str | None) -> None:
        self.reported.append((value, step))

    def log(self, job: Job, level: str, text: str) -> None:
        pass


class Engine:
    worker_id = "test"

    def add_subtask(self, doc: dict[str, Any]) -> None:
        raise AssertionError("no sub-task expected")

    def fail_worker(self, reason: str) -> None:
        raise AssertionError(reason)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((40,), 40.0),
        ((0.5,), 0.5),
        ((1,), 1.0),
        ((100,), 100.0),
        ((0,), 0.0),
        ((1, 4), 25.0),
        ((200, 400), 50.0),
        ((0.5, 1), 50.0),
        ((3, 3), 100.0),
    ],
)
def test_a_number_alone_is_a_percentage_and_with_a_total_a_count(
    args: tuple[float, ...], expected: float
) -> None:
    assert percent(*args) == expected


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((101,), ValueError),
        ((-1,), ValueError),
        ((float("nan"),), ValueError),
        ((5, 4), ValueError),
        ((1, 0), ValueError),
        ((1, -2), ValueError),
        (("5",), TypeError),
        ((True,), TypeError),
        ((1, True), TypeError),
    ],
)
def test_out_of_range_or_not_a_number_is_refused(args: tuple[Any, ...], error: type) -> None:
    with pytest.raises(error):
        percent(*args)


def test_the_seed_form_and_a_step_as_second_argument_still_work() -> None:
    recorder = Recorder()
    job = Job({"_id": ObjectId(), "name": "t"}, recorder)
    job.progress(30)
    job.progress(60, "loading")
    job.progress(3, total=4, step="three of four")
    job.progress(1, 2, "half")
    assert recorder.reported == [
        (30.0, None),
        (60.0, "loading"),
        (75.0, "three of four"),
        (50.0, "half"),
    ]


def test_the_countdown_example_over_400_steps_only_moves_forward() -> None:
    """The demo's countdown reported 25%, 50%, 100%, then 1%, 2% (fractions guessed)."""
    meta = parse_task(DEMO / "countdown.yaml")
    assert meta is not None
    worker = TaskSetup(Engine())
    run_setup(import_code(meta), worker, TaskHandle(meta, "test"))
    recorder = Recorder()
    job = Job(
        {"_id": ObjectId(), "name": "countdown", "data": {"steps": 400, "delay": 0}}, recorder
    )
    assert asyncio.run(worker.handlers["countdown"](job)) == {"steps": 400}
    values = recorder.percents()
    assert len(values) == 401
    assert values == sorted(values), [v for a, v in itertools.pairwise(values) if v < a]
    assert values[1] == 0.25 and values[200] == 50.0 and values[-1] == 100.0
