"""Threads for blocking handlers: reused while idle, a new one when none is free.

Starting a thread blocks the caller until the thread runs, which under load
costs the event loop milliseconds per job; reusing idle threads avoids that.
A pool of fixed size would not do either: a handler that overruns its timeout
cannot be killed and would hold its thread, starving the jobs behind it. Here
such a thread is simply not idle, and the next job gets another one.

``call`` and ``in_thread`` run blocking code there from the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import queue
import threading
from collections.abc import Callable
from typing import Any

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


THREADS = CachedThreads()


async def call(fn: Any, *args: Any) -> Any:
    """Call a sync or async hook; sync ones run in a thread so the loop stays free."""
    if inspect.iscoroutinefunction(fn):
        return await fn(*args)
    return await in_thread(fn, *args)


def in_thread(fn: Any, *args: Any) -> asyncio.Future[Any]:
    """Run in a worker thread (see ``threads``), settling a future on the loop."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(value: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)

    def target() -> None:
        try:
            value, error = fn(*args), None
        except BaseException as exc:
            value, error = None, exc
        # The loop may have closed while a timed-out handler was still running.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, value, error)

    THREADS.submit(target)
    return future
