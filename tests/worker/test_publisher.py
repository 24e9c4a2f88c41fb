"""A worker's channel publisher: a message already delivered never wedges the rest.

In process, against the real server: the worker's outbox writer with the channel
of this test's database.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from support.jobs import messages

from qworker import protocol
from qworker.channel import BUNDLE, Channel, bundled, message
from qworker.job import Job
from qworker.lifecycle import KEEP, Outcome
from qworker.model import JobState, new_job
from qworker.mongo import Names, async_client
from qworker.schema import prepare
from qworker.store import WorkerStore
from qworker.when import utcnow
from qworker.worker import outbox as outbox_module
from qworker.worker.outbox import Outbox, OutboxWriter


@asynccontextmanager
async def writer_of(mongo_url: str) -> AsyncIterator[tuple[Outbox, OutboxWriter]]:
    """A worker's outbox and its writer, on this test's database."""
    client = async_client(mongo_url)
    database = client.get_default_database()
    outbox = Outbox(30, lambda: None, "w", lambda task, event: ())
    writer = OutboxWriter(
        outbox,
        WorkerStore(database[Names().jobs], database[Names().workflows]),
        Channel(database[Names().channel]),
        lambda: None,
        lambda: None,
    )
    try:
        yield outbox, writer
    finally:
        await client.close()


def test_a_message_already_on_the_channel_is_taken_as_delivered(mongo_url: str, db: Any) -> None:
    """An insert whose answer was lost in an outage is retried: its bundle is there
    already, and a retry of the same batch must neither fail on it forever nor deliver
    its messages twice."""
    prepare(mongo_url, Names())
    sent = bundled([message(protocol.JOB_QUEUED, {"n": n}) for n in range(3)])
    assert len(sent) == 1  # one bundle of three
    db.channel.insert_one(sent[0])

    async def publish() -> list[Any]:
        async with writer_of(mongo_url) as (_, writer):
            writer.unsent = sent
            await asyncio.wait_for(writer.publish(), 15)
            return writer.notes

    assert asyncio.run(publish()) == []
    assert [m["n"] for m in messages(db, protocol.JOB_QUEUED)] == [0, 1, 2]


def test_notifications_wait_for_company_and_a_wake_up_takes_them_along(
    mongo_url: str, db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Notifications linger so that more share their channel document; a wake-up
    (which a worker is waiting for) is published at once, with what lingered."""
    prepare(mongo_url, Names())
    monkeypatch.setattr(outbox_module, "NOTES_LINGER", 60.0)

    async def scenario() -> tuple[int, list[dict[str, Any]]]:
        async with writer_of(mongo_url) as (outbox, writer):
            publishing = asyncio.create_task(writer.publish_loop())
            outbox.publish(message(protocol.WORKER_NOTIFICATION, {"n": 0}))
            await writer.flush()
            await asyncio.sleep(1.0)
            lingered = await writer.channel.collection.count_documents({})
            outbox.publish(message(protocol.JOB_QUEUED, {"n": 1}))
            await writer.flush()
            for _ in range(100):
                if not writer.notes and not writer.unsent:
                    break
                await asyncio.sleep(0.1)
            publishing.cancel()
            return lingered, await writer.channel.collection.find().to_list()

    lingered, docs = asyncio.run(scenario())
    assert lingered == 0
    assert [d["event"] for d in docs] == [BUNDLE]
    assert [m["n"] for m in messages(db, protocol.WORKER_NOTIFICATION)] == [0]
    assert [m["n"] for m in messages(db, protocol.JOB_QUEUED)] == [1]


def test_each_unwritten_outcome_of_one_claim_holds_back_claims() -> None:
    """One claim's jobs share its token; each finished one still to be written counts
    (they were counted once per claim, so a slow server let 4x the outcomes pile up)."""
    outbox = Outbox(30, lambda: None, "w1", lambda task, event: ())
    now = utcnow()
    docs = [
        {**new_job("record", {"n": n}, now=now, run_at=now), "lockToken": "w1:n:1", "attempts": 1}
        for n in range(3)
    ]
    for doc in docs:
        outbox.finish(Job(doc, outbox), Outcome(JobState.SUCCEEDED, result=None), KEEP)
    assert outbox.pending_outcomes() == 3 and outbox.unwritten() == ["w1:n:1"]
    ops = outbox.drain().ops
    outbox.written(ops[:1])
    assert outbox.pending_outcomes() == 2 and outbox.unwritten() == ["w1:n:1"]
    outbox.written(ops[1:])
    assert outbox.pending_outcomes() == 0 and outbox.unwritten() == []
