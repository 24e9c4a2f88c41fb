"""The pings the leader hears, written in one batch per round.

A ping used to cost the leader one update and one round trip, as it read the
channel: 5,000 forged pings put it 18 s behind, and behind, it counted the
pings it had not read yet as missed and declared live workers dead. Now a ping
only notes the newest time heard from that instance; each round of the lead
loop writes them all in one unordered batch, before it looks for the dead.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from pymongo import UpdateOne
from pymongo.asynchronous.collection import AsyncCollection

from qworker.fleet import kept_until
from qworker.logs import Throttle
from qworker.when import utcnow

Doc = dict[str, Any]
# Instances remembered between two rounds; past this (a flood of forged ids) the
# round is written at once.
MAX_PENDING = 1_000


class Pings:
    def __init__(self, throttle: Throttle) -> None:
        self._heard: dict[tuple[str, str], tuple[datetime, Any]] = {}
        self._throttle = throttle
        # One write at a time: whoever looks for the dead after a write must find
        # every ping heard before it stored, not taken by a write still under way.
        self._writing = asyncio.Lock()

    def __len__(self) -> int:
        return len(self._heard)

    def hear(self, worker_id: str, nonce: str, running: Any) -> bool:
        """Note a ping; True when the round should be written now (too many pending)."""
        self._heard[(worker_id, nonce)] = (utcnow(), running)
        return len(self._heard) >= MAX_PENDING

    async def write(self, workers: AsyncCollection[Doc]) -> None:
        """The pings heard since the last write; a ping sent while its worker was saying
        goodbye does not revive it (nor one of an instance the leader never accepted)."""
        async with self._writing:
            heard, self._heard = self._heard, {}
            if not heard:
                return
            try:
                await self._write(workers, heard)
            except BaseException:
                for key, ping in heard.items():  # heard all the same: kept for the next write
                    self._heard.setdefault(key, ping)
                raise

    async def _write(
        self, workers: AsyncCollection[Doc], heard: dict[tuple[str, str], tuple[datetime, Any]]
    ) -> None:
        ops = [
            UpdateOne(
                {"_id": worker_id, "nonce": nonce, "state": {"$ne": "stopped"}},
                {
                    "$set": {
                        "pingedAt": at,
                        "state": "running",
                        "expireAt": kept_until(at),
                        "running": running,
                    }
                },
            )
            for (worker_id, nonce), (at, running) in heard.items()
        ]
        result = await workers.bulk_write(ops, ordered=False)
        unknown = len(ops) - result.matched_count
        if unknown:
            self._throttle.warning(
                "ignoring pings of unknown or stopped worker instances", count=unknown
            )
