"""A worker's channel publisher: a message already delivered never wedges the rest.

In process, against the real server: the worker's outbox writer with the channel
of this test's database.
"""

from __future__ import annotations

import asyncio
from typing import Any

from qworker import protocol
from qworker.channel import Channel, message
from qworker.job import Job
from qworker.lifecycle import KEEP, Outcome
from qworker.model import JobState, new_job
from qworker.mongo import Names, async_client
from qworker.schema import prepare
from qworker.store import WorkerStore
from qworker.when import utcnow
from qworker.worker.outbox import Outbox, OutboxWriter


def test_a_message_already_on_the_channel_is_taken_as_delivered(mongo_url: str, db: Any) -> None:
    """An insert whose answer was lost in an outage is retried: its messages are there
    already, and a retry of the same batch must not fail on them forever."""
    prepare(mongo_url, Names())
    delivered, pending = (message(protocol.JOB_QUEUED, {"n": n}) for n in range(2))
    db.channel.insert_one(delivered)

    async def publish() -> list[Any]:
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
        writer.notes = [delivered, pending]
        try:
            await asyncio.wait_for(writer.publish(), 15)
        finally:
            await client.close()
        return writer.notes

    assert asyncio.run(publish()) == []
    sent = [doc["message"]["n"] for doc in db.channel.find({"event": protocol.JOB_QUEUED})]
    assert sorted(sent) == [0, 1]


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
