"""The worker: claims jobs of its tasks and runs them with bounded concurrency.

One asyncio loop drives everything: claiming, the outbox flush, lease
renewal and recovery, and the channel's wake-ups. Handlers run on the loop
(``async def``), in threads, or in child processes (see ``runner``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import structlog
from bson import ObjectId
from pymongo import InsertOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError

from qworker import controls, protocol, systemd
from qworker.aio import cancel_and_wait
from qworker.awaits import MIN_GAP
from qworker.channel import TAIL_GAP, Channel, message
from qworker.config import WorkerSettings
from qworker.errors import TaskDefinitionError, WorkerFailed
from qworker.fleet import Listing
from qworker.health import Health
from qworker.health import serve as serve_health
from qworker.model import JobState
from qworker.mongo import Names, async_client, close_async, resolve_url
from qworker.operations import run_async
from qworker.schema import prepare
from qworker.store import WorkerStore
from qworker.tasks import TaskMeta, import_code
from qworker.when import utcnow
from qworker.worker.candidates import Pick
from qworker.worker.claims import Claims
from qworker.worker.gates import Gates
from qworker.worker.jobfeed import JobFeed
from qworker.worker.leases import Leases
from qworker.worker.membership import Membership
from qworker.worker.outbox import Outbox, OutboxWriter
from qworker.worker.pauses import Pauses
from qworker.worker.recycling import Recycling
from qworker.worker.runs import Counters, Runs
from qworker.worker.stopping import Stopping
from qworker.worker.taskapi import TaskHandle, TaskSetup, run_setup
from qworker.worker.threads import call
from qworker.worker.watchdog import WATCHDOG_EXIT, Watchdog
from qworker.workflows import Built

log = structlog.get_logger("qworker.worker")

COALESCE_SECONDS = 0.005
# The exit code of a worker refused for a reason that may pass (a task defined
# differently by live workers): unlike 3, a supervisor should start it again later.
REFUSED_FOR_NOW = 4


class Worker:
    """The loop that runs the jobs; task code sees it through ``registry`` (a ``TaskSetup``)."""

    def __init__(self, settings: WorkerSettings, metas: list[TaskMeta]) -> None:
        self.settings = settings
        self.id = settings.worker_id
        self.metas = {meta.id: meta for meta in metas}
        self.nonce = uuid.uuid4().hex[:12]
        self.host = socket.gethostname()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.writer: OutboxWriter | None = None  # made with the connection (run)
        self.outbox = Outbox(
            settings.lease,
            self._notify_outbox,
            self.id,
            lambda task, event: self.metas[task].attributes_for(event),
        )
        self._batch_floor = max(1, settings.concurrency // 4)
        self.membership = None if settings.standalone else Membership(self)
        self._listing = Listing(
            self.id, self.nonce, self.host, os.getpid(), list(self.metas), settings.lease / 3
        )
        self.outbox.notifying = self.membership is not None
        self.registry = TaskSetup(self)
        self.runs = Runs(
            self.metas,
            self.registry,
            self.outbox,
            self,
            self._run_ended,
            lambda query, fields: self.store.find(query, fields),
        )
        self.stopping = Stopping(settings.grace, self.runs, self._wake.set)
        self.failure: str | None = None  # why task code stopped the worker (worker.fail)
        self.health = Health()
        self.recycling = Recycling(settings.max_jobs, settings.max_memory)

    # -- loading ---------------------------------------------------------

    def load(self) -> None:
        """Import every task's code and run its ``setup``; all before MongoDB."""
        for meta in self.metas.values():
            run_setup(import_code(meta), self.registry, TaskHandle(meta, self.id))
            if meta.id not in self.registry.handlers:
                raise TaskDefinitionError(
                    f"{meta.code_path}: setup() registered no handler for task '{meta.id}' "
                    f"(call worker.task('{meta.id}', handler))"
                )

    # -- life cycle ------------------------------------------------------

    async def run(self) -> int:
        """Run until a signal (or, in burst mode, an empty queue); the exit code."""
        self._loop = asyncio.get_running_loop()
        url = resolve_url(self.settings.mongo)
        names = Names(self.settings.prefix)
        await asyncio.to_thread(prepare, url, names, self.settings.channel_size)
        client = async_client(url)
        db = client.get_default_database(default="qworker")
        self.store = WorkerStore(db[names.jobs], db[names.workflows])
        self.channel = Channel(db[names.channel])
        partitions = {
            task: meta.limits.partition_by
            for task, meta in self.metas.items()
            if meta.limits.partition_by is not None
        }
        self.claims = Claims(
            self.store,
            self.metas,
            self.id,
            self.nonce,
            self.settings.lease,
            self.settings.poll_interval,
            partitions,
            trace_writes=self.settings.trace_writes,
        )
        limited = {task: meta.limits for task, meta in self.metas.items()}
        self.gates = Gates(db, names, limited, self.settings.lease)
        self.leases = Leases(
            self.store,
            self.settings.lease,
            self._held,
            self.cancel_job,
            self._refill_now,
            self._upkeep,
        )
        self.writer = OutboxWriter(
            self.outbox,
            self.store,
            self.channel,
            self._wake.set,
            self.leases.unreachable,
            trace_writes=self.settings.trace_writes,
        )
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(sig, self.request_stop)
        hooks = self.registry
        try:
            await self._run_hooks(hooks.initializers, *self._task_hooks(hooks.task_initializers))
        except WorkerFailed:  # worker.fail() in an initializer: nothing was claimed yet
            await close_async(client)
            return 1
        self.pauses = Pauses(
            lambda: run_async(controls.paused_among(self.metas), db, names),
            self.settings.poll_interval,
            self._paused,
        )
        await self.pauses.read()
        listening = asyncio.Event()
        events = [protocol.JOB_QUEUED, protocol.JOB_CANCEL, protocol.TASK_CONTROL]
        if self.membership is not None:
            events += self.membership.events()
        else:  # an operator's stop (Client.stop_worker), checked against our entry
            events.append(protocol.stop(self.id))
        feed = JobFeed(
            self.store.jobs,
            self.metas,
            self.settings.poll_interval,
            self._new_jobs,
            self._refill_now,
            self.cancel_job,
            self.claims.partition_fields,
            self._busy,
        )
        watching = self.settings.watch_jobs and await feed.open()
        self.watchdog = self._watchdog(feed if watching else None)
        probes = (
            await serve_health(self.settings.health, self.health) if self.settings.health else None
        )
        background = [
            asyncio.create_task(self.writer.flush_loop()),
            asyncio.create_task(self.writer.publish_loop()),
            asyncio.create_task(self.leases.keep()),
            asyncio.create_task(
                # The stream brings new jobs: the channel only hints and controls.
                self.channel.subscribe(
                    events, self._on_message, listening, TAIL_GAP if watching else MIN_GAP
                )
            ),
            asyncio.create_task(systemd.supervise(self.status_line, self._healthy)),
            asyncio.create_task(self.pauses.keep()),
            asyncio.create_task(self.gates.keep()),
            asyncio.create_task(self.health.tick()),
            asyncio.create_task(
                self.watchdog.keep(self.settings.poll_interval, self._watchdog_fired)
            ),
            asyncio.create_task(self._watch_recycling()),
            *([asyncio.create_task(feed.run())] if watching else []),
        ]
        try:
            await asyncio.wait_for(listening.wait(), 10)
        except TimeoutError:
            log.warning("channel not ready; relying on polling")
        log.info(
            "worker started",
            worker_id=self.id,
            tasks=list(self.metas),
            pid=os.getpid(),
            concurrency=self.settings.concurrency,
            standalone=self.settings.standalone,
        )
        systemd.notify("READY=1", f"STATUS={self.status_line()}")
        if self.membership is not None:
            background.append(asyncio.create_task(self.membership.run()))
        try:
            await self.stopping.end_claims(asyncio.ensure_future(self._claim_loop()))
            await self.stopping.drain()
        finally:
            flushing, *others = background
            await cancel_and_wait([flushing])  # the last writes take over what it holds
            await self.stopping.last_writes(self.outbox, self.writer, self._say_goodbye)
            await cancel_and_wait(others)
            await self.gates.flush()
            await self._run_hooks(*self._task_hooks(hooks.task_finalizers), hooks.finalizers)
            if probes is not None:
                probes.close()
            await close_async(client)
        c = self.counters
        log.info(
            "worker stopped",
            worker_id=self.id,
            succeeded=c.succeeded,
            failed=c.failed,
            retried=c.retried,
            cancelled=c.cancelled,
            released=c.released,
            recycled=self.recycling.reason,
            watchdog=self.watchdog.fired,
        )
        if self.refused:
            return REFUSED_FOR_NOW if self.membership and self.membership.refused_for_now else 3
        if self.watchdog.fired:
            return WATCHDOG_EXIT
        return 1 if self.failure else 0

    @property
    def refused(self) -> str | None:
        """Why the manager terminated this worker, if it did."""
        return self.membership.refused if self.membership is not None else None

    @property
    def running_count(self) -> int:
        return len(self.runs)

    @property
    def counters(self) -> Counters:
        return self.runs.counters

    def status_line(self) -> str:
        """One line on this worker's state, for ``systemctl status``."""
        c, running = self.counters, len(self.runs)
        done = f"{c.succeeded} succeeded, {c.failed} failed"
        if self.refused:
            return f"terminated by the manager: {self.refused}"
        if self.stopping.asked:
            return f"stopping: {running} running jobs to finish or hand back ({done})"
        if self.membership is not None and not self.membership.accepted.is_set():
            return f"waiting for a manager to accept it ({running} jobs running)"
        return f"running {running} of {self.settings.concurrency} jobs ({done})"

    async def _say_goodbye(self) -> None:
        if self.membership is None:
            await self._register(stopped=True)
            return
        event = protocol.WORKER_TERMINATE if self.refused else protocol.WORKER_STOP
        with contextlib.suppress(PyMongoError):
            await self.channel.publish(event, {"workerId": self.id, "nonce": self.nonce})

    def _task_hooks(self, hooks: dict[str, list[Any]]) -> list[list[Any]]:
        return [hooks.get(task_id, []) for task_id in self.metas]

    async def _run_hooks(self, *groups: list[Any]) -> None:
        for group in groups:
            for hook in group:
                await call(hook)

    def request_stop(self, force: bool = False) -> None:
        """A signal, the manager or ``worker.fail`` asks the worker to stop (see ``Stopping``)."""
        self.stopping.request(force)

    # -- claiming --------------------------------------------------------

    def _room(self, task_id: str) -> int:
        if task_id in self.claims.paused:
            return 0
        cap = self.metas[task_id].concurrency
        return self.settings.concurrency if cap is None else cap - self.runs.per_task[task_id]

    async def _claim_loop(self) -> None:
        while not self.stopping.asked:
            self.watchdog.turn()
            if self.membership is not None and not self.membership.accepted.is_set():
                await self._wait(self.settings.poll_interval)  # not accepted, or paused
                continue
            free = min(self._free(), self.recycling.room())
            if free <= 0:
                await self._wait(self.settings.poll_interval)
                continue
            if free < self._batch_floor and self._candidates_waiting():
                # A slot or two just freed while others run: let a few more
                # finish, so that one claim takes a batch instead of one job.
                await self._wait(COALESCE_SECONDS)
                free = self._free()
            if self.claims.should_read():
                await self.claims.read()
            now = utcnow()
            picks, solo = self.claims.candidates.take(
                free, now, self._room, self.gates.room, alone=not self.runs
            )
            if picks:
                await self._claim(picks, now, solo)
                continue
            if self.settings.burst and self._queue_empty():
                log.info("burst mode: no job left to run")
                return
            await self._sleep(now)

    async def _claim(self, picks: list[Pick], now: datetime, solo: bool) -> None:
        """Claim the picks of unlimited tasks, and beside them (not after: the slots of
        limited ones cost round trips) those of limited tasks their slots admit."""
        free = [pick for pick in picks if pick.task not in self.gates.limits]
        bounded = [pick for pick in picks if pick.task in self.gates.limits]
        await asyncio.gather(
            *([self._claim_admitted(free, now, solo)] if free else []),
            *([self._claim_admitted(bounded, now, solo)] if bounded else []),
        )

    async def _claim_admitted(self, picks: list[Pick], now: datetime, solo: bool) -> None:
        """Take the slots of limited tasks, claim what they admit, start what was claimed."""
        token = self.claims.token()
        admitted, refused = await self.gates.admit(picks, token, now)
        self.claims.candidates.put_back(refused)
        if not admitted:
            return
        docs = await self.claims.claim([pick.id for pick in admitted], token, now, solo)
        if len(docs) < len(admitted):
            got = {doc["_id"] for doc in docs}
            missed = [pick for pick in admitted if pick.id not in got]
            await self.claims.fell_short(missed, self._workers)
        self.recycling.claimed(len(docs))
        await self.gates.unclaimed(admitted, docs, token)
        for doc in docs:
            if not self.runs.start(doc):
                self.gates.ended(doc)  # ended without running (malformed, expired, doomed)

    # -- health, watchdog, recycling ----------------------------------------

    def _watchdog(self, feed: JobFeed | None) -> Watchdog:
        """The worker's watch over itself; its readiness checks beside it (``health``)."""
        lease = self.settings.lease
        wakeups: dict[str, Callable[[], float | None]] = {"channel tail": self.channel.silent_for}
        if feed is not None:
            wakeups["change stream on jobs"] = lambda: time.monotonic() - feed.alive_at
        watchdog = Watchdog(
            self.settings.watchdog,
            self.settings.poll_interval,
            lease,
            self._could_claim,
            lambda: self.leases.answered_at,
            wakeups,
        )
        accepted = self.membership.accepted if self.membership is not None else None
        self.health.check(
            "manager",
            lambda: None if accepted is None or accepted.is_set() else "not accepted by a manager",
        )
        self.health.check("mongodb", self._unanswered)
        self.health.check("claims", watchdog.problem)
        self.health.check("stopping", lambda: "stopping" if self.stopping.asked else None)
        return watchdog

    def _unanswered(self) -> str | None:
        answered = self.leases.answered_at
        silent = None if answered is None else time.monotonic() - answered
        if silent is None or silent > self.settings.lease:
            return "MongoDB has not answered within the last lease"
        return None

    def _could_claim(self) -> bool:
        """Due candidates with room, and free slots: what a turning claim loop would take."""
        accepted = self.membership is None or self.membership.accepted.is_set()
        free = min(self._free(), self.recycling.room()) > 0
        takeable = self.claims.candidates.any_takeable(utcnow(), self._room, self.gates.room)
        return accepted and free and not self.stopping.asked and takeable

    def _healthy(self) -> bool:
        """What systemd's watchdog is fed on: no rule of the worker's own watchdog fires."""
        return self.watchdog.problem() is None

    def _watchdog_fired(self, reason: str) -> None:
        log.error("watchdog: the worker must be started anew; stopping", reason=reason)
        self.request_stop()

    async def _watch_recycling(self) -> None:
        """Recycle once past ``--max-jobs`` or ``--max-memory`` (``recycling``)."""
        while self.recycling.reason is None:
            reason = self.recycling.due()
            if reason is not None:
                self.recycling.reason = reason
                log.info("worker recycling: finishing its jobs, then exiting", reason=reason)
                self.request_stop()
                return
            await asyncio.sleep(min(self.settings.poll_interval, 1.0))

    def _free(self) -> int:
        """Slots to claim for. Outcomes still to be written hold theirs beyond one batch:

        a server slower to write than the handlers are to run would otherwise
        let finished-but-unwritten runs pile up without bound.
        """
        if self.runs.alone():
            return 0  # a job lost with a worker before runs alone (see candidates)
        behind = max(0, self.outbox.pending_outcomes() - self.settings.concurrency)
        return self.settings.concurrency - len(self.runs) - behind

    def _queue_empty(self) -> bool:
        """Nothing runs, and a read made since the last outcome was written (with the
        chain steps and sub-tasks it queued) found nothing due soon."""
        return (
            not self.runs
            and len(self.claims.candidates) == 0
            and self.outbox.pending_outcomes() == 0
            and self.claims.last_read_started
            > max(self.runs.last_finished, self.outbox.last_written)
        )

    async def _sleep(self, now: datetime) -> None:
        timeout = self.settings.poll_interval
        due = self.claims.candidates.next_due()
        if due is not None and due > now:
            timeout = min(timeout, (due - now).total_seconds())
        opens = self.gates.opens_in()  # a limited lane with candidates opens again
        if opens is not None and len(self.claims.candidates) > 0:
            timeout = min(timeout, opens)
        await self._wait(timeout)

    async def _wait(self, timeout: float) -> None:
        """Until a wake-up (a job finished or was announced, a signal) or ``timeout``."""
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), max(timeout, 0.001))

    def _busy(self) -> bool:
        """No slot to claim for, or candidates enough for every free one: news can wait."""
        free = self._free()
        return free <= 0 or len(self.claims.candidates) >= free

    def _candidates_waiting(self) -> bool:
        return bool(self.runs) and len(self.claims.candidates) > 0

    async def _on_message(self, event: str, body: dict[str, Any]) -> None:
        if self.membership is not None and event in self.membership.events():
            await self.membership.on_message(event, body)
            self._wake.set()
        elif event == protocol.JOB_QUEUED:
            self.claims.hinted(body)
            self._wake.set()
        elif event == protocol.TASK_CONTROL:
            self.pauses.asked.set()
        elif event == protocol.JOB_CANCEL:
            job_id = body.get("jobId")
            if isinstance(job_id, str):
                await self._cancel_if_asked(job_id)
            else:
                log.warning("ignoring a malformed job:cancel")
        elif event == protocol.stop(self.id):
            await self._stop_if_asked()

    # -- what task code asks of the worker (taskapi.Engine) ----------------

    @property
    def worker_id(self) -> str:
        return self.id

    def add_subtask(self, doc: dict[str, Any]) -> None:
        """Write a sub-task with the next batch, ahead of the outcome of the job that asked.

        From any thread: a handler's, a child process's relay, or the loop.
        """
        self.outbox.add(InsertOne(doc), f"sub-task {doc['_id']} ({doc['name']})")
        self.outbox.publish(message(protocol.JOB_QUEUED, protocol.queued([doc])))

    def add_workflow(self, built: Built) -> None:
        """A workflow from task code: its jobs written as sub-tasks are, its document
        (in another collection, so not in that batch) by the outbox's writer before them."""
        self.outbox.add_workflow(built.workflow)
        for doc in built.insert_order:
            self.outbox.add(InsertOne(doc), f"workflow node {doc['_id']} ({doc['name']})")
        queued = [doc for doc in built.jobs if doc["state"] == JobState.QUEUED.value]
        self.outbox.publish(message(protocol.JOB_QUEUED, protocol.queued(queued)))

    def fail_worker(self, reason: str) -> None:
        """``worker.fail(reason)``: stop as on SIGTERM, then exit 1 with the reason."""
        loop = self._loop
        if self.failure is None:
            self.failure = reason
            log.error("stopping: the task code said the worker cannot go on", reason=reason)
        if loop is None or loop.is_closed():
            return
        try:
            running_here = asyncio.get_running_loop() is loop
        except RuntimeError:
            running_here = False
        if running_here:
            self.request_stop()
        else:
            loop.call_soon_threadsafe(self.request_stop)

    async def _cancel_if_asked(self, job_id: str) -> None:
        """A ``job:cancel`` is a hint anyone could write: act on it only when the job
        itself says its cancel was asked for (``cancelRequested``, which a client sets)."""
        if not self.runs.runs(job_id):
            return
        try:
            asked = await self.store.jobs.find_one(
                {"_id": ObjectId(job_id), "cancelRequested": True}, {"_id": 1}
            )
        except PyMongoError:
            return  # the next lease renewal sees cancelRequested
        if asked is None:
            log.warning(
                "ignoring a job:cancel for a job whose cancel nobody asked for", job_id=job_id
            )
            return
        self.cancel_job(job_id)

    async def _stop_if_asked(self) -> None:
        """A standalone worker's ``<id>/stop`` is a hint anyone could write: it stops only
        when its entry in ``workers`` asks this instance to (``stopRequested``, written by
        ``Client.stop_worker``); each refresh of the entry looks too (``_register``)."""
        try:
            entry = await self._workers.find_one({"_id": self.id}, {"stopRequested": 1})
        except PyMongoError:
            return  # the next refresh of the entry looks again
        if not self._listing.stop_asked(entry):
            log.warning("ignoring a stop request that the worker registry does not hold")
            return
        self._stop_as_asked()

    def _stop_as_asked(self) -> None:
        """Stop as on SIGTERM, once: a second request would force the stop."""
        if not self.stopping.asked:
            log.info("stopping: an operator asked this worker to stop", worker_id=self.id)
            self.request_stop()

    def cancel_job(self, job_id: str) -> bool:
        """Stop a running job: ``job.cancelled`` turns true; async and process jobs are cut."""
        return self.runs.cancel(job_id)

    # -- background ------------------------------------------------------

    def _notify_outbox(self) -> None:
        """Called from any thread when the outbox has something to write."""
        loop, writer = self._loop, self.writer
        if loop is not None and writer is not None and not loop.is_closed():
            loop.call_soon_threadsafe(writer.wanted.set)

    @property
    def _workers(self) -> AsyncCollection[dict[str, Any]]:
        """The registry of workers (``fleet``)."""
        return self.store.jobs.database[Names(self.settings.prefix).workers]

    async def _upkeep(self) -> None:
        """Beside each lease renewal: this worker's entry, and which peers share its tasks."""
        await self._register()
        await self.claims.read_peers(self._workers)

    async def _register(self, stopped: bool = False) -> None:
        """List a standalone worker in ``workers``, as the manager lists the others.

        Operators look for it there; a registry it cannot reach is logged, never fatal.
        """
        if self.membership is not None:
            return
        try:
            if stopped:
                await self._listing.stop(self._workers)
            elif await self._listing.refresh(self._workers, self.running_count):
                self._stop_as_asked()
        except PyMongoError as exc:
            log.warning("cannot update the worker registry", error=str(exc))

    def _held(self) -> list[str]:
        """Claim tokens whose leases must be renewed: running jobs, and finished ones whose
        outcome is still to be written."""
        return [*self.runs.tokens(), *self.outbox.unwritten()]

    def _new_jobs(self, docs: list[dict[str, Any]]) -> None:
        """Jobs of our tasks were just inserted (the change stream): candidates at once."""
        paused = self.claims.paused
        self.claims.candidates.add(doc for doc in docs if doc.get("name") not in paused)
        self._wake.set()

    def _paused(self, paused: frozenset[str]) -> None:
        """The tasks paused fleet-wide changed (``Pauses``)."""
        self.claims.pause(paused)
        self._wake.set()

    def _run_ended(self, doc: dict[str, Any]) -> None:
        """A run ended: its slot here is free, and so is its fleet-wide one (``Gates``)."""
        self.gates.ended(doc)
        self._wake.set()

    def _refill_now(self) -> None:
        """Jobs came back to the queue (a lost worker's): read it at once."""
        self.claims.want()
        self._wake.set()
