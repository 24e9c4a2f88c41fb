"""Live fleet events for the dashboard and API streams: one channel tail, many listeners.

The manager already tails the channel; it hands the events operators care
about to an ``EventHub``, which copies them to every listener's bounded
queue. A slow listener loses its oldest events, never the manager's time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from qworker import protocol

Event = tuple[str, dict[str, Any]]

# What a person watching the fleet wants to see: jobs moving, workers coming and going.
WATCHED = (
    protocol.WORKER_NOTIFICATION,
    protocol.WORKER_INITIALIZE,
    protocol.WORKER_STOP,
    protocol.WORKER_TERMINATE,
    protocol.WORKER_DEAD,
    protocol.MANAGER_START,
    protocol.MANAGER_STOP,
)
LISTENER_QUEUE = 1_000


CLOSED: Event = ("", {})  # the end of every stream: the manager is stopping


class EventHub:
    def __init__(self) -> None:
        self._listeners: set[asyncio.Queue[Event]] = set()

    def close(self) -> None:
        """End every listener's stream, so open browsers do not hold a stopping manager."""
        for queue in self._listeners:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(CLOSED)

    def publish(self, event: str, body: dict[str, Any]) -> None:
        if event not in WATCHED:
            return
        for queue in self._listeners:
            if queue.full():
                queue.get_nowait()  # drop the oldest: a stalled browser must not grow us
            queue.put_nowait((event, body))

    @contextlib.asynccontextmanager
    async def listen(self) -> AsyncIterator[asyncio.Queue[Event]]:
        queue: asyncio.Queue[Event] = asyncio.Queue(LISTENER_QUEUE)
        self._listeners.add(queue)
        try:
            yield queue
        finally:
            self._listeners.discard(queue)

    @property
    def listeners(self) -> int:
        return len(self._listeners)
