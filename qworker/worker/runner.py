"""Running one handler: on the event loop, in a thread, or in a child process.

``execute`` raises ``JobTimeout`` at the deadline. An ``async def`` handler is
cancelled there; a thread cannot be killed, so it is told through
``job.cancelled`` and its late result is discarded; a process-isolated job
(``isolation: process``) is killed.
"""

from __future__ import annotations

import asyncio
import inspect
import multiprocessing
import os
import signal
import threading
import traceback
from collections.abc import Awaitable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from qworker.errors import JobFailed, Snooze, WorkerFailed
from qworker.job import Job, Reporter
from qworker.logs import LogSettings, log_settings
from qworker.logs import configure as configure_logs
from qworker.tasks import TaskMeta, import_code
from qworker.worker.registry import Handler
from qworker.worker.taskapi import Engine, TaskHandle, TaskSetup, run_setup
from qworker.worker.threads import in_thread
from qworker.workflows import Built


class JobTimeout(Exception):
    """The run passed its deadline."""


class HandlerError(Exception):
    """A failure described by type, message and traceback (from a child process)."""

    def __init__(self, kind: str, message: str, trace: str) -> None:
        super().__init__(message)
        self.kind, self.message, self.trace = kind, message, trace


async def execute(
    handler: Handler,
    job: Job,
    meta: TaskMeta,
    timeout: float | None,
    reporter: Reporter,
    engine: Engine,
) -> Any:
    run: Awaitable[Any]
    if meta.isolation == "process":
        run = _in_process(meta, job, reporter, engine)
    elif inspect.iscoroutinefunction(handler):
        run = handler(job)
    else:
        run = in_thread(handler, job)
    try:
        return await asyncio.wait_for(run, timeout)
    except TimeoutError:
        job.cancel()
        raise JobTimeout(f"timeout after {timeout:g}s") from None


class _PipeReporter:
    """In the child: forwards progress and log lines to the parent."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def progress(self, job: Job, percent: float, step: str | None) -> None:
        self.conn.send(("progress", percent, step))

    def log(self, job: Job, level: str, text: str) -> None:
        self.conn.send(("log", level, text))


class _PipeEngine:
    """In the child: what task code asks of the worker goes to the parent, in order."""

    def __init__(self, conn: Connection, worker_id: str) -> None:
        self.conn, self._worker_id = conn, worker_id

    @property
    def worker_id(self) -> str:
        return self._worker_id

    def add_subtask(self, doc: dict[str, Any]) -> None:
        self.conn.send(("subtask", doc))

    def add_workflow(self, built: Built) -> None:
        self.conn.send(("workflow", built))

    def fail_worker(self, reason: str) -> None:
        self.conn.send(("worker-fail", reason))


@dataclass(frozen=True)
class ChildContext:
    """What a child process needs besides the task and the job: who it works for, how to log."""

    worker_id: str
    log_settings: LogSettings


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


def _ignore_interrupts() -> None:
    """In the child: Ctrl-C reaches the terminal's whole process group, but only the
    worker decides what becomes of a job (finish within the grace, or hand it back).
    The child started with SIGINT blocked (see ``_start``), so none slipped in."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _child_main(
    meta: TaskMeta, doc: dict[str, Any], conn: Connection, context: ChildContext
) -> None:
    _ignore_interrupts()
    _exit_with_parent()
    configure_logs(context.log_settings)
    try:
        worker = TaskSetup(_PipeEngine(conn, context.worker_id))
        run_setup(import_code(meta), worker, TaskHandle(meta, context.worker_id))
        handler = worker.handlers[meta.id]
        job = Job(doc, _PipeReporter(conn))
        result = asyncio.run(handler(job)) if inspect.iscoroutinefunction(handler) else handler(job)
        conn.send(("ok", result))
    except JobFailed as exc:
        conn.send(("fail", str(exc)))
    except Snooze as exc:
        conn.send(("snooze", exc.seconds))
    except WorkerFailed as exc:
        conn.send(("stopped", str(exc)))
    except BaseException as exc:
        conn.send(("error", type(exc).__name__, str(exc), traceback.format_exc()))
    finally:
        conn.close()


def _pump(conn: Connection, job: Job, reporter: Reporter, engine: Engine) -> tuple[Any, ...]:
    """In a parent thread: relay the child's messages until its final one."""
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return ("error", "ProcessDied", "the job's process exited without a result", "")
        kind = message[0]
        if kind == "progress":
            reporter.progress(job, message[1], message[2])
        elif kind == "log":
            reporter.log(job, message[1], message[2])
        elif kind == "subtask":
            engine.add_subtask(message[1])
        elif kind == "workflow":
            engine.add_workflow(message[1])
        elif kind == "worker-fail":
            engine.fail_worker(message[1])
        else:
            return tuple(message)


async def _in_process(meta: TaskMeta, job: Job, reporter: Reporter, engine: Engine) -> Any:
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe(duplex=False)
    process = context.Process(
        target=_child_main,
        name=f"qworker-job-{job.id}",
        daemon=True,
        args=(meta, job.doc, child, ChildContext(engine.worker_id, log_settings())),
    )
    _start(process)
    child.close()
    try:
        final = await in_thread(_pump, parent, job, reporter, engine)
    finally:
        if process.is_alive():
            process.kill()
        await asyncio.to_thread(process.join, 5)
        parent.close()
    if final[0] == "ok":
        return final[1]
    if final[0] == "fail":
        raise JobFailed(final[1])
    if final[0] == "snooze":
        raise Snooze(final[1])
    if final[0] == "stopped":
        raise WorkerFailed(final[1])
    raise HandlerError(final[1], final[2], final[3])


def _start(process: BaseProcess) -> None:
    """Start the child with SIGINT blocked: it inherits the mask, and a Ctrl-C that
    arrives while its interpreter starts stays pending until it ignores SIGINT."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        process.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
