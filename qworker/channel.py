"""Pub/sub over a capped collection, tailed with a tailable await cursor.

Messages published together travel as a bundle: one document holding them
all, delivered to each subscriber one message at a time as if each had been
its own. On some servers (SecantusDB) every insert into a capped collection
and every tailing read costs in proportion to the documents it holds, so a
notification per document made the channel dearer with every job run.

A subscriber remembers the last ``_id`` it saw; after a broken cursor, a
server restart or a dropped connection it resumes after it, with backoff, so
a short outage loses no message still inside the capped window.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import bson
import structlog
from bson import ObjectId
from bson.codec_options import DatetimeConversion
from pymongo import CursorType
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.collection import Collection as SyncCollection
from pymongo.errors import PyMongoError

from qworker.aio import check_cancelled
from qworker.awaits import Pace

log = structlog.get_logger("qworker.channel")

# Message ids carry the publisher's clock; a subscriber reads this far back
# (and drops what it already delivered) so that hosts whose clocks differ by
# less than this lose nothing. Hosts are expected to run NTP.
CLOCK_SKEW = timedelta(seconds=2)
SEEN_IDS = 4096
# The channel holds 16 MiB by default: a message near that size would evict
# the rest of it, and every tailing read of it costs seconds on some servers.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# A bundle is filled up to this: large enough that a busy worker's notifications of
# a flush share a document, small enough that one never holds much of the window.
BUNDLE_BYTES = 256 * 1024
BUNDLE = "channel:bundle"
# A tail's empty reads, at most two a second: on SecantusDB each one reads every
# document the channel holds, and it comes at every write of anyone (see
# qworker.awaits and docs/decisions.md, "The channel's tails"). Only a worker woken
# by the channel for new jobs tails it faster.
TAIL_GAP = 0.5

Handler = Callable[[str, dict[str, Any]], Awaitable[None]]


def message(event: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"_id": ObjectId(), "event": event, "message": body, "ts": datetime.now(UTC)}


def oversized(doc: dict[str, Any]) -> bool:
    return len(bson.encode(doc)) > MAX_MESSAGE_BYTES


def bundled(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` in as few channel documents as fit ``BUNDLE_BYTES`` each, in order.

    A lone message, one too big to share, and a bundle made before (a batch put
    back after a failed insert, which must keep its id) go on as they are.
    """
    docs: list[dict[str, Any]] = []
    group: list[dict[str, Any]] = []
    size = 0

    def close() -> None:
        if len(group) == 1:
            docs.append(group[0])
        elif group:
            inner = [{"event": m["event"], "message": m["message"]} for m in group]
            body = {"messages": inner}
            doc = message(BUNDLE, body)
            doc["events"] = sorted({m["event"] for m in group})
            docs.append(doc)
        group.clear()

    for doc in messages:
        weight = len(bson.encode(doc))
        if doc["event"] == BUNDLE or weight >= BUNDLE_BYTES:
            close()
            docs.append(doc)
            size = 0
            continue
        if size + weight > BUNDLE_BYTES:
            close()
            size = 0
        group.append(doc)
        size += weight
    close()
    return docs


def opened(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The (event, message) pairs a well-formed channel document carries: its own, or
    a bundle's, malformed ones left out (and said)."""
    if doc["event"] != BUNDLE:
        return [(doc["event"], doc["message"])]
    inner = doc["message"].get("messages")
    opened = []
    for one in inner if isinstance(inner, list) else [None]:
        event = one.get("event") if isinstance(one, dict) else None
        body = one.get("message") if isinstance(one, dict) else None
        if isinstance(event, str) and event != BUNDLE and isinstance(body, dict):
            opened.append((event, body))
        else:
            log.warning("ignoring a malformed message in a bundle", id=str(doc.get("_id")))
    return opened


def publish_sync(channel: SyncCollection[dict], event: str, body: dict[str, Any]) -> None:  # type: ignore[type-arg]
    """Publish from synchronous code (the client library, the CLI)."""
    channel.insert_one(message(event, body))


class Channel:
    """One process's view of the channel: publish, and tail for chosen events."""

    def __init__(self, collection: AsyncCollection[dict]) -> None:  # type: ignore[type-arg]
        # Any process may write here: a date out of Python's range or invalid UTF-8
        # in one message must not make the cursor fail for every subscriber.
        options = collection.codec_options.with_options(
            datetime_conversion=DatetimeConversion.DATETIME_AUTO,
            unicode_decode_error_handler="replace",
        )
        self.collection = collection.with_options(codec_options=options)
        # How far the subscriber has handled the channel: the time of the last message
        # it delivered, or now once it has caught up. A manager far behind (a flood, a
        # stall) must not count as missed the pings it has not read yet.
        self.position = datetime.now(UTC)

    async def publish(self, event: str, body: dict[str, Any]) -> None:
        await self.collection.insert_one(message(event, body))

    async def publish_many(self, messages: Sequence[dict[str, Any]]) -> None:
        """Publish ``messages`` (made by :func:`message`) bundled; unordered, so a
        refused one (a duplicate id: already published) leaves the rest in."""
        await self.collection.insert_many(bundled(messages), ordered=False)

    async def subscribe(
        self,
        events: Collection[str],
        handler: Handler,
        ready: asyncio.Event | None = None,
        gap: float = TAIL_GAP,
    ) -> None:
        """Deliver every message published from now on whose event is in ``events``.

        Runs until cancelled.

        ``ready`` is set once the first cursor is open, so a caller can publish
        knowing the subscriber will see it. ``gap`` is the floor under the rhythm
        of its empty reads (``qworker.awaits``): a subscriber that the channel
        wakes for new jobs passes ``MIN_GAP``.
        """
        since = self.position = datetime.now(UTC)
        recent: deque[ObjectId] = deque()
        seen: set[ObjectId] = set()
        delay = 0.1
        resuming = False
        while True:
            try:
                if resuming:
                    since = await self._check_window(since)
                    resuming = False
                start = ObjectId.from_datetime(since - CLOCK_SKEW)
                wanted = {"$in": list(events)}
                query = {
                    "_id": {"$gt": start},
                    "$or": [{"event": wanted}, {"event": BUNDLE, "events": wanted}],
                }
                cursor = self.collection.find(
                    query, cursor_type=CursorType.TAILABLE_AWAIT
                ).max_await_time_ms(1_000)
                if ready is not None:
                    ready.set()
                pace = Pace(gap)
                while cursor.alive:
                    pace.begin()
                    delivered = False
                    async for doc in cursor:
                        delivered, delay = True, 0.1
                        # No time check here: this cursor's query already starts at
                        # ``start``, and an id is stamped before its insert, which a
                        # loaded server may make visible seconds later.
                        if doc["_id"] in seen:
                            continue
                        recent.append(doc["_id"])
                        seen.add(doc["_id"])
                        if len(recent) > SEEN_IDS:
                            seen.discard(recent.popleft())
                        since = max(since, self._stamp(doc))
                        await self._deliver(handler, doc, events)
                        self.position = since
                    # Caught up: everything older than this has been seen.
                    self.position = datetime.now(UTC)
                    since = max(since, self.position - CLOCK_SKEW)
                    await asyncio.sleep(0 if delivered else pace.rest())
                await asyncio.sleep(0.05)
            except PyMongoError as exc:
                check_cancelled()
                log.warning("channel cursor broken, resuming", error=str(exc), retry_in=delay)
                resuming = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def silent_for(self) -> float:
        """Seconds since the subscriber last caught up (it does about every second)."""
        return (datetime.now(UTC) - self.position).total_seconds()

    async def _check_window(self, since: datetime) -> datetime:
        """Where to resume: ``since``, unless the capped window rolled past it."""
        oldest = await self.collection.find_one({}, {"_id": 1}, sort=[("$natural", 1)])
        if oldest is not None and oldest["_id"].generation_time > since:
            log.warning(
                "the channel's capped window rolled past this subscriber's position: "
                "messages were lost; carrying on from the newest",
                position=since.isoformat(),
                oldest=oldest["_id"].generation_time.isoformat(),
            )
            return datetime.now(UTC)
        return since

    @staticmethod
    def _stamp(doc: dict[str, Any]) -> datetime:
        """A message's time, as far as our position may move: never past our own clock.

        An id stamped ahead (a clock far off, or a forged id) would otherwise put
        the position there, and every message published until then would be skipped.
        """
        stamp: datetime = doc["_id"].generation_time
        now = datetime.now(UTC)
        if stamp > now + CLOCK_SKEW:
            log.warning(
                "a channel message is stamped ahead of this host's clock",
                id=str(doc["_id"]),
                ahead=round((stamp - now).total_seconds()),
            )
        return min(stamp, now)

    @classmethod
    async def _deliver(cls, handler: Handler, doc: dict[str, Any], events: Collection[str]) -> None:
        body = doc.get("message")
        event = doc.get("event")
        if not isinstance(event, str) or not isinstance(body, dict):
            log.warning("ignoring malformed channel message", id=str(doc.get("_id")))
            return
        if oversized(doc):
            log.warning(
                "ignoring an oversized channel message",
                id=str(doc.get("_id")),
                event_name=event[:200],
                limit=MAX_MESSAGE_BYTES,
            )
            return
        for event, body in opened(doc):
            if event in events:
                try:
                    await handler(event, body)
                except Exception:
                    log.exception("channel handler failed", event_name=event)
