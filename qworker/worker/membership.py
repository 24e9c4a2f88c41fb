"""A managed worker's side of the handshake: announce, wait to be accepted, ping.

Without ``--standalone`` a worker claims nothing until a manager accepted it,
pauses when the manager stops, and re-initialises when one starts again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping
from typing import Any, Protocol

import structlog
from pymongo.errors import PyMongoError

from qworker import protocol
from qworker.aio import check_cancelled
from qworker.channel import Channel
from qworker.config import WorkerSettings
from qworker.mongo import Names
from qworker.store import WorkerStore
from qworker.tasks import TaskMeta

log = structlog.get_logger("qworker.membership")

ANSWER_SECONDS = 3.0
RETRY_SECONDS = 2.0


class Member(Protocol):
    """What membership needs of the worker it speaks for."""

    id: str
    nonce: str
    host: str
    settings: WorkerSettings
    channel: Channel
    store: WorkerStore

    @property
    def metas(self) -> Mapping[str, TaskMeta]: ...

    @property
    def running_count(self) -> int: ...

    def request_stop(self, force: bool = False) -> None: ...


class Membership:
    def __init__(self, worker: Member) -> None:
        self.worker = worker
        self.accepted = asyncio.Event()
        self.refused: str | None = None
        self.refused_for_now = False  # the reason may pass: exit so that a supervisor retries
        self.ping_interval = protocol.DEFAULT_PING_SECONDS
        self._answer = asyncio.Event()
        self._rejoin = asyncio.Event()
        self._paused = False
        self.leader: str | None = None  # the manager that accepted us or announced itself last

    def events(self) -> list[str]:
        w = self.worker.id
        return [
            protocol.start(w),
            protocol.stop(w),
            protocol.terminate(w),
            protocol.MANAGER_START,
            protocol.MANAGER_STOP,
        ]

    async def on_message(self, event: str, body: dict[str, Any]) -> None:
        w = self.worker
        if event in (protocol.MANAGER_START, protocol.MANAGER_STOP):
            sender = body.get("managerId")
            if not await self._leads(event, sender):
                log.warning(
                    f"ignoring {event} from a manager that does not hold the lease",
                    manager_id=str(sender)[:200],
                    leader=self.leader,
                )
                return
            if event == protocol.MANAGER_START:
                self.leader = sender
            if event == protocol.MANAGER_STOP and self.accepted.is_set():
                log.warning("manager stopped: pausing (running jobs finish, none are claimed)")
                self.accepted.clear()
                self._paused = True
            self._rejoin.set()
            if event == protocol.MANAGER_START and self._paused:
                # Rejoin now: our announcements were made while no manager led, and
                # the new one counts our pings (running jobs) from its start.
                self._answer.set()
            return
        if body.get("nonce") != w.nonce:
            # Addressed to another instance with the same id (a rejected duplicate), or forged.
            log.info("ignoring a message for another instance of this worker id", event_name=event)
            return
        if event == protocol.start(w.id):
            interval = body.get("pingInterval")
            if isinstance(interval, int | float) and interval > 0:
                self.ping_interval = float(interval)
            if isinstance(body.get("managerId"), str):
                self.leader = body["managerId"]
            self.accepted.set()
            self._paused = False
            self._answer.set()
            log.info("accepted by the manager", manager_id=body.get("managerId"))
            await w.channel.publish(protocol.WORKER_START, self._identity())
        elif event == protocol.terminate(w.id):
            self.refused = str(body.get("reason") or "terminated by the manager")
            self.refused_for_now = body.get("retry") is True
            log.error("terminated by the manager", reason=self.refused)
            self._answer.set()
            w.request_stop(force=True)
        elif event == protocol.stop(w.id):
            w.request_stop()

    async def _leads(self, event: str, sender: Any) -> bool:
        """Whether ``sender`` may start or stop the fleet: it holds the lease (the one that
        stops may have let it go already, but no other manager may hold it)."""
        if not isinstance(sender, str):
            return False
        w = self.worker
        leases = w.store.jobs.database[Names(w.settings.prefix).leases]
        try:
            lease = await leases.find_one({"_id": protocol.LEADER_LEASE_ID}, {"owner": 1})
        except PyMongoError:
            return False  # cannot tell: a real one is repeated (start) or followed by one
        owner = None if lease is None else lease.get("owner")
        if event == protocol.MANAGER_START:
            return owner == sender
        return sender == self.leader and owner in (None, sender)

    def _identity(self) -> dict[str, Any]:
        w = self.worker
        return {"workerId": w.id, "nonce": w.nonce, "host": w.host, "pid": os.getpid()}

    async def _announce(self) -> None:
        w = self.worker
        tasks = [
            {**m.raw, "id": m.id, "name": m.name, "description": m.description}
            for m in w.metas.values()
        ]
        await w.channel.publish(protocol.WORKER_CONNECTED, self._identity())
        await w.channel.publish(protocol.DEFINE_TASKS, {**self._identity(), "tasks": tasks})
        await w.channel.publish(
            protocol.WORKER_INITIALIZE, {**self._identity(), "tasks": list(w.metas)}
        )

    async def _rest(self, seconds: float) -> None:
        """Up to ``seconds``; at once if a manager started or stopped since the last rest."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._rejoin.wait(), seconds)
        self._rejoin.clear()

    async def run(self) -> None:
        """Until cancelled: join when not accepted, ping while accepted."""
        waiting_logged = False
        while self.refused is None:
            try:
                if self.accepted.is_set():
                    await self.worker.channel.publish(
                        protocol.WORKER_PING,
                        {**self._identity(), "running": self.worker.running_count},
                    )
                    await self._rest(self.ping_interval)
                    continue
                self._answer.clear()
                await self._announce()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._answer.wait(), ANSWER_SECONDS)
            except PyMongoError as exc:
                check_cancelled()
                log.warning("cannot reach MongoDB", error=str(exc))
            if self.accepted.is_set() or self.refused is not None:
                waiting_logged = False
                continue
            if not waiting_logged and not self._rejoin.is_set():
                log.warning("no manager answered; waiting for one", retry_every=RETRY_SECONDS)
                waiting_logged = True
            await self._rest(RETRY_SECONDS)
