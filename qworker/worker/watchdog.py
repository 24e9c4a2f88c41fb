"""A worker's watch over itself: it stops, saying why, and exits non-zero, so that
systemd or Kubernetes starts it again, when it has stopped consuming although it
could, or when what wakes it has died for good.

* **Claims stalled.** Due jobs of its tasks wait among its candidates, with room
  for them (not paused, not held by a fleet-wide limit) and free slots, but the
  claim loop has not turned for ``--watchdog`` seconds (at least ten poll
  intervals): it is stuck on something, a server that accepts and never answers.
* **A dead wake-up.** The channel's tail, or the change stream on ``jobs``, has
  shown no sign of life for ``--watchdog`` seconds while MongoDB answers the
  worker's lease renewals: the cursor will not come back by itself.

While MongoDB does not answer at all, neither rule fires: a restart would not help,
and ``/readyz`` says so. systemd's watchdog is fed only while no rule fires.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

STALL_INTERVALS = 10  # the least a stall lasts, in poll intervals
WATCHDOG_EXIT = 5  # the exit code of a worker stopped by its watchdog


class Watchdog:
    def __init__(
        self,
        after: float,
        poll_interval: float,
        lease: float,
        could_claim: Callable[[], bool],
        answered: Callable[[], float | None],
        wakeups: Mapping[str, Callable[[], float | None]],
    ) -> None:
        """``after``: seconds (0: never fire); ``could_claim()``: due jobs with room and
        free slots; ``answered()``: when MongoDB last answered (monotonic); ``wakeups``:
        the seconds since each wake-up source last lived (None: not running)."""
        self.after = max(after, STALL_INTERVALS * poll_interval) if after > 0 else 0.0
        self.lease = lease
        self.could_claim, self.answered, self.wakeups = could_claim, answered, wakeups
        self.turned = time.monotonic()  # the claim loop's last turn
        self.fired: str | None = None

    def turn(self) -> None:
        """The claim loop turned."""
        self.turned = time.monotonic()

    def problem(self) -> str | None:
        """Why the worker must be started anew, if it must."""
        if not self.after:
            return None
        now = time.monotonic()
        stalled = now - self.turned
        if stalled > self.after and self.could_claim():
            return (
                f"claims stalled: due jobs wait with free slots, but no claim for {stalled:.0f} s"
            )
        answered = self.answered()
        if answered is None or now - answered > self.lease:
            return None  # MongoDB is away: a restart would not help
        for name, age in self.wakeups.items():
            silent = age()
            if silent is not None and silent > self.after:
                return f"the {name} has been dead for {silent:.0f} s while MongoDB answers"
        return None

    async def keep(self, every: float, fire: Callable[[str], None]) -> None:
        """Look every ``every`` seconds; ``fire(reason)`` once, then stop looking."""
        while self.fired is None:
            await asyncio.sleep(every)
            reason = self.problem()
            if reason is not None:
                self.fired = reason
                fire(reason)
