"""A worker's channel publisher: a message already delivered never wedges the rest.

In process, against the real server: the worker's publisher with the channel of
this test's database.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from conftest import TASKS

from qworker import protocol
from qworker.channel import Channel, message
from qworker.config import WorkerSettings
from qworker.mongo import Names, async_client, prepare
from qworker.tasks import select
from qworker.worker.daemon import Worker


def test_a_message_already_on_the_channel_is_taken_as_delivered(mongo_url: str, db: Any) -> None:
    """An insert whose answer was lost in an outage is retried: its messages are there
    already, and a retry of the same batch must not fail on them forever."""
    settings = WorkerSettings(mongo=mongo_url, worker_id="w", tasks=("noop",), paths=(TASKS,))
    worker = Worker(settings, select([Path(TASKS)], ["noop"]))
    prepare(mongo_url, Names())
    delivered, pending = (message(protocol.JOB_QUEUED, {"n": n}) for n in range(2))
    db.channel.insert_one(delivered)

    async def publish() -> None:
        client = async_client(mongo_url)
        worker.channel = Channel(client.get_default_database()[Names().channel])
        worker._notes = [delivered, pending]
        try:
            await asyncio.wait_for(worker._publish_notes(), 15)
        finally:
            await client.close()

    asyncio.run(publish())
    assert worker._notes == []
    sent = [doc["message"]["n"] for doc in db.channel.find({"event": protocol.JOB_QUEUED})]
    assert sorted(sent) == [0, 1]
