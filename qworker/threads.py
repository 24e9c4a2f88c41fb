"""Threads for blocking handlers: reused while idle, a new one when none is free.

Starting a thread blocks the caller until the thread runs, which under load
costs the event loop milliseconds per job; reusing idle threads avoids that.
A pool of fixed size would not do either: a handler that overruns its timeout
cannot be killed and would hold its thread, starving the jobs behind it. Here
such a thread is simply not idle, and the next job gets another one.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

IDLE_SECONDS = 60.0

Work = Callable[[], None]


class CachedThreads:
    def __init__(self, idle_seconds: float = IDLE_SECONDS) -> None:
        self.idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._idle: list[queue.SimpleQueue[Work]] = []

    def submit(self, work: Work) -> None:
        with self._lock:
            inbox = self._idle.pop() if self._idle else None
        if inbox is not None:
            inbox.put(work)
        else:
            threading.Thread(
                target=self._serve, args=(work,), name="qworker-job", daemon=True
            ).start()

    def _serve(self, work: Work) -> None:
        inbox: queue.SimpleQueue[Work] = queue.SimpleQueue()
        while True:
            work()
            with self._lock:
                self._idle.append(inbox)
            try:
                work = inbox.get(timeout=self.idle_seconds)
            except queue.Empty:
                with self._lock:
                    if inbox in self._idle:
                        self._idle.remove(inbox)
                        return
                work = inbox.get()  # handed work just as the wait ran out
