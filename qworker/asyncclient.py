"""``AsyncClient``: the client library for asyncio applications (FastAPI, Starlette, aiohttp).

The methods of ``Client``, as coroutines, over pymongo's ``AsyncMongoClient``:
no thread is used, so a handler awaits an enqueue as it awaits any other
write. The schedules' methods are the exception: APScheduler's store is
blocking, so they run ``Client``'s in a thread. It runs the same operations as ``Client``
(``qworker.store``, ``qworker.enqueue``), so both write the same documents.
The collections and indexes are set up at the first call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, TypeVar, Unpack

import pymongo
from pymongo import AsyncMongoClient
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from qworker import (
    controls,
    enqueue,
    fleet,
    limits,
    protocol,
    stats,
    store,
    streams,
    workflows,
    workflowstore,
)
from qworker.aio import cancel_and_wait
from qworker.bulk import Bulk
from qworker.channel import Channel
from qworker.client import (
    PING_SECONDS,
    WATCH_AWAIT_MS,
    Client,
    Waiting,
    purge_finished,
    wakeup_mode,
)
from qworker.errors import ConfigError
from qworker.jobfilter import FilterKeywords, JobFilter
from qworker.model import UniqueOption
from qworker.mongo import CHANNEL_BYTES, Names, async_database, close_async
from qworker.operations import Operation, run_async
from qworker.schedules import Schedule
from qworker.schema import ensure_schema_async
from qworker.steps import Step
from qworker.store import Doc
from qworker.transactions import AsyncTransactions
from qworker.when import parse_when, utcnow
from qworker.workflows import Workflow

T = TypeVar("T")
Session = AsyncClientSession | None
AsyncTarget = str | AsyncMongoClient[Any] | AsyncDatabase[Any]


class AsyncClient:
    """``AsyncClient("mongodb://host/db")``, ``"embedded"``, or the application's
    ``AsyncMongoClient`` or database (then never closed by ``close``)."""

    def __init__(
        self,
        target: AsyncTarget,
        prefix: str = "",
        channel_size: int = CHANNEL_BYTES,
        *,
        wakeups: str = "auto",
    ) -> None:
        self._wakeup_mode = wakeup_mode(wakeups)
        self.db, self.url = async_database(target)
        self._mongo: AsyncMongoClient[Doc] = self.db.client
        self.names = Names(prefix)
        self.jobs_collection = self.db[self.names.jobs]
        self._channel_size = channel_size
        self._prepared = False
        self._watched: bool | None = None
        self._transactions = AsyncTransactions(self._mongo)
        self._hints: set[asyncio.Task[None]] = set()
        self._blocking: Client | None = None  # for the schedules, made at their first use

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object | type[BaseException] | TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Publish what is pending and let go; a connection the application gave stays open."""
        await self.flush()
        if self._blocking is not None:
            await asyncio.to_thread(self._blocking.close)
        if self.url is not None:
            await close_async(self._mongo)

    async def prepare(self) -> None:
        """Set up the collections and indexes, once; the first call does it otherwise.

        Call it at the application's start (a FastAPI lifespan) when the first
        enqueue may be in a transaction: a collection cannot be created in one.
        """
        if not self._prepared:
            await ensure_schema_async(self.db, self.names, self._channel_size)
            self._prepared = True

    async def _run(self, op: Operation[T], session: Session) -> T:
        await self.prepare()
        return await run_async(op, self.db, self.names, session)

    # -- transactions ----------------------------------------------------

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncClientSession]:
        """``async with client.transaction() as s:`` (see ``Client.transaction``)."""
        await self.prepare()
        async with self._transactions.block() as session:
            yield session

    async def run_in_transaction(self, body: Callable[[AsyncClientSession], Awaitable[T]]) -> T:
        """``await body(session)`` in a transaction, again on transient errors."""
        await self.prepare()
        return await self._transactions.run(body)

    # -- enqueueing ------------------------------------------------------

    async def now(
        self, task: str, data: Any = None, *, session: Session = None, **opts: Any
    ) -> str:
        """Queue a job to run as soon as a worker is free; returns its id."""
        return await self.schedule(None, task, data, session=session, **opts)

    async def schedule(
        self,
        when: str | datetime | None,
        task: str,
        data: Any = None,
        *,
        unique: UniqueOption | None = None,
        session: Session = None,
        **opts: Any,
    ) -> str:
        """Queue a job for ``when``; ``unique=KEY`` or ``{"key", "while", "period",
        "replace"}`` as ``Client.schedule``."""
        if unique is None:
            op = enqueue.many(task, [data], when, **opts)
        else:
            op = enqueue.unique(task, data, when, unique, **opts)
        return (await self._enqueue(op, session))[0]

    async def enqueue_many(
        self,
        task: str,
        items: Iterable[Any],
        when: str | datetime | None = None,
        *,
        session: Session = None,
        **opts: Any,
    ) -> list[str]:
        """Queue one job per item of data in one round trip; all or nothing is validated."""
        return await self._enqueue(enqueue.many(task, items, when, **opts), session)

    async def chain(
        self,
        steps: Sequence[Step | str | tuple[str, Any]],
        when: str | datetime | None = None,
        *,
        session: Session = None,
    ) -> str:
        """Queue steps to run one after another (see ``Client.chain``); the chain's id."""
        return (await self._enqueue(workflowstore.chain(steps, when), session))[0]

    # -- workflows -------------------------------------------------------

    # -- fleet-wide controls ---------------------------------------------

    async def pause_task(self, task_id: str, *, session: Session = None) -> Doc:
        """Claim no job of ``task_id`` on any worker (see ``Client.pause_task``)."""
        return await self._control(task_id, True, session)

    async def resume_task(self, task_id: str, *, session: Session = None) -> Doc:
        return await self._control(task_id, False, session)

    async def task_controls(self, task_id: str) -> Doc:
        return await self._run(controls.get(task_id), None)

    async def task_limits(self) -> dict[str, Doc]:
        return await self._run(limits.by_task(utcnow()), None)

    async def paused_tasks(self) -> set[str]:
        return await self._run(controls.paused_among(), None)

    async def _control(self, task_id: str, paused: bool, session: Session) -> Doc:
        view = await self._run(controls.set_paused(task_id, paused, utcnow()), session)
        await self._hint(protocol.TASK_CONTROL, {"task": task_id}, True, session, always=True)
        return view

    async def group(
        self,
        steps: Sequence[Step | str | tuple[str, Any]],
        *,
        on_success: Step | str | tuple[str, Any] | None = None,
        on_complete: Step | str | tuple[str, Any] | None = None,
        name: str = "group",
        when: str | datetime | None = None,
        check_tasks: bool = True,
        unique: str | None = None,
        session: Session = None,
    ) -> str:
        """Jobs side by side, and callbacks that collect them (see ``Client.group``)."""
        now = utcnow()
        built = workflows.group(steps, now, parse_when(when, now), on_success, on_complete, name)
        return (
            await self._enqueue(workflowstore.insert(built, now, check_tasks, unique), session)
        )[0]

    def workflow(
        self, name: str, check_tasks: bool = True, unique: str | None = None
    ) -> Workflow[Awaitable[str]]:
        """A DAG to build (see ``Client.workflow``): ``await wf.enqueue()`` stores it."""

        async def store_it(wf: Workflow[Awaitable[str]], session: Session) -> str:
            now = utcnow()
            return (
                await self._enqueue(
                    workflowstore.insert(wf.build(now, now), now, check_tasks, unique), session
                )
            )[0]

        return Workflow(name, store_it)

    async def workflow_info(self, workflow_id: str) -> Doc:
        return await self._run(workflowstore.info(workflow_id), None)

    async def group_info(self, group_id: str) -> Doc:
        return await self.workflow_info(group_id)

    async def wait_workflow(self, workflow_id: str, timeout: float | None = None) -> Doc:
        """Until every node has ended (see ``Client.wait_workflow``)."""
        waiting = Waiting(workflow_id, timeout, "workflow")
        while not waiting.over({"state": await self._run(workflowstore.state(workflow_id), None)}):
            await asyncio.sleep(waiting.pause())
        return await self.workflow_info(workflow_id)

    async def workflows(self, limit: int = 50, skip: int = 0) -> list[Doc]:
        return await self._run(workflowstore.listing(limit, skip), None)

    async def cancel_workflow(self, workflow_id: str, *, session: Session = None) -> Doc:
        """Cancel the nodes not started; ask the running ones to stop."""
        asked = await self._run(workflowstore.cancel(workflow_id, utcnow()), session)
        for job_id in asked:
            await self._hint(protocol.JOB_CANCEL, {"jobId": str(job_id)}, True, session)
        return await self.workflow_info(workflow_id)

    async def retry_workflow(self, workflow_id: str, *, session: Session = None) -> list[Doc]:
        """Run the failed and cancelled nodes again; the nodes queued now."""
        queued = await self._run(workflowstore.retry(workflow_id, utcnow()), session)
        await self._hint(protocol.JOB_QUEUED, protocol.queued(queued), bool(queued), session)
        return queued

    async def _enqueue(self, op: Operation[enqueue.Enqueued], session: Session) -> list[str]:
        done = await self._run(op, session)
        await self._hint(protocol.JOB_QUEUED, protocol.queued(done.due), bool(done.due), session)
        return done.ids

    async def _hint(
        self, event: str, body: Doc, wanted: bool, session: Session, always: bool = False
    ) -> None:
        """A hint where workers do not watch ``jobs`` (``always``: whatever they watch),
        sent in a task of its own (after the commit, in a transaction)."""
        if not wanted or (not always and await self._streams()):
            return
        channel = Channel(self.db[self.names.channel])

        def send() -> None:
            task = asyncio.get_running_loop().create_task(channel.publish(event, body))
            self._hints.add(task)
            task.add_done_callback(self._hints.discard)

        self._transactions.after_commit(session, send)

    async def _streams(self) -> bool:
        if self._watched is None:
            self._watched = self._wakeup_mode == "auto" and await streams.watchable_async(
                self.jobs_collection
            )
        return self._watched

    async def flush(self, timeout: float = 10.0) -> bool:
        """Wait until the wake-ups sent so far are on the channel; True if all went out."""
        pending = set(self._hints)
        if not pending:
            return True
        _, late = await asyncio.wait(pending, timeout=timeout)
        await cancel_and_wait(list(late))
        return not late

    async def ping(self, timeout: float = PING_SECONDS) -> None:
        with pymongo.timeout(timeout):
            await self.db.command("ping")

    # -- looking after jobs ----------------------------------------------

    async def get(self, job_id: str, *, session: Session = None) -> Doc:
        return await self._run(store.get(job_id), session)

    async def jobs(
        self,
        state: str | None = None,
        task: str | None = None,
        text: str | None = None,
        limit: int = 50,
        skip: int = 0,
        *,
        filter: JobFilter | Mapping[str, Any] | None = None,
        sort: str = "created",
        order: str = "desc",
        **fields: Unpack[FilterKeywords],
    ) -> list[Doc]:
        """Jobs without their logs, newest first or as ``sort`` says; the filters (or a
        ready ``filter``) are ``JobFilter``'s fields (see ``Client.jobs``)."""
        query = JobFilter.from_call(filter, state, task, text, **fields).query()
        return await self._run(store.find(query, limit, skip, sort, order), None)

    async def count_jobs(
        self,
        state: str | None = None,
        task: str | None = None,
        text: str | None = None,
        *,
        filter: JobFilter | Mapping[str, Any] | None = None,
        **fields: Unpack[FilterKeywords],
    ) -> int:
        """How many jobs ``jobs`` would list without a limit (the same filters)."""
        query = JobFilter.from_call(filter, state, task, text, **fields).query()
        return await self._run(store.count(query), None)

    async def bulk(
        self,
        action: str,
        ids: Sequence[str] | None = None,
        filter: JobFilter | Mapping[str, Any] | None = None,
        *,
        dry_run: bool = False,
    ) -> Doc:
        """Retry, cancel or delete many jobs: by ids or a filter (see ``Client.bulk``)."""
        job = Bulk(action, ids, filter, utcnow())
        if dry_run:
            return await self._run(job.count(), None)
        while (batch := await self._run(job.next(), None)) is not None:
            await self._hint(
                protocol.JOB_QUEUED, protocol.queued(batch.queued), bool(batch.queued), None
            )
            for job_id in batch.asked:
                await self._hint(protocol.JOB_CANCEL, {"jobId": job_id}, True, None)
        return job.result()

    async def delete(self, job_id: str) -> Doc:
        """Delete a job that is not running, and return it."""
        return await self._run(store.delete(job_id, utcnow()), None)

    async def purge(
        self, state: str, older_than: str | float | timedelta, *, dry_run: bool = False
    ) -> int:
        """Delete finished jobs in ``state`` that ended over ``older_than`` ago; how many."""
        return await self._run(purge_finished(state, older_than, dry_run), None)

    async def cancel(self, job_id: str, *, session: Session = None) -> Doc:
        """Cancel a queued job; a running one is asked to stop (``job.cancelled``)."""
        doc = await self._run(store.cancel(job_id, utcnow()), session)
        hint = {"jobId": str(doc["_id"])}
        await self._hint(protocol.JOB_CANCEL, hint, bool(doc.get("cancelRequested")), session)
        return doc

    async def retry(self, job_id: str, *, session: Session = None) -> Doc:
        """Run a finished job again, now."""
        doc = await self._run(workflowstore.retry_job(job_id, utcnow()), session)
        await self._hint(protocol.JOB_QUEUED, protocol.queued([doc]), True, session)
        return doc

    async def wait(self, job_id: str, timeout: float | None = None) -> Doc:
        """Until the job is finished, watched where the server has change streams."""
        waiting = Waiting(job_id, timeout)
        if not await self._streams():
            while not waiting.over(await self.get(job_id)):
                await asyncio.sleep(waiting.pause())
            return waiting.doc
        async with self._watching(job_id) as stream:
            doc = await self.get(job_id)
            while not waiting.over(doc):
                waiting.pace.begin()
                if await stream.try_next() is not None or waiting.reread_due():
                    doc = await self.get(job_id)
                else:
                    await asyncio.sleep(waiting.pace.rest())
        return waiting.doc

    # -- the fleet -------------------------------------------------------

    async def workers(self, state: str | None = None) -> list[Doc]:
        """The worker registry (see ``Client.workers``)."""
        return await self._run(fleet.workers(state), None)

    async def stop_worker(self, worker_id: str) -> Doc:
        """Ask a running worker to stop gracefully (see ``Client.stop_worker``)."""
        asked = await self._run(fleet.ask_stop(worker_id, utcnow()), None)
        body = {"nonce": asked["nonce"]}
        await self._hint(protocol.stop(worker_id), body, not asked["alreadyAsked"], None, True)
        return {key: value for key, value in asked.items() if key != "nonce"}

    async def tasks(self) -> list[Doc]:
        """Every task, with its jobs counted by state (see ``Client.tasks``)."""
        return await self._run(fleet.tasks(), None)

    async def task_charts(
        self, window: float = 3600.0, buckets: int = 60, *, task: str | None = None
    ) -> Doc:
        """Per task and bucket: succeeded, failed, wait p50/p95 (see ``Client.task_charts``)."""
        return await self._run(stats.task_charts(window, buckets, task), None)

    # -- recurring schedules ---------------------------------------------
    # APScheduler 3's job store is blocking: these run ``Client``'s in a thread.

    async def every(self, interval: str | float, task: str, data: Any = None, **opts: Any) -> Doc:
        """``Client.every``: run ``task`` every ``interval`` (``overlap``,
        ``pause_on_failure`` and the other options as there)."""
        return await self._scheduling(lambda c: c.every(interval, task, data, **opts))

    async def cron(self, expr: str, task: str, data: Any = None, **opts: Any) -> Doc:
        """``Client.cron``: run ``task`` on a crontab schedule (options as ``Client.every``'s)."""
        return await self._scheduling(lambda c: c.cron(expr, task, data, **opts))

    async def add_schedule(self, schedule: Schedule, replace: bool = True) -> Doc:
        return await self._scheduling(lambda c: c.add_schedule(schedule, replace))

    async def schedule_list(self) -> list[Doc]:
        return await self._scheduling(Client.schedule_list)

    async def schedule_info(self, name: str) -> Doc:
        return await self._scheduling(lambda c: c.schedule_info(name))

    async def pause_schedule(self, name: str) -> Doc:
        return await self._scheduling(lambda c: c.pause_schedule(name))

    async def resume_schedule(self, name: str) -> Doc:
        return await self._scheduling(lambda c: c.resume_schedule(name))

    async def run_schedule_now(self, name: str) -> Doc:
        """Fire schedule ``name`` once, now (see ``Client.run_schedule_now``)."""
        return await self._scheduling(lambda c: c.run_schedule_now(name))

    async def remove_schedule(self, name: str) -> None:
        await self._scheduling(lambda c: c.remove_schedule(name))

    async def _scheduling(self, edit: Callable[[Client], T]) -> T:
        if self._blocking is None:
            if self.url is None:
                raise ConfigError(
                    "schedules are edited through a blocking connection, which an AsyncClient "
                    "made from the application's AsyncMongoClient does not have: make it from "
                    "a URL, or edit schedules with Client(MongoClient)"
                )
            self._blocking = await asyncio.to_thread(
                Client, self.url, self.names.prefix, self._channel_size
            )
        return await asyncio.to_thread(edit, self._blocking)

    @contextlib.asynccontextmanager
    async def _watching(self, job_id: str) -> AsyncIterator[Any]:
        events = streams.finished(store.object_id(job_id))
        async with await self.jobs_collection.watch(
            events, max_await_time_ms=WATCH_AWAIT_MS
        ) as stream:
            yield stream
