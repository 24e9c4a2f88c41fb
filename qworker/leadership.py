"""Which manager leads: one lease document, renewed by its owner.

Only the leader answers handshakes, watches workers and recovers jobs; the
others stand by and take over once the lease has expired.
"""

from __future__ import annotations

from datetime import timedelta

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from qworker.when import utcnow

LEASE_ID = "manager"


class Leadership:
    def __init__(self, leases: AsyncCollection[dict], owner: str, ttl: float) -> None:  # type: ignore[type-arg]
        self.leases, self.owner, self.ttl = leases, owner, ttl

    async def hold(self) -> bool:
        """Take the lease if it is free or expired, renew it if ours; True if we lead."""
        now = utcnow()
        try:
            await self.leases.update_one(
                {"_id": LEASE_ID, "$or": [{"owner": self.owner}, {"expiresAt": {"$lt": now}}]},
                {"$set": {"owner": self.owner, "expiresAt": now + timedelta(seconds=self.ttl),
                          "renewedAt": now}},
                upsert=True,
            )  # fmt: skip
        except DuplicateKeyError:
            return False  # another manager holds a live lease
        return True

    async def release(self) -> None:
        await self.leases.delete_one({"_id": LEASE_ID, "owner": self.owner})
