"""A worker's channel publisher: a message already delivered never wedges the rest.

In process, against the real server: the worker's outbox writer with the channel
of this test's database.
"""

from __future__ import annotations

import asyncio
from typing import Any

from qworker import protocol
from qworker.channel import Channel, message
from qworker.mongo import Names, async_client
from qworker.schema import prepare
from qworker.store import WorkerStore
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
