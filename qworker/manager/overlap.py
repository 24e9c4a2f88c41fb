"""The overlap policy of schedules (``Schedule.overlap``): what a fire does while the job
of the previous fire is still queued or running.

Kept apart from the scheduler, which decides when to fire, because this is the part
that decides what a fire stores, for the leader and for a client's "run now" alike;
``insert_job`` is the one place a fire's job is built and inserted.

The policies are decided by the ``unique_active`` index, not by a read: under ``skip``
and ``buffer-one`` a fire's job holds the key ``schedule:<name>`` while it is queued or
running, so the insert of the next fire is refused while it is. ``buffer-one`` then
inserts that fire ``waiting`` (no worker claims it) under ``schedule-buffer:<name>``,
which one job at a time can hold, after noting it on the schedule's document
(``buffered``). The leader releases it (``Buffers.release``) by one conditional write
that takes the active key: refused by the index while the previous job is queued or
running, made at most once (it needs the job still ``waiting``). It tries on the end
notification of a job of that task (prompt), and every ``SWEEP_EVERY`` while a fire is
noted buffered (the correctness path), so no notification lost, no crash at any point,
loses a buffered fire or releases one twice. A buffered job that no note names (two
leaders at once) is adopted: noted in place of the fire that found it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from bson import ObjectId
from pymongo import ReturnDocument
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from qworker.model import JobState
from qworker.schedules import ACTIVE_KEY, BUFFER_KEY, Schedule
from qworker.store import Doc
from qworker.when import utcnow

# The scheduler's logger: these are its fires, whichever module stores them.
log = structlog.get_logger("qworker.scheduler")

# Seconds between looks for buffered fires to release: while one is known (the
# correctness path: end notifications are only the prompt one), and while none is
# (one another leader buffered, in a split brain).
SWEEP_EVERY = 1.0
IDLE_SWEEP = 30.0
RELEASED_FIELDS = {"_id": 1, "name": 1, "priority": 1, "nextRunAt": 1}
BUSY = "a fire is buffered already, behind the job of its last fire (overlap buffer-one)"


@dataclass(frozen=True)
class Fire:
    """The fire of ``schedule`` at ``at`` under the fire key ``key``; ``asked``: an
    operator's "run now" (``scheduler.run_now_key``)."""

    schedule: Schedule
    at: datetime
    key: str
    asked: bool = False

    def skipped(self, reason: str, **more: Any) -> None:
        if not self.asked:  # a "run now" raises what it skipped for
            log.info(
                "schedule fire skipped",
                schedule=self.schedule.name,
                fire_time=self.at.isoformat(),
                reason=reason,
                **more,
            )


@dataclass(frozen=True)
class Fired:
    """What a fire did: ``queued`` (or ``buffered``, ``waiting`` behind the job of the
    previous fire) the job ``job_id``, or ``skipped`` it for ``reason``."""

    outcome: str
    job_id: ObjectId | None = None
    reason: str | None = None

    @property
    def stored(self) -> bool:
        return self.outcome != "skipped"


def insert_job(
    jobs: Collection[Doc], fire: Fire, now: datetime, *, buffered: bool = False
) -> Doc | None:
    """Insert the job of ``fire`` (``buffered``: ``waiting``, under the buffer key): the
    job, or None if this fire's is in ``jobs`` already. A refusal for the job's unique
    key (an overlap) raises ``DuplicateKeyError``: the policy's to decide."""
    doc = fire.schedule.job(now, buffered=buffered)
    doc.update(scheduleId=fire.schedule.name, scheduledFor=fire.at, fireKey=fire.key)
    if fire.asked:
        doc["runNow"] = True
    try:
        jobs.insert_one(doc)
    except DuplicateKeyError as exc:
        if "fireKey" not in ((exc.details or {}).get("keyPattern") or {}):
            raise
        fire.skipped("already buffered" if buffered else "already enqueued")
        return None
    if not fire.asked:  # a "run now" says what it did to its caller
        done = "schedule fire buffered until the last run ends" if buffered else "schedule fired"
        log.info(
            done,
            schedule=fire.schedule.name,
            fire_time=fire.at.isoformat(),
            job_id=str(doc["_id"]),
        )
    return doc


class Buffers:
    """The fires that ``buffer-one`` schedules keep, and when to release them.

    Its methods run in the scheduler's thread (or a client's, for a "run now"), but
    for ``heard_end``.
    """

    def __init__(
        self, jobs: Collection[Doc], schedules: Collection[Doc], announce: Callable[[Doc], None]
    ) -> None:
        self.jobs, self.schedules = jobs, schedules
        self._announce = announce  # a released job, for the wake-up hint
        self._lock = threading.Lock()  # what ``heard_end`` shares with the others
        self._release_asked = False
        # Schedules with a fire noted buffered, and their tasks: whose ends to listen for.
        self._buffered: dict[str, str] = {}
        self._buffered_tasks: frozenset[str] = frozenset()
        self._swept = -IDLE_SWEEP  # monotonic: the first round looks

    def overlapped(self, fire: Fire, now: datetime) -> Fired:
        """``fire``, whose job the index refused while the job of its last fire is
        queued or running: buffered under ``buffer-one``, else skipped."""
        if fire.schedule.overlap == "buffer-one":
            return self._buffer(fire, now)
        fire.skipped("the last run is still active")
        reason = "the job of its last fire is still queued or running (overlap skip)"
        return Fired("skipped", reason=reason)

    def _buffer(self, fire: Fire, now: datetime) -> Fired:
        """Keep ``fire``: noted on the schedule's document first, then inserted
        ``waiting``. One at a time: a fire that finds another noted is dropped."""
        dropped = self._note(fire)
        if dropped is not None:
            return dropped
        try:
            doc = insert_job(self.jobs, fire, now, buffered=True)
        except DuplicateKeyError:
            # a buffered job no note names (two leaders at once): note it instead
            self._adopt(fire)
            fire.skipped("a fire is buffered already")
            return Fired("skipped", reason=BUSY)
        if doc is None:
            return Fired("skipped", reason="this fire is buffered already")
        return Fired("buffered", doc["_id"])

    def _note(self, fire: Fire) -> Fired | None:
        """Note ``fire`` buffered on its schedule's document: None once it is, else why
        the fire is dropped."""
        name = fire.schedule.name
        note = {"fireKey": fire.key, "task": fire.schedule.task, "at": fire.at}
        taken = self.schedules.update_one(
            {"_id": name, "buffered": {"$exists": False}}, {"$set": {"buffered": note}}
        )
        if not taken.matched_count:
            kept = self.schedules.find_one({"_id": name}, {"buffered": 1})
            if kept is None:
                fire.skipped("buffer-one, but the schedule is not in the store")
                return Fired("skipped", reason="the schedule is not in the store")
            held = kept.get("buffered")
            if not isinstance(held, dict) or held.get("fireKey") != fire.key:
                fire.skipped("a fire is buffered already", buffered=_shown(held))
                self._know(name, held)
                return Fired("skipped", reason=BUSY)
            # Noted by an attempt of this very fire that did not get to insert: go on.
        self._know(name, note)
        return None

    def _adopt(self, fire: Fire) -> None:
        """Note the buffered job that holds the schedule's buffer key instead of ours."""
        schedule = fire.schedule
        holder = self.jobs.find_one(
            {
                "name": schedule.task,
                "uniqueKey": BUFFER_KEY.format(schedule.name),
                "state": JobState.WAITING.value,
            },
            {"fireKey": 1, "scheduledFor": 1},
        )
        mine = {"_id": schedule.name, "buffered.fireKey": fire.key}
        if holder is None or not isinstance(holder.get("fireKey"), str):
            self.schedules.update_one(mine, {"$unset": {"buffered": ""}})
            return
        note = {
            "fireKey": holder["fireKey"],
            "task": schedule.task,
            "at": holder.get("scheduledFor"),
        }
        self.schedules.update_one(mine, {"$set": {"buffered": note}})
        self._know(schedule.name, note)

    def release_earlier(self, name: str) -> None:
        """Release the fire ``name`` has buffered, if any: it goes before a new one."""
        kept = self.schedules.find_one({"_id": name}, {"buffered": 1})
        note = (kept or {}).get("buffered")
        if note is not None:
            self.release(name, note)

    def release(self, name: str, note: Any) -> bool:
        """Queue the fire of ``name`` that ``note`` says is buffered, if its previous
        fire's job has ended: one write, which the ``unique_active`` index refuses while
        that job holds the active key, and which needs the job ``waiting`` (so it is
        made once). The note goes once the job is no longer waiting, however."""
        key = note.get("fireKey") if isinstance(note, dict) else None
        released = None
        if isinstance(key, str):
            try:
                released = self._queue(name, key)
            except DuplicateKeyError:
                return False  # the previous fire's job is still queued or running
        if released is not None:
            log.info(
                "buffered fire released", schedule=name, fire_key=key, job_id=str(released["_id"])
            )
            self._announce(released)
        noted = {"buffered.fireKey": key} if isinstance(key, str) else {"buffered": note}
        self.schedules.update_one({"_id": name, **noted}, {"$unset": {"buffered": ""}})
        self._know(name, None)
        return released is not None

    def _queue(self, name: str, key: str) -> Doc | None:
        """The conditional write of ``release``: the job of fire ``key``, queued, or None
        if it is no longer waiting."""
        now = utcnow()
        return self.jobs.find_one_and_update(
            {"fireKey": key, "state": JobState.WAITING.value, "uniqueKey": BUFFER_KEY.format(name)},
            {
                "$set": {
                    "state": JobState.QUEUED.value,
                    "uniqueKey": ACTIVE_KEY.format(name),
                    "nextRunAt": now,
                    "releasedAt": now,
                }
            },
            projection=RELEASED_FIELDS,
            return_document=ReturnDocument.AFTER,
        )

    def release_all(self) -> int:
        """Release every buffered fire whose previous fire's job has ended."""
        self._swept = time.monotonic()
        noted = list(self.schedules.find({"buffered": {"$exists": True}}, {"buffered": 1}))
        with self._lock:
            self._buffered, self._buffered_tasks = {}, frozenset()
        for doc in noted:
            self._know(doc["_id"], doc["buffered"])
        return sum(self.release(doc["_id"], doc["buffered"]) for doc in noted)

    def _know(self, name: str, note: Any) -> None:
        """Remember (or forget) that ``name`` has a fire buffered, and its task."""
        with self._lock:
            task = note.get("task") if isinstance(note, dict) else None
            if isinstance(task, str):
                self._buffered[name] = task
            else:
                self._buffered.pop(name, None)
            self._buffered_tasks = frozenset(self._buffered.values())

    def heard_end(self, task: str) -> bool:
        """A job of ``task`` ended (from any thread): True if that may release a buffered
        fire, which ``maintain`` then tries."""
        with self._lock:
            if task in self._buffered_tasks:
                self._release_asked = True
                return True
            return False

    def maintain(self) -> None:
        """Release the buffered fires that an end was heard for (or all, when a sweep is
        due)."""
        with self._lock:
            asked, self._release_asked = self._release_asked, False
        if asked or self.next_sweep() == 0:
            self.release_all()

    def sweep_soon(self) -> None:
        """Look for buffered fires at the next round: a client may have noted one."""
        self._swept = -IDLE_SWEEP

    def next_sweep(self) -> float:
        """Seconds until buffered fires are looked for again."""
        every = SWEEP_EVERY if self._buffered else IDLE_SWEEP
        return max(0.0, self._swept + every - time.monotonic())


def _shown(note: Any) -> str | None:
    return str(note.get("fireKey"))[:300] if isinstance(note, dict) else None
