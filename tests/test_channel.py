"""The channel: delivery by event, de-duplication, and a rolled capped window."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import bson
from bson import ObjectId

from qworker.channel import BUNDLE, BUNDLE_BYTES, Channel, message
from qworker.mongo import async_client


def run(coro: Any) -> Any:
    return asyncio.run(coro)


Publish = Callable[[Channel], Awaitable[None]]


def delivered(mongo_url: str, events: list[str], publish: Publish, count: int) -> Any:
    """What a subscriber to ``events`` got of what ``publish`` sent: (event, n) pairs,
    once ``count`` arrived and a while after (no duplicate may follow); and the
    channel's documents."""

    async def scenario() -> tuple[list[tuple[str, int]], list[dict[str, Any]]]:
        client = async_client(mongo_url)
        db = client.get_default_database()
        await db.create_collection("channel", capped=True, size=4 << 20)
        channel = Channel(db.channel)
        got: list[tuple[str, int]] = []
        ready = asyncio.Event()

        async def on(event: str, body: dict[str, Any]) -> None:
            got.append((event, body["n"]))

        task = asyncio.create_task(channel.subscribe(events, on, ready))
        await ready.wait()
        await publish(channel)
        for _ in range(200):
            if len(got) >= count:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # nothing more (no duplicates) may arrive
        task.cancel()
        docs = await db.channel.find().to_list()
        await client.close()
        return got, docs

    return run(scenario())


def test_a_subscriber_gets_only_its_events_in_order(mongo_url: str) -> None:
    async def publish(channel: Channel) -> None:
        for n in range(20):
            await channel.publish("a" if n % 2 else "b", {"n": n})
            await channel.publish("other", {"n": n})

    got, _ = delivered(mongo_url, ["a", "b"], publish, 20)
    assert got == [("a" if n % 2 else "b", n) for n in range(20)]


def test_messages_published_together_travel_bundled_and_arrive_one_by_one(
    mongo_url: str,
) -> None:
    """Few documents on the channel, the same messages in the same order to each
    subscriber; one too big to share travels alone, and a malformed part of a bundle
    someone else wrote is skipped without losing the rest."""
    big = "x" * BUNDLE_BYTES

    async def publish(channel: Channel) -> None:
        sent = [message("other" if n % 3 == 0 else "a", {"n": n}) for n in range(40)]
        sent[20] = message("a", {"n": 20, "pad": big})
        await channel.publish_many(sent)
        parts: list[Any] = [5, {"event": "a"}, {"event": BUNDLE, "message": {"n": -1}}]
        forged = message(BUNDLE, {"messages": [*parts, {"event": "a", "message": {"n": 100}}]})
        await channel.collection.insert_one({**forged, "events": ["a"]})

    got, docs = delivered(mongo_url, ["a"], publish, 27)
    assert got == [("a", n) for n in [*range(40), 100] if n % 3 != 0]
    assert [d["event"] for d in docs] == [BUNDLE, "a", BUNDLE, BUNDLE]
    assert all(len(bson.encode(d)) <= BUNDLE_BYTES for d in docs if d["event"] == BUNDLE)


def test_a_rolled_window_is_detected_and_skipped(mongo_url: str) -> None:
    async def scenario() -> tuple[datetime, datetime, datetime, datetime]:
        client = async_client(mongo_url)
        db = client.get_default_database()
        await db.create_collection("channel", capped=True, size=4096, max=5)
        channel = Channel(db.channel)
        long_ago = datetime.now(UTC) - timedelta(minutes=10)
        for n in range(20):  # far more than the window holds
            await channel.publish("x", {"n": n})
        rolled = await channel._check_window(long_ago)
        recent = datetime.now(UTC) + timedelta(seconds=1)
        kept = await channel._check_window(recent)
        await client.close()
        return long_ago, rolled, recent, kept

    long_ago, rolled, recent, kept = run(scenario())
    assert rolled > long_ago + timedelta(minutes=9), "a rolled position jumps to now"
    assert kept == recent, "a position still inside the window is kept"


def test_a_message_that_became_visible_late_is_still_delivered(mongo_url: str) -> None:
    """A message's id is stamped when its publisher builds it; on a loaded server the insert
    can land seconds later. A live cursor that has caught up in between must still deliver it
    (once, a forged-cancel test lost its message so on CI)."""

    async def scenario() -> list[int]:
        client = async_client(mongo_url)
        db = client.get_default_database()
        await db.create_collection("channel", capped=True, size=1 << 20)
        channel = Channel(db.channel)
        got: list[int] = []
        ready = asyncio.Event()

        async def on(event: str, body: dict[str, Any]) -> None:
            got.append(body["n"])

        task = asyncio.create_task(channel.subscribe(["late"], on, ready))
        await ready.wait()
        await asyncio.sleep(8)  # the cursor catches up, empty, several times
        stamped = ObjectId.from_datetime(datetime.now(UTC) - timedelta(seconds=5))
        await db.channel.insert_one({"_id": stamped, "event": "late", "message": {"n": 1}})
        await channel.publish("late", {"n": 2})
        for _ in range(200):
            if len(got) >= 2:
                break
            await asyncio.sleep(0.05)
        task.cancel()
        await client.close()
        return got

    assert run(scenario()) == [1, 2]
