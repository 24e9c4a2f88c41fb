"""The manager daemon: validates workers, watches their pings, recovers their jobs,
and expires the jobs past their deadline.

Every manager listens; only the one holding the lease (``leadership``) acts.
Worker and task state lives in MongoDB (``workers``, ``tasks``), so a new
leader carries on where the last one stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import structlog
from bson.errors import InvalidDocument
from pymongo import UpdateOne
from pymongo.errors import BulkWriteError, PyMongoError

from qworker import protocol, systemd
from qworker.channel import Channel
from qworker.config import parse_bind
from qworker.errors import TaskDefinitionError
from qworker.fleet import kept_until
from qworker.health import Health
from qworker.logs import Throttle
from qworker.manager.deadlines import Deadlines
from qworker.manager.definitions import Conflicts, differences, refusal
from qworker.manager.events import WATCHED, EventHub
from qworker.manager.leadership import Leadership
from qworker.manager.pings import Pings
from qworker.manager.scheduler import Scheduler
from qworker.manager.sinks import Sinks, SinkSettings
from qworker.manager.workflowsweep import WorkflowSweep
from qworker.model import JobState
from qworker.mongo import (
    CHANNEL_BYTES,
    Names,
    async_client,
    close_async,
    resolve_url,
)
from qworker.schema import prepare
from qworker.store import LOST_FIELDS, take_back
from qworker.tasks import check_metadata
from qworker.when import utcnow

log = structlog.get_logger("qworker.manager")

# Where the API and dashboard are served unless told otherwise: this machine only.
DEFAULT_HTTP = "127.0.0.1:8765"
# What the leader acts on; the rest of what it hears is for the event stream.
# A new leader waits this long for the definitions it may have missed (announced
# while no manager led) before it refuses a worker for an unknown task.
SETTLE_SECONDS = 10.0


class UnknownTask(str):
    """A refusal because a task is unknown: the definition may have gone by unheard."""


TO_LEADER = {*protocol.TO_MANAGER, protocol.WORKER_NOTIFICATION, protocol.SCHEDULES_CHANGED}


@dataclass(frozen=True)
class ManagerSettings:
    mongo: str
    manager_id: str = f"manager-{socket.gethostname()}-{os.getpid()}"
    prefix: str = ""
    ping_interval: float = protocol.DEFAULT_PING_SECONDS
    lease: float = 10.0
    sinks: SinkSettings = field(default_factory=SinkSettings)
    channel_size: int = CHANNEL_BYTES
    http: str | None = None  # HOST:PORT of the API and dashboard
    api_token: str | None = None
    api_token_origin: str = "given"  # or "file PATH", "generated in PATH", "none"
    viewer_token: str | None = None  # read-only: every view, no change
    allowed_hosts: tuple[str, ...] = ()  # names the API answers for besides loopback's


class Manager:
    def __init__(self, settings: ManagerSettings) -> None:
        self.settings = settings
        self.id = settings.manager_id
        self.leading = False
        self._leading_since = 0.0  # monotonic
        # Since when pings could reach us as leader: no one is dead for missing
        # pings that no leader was there to record (a takeover, an outage).
        self._watching_since = self._last_round = utcnow()
        self._stop = asyncio.Event()
        self.hub = EventHub()
        self.conflicts = Conflicts()
        # Silent this long, a worker is dead.
        self._dead_after = timedelta(seconds=protocol.DEAD_AFTER_PINGS * settings.ping_interval)
        self.throttle = Throttle(log)
        self._scheduler_thread = ThreadPoolExecutor(1, thread_name_prefix="qworker-scheduler")
        self.pings = Pings(self.throttle)
        self.health = Health()
        self.answered_at: float | None = None  # MongoDB's last answer to the lease (monotonic)
        self.health.check("mongodb", self._unanswered)

    async def run(self) -> int:
        url = resolve_url(self.settings.mongo)
        names = Names(self.settings.prefix)
        await asyncio.to_thread(prepare, url, names, self.settings.channel_size, True)
        client = async_client(url)
        db = client.get_default_database(default="qworker")
        self.jobs, self.workers, self.tasks = db[names.jobs], db[names.workers], db[names.tasks]
        self.channel = Channel(db[names.channel])
        self.leadership = Leadership(db[names.leases], self.id, self.settings.lease)
        self.deadlines = Deadlines(self.jobs, self.tasks, self.channel, self.id)
        self.workflow_sweep = WorkflowSweep(self.jobs, db[names.workflows])
        self.scheduler = Scheduler(url, names)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        listening = asyncio.Event()
        self.sinks = Sinks(self.settings.sinks)
        self.sinks.start()
        events = {*protocol.TO_MANAGER, *WATCHED, protocol.SCHEDULES_CHANGED}
        listener = asyncio.create_task(self.channel.subscribe(events, self._on_message, listening))
        supervisor = asyncio.create_task(systemd.supervise(self.status_line))
        ticker = asyncio.create_task(self.health.tick())
        await listening.wait()
        try:
            async with self._http(url) as http:
                log.info(
                    "manager started",
                    manager_id=self.id,
                    http=http,
                    ping_interval=self.settings.ping_interval,
                )
                await self._lead()
        finally:
            for task in (listener, supervisor, ticker):
                task.cancel()
            await asyncio.gather(listener, supervisor, ticker, return_exceptions=True)
            await self.sinks.stop()
            await self._scheduling(self.scheduler.stop)
            with contextlib.suppress(PyMongoError):
                if self.leading:
                    await self.channel.publish(protocol.MANAGER_STOP, {"managerId": self.id})
                await self.leadership.release()
            await close_async(client)
        log.info("manager stopped", manager_id=self.id)
        return 0

    @contextlib.asynccontextmanager
    async def _http(self, url: str) -> AsyncIterator[str | None]:
        """The API and dashboard (``--http``), served while the manager runs; their URL,
        once they answer."""
        if not self.settings.http:
            yield None
            return
        from qworker.client import Client
        from qworker.manager.api import create_app  # FastAPI: only for a manager that serves it
        from qworker.manager.webserver import WebServer, listen

        sock = listen(self.settings.http, self.settings.api_token, self.settings.viewer_token)
        client = await asyncio.to_thread(
            Client, url, self.settings.prefix, self.settings.channel_size
        )
        hosts = [parse_bind(self.settings.http)[0], *self.settings.allowed_hosts]
        app = create_app(
            client,
            self.hub,
            self.settings.api_token,
            hosts=hosts,
            probes=self.health,
            viewer_token=self.settings.viewer_token,
        )
        server = WebServer(app, sock)
        task = asyncio.create_task(server.serve())
        try:
            await server.ready(task)
            self._say_where(server.url)
            yield server.url
        finally:
            self.hub.close()
            server.stop()
            await asyncio.gather(task, return_exceptions=True)
            await asyncio.to_thread(client.close)

    def _say_where(self, url: str) -> None:
        """Where the dashboard is; on a terminal, a link that hands it the token."""
        token, origin = self.settings.api_token, self.settings.api_token_origin
        log.info(
            "dashboard",
            url=url,
            api_token=origin,
            viewer_token="given" if self.settings.viewer_token else "none",
        )
        if token is not None and sys.stderr.isatty():
            print(f"qworker-manager: the dashboard: {url}/#token={quote(token)}", file=sys.stderr)

    async def _lead(self) -> None:
        """Hold (or wait for) the lease; while leading, look for dead workers and overdue jobs."""
        systemd.notify("READY=1")  # listening on the channel (and serving HTTP, if asked)
        every = min(self.settings.lease / 3, self.settings.ping_interval)
        gap = timedelta(seconds=every + self.settings.ping_interval)
        while not self._stop.is_set():
            try:
                leading = await self.leadership.hold()
                self.answered_at = time.monotonic()
                now = utcnow()
                if (leading and not self.leading) or now - self._last_round > gap:
                    self._watching_since = now  # newly leading, or away (outage, stall)
                self._last_round = now
                if leading and not self.leading:
                    self._leading_since = time.monotonic()
                    await self._forget_unexpiring()
                    # Schedules first: workers answer manager:start by defining
                    # their tasks, whose metadata may carry schedules to install.
                    await self._scheduling(self.scheduler.start)
                    log.info("leading the fleet", manager_id=self.id)
                    await self.channel.publish(protocol.MANAGER_START, {"managerId": self.id})
                elif self.leading and not leading:
                    log.warning("lost the lease; standing by", manager_id=self.id)
                    await self._scheduling(self.scheduler.stop)
                self.leading = leading
                if leading:
                    await self._find_dead()
                    await self.deadlines.sweep()
                    await self.workflow_sweep.sweep()
                    self.scheduler.wakeup()  # in case a schedules:changed was missed
            except PyMongoError as exc:
                log.warning("cannot reach MongoDB", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), every)
        systemd.stopping("stopping: handing over the lease" if self.leading else "stopping")

    async def _forget_unexpiring(self) -> None:
        """Give an ``expireAt`` to the worker entries without one (written by versions that
        did not set it), so that the ``forget`` TTL index removes them in time too: a
        live worker's own pings or refreshes push it back."""
        done = await self.workers.update_many(
            {"expireAt": {"$exists": False}}, {"$set": {"expireAt": kept_until()}}
        )
        if done.modified_count:
            log.info("worker entries without an expiry will expire", count=done.modified_count)

    def _newly_leading(self) -> bool:
        return time.monotonic() - self._leading_since < SETTLE_SECONDS

    def _unanswered(self) -> str | None:
        """Readiness (``/readyz``): MongoDB answered within the last lease."""
        answered = self.answered_at
        if answered is None or time.monotonic() - answered > self.settings.lease:
            return "MongoDB has not answered within the last lease"
        return None

    async def _scheduling(self, work: Callable[..., Any], *args: Any) -> Any:
        """The scheduler's blocking work, in a thread of its own: the API's calls, which
        have their own threads too, can never hold up a handshake behind them."""
        return await asyncio.get_running_loop().run_in_executor(self._scheduler_thread, work, *args)

    def status_line(self) -> str:
        """One line on this manager's state, for ``systemctl status``."""
        if self._stop.is_set():
            return "stopping"
        return "leading the fleet" if self.leading else "standing by (another manager leads)"

    # -- messages --------------------------------------------------------

    async def _on_message(self, event: str, body: dict[str, Any]) -> None:
        self.hub.publish(event, body)
        if not self.leading or event not in TO_LEADER:
            return
        if event == protocol.WORKER_NOTIFICATION:
            self.sinks.relay(body)
            # A job's end: the schedules' overlap and pauseOnFailure policies act on it.
            self.scheduler.job_ended(body)
            return
        if event == protocol.SCHEDULES_CHANGED:
            self.scheduler.changed()
            return
        worker_id, nonce = body.get("workerId"), body.get("nonce")
        if not isinstance(worker_id, str) or not isinstance(nonce, str):
            self.throttle.warning("ignoring a message without workerId/nonce", event_name=event)
            return
        if event == protocol.DEFINE_TASKS:
            await self._define(worker_id, nonce, body.get("tasks"))
        elif event == protocol.WORKER_INITIALIZE:
            await self._initialize(worker_id, nonce, body)
        elif event == protocol.WORKER_PING:
            if self.pings.hear(worker_id, nonce, body.get("running", 0)):
                await self.pings.write(self.workers)
        elif event in (protocol.WORKER_STOP, protocol.WORKER_TERMINATE):
            done = await self.workers.update_one(
                {"_id": worker_id, "nonce": nonce},
                {"$set": {"state": "stopped", "stoppedAt": utcnow(), "expireAt": kept_until()}},
            )
            self._known(done.matched_count, event, worker_id)

    def _known(self, matched: int | bool, event: str, worker_id: str) -> None:
        """Say so when a worker message names no instance we know (forged, stale, or late)."""
        if not matched:
            self.throttle.warning(
                "ignoring a message from an unknown or stopped worker instance",
                event_name=event,
                worker_id=worker_id[:200],
            )

    async def _define(self, worker_id: str, nonce: str, tasks: Any) -> None:
        """Record the tasks a worker announced, checked as the worker checked them.

        A definition that differs from one a live worker holds is not recorded:
        the instance that announced it is refused when it initializes.
        """
        if not isinstance(tasks, list):
            log.warning("ignoring define:tasks without a task list", worker_id=worker_id)
            return
        ops, metas, clashes = [], [], []
        for raw in tasks:
            if not isinstance(raw, dict) or not isinstance(raw.get("id"), str):
                log.warning(
                    "ignoring a task definition that is not a mapping with an id",
                    worker_id=worker_id,
                )
                continue
            clash = await self._clash(worker_id, raw)
            if clash is not None:
                clashes.append(clash)
                continue
            try:
                meta = check_metadata(raw, _announced(worker_id, raw["id"]), code=False)
                problems: list[str] = []
                metas += [meta] if meta else []
            except TaskDefinitionError as exc:
                problems = str(exc).splitlines()
            fields = {
                "name": raw.get("name", raw["id"]),
                "description": raw.get("description", ""),
                "metadata": raw,
                "valid": not problems,
                "problems": problems,
                "definedAt": utcnow(),
            }
            ops.append(
                UpdateOne(
                    {"_id": raw["id"]},
                    {"$set": fields, "$addToSet": {"workers": worker_id}},
                    upsert=True,
                )
            )
        if ops:
            try:
                await self.tasks.bulk_write(ops, ordered=False)
            except (BulkWriteError, InvalidDocument) as exc:  # too large, or refused: those only
                log.warning(
                    "some announced tasks could not be recorded",
                    worker_id=worker_id,
                    error=str(exc)[:500],
                )
        self.conflicts.record(worker_id, nonce, clashes)
        await self._scheduling(self.scheduler.install, metas)

    async def _clash(self, worker_id: str, raw: dict[str, Any]) -> str | None:
        """Why ``raw`` may not replace the definition that live workers hold, or None."""
        standing = await self.tasks.find_one({"_id": raw["id"]}, {"metadata": 1})
        if standing is None or not isinstance(standing.get("metadata"), dict):
            return None
        fields = differences(standing["metadata"], raw)
        if not fields:
            return None
        holders = await self.workers.find(
            {
                "tasks": raw["id"],
                "state": "running",
                "standalone": {"$ne": True},
                "_id": {"$ne": worker_id},
            },
            {"state": 1, "pingedAt": 1},
        ).to_list()
        live = [str(holder["_id"]) for holder in holders if self._alive(holder)]
        return refusal(raw["id"], live, fields) if live else None

    async def _initialize(self, worker_id: str, nonce: str, body: dict[str, Any]) -> None:
        heard = self.conflicts.heard(worker_id, nonce)
        reason = await self._rejection(worker_id, nonce, body.get("tasks"))
        if isinstance(reason, UnknownTask) and not heard and self._newly_leading():
            # Its define:tasks went by before this manager led; refused now, it would
            # stop for good. It announces again, whole, on this manager's start.
            log.info("a worker's tasks are not known yet; waiting for it to announce them")
            return
        clashes = self.conflicts.take(worker_id, nonce)
        # A definition that clashes is refused for now: it may run once the others stop.
        retry = reason is None and bool(clashes)
        reason = reason or "; ".join(clashes) or None
        if reason:
            log.warning("worker rejected", worker_id=worker_id, reason=reason)
            await self.channel.publish(
                protocol.terminate(worker_id), {"nonce": nonce, "reason": reason, "retry": retry}
            )
            return
        now = utcnow()
        await self.workers.update_one(
            {"_id": worker_id},
            {
                "$set": {
                    "nonce": nonce,
                    "host": body.get("host"),
                    "pid": body.get("pid"),
                    "expireAt": kept_until(now),
                    "tasks": body.get("tasks"),
                    "state": "running",
                    "startedAt": now,
                    "pingedAt": now,
                    "running": 0,
                    "standalone": False,
                    "pingInterval": self.settings.ping_interval,
                },
                "$unset": {"stoppedAt": "", "diedAt": ""},
            },
            upsert=True,
        )
        await self.channel.publish(
            protocol.start(worker_id),
            {"nonce": nonce, "pingInterval": self.settings.ping_interval, "managerId": self.id},
        )
        log.info(
            "worker accepted", worker_id=worker_id, host=body.get("host"), tasks=body.get("tasks")
        )

    async def _rejection(self, worker_id: str, nonce: str, tasks: Any) -> str | None:
        """Why this worker may not run, or None."""
        if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
            return "worker:initialize must list the worker's task ids"
        await self.pings.write(self.workers)  # the pings heard before this message count
        holder = await self.workers.find_one({"_id": worker_id})
        if holder and holder.get("nonce") != nonce and self._alive(holder):
            return (
                f"worker id '{worker_id}' is already used by a live worker "
                f"on host {holder.get('host')} (pid {holder.get('pid')})"
            )
        for task_id in tasks:
            task = await self.tasks.find_one({"_id": task_id})
            if task is None:
                return UnknownTask(f"task '{task_id}' is unknown: no worker defined it")
            if not task.get("valid", False):
                return f"task '{task_id}' has invalid metadata: " + "; ".join(task["problems"])
        return None

    def _alive(self, worker: dict[str, Any]) -> bool:
        pinged = worker.get("pingedAt")
        return worker.get("state") == "running" and pinged is not None and pinged > self._silent()

    def _silent(self) -> datetime:
        """Pings older than this were missed: two intervals before the point up to which
        the channel was read. A manager behind its channel (a flood, a stall) has not
        heard the latest pings yet, and must neither bury their senders nor let another
        instance take their ids."""
        return min(utcnow(), self.channel.position) - self._dead_after

    # -- dead workers ----------------------------------------------------

    async def _find_dead(self) -> None:
        """Workers silent for two ping intervals, up to where the channel was read."""
        await self.pings.write(self.workers)
        limit = self._silent()
        if self._watching_since > limit:
            return  # not watched for two intervals yet: the missed pings are not theirs
        # Standalone workers list themselves and answer to no manager.
        dead = await self.workers.find(
            {"state": "running", "pingedAt": {"$lt": limit}, "standalone": {"$ne": True}}
        ).to_list()
        now = utcnow()
        for worker in dead:
            marked = await self.workers.update_one(
                {
                    "_id": worker["_id"],
                    "nonce": worker["nonce"],
                    "state": "running",
                    "pingedAt": worker["pingedAt"],
                },
                {"$set": {"state": "dead", "diedAt": now, "expireAt": kept_until(now)}},
            )
            if marked.modified_count:
                await self._recover(worker)

    async def _recover(self, worker: dict[str, Any]) -> None:
        """Take the dead instance's running jobs back now, not at lease expiry."""
        prefix = f"^{re.escape(worker['_id'])}:{re.escape(worker['nonce'])}:"
        held = await self.jobs.find(
            {"state": JobState.RUNNING.value, "lockToken": {"$regex": prefix}}, LOST_FIELDS
        ).to_list()
        now = utcnow()
        requeued = await take_back(self.jobs, held, now)
        ids = [str(job_id) for job_id in requeued]
        log.warning("worker dead", worker_id=worker["_id"], recovered=ids)
        await self.channel.publish(
            protocol.WORKER_DEAD,
            {"workerId": worker["_id"], "nonce": worker["nonce"], "recovered": ids},
        )
        if requeued:
            again = [doc for doc in held if doc["_id"] in set(requeued)]
            await self.channel.publish(protocol.JOB_QUEUED, protocol.queued(again, now))


def _announced(worker_id: str, task_id: str) -> Path:
    """Where a problem in announced metadata is said to be, in messages."""
    return Path(f"<task '{task_id}' announced by worker '{worker_id}'>")
