"""asyncio helpers for loops that must end when they are cancelled.

On Python 3.11 ``asyncio.wait_for`` can swallow a cancellation that arrives
just as the future it waits for completes (CPython gh-86296). pymongo waits
that way during server selection, so a task cancelled while MongoDB is
unreachable may carry on, later seeing only a ``ServerSelectionTimeoutError``.
The request is still counted by ``Task.cancelling()``: a loop that catches
pymongo's errors and goes on calls ``check_cancelled`` first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

# Seconds between repeated cancels of a task that did not end on the last one.
RECANCEL_SECONDS = 0.1


def check_cancelled() -> None:
    """Raise ``CancelledError`` if this task was asked to stop (even if the request was lost)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel ``tasks`` and wait until all have ended, cancelling again those that carry on."""
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_SECONDS)
