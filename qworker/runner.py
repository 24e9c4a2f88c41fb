"""Running one handler: on the event loop, in a thread, or in a child process.

``execute`` raises ``JobTimeout`` at the deadline. An ``async def`` handler is
cancelled there; a thread cannot be killed, so it is told through
``job.cancelled`` and its late result is discarded; a process-isolated job
(``isolation: process``) is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import multiprocessing
import os
import threading
import traceback
from collections.abc import Awaitable
from multiprocessing.connection import Connection, wait
from typing import Any

from qworker.job import Job, Reporter
from qworker.registry import Handler, Registry
from qworker.tasks import TaskMeta, import_code, run_setup
from qworker.threads import CachedThreads

THREADS = CachedThreads()


class JobTimeout(Exception):
    """The run passed its deadline."""


class HandlerError(Exception):
    """A failure described by type, message and traceback (from a child process)."""

    def __init__(self, kind: str, message: str, trace: str) -> None:
        super().__init__(message)
        self.kind, self.message, self.trace = kind, message, trace


async def execute(
    handler: Handler, job: Job, meta: TaskMeta, timeout: float | None, reporter: Reporter
) -> Any:
    run: Awaitable[Any]
    if meta.isolation == "process":
        run = _in_process(meta, job, reporter)
    elif inspect.iscoroutinefunction(handler):
        run = handler(job)
    else:
        run = _in_thread(handler, job)
    try:
        return await asyncio.wait_for(run, timeout)
    except TimeoutError:
        job.cancel()
        raise JobTimeout(f"timeout after {timeout:g}s") from None


async def call(fn: Any, *args: Any) -> Any:
    """Call a sync or async hook; sync ones run in a thread so the loop stays free."""
    if inspect.iscoroutinefunction(fn):
        return await fn(*args)
    return await _in_thread(fn, *args)


def _in_thread(fn: Any, *args: Any) -> asyncio.Future[Any]:
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


class _PipeReporter:
    """In the child: forwards progress and log lines to the parent."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def progress(self, job: Job, percent: float, step: str | None) -> None:
        self.conn.send(("progress", percent, step))

    def log(self, job: Job, level: str, text: str) -> None:
        self.conn.send(("log", level, text))


def _exit_with_parent() -> None:
    """In the child: die when the worker dies (even by SIGKILL), so that a job whose
    lease runs out and is run again elsewhere never also runs on in an orphan."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="qworker-parent-watch", daemon=True).start()


def _child_main(meta: TaskMeta, doc: dict[str, Any], conn: Connection) -> None:
    _exit_with_parent()
    try:
        registry = Registry()
        run_setup(import_code(meta), registry, meta)
        handler = registry.handlers[meta.id]
        job = Job(doc, _PipeReporter(conn))
        result = asyncio.run(handler(job)) if inspect.iscoroutinefunction(handler) else handler(job)
        conn.send(("ok", result))
    except BaseException as exc:
        conn.send(("error", type(exc).__name__, str(exc), traceback.format_exc()))
    finally:
        conn.close()


def _pump(conn: Connection, job: Job, reporter: Reporter) -> tuple[Any, ...]:
    """In a parent thread: relay the child's messages until its final one."""
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return ("error", "ProcessDied", "the job's process exited without a result", "")
        if message[0] == "progress":
            reporter.progress(job, message[1], message[2])
        elif message[0] == "log":
            reporter.log(job, message[1], message[2])
        else:
            return tuple(message)


async def _in_process(meta: TaskMeta, job: Job, reporter: Reporter) -> Any:
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe(duplex=False)
    process = context.Process(
        target=_child_main, args=(meta, job.doc, child), name=f"qworker-job-{job.id}", daemon=True
    )
    process.start()
    child.close()
    try:
        final = await _in_thread(_pump, parent, job, reporter)
    finally:
        if process.is_alive():
            process.kill()
        await asyncio.to_thread(process.join, 5)
        parent.close()
    if final[0] == "ok":
        return final[1]
    raise HandlerError(final[1], final[2], final[3])
