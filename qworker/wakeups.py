"""A client's ``job:queued`` wake-ups, published from a thread of their own.

A wake-up is only a hint (workers also read the queue every poll interval),
so the caller need not wait for it: ``Client.now`` returns once the job is
stored. On some servers a channel insert costs more than the job's own
insert; published here, it no longer halves a client's enqueue rate, and the
jobs enqueued while one wake-up is being published go out together in the
next. ``flush`` waits for those pending; ``close`` flushes and stops.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import structlog
from pymongo.collection import Collection
from pymongo.errors import PyMongoError

from qworker import protocol
from qworker.channel import publish_sync
from qworker.store import Doc

log = structlog.get_logger("qworker.client")

CHUNK = 1_000  # jobs named in one message


class Wakeups:
    def __init__(self, channel: Collection[Doc]) -> None:
        self._channel = channel
        self._pending: list[Doc] = []
        self._busy = False
        self._closed = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def announce(self, docs: Sequence[Doc]) -> None:
        """Publish these jobs' wake-ups soon; returns at once."""
        if not docs:
            return
        with self._cond:
            if self._closed:
                publish_now(self._channel, docs)
                return
            self._pending.extend(docs)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="qworker-wakeups", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every wake-up announced so far is published (or failed); True if so."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout: float = 10.0) -> None:
        self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return
                docs, self._pending = self._pending, []
                self._busy = True
            try:
                publish_now(self._channel, docs)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()


def publish_now(channel: Collection[Doc], docs: Sequence[Doc]) -> None:
    """``job:queued`` for these jobs, in this thread. A lost wake-up only costs latency."""
    try:
        for start in range(0, len(docs), CHUNK):
            chunk = docs[start : start + CHUNK]
            publish_sync(channel, protocol.JOB_QUEUED, protocol.queued(chunk))
    except PyMongoError as exc:
        log.warning("could not announce new jobs; workers will find them", error=str(exc))
