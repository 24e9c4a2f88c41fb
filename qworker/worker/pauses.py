"""The pauses of a worker's tasks (``qworker.controls``), as it last read them.

Read before the first claim, every poll interval, and at once on the
channel's ``task:control`` hint (which anyone may write: it only asks for a
read). A paused task gets no room in the claim loop, and its candidates are
dropped; a resumed one asks for a read of the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog
from pymongo.errors import PyMongoError

log = structlog.get_logger("qworker.worker")


class Pauses:
    def __init__(
        self,
        read: Callable[[], Awaitable[set[str]]],
        every: float,
        on_change: Callable[[frozenset[str]], None],
    ) -> None:
        self._read, self.every, self.on_change = read, every, on_change
        self.paused: frozenset[str] = frozenset()
        self.asked = asyncio.Event()

    async def read(self) -> None:
        try:
            paused = frozenset(await self._read())
        except PyMongoError as exc:
            log.warning("cannot read the pauses of its tasks", error=str(exc))
            return
        if paused != self.paused:
            log.info(
                "task pauses changed",
                paused=sorted(paused - self.paused),
                resumed=sorted(self.paused - paused),
            )
            self.paused = paused
            self.on_change(paused)

    async def keep(self) -> None:
        """Read again every ``every`` seconds, or at once when asked."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.asked.wait(), self.every)
            self.asked.clear()
            await self.read()
