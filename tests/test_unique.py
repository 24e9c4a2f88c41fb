"""Unique jobs: at most one queued or running job per task and key, even under contention."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from click.testing import CliRunner
from support.effects import effects_env
from support.jobs import wait_finished
from support.waits import wait_for

from qworker import Client
from qworker.cli.manager import main
from qworker.errors import InvalidJobError, JobStateError


def test_50_concurrent_enqueues_with_one_key_give_one_job(client: Client, db: Any) -> None:
    barrier = threading.Barrier(50)

    def enqueue(n: int) -> str:
        barrier.wait()
        return client.now("noop", {"n": n}, unique="report:42")

    with ThreadPoolExecutor(50) as pool:
        ids = list(pool.map(enqueue, range(50)))
    assert len(set(ids)) == 1
    assert db.jobs.count_documents({}) == 1
    assert db.jobs.find_one()["uniqueKey"] == "report:42"
    assert str(db.jobs.find_one()["_id"]) == ids[0]


def test_the_key_is_free_again_once_the_job_finished(client: Client, db: Any) -> None:
    first = client.now("noop", unique="k")
    assert client.now("noop", unique="k") == first
    client.cancel(first)
    second = client.now("noop", unique="k")
    assert second != first
    assert db.jobs.count_documents({"uniqueKey": "k"}) == 2


def test_the_key_is_per_task_and_plain_jobs_are_not_affected(client: Client, db: Any) -> None:
    a = client.now("noop", unique="same")
    b = client.now("record", unique="same")
    assert a != b
    assert len({client.now("noop"), client.now("noop")}) == 2
    assert db.jobs.count_documents({}) == 4


def test_a_running_job_holds_its_key(
    client: Client, db: Any, spawn_worker: Any, mongo_url: str
) -> None:
    spawn_worker("record", env=effects_env(mongo_url))
    first = client.now("record", {"sleep": 3}, unique="busy")
    wait_for(lambda: client.get(first)["state"] == "running", 30, "the job to start")
    assert client.now("record", {"sleep": 3}, unique="busy") == first
    assert wait_finished(db, first)["state"] == "succeeded"
    assert client.now("record", unique="busy") != first


def test_retry_refuses_while_another_job_holds_the_key(client: Client) -> None:
    old = client.now("noop", unique="k")
    client.cancel(old)
    holder = client.now("noop", unique="k")
    with pytest.raises(JobStateError, match=f"job {holder} holds its unique key"):
        client.retry(old)
    client.cancel(holder)
    assert client.retry(old)["state"] == "queued"


@pytest.mark.parametrize("key", ["", 5, "x" * 513])
def test_bad_unique_keys(client: Client, db: Any, key: Any) -> None:
    with pytest.raises(InvalidJobError, match="unique must be a non-empty string"):
        client.now("noop", unique=key)
    assert db.jobs.count_documents({}) == 0


def test_cli_enqueue_unique_prints_the_holder(client: Client, mongo_url: str) -> None:
    args = ["--mongo", mongo_url, "enqueue", "noop", "--unique", "nightly"]
    first, second = CliRunner().invoke(main, args), CliRunner().invoke(main, args)
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    assert first.output == second.output
    assert client.get(first.output.strip())["uniqueKey"] == "nightly"
