"""The jobs a worker runs now: each on an asyncio task of its own, from claim to outcome.

A run starts from its claimed document, runs the ``before_job`` observers, the
handler (on the loop, in a thread or in a child process: ``runner``) and the
``after_job`` observers, and ends with its outcome in the outbox: succeeded,
failed (retried or not, by the task's rules), cancelled, snoozed (``raise
Snooze(seconds)``: queued again for later, no attempt used), or handed back to
the queue, which is no failed attempt (a shutdown, ``worker.fail``). A job
claimed past its deadline does not run: it is expired at once; nor does a
workflow node one of whose dependencies failed (``fanin``): it is cancelled,
naming that dependency. A node that runs reads its dependencies' results first.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from pymongo import UpdateOne

from qworker import fanin, tracing
from qworker.errors import JobFailed, Snooze, WorkerFailed
from qworker.job import Job
from qworker.lifecycle import EXPIRED_REASON, Outcome, overdue, owned, refusal, release
from qworker.model import JobState, check_json, malformed
from qworker.tasks import TaskMeta
from qworker.when import utcnow
from qworker.worker.candidates import lost_before
from qworker.worker.outbox import Outbox
from qworker.worker.runner import HandlerError, JobTimeout, execute
from qworker.worker.taskapi import Engine, TaskSetup
from qworker.worker.threads import call

log = structlog.get_logger("qworker.worker")
Doc = dict[str, Any]


@dataclass
class Running:
    job: Job
    meta: TaskMeta
    task: asyncio.Task[None] | None = None
    stop_reason: str | None = None  # "cancel" or "shutdown" when we cut it short

    @property
    def key(self) -> str:
        """This run's claim of this job. A worker that lost a lease and claims the job
        again runs two claims of it, and each is renewed and ended on its own; the
        jobs of one claim batch share its token, so the job id is part of the key."""
        return f"{self.job.doc['lockToken']}/{self.job.id}"


@dataclass
class Counters:
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    cancelled: int = 0
    released: int = 0
    snoozed: int = 0  # not failures: the job asked to run later
    expired: int = 0  # claimed past their deadline, not run


class Runs:
    def __init__(
        self,
        metas: Mapping[str, TaskMeta],
        registry: TaskSetup,
        outbox: Outbox,
        engine: Engine,
        ended: Callable[[Doc], None],
        read: Callable[[Doc, Doc], Awaitable[list[Doc]]],
    ) -> None:
        """``ended(doc)`` whenever the run of a claimed job ends: its slot is free;
        ``read(query, fields)``
        finds jobs (a workflow node's dependencies)."""
        self.metas, self.registry, self.outbox, self.engine = metas, registry, outbox, engine
        self._read = read
        self._ended = ended
        self.running: dict[str, Running] = {}
        self.per_task: dict[str, int] = dict.fromkeys(metas, 0)
        self.counters = Counters()
        self.last_finished = 0.0  # monotonic

    def __len__(self) -> int:
        return len(self.running)

    def tasks(self) -> list[asyncio.Task[None]]:
        return [r.task for r in self.running.values() if r.task is not None]

    def tokens(self) -> list[str]:
        return [r.job.doc["lockToken"] for r in self.running.values()]

    def alone(self) -> bool:
        """Whether a job lost with a worker before runs here: nothing runs beside it."""
        return any(lost_before(r.job.doc) for r in self.running.values())

    def runs(self, job_id: str) -> bool:
        return any(r.job.id == job_id for r in self.running.values())

    def start(self, doc: dict[str, Any]) -> bool:
        """Run a claimed job; False if it ended at once, without running."""
        meta = self.metas[doc["name"]]
        problem = malformed(doc)
        if problem is not None:
            log.error("failing a malformed job", job_id=str(doc["_id"]), reason=problem)
            refused = refusal(problem, utcnow(), meta.retention)
            what = f"failure of malformed job {doc['_id']}"
            self.outbox.add(UpdateOne(owned(doc["_id"], doc["lockToken"]), refused), what)
            return False
        if overdue(doc, utcnow()):
            self._expire(Job(doc, self.outbox), meta)
            return False
        doomed = fanin.doomed_reason(doc)
        if doomed is not None:  # a dependency failed: it ends without running
            self.counters.cancelled += 1
            outcome = Outcome(JobState.CANCELLED, reason=doomed, ran=False)
            self.outbox.finish(Job(doc, self.outbox), outcome, meta.retention)
            log.info(
                "workflow node not run", job_id=str(doc["_id"]), task=doc["name"], reason=doomed
            )
            return False
        running = Running(Job(doc, self.outbox), meta)
        self.running[running.key] = running
        self.per_task[meta.id] += 1
        running.task = asyncio.create_task(self._run(running))
        return True

    def _expire(self, job: Job, meta: TaskMeta) -> None:
        """A job claimed past its deadline ends ``expired`` instead of running late."""
        self.counters.expired += 1
        self.outbox.finish(job, Outcome(JobState.EXPIRED, reason=EXPIRED_REASON), meta.retention)
        log.info("job expired", job_id=job.id, task=job.task, deadline=str(job.doc["expiresAt"]))

    async def _run(self, running: Running) -> None:
        """A run, in its trace span (``tracing``) when the application traces."""
        with tracing.run(running.job, self.engine.worker_id) as span:
            await self._traced(running, span)

    async def _traced(self, running: Running, span: tracing.RunSpan) -> None:
        job, meta = running.job, running.meta
        timeout = job.doc.get("timeout") or meta.timeout
        started = time.monotonic()
        log.info("job started", job_id=job.id, task=job.task, attempt=job.attempt)
        self.outbox.event(job, "start")
        observed = False
        hooks = self.registry
        try:
            await self._inputs(job)
            for observer in hooks.before:
                await call(tracing.bind(observer), job)
            handler = tracing.bind(hooks.handlers[meta.id])  # the span, current in its thread
            result = check_json(
                await execute(handler, job, meta, timeout, self.outbox, self.engine),
                "the handler's return value",
            )
            observed = True
            for observer in hooks.after:
                await call(tracing.bind(observer), job, result, None)
            outcome = Outcome(JobState.SUCCEEDED, result=result)
        except asyncio.CancelledError:
            if running.stop_reason != "cancel":
                raise  # shutdown: the job was already handed back to the queue
            outcome = Outcome(JobState.CANCELLED)
        except WorkerFailed:
            self._done(running)
            self.release(running, utcnow())  # worker.fail(): not the job's fault
            return
        except Snooze as snooze:
            job.info("%s", snooze)  # "snoozed for 30 s", in the job's own log
            outcome = Outcome(
                JobState.QUEUED,
                reason=str(snooze),
                retry_at=utcnow() + timedelta(seconds=snooze.seconds),
            )
            if not observed:
                await self._observe_failure(job, snooze)
        except Exception as exc:
            span.failed(exc)
            outcome = self._failure(
                running, exc, "timeout" if isinstance(exc, JobTimeout) else None
            )
            if not observed:
                await self._observe_failure(job, exc)
        finally:
            self._done(running)
        if job.cancelled and running.stop_reason == "cancel":
            outcome = Outcome(JobState.CANCELLED)
        self._count(outcome)
        span.ended(outcome.state.value, outcome.retry_at is not None, outcome.reason)
        self.outbox.finish(job, outcome, meta.retention)
        getattr(log, _level(outcome))(
            _ended(outcome),
            job_id=job.id,
            task=job.task,
            seconds=round(time.monotonic() - started, 3),
            reason=outcome.reason,
        )

    async def _inputs(self, job: Job) -> None:
        """A workflow node's data and upstream: read from its dependencies as it starts."""
        query = fanin.reads(job.doc)
        if query is not None:
            found = await self._read(query, fanin.INPUT_FIELDS)
            job.data, job.upstream = fanin.inputs(job.doc, found)

    async def _observe_failure(self, job: Job, exc: BaseException) -> None:
        for observer in self.registry.after:
            try:
                await call(tracing.bind(observer), job, None, exc)
            except Exception:
                log.exception("after_job observer failed", job_id=job.id)

    def _failure(self, running: Running, exc: BaseException, reason: str | None) -> Outcome:
        job, meta = running.job, running.meta
        if isinstance(exc, JobFailed):  # job.fail(reason): the reason alone, no traceback
            error, reason = {"type": "JobFailed", "message": str(exc)}, reason or str(exc)
        elif isinstance(exc, HandlerError):
            error = {"type": exc.kind, "message": exc.message, "traceback": exc.trace}
        else:
            error = {
                "type": type(exc).__name__,
                "message": str(exc),
                "traceback": "".join(traceback.format_exception(exc)),
            }
        fails = int(job.doc.get("failCount", 0)) + 1
        limit = int(job.doc.get("maxAttempts") or meta.max_attempts)
        retry_at = None
        if fails < limit and running.stop_reason != "cancel":
            retry_at = utcnow() + timedelta(seconds=meta.backoff.seconds(fails))
        return Outcome(
            JobState.FAILED,
            error=error,
            reason=reason or f"{error['type']}: {error['message']}",
            retry_at=retry_at,
        )

    def _count(self, outcome: Outcome) -> None:
        c = self.counters
        if outcome.state is JobState.SUCCEEDED:
            c.succeeded += 1
        elif outcome.state is JobState.CANCELLED:
            c.cancelled += 1
        elif outcome.state is JobState.QUEUED:
            c.snoozed += 1
        elif outcome.retry_at is not None:
            c.retried += 1
        else:
            c.failed += 1

    def _done(self, running: Running) -> None:
        self.last_finished = time.monotonic()
        if self.running.pop(running.key, None) is not None:
            self.per_task[running.meta.id] -= 1
            self._ended(running.job.doc)

    def cancel(self, job_id: str) -> bool:
        """Stop a running job: ``job.cancelled`` turns true; async and process jobs are cut."""
        runs = [r for r in self.running.values() if r.job.id == job_id]
        for running in runs:
            running.stop_reason = "cancel"
            running.job.cancel()
            if running.task is not None and (
                running.meta.isolation == "process"
                or asyncio.iscoroutinefunction(self.registry.handlers[running.meta.id])
            ):
                running.task.cancel()
            log.info("job cancel requested", job_id=job_id)
        return bool(runs)

    def release_all(self) -> None:
        """Hand every unfinished job back to ``queued`` at once; never drop one."""
        if not self.running:
            return
        now = utcnow()
        for running in list(self.running.values()):
            running.stop_reason = "shutdown"
            running.job.cancel()
            if running.task is not None:
                running.task.cancel()
            self.release(running, now)
            self._ended(running.job.doc)
        self.running.clear()

    def release(self, running: Running, now: datetime) -> None:
        """Hand a job back to ``queued`` with the next batch: not a failed attempt."""
        doc = running.job.doc
        for op in release(doc["_id"], doc["lockToken"], now, lost=False):
            self.outbox.add(op, f"hand-back of job {running.job.id}")
        self.counters.released += 1
        log.info("job returned to queue", job_id=running.job.id, task=running.job.task)


def _ended(outcome: Outcome) -> str:
    """The log message of a run's end: ``job succeeded``, ``job will retry``, ``job snoozed``…"""
    if outcome.state is JobState.QUEUED:
        return "job snoozed"
    return f"job {outcome.state.value if outcome.retry_at is None else 'will retry'}"


def _level(outcome: Outcome) -> str:
    """At which level a run's end is logged: a failure for good is an error."""
    if outcome.state is not JobState.FAILED:
        return "info"
    return "warning" if outcome.retry_at is not None else "error"
