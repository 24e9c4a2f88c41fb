"""Which manager leads: one lease document, renewed by its owner.

Only the leader answers handshakes, watches workers and recovers jobs; the
others stand by and take over once the lease has expired.

Anyone who can write the database can write this document too. A lease that
runs further ahead than a manager ever takes it (a few of its lifetimes), or
whose expiry is not a time, is not one a live manager holds: it is taken over,
so one forged document cannot stop all leadership. Every manager also keeps a
document of its own there (``manager:<id>``, refreshed with the lease), and a
standby that sees the lease held by a manager without one says so, loudly.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import structlog
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from qworker import protocol
from qworker.when import utcnow

log = structlog.get_logger("qworker.leadership")

LEASE_ID = protocol.LEADER_LEASE_ID
# A live manager's lease never runs further ahead than this many of its lifetimes.
MAX_AHEAD = 3


class Leadership:
    def __init__(self, leases: AsyncCollection[dict], owner: str, ttl: float) -> None:  # type: ignore[type-arg]
        self.leases, self.owner, self.ttl = leases, owner, ttl
        self._doubted: str | None = None  # the unknown holder last said

    async def hold(self) -> bool:
        """Take the lease if it is free, expired or implausible, renew it if ours;
        True if we lead."""
        now = utcnow()
        await self.leases.update_one(  # this manager runs (the TTL index forgets it a day on)
            {"_id": f"manager:{self.owner}"},
            {"$set": {"seenAt": now, "expireAt": now + timedelta(days=1)}},
            upsert=True,
        )
        implausible = now + timedelta(seconds=MAX_AHEAD * self.ttl)
        taken_over = await self.leases.find_one(
            {
                "_id": LEASE_ID,
                "owner": {"$ne": self.owner},
                "$or": [
                    {"expiresAt": {"$gt": implausible}},
                    {"expiresAt": {"$not": {"$type": "date"}}},
                ],
            },
        )
        try:
            await self.leases.update_one(
                {
                    "_id": LEASE_ID,
                    "$or": [
                        {"owner": self.owner},
                        {"expiresAt": {"$lt": now}},
                        {"expiresAt": {"$gt": implausible}},
                        {"expiresAt": {"$not": {"$type": "date"}}},
                    ],
                },
                {
                    "$set": {
                        "owner": self.owner,
                        "expiresAt": now + timedelta(seconds=self.ttl),
                        "renewedAt": now,
                    }
                },
                upsert=True,
            )
        except DuplicateKeyError:
            await self._doubt(now)
            return False  # another manager holds a live lease
        if taken_over is not None:
            log.error(
                "took over a lease no live manager could hold",
                manager_id=self.owner,
                held_by=str(taken_over.get("owner"))[:200],
                expires=str(taken_over.get("expiresAt"))[:100],
            )
        return True

    async def _doubt(self, now: datetime) -> None:
        """Say it when the lease's holder keeps no document of its own (once per holder)."""
        lease: dict[str, Any] | None = await self.leases.find_one({"_id": LEASE_ID})
        holder = str((lease or {}).get("owner"))[:200]
        if lease is None or holder == self._doubted:
            return
        recently = now - timedelta(seconds=MAX_AHEAD * self.ttl)
        if await self.leases.find_one({"_id": f"manager:{holder}", "seenAt": {"$gt": recently}}):
            return
        self._doubted = holder
        log.error(
            "the lease is held by no manager that runs: if none of that name does, "
            "the leases collection was written by someone else",
            held_by=holder,
            expires=str(lease.get("expiresAt"))[:100],
        )

    async def release(self) -> None:
        """Give the lease up (a standby takes over at once), and the document of this manager."""
        await self.leases.delete_one({"_id": LEASE_ID, "owner": self.owner})
        await self.leases.delete_one({"_id": f"manager:{self.owner}"})
