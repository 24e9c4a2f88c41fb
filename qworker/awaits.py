"""A floor under the rhythm of awaited reads: a tail's ``getMore``, a change stream's.

On MongoDB a ``getMore`` that waits for news and finds none returns after its await
time (``maxAwaitTimeMS``). SecantusDB ends every waiting ``getMore`` at any write to
any collection, with nothing in it: each waiter then costs the server one more round
trip per write, so K workers (a change stream and a channel tail each) make every
job's writes cost about 2K more reads, and four workers were slower than one
(``docs/benchmarks.md``, "Where a job's time goes"). A read that came back empty
before ``MIN_GAP`` is followed by a pause up to it: at most 1/``MIN_GAP`` empty reads
a second per waiter. On a server that waits as MongoDB does, an empty read takes its
whole await time, so nothing ever pauses; news arriving during a pause waits for it
(at most ``MIN_GAP``), which only happens while other writes keep the server busy.
A channel tail that carries no wake-ups paces slower (``qworker.channel.TAIL_GAP``),
and so does a busy worker's change stream (``qworker.worker.jobfeed.BUSY_GAP``).
"""

from __future__ import annotations

import time

MIN_GAP = 0.1  # seconds from the start of one empty awaited read to the next read


class Pace:
    """The pace of one loop of awaited reads: ``begin`` before a read, and after one
    that brought nothing, pause for ``rest()`` seconds."""

    def __init__(self, gap: float = MIN_GAP) -> None:
        self.gap = gap
        self._began = time.monotonic()

    def begin(self) -> None:
        self._began = time.monotonic()

    def rest(self) -> float:
        """How long to pause after an empty read begun at the last ``begin``: what is
        left of the gap (0 once it has passed, as after a read that waited)."""
        return max(0.0, self.gap - (time.monotonic() - self._began))
