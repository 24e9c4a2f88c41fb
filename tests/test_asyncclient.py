"""``AsyncClient`` against the real server, from asyncio code: each method, transactions,
the application's own connection, and a FastAPI route that enqueues without a thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pymongo import AsyncMongoClient

from qworker import AsyncClient, Client, ConfigError, InvalidJobError, JobStateError


def run(body: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(body())


def test_every_job_method_works_from_asyncio(mongo_url: str, db: Any, burst: Any) -> None:
    async def enqueue() -> list[str]:
        async with AsyncClient(mongo_url) as client:
            first = await client.now("double", {"x": 1}, priority="high", description="one")
            later = await client.schedule("in 1 hour", "double", {"x": 2})
            same = await client.schedule(None, "double", {"x": 3}, unique="k")
            assert await client.schedule(None, "double", {"x": 4}, unique="k") == same
            many = await client.enqueue_many("double", [{"x": 5}, {"x": 6}])
            chain = await client.chain([("double", {"x": 7}), "double"])
            assert (await client.get(first))["priority"] > 0
            assert await client.count_jobs(state="queued") == 6  # the chain's 2nd waits
            assert [j["description"] for j in await client.jobs(text="one")] == ["one"]
            assert (await client.cancel(later))["state"] == "cancelled"
            assert (await client.delete(later))["_id"] is not None
            with pytest.raises(InvalidJobError, match="state must be one of"):
                await client.purge("queued", "1 day")
            await client.ping()
            return [first, same, *many, chain]

    ids = run(enqueue)
    burst("double")

    async def after() -> None:
        async with AsyncClient(mongo_url) as client:
            done = [await client.wait(i, timeout=10) for i in ids]
            assert [d["result"]["x"] for d in done] == [2.0, 6.0, 10.0, 12.0, 28.0]
            again = await client.retry(ids[0])
            assert again["state"] == "queued"
            with pytest.raises(JobStateError, match="only finished jobs"):
                await client.retry(ids[0])
            with pytest.raises(TimeoutError):
                await client.wait(ids[0], timeout=0.3)
            assert await client.purge("succeeded", "0 seconds", dry_run=True) == 5

    run(after)


def test_the_fleet_views_and_the_schedules_match_the_blocking_client_s(
    mongo_url: str, client: Client, burst: Any
) -> None:
    client.now("double", {"x": 1})
    burst("double")  # a standalone worker lists itself

    async def body() -> None:
        async with AsyncClient(mongo_url) as aclient:
            assert await aclient.workers() == client.workers()
            assert await aclient.workers(state="running") == client.workers(state="running")
            assert await aclient.tasks() == client.tasks()
            assert (await aclient.tasks())[0]["jobs"]["succeeded"] == 1
            assert (await aclient.pause_task("double"))["paused"] is True
            assert await aclient.paused_tasks() == client.paused_tasks() == {"double"}
            assert (await aclient.task_controls("double"))["paused"] is True
            assert (await aclient.resume_task("double"))["paused"] is False
            assert await aclient.paused_tasks() == set()
            every = await aclient.every("1 hour", "double", {"x": 2}, name="hourly")
            assert every["trigger"] == "every 1h"
            await aclient.cron("0 3 * * *", "double", name="nightly", tz="Europe/Paris")
            assert [s["name"] for s in await aclient.schedule_list()] == ["hourly", "nightly"]
            assert (await aclient.pause_schedule("hourly"))["paused"] is True
            assert (await aclient.resume_schedule("hourly"))["paused"] is False
            await aclient.remove_schedule("hourly")
            assert (await aclient.schedule_info("nightly"))["timezone"] == "Europe/Paris"
        assert [s["name"] for s in client.schedule_list()] == ["nightly"]

    run(body)


def test_workflows_from_asyncio(mongo_url: str, db: Any, burst: Any) -> None:
    async def enqueue() -> tuple[str, str]:
        async with AsyncClient(mongo_url) as aclient:
            group_id = await aclient.group([("double", {"x": 1}), ("double", {"x": 2})])
            wf = aclient.workflow("pair")
            first = wf.add("double", {"x": 3}, name="first")
            wf.add("shortlived", {"fail": True}, name="second", deps=[first])
            workflow_id = await wf.enqueue()
            assert (await aclient.workflow_info(workflow_id))["counts"]["waiting"] == 1
            assert len(await aclient.workflows()) == 2
            return group_id, workflow_id

    group_id, workflow_id = run(enqueue)
    burst("double", "shortlived")

    async def after() -> None:
        async with AsyncClient(mongo_url) as aclient:
            assert (await aclient.group_info(group_id))["results"] == [{"x": 2.0}, {"x": 4.0}]
            assert (await aclient.wait_workflow(workflow_id, timeout=10))["state"] == "failed"
            queued = await aclient.retry_workflow(workflow_id)
            assert [doc["flow"]["node"] for doc in queued] == ["second"]
            cancelled = await aclient.cancel_workflow(workflow_id)
            assert cancelled["state"] == "cancelled" and cancelled["counts"]["cancelled"] == 1

    run(after)


def test_schedules_from_an_application_s_async_connection_say_what_to_do(mongo_url: str) -> None:
    async def body() -> None:
        app: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url)
        async with AsyncClient(app) as aclient:
            with pytest.raises(ConfigError, match="make it from a URL"):
                await aclient.every("1 hour", "double")
        await app.close()

    run(body)


def test_transactions_commit_and_abort_with_the_application_s_writes(mongo_url: str) -> None:
    async def body() -> None:
        app: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url)
        client = AsyncClient(app)
        orders = client.db.orders
        async with client.transaction() as s:
            await orders.insert_one({"_id": "kept"}, session=s)
            kept = await client.now("double", {"x": 1}, session=s)
            assert await client.count_jobs() == 0
        with pytest.raises(RuntimeError):
            async with client.transaction() as s:
                await orders.insert_one({"_id": "gone"}, session=s)
                await client.now("double", {"x": 2}, session=s)
                raise RuntimeError("declined")

        async def ship(s: Any) -> str:
            await orders.insert_one({"_id": "third"}, session=s)
            return await client.now("double", {"x": 3}, session=s)

        third = await client.run_in_transaction(ship)
        assert {j["_id"] for j in await client.jobs()} == {
            (await client.get(kept))["_id"],
            (await client.get(third))["_id"],
        }
        assert sorted(await orders.distinct("_id")) == ["kept", "third"]
        await client.close()
        await app.admin.command("ping")  # the application's connection stays open
        await app.close()

    run(body)


def test_without_change_streams_in_use_wake_ups_go_out_after_the_commit(
    mongo_url: str, db: Any
) -> None:
    async def body() -> None:
        async with AsyncClient(mongo_url, wakeups="channel") as client:
            async with client.transaction() as s:
                job_id = await client.now("double", {"x": 1}, session=s)
                await client.flush()
                assert db.channel.count_documents({"event": "job:queued"}) == 0
            assert await client.flush()
            (hint,) = db.channel.find({"event": "job:queued"})
            assert [j["id"] for j in hint["message"]["jobs"]] == [job_id]

    run(body)


def test_a_fastapi_route_enqueues_on_the_loop_without_a_thread(mongo_url: str) -> None:
    threads: list[int] = []
    app = FastAPI()
    client = AsyncClient(mongo_url)

    @app.post("/orders")
    async def order() -> dict[str, str]:
        threads.append(threading.get_ident())
        return {"job": await client.now("double", {"x": 1})}

    async def body() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
            answers = await asyncio.gather(*(http.post("/orders") for _ in range(20)))
        assert {a.status_code for a in answers} == {200}
        assert len({a.json()["job"] for a in answers}) == 20
        assert await client.count_jobs() == 20
        await client.close()

    run(body)
    assert set(threads) == {threading.get_ident()}  # every enqueue ran on the test's loop
