"""The fleet as an operator sees it: workers, tasks, and the filters of job listings.

``workers`` holds one document per worker id: the manager writes those of
managed workers, and a standalone worker writes its own (``Listing``). A
worker that stopped pinging is shown ``lost``: a standalone one has no
manager to mark it dead, and a managed one none while no manager leads.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

import structlog
from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from qworker import controls, limits
from qworker.errors import InvalidJobError, WorkerNotFound, WorkerStateError
from qworker.model import JobState
from qworker.operations import Call, Operation
from qworker.protocol import DEFAULT_PING_SECONDS, LOST_AFTER_PINGS
from qworker.stats import COUNT_BY_TASK_AND_STATE, counts_of
from qworker.when import parse_duration, parse_when, utcnow

log = structlog.get_logger("qworker.fleet")

Doc = dict[str, Any]

# A worker's entry is removed (TTL index) this long after it was last heard from:
# stopped, dead and lost workers leave the list, which otherwise grows forever.
KEEP_WORKER = timedelta(days=1)
WORKER_STATES = ("running", "lost", "stopped", "dead")
MAX_MOMENT_CHARS = 100  # since/until: an ISO time or a duration


def kept_until(now: datetime | None = None) -> datetime:
    """When the entry of a worker heard from at ``now`` expires."""
    return (now or utcnow()) + KEEP_WORKER


def status(worker: Doc, now: datetime) -> str:
    """The stored state, or ``lost`` for a running worker whose pings stopped."""
    state = str(worker.get("state", ""))
    interval = worker.get("pingInterval") or DEFAULT_PING_SECONDS
    pinged = worker.get("pingedAt")
    silent = pinged is None or pinged < now - timedelta(seconds=LOST_AFTER_PINGS * interval)
    return "lost" if state == "running" and silent else state


def workers(state: str | None = None) -> Operation[list[Doc]]:
    """Every listed worker, live ones first, with ``status``, ``live`` and ``runningJobs``.

    ``running`` is what the worker said at its last ping; ``runningJobs``
    counts the jobs it holds now, from one query grouped over running jobs.
    """
    if state is not None and state not in WORKER_STATES:
        raise InvalidJobError(
            f"worker state must be one of {', '.join(WORKER_STATES)}, not {state!r}", "state"
        )
    query: Doc = {}
    if state is not None:
        query["state"] = "running" if state == "lost" else state
    docs: list[Doc] = yield Call("workers", "find", (query,))
    rows: list[Doc] = yield Call("jobs", "aggregate", (RUNNING_BY_WORKER,))
    held = {str(row["_id"]): row for row in rows}
    now = utcnow()
    for doc in docs:
        doc["status"] = status(doc, now)
        doc["live"] = doc["status"] == "running"
        doc["standalone"] = bool(doc.get("standalone"))
        running = held.get(doc["_id"]) or {}
        doc["runningJobs"] = int(running.get("n", 0))
        doc["jobs"] = [_running_job(job) for job in running.get("jobs", [])]
        asked = doc.get("stopRequested")
        mine = isinstance(asked, dict) and asked.get("nonce") == doc.get("nonce")
        doc["stopRequestedAt"] = asked.get("at") if mine and isinstance(asked, dict) else None
    docs = [d for d in docs if state is None or d["status"] == state]
    order = {name: n for n, name in enumerate(WORKER_STATES)}
    return sorted(docs, key=lambda d: (order.get(d["status"], len(order)), str(d["_id"])))


# The running jobs shown per worker (``runningJobs`` counts them all), longest-running first.
MAX_JOBS_SHOWN = 100
# Running jobs per worker id: one aggregation over the running jobs (the ``state``
# prefix of the ``claim`` index), whose cost is theirs, bounded by the fleet's concurrency.
RUNNING_BY_WORKER: list[Doc] = [
    {"$match": {"state": JobState.RUNNING.value}},
    {"$sort": {"lastRunAt": 1, "_id": 1}},
    {
        "$group": {
            "_id": "$lockedBy",
            "n": {"$sum": 1},
            "jobs": {
                "$firstN": {
                    "input": {
                        "id": "$_id",
                        "task": "$name",
                        "startedAt": "$lastRunAt",
                        "progress": "$progress",
                    },
                    "n": MAX_JOBS_SHOWN,
                }
            },
        }
    },
]


def _running_job(job: Doc) -> Doc:
    return {
        "id": job.get("id"),
        "task": job.get("task"),
        "startedAt": job.get("startedAt"),
        "progress": job.get("progress"),
    }


def ask_stop(worker_id: str, now: datetime) -> Operation[Doc]:
    """Ask a listed, running worker to stop as on SIGTERM: its entry records the request
    for its instance (``stopRequested``: nonce and time), which a standalone worker reads
    (at the ``<id>/stop`` hint, and at each refresh of its entry), and which the caller
    follows with that hint. The worker's entry, as it is now; asked once per instance
    (``alreadyAsked`` when it was asked before: a second stop would force it)."""
    if not isinstance(worker_id, str) or not 0 < len(worker_id) <= MAX_WORKER_ID_CHARS:
        raise WorkerNotFound(f"no worker {str(worker_id)[:MAX_WORKER_ID_CHARS]!r}")
    doc: Doc | None = yield Call("workers", "find_one", ({"_id": worker_id},))
    if doc is None:
        raise WorkerNotFound(f"no worker {worker_id!r}")
    nonce = doc.get("nonce")
    if doc.get("state") != "running" or not isinstance(nonce, str):
        raise WorkerStateError(f"worker {worker_id!r} is {status(doc, now)}: nothing to stop")
    asked = doc.get("stopRequested")
    if isinstance(asked, dict) and asked.get("nonce") == nonce:
        return _stop_view(doc, asked.get("at"), True)
    mine = {"_id": worker_id, "nonce": nonce, "state": "running"}
    now = now.replace(microsecond=now.microsecond // 1000 * 1000)  # as stored: to the ms
    done = yield Call(
        "workers", "update_one", (mine, {"$set": {"stopRequested": {"nonce": nonce, "at": now}}})
    )
    if not done.matched_count:
        raise WorkerStateError(f"worker {worker_id!r} stopped or was replaced meanwhile")
    return _stop_view(doc, now, False)


def _stop_view(doc: Doc, at: Any, again: bool) -> Doc:
    """What ``ask_stop`` returns: the worker, and its instance's nonce (which addresses the
    hint, and is not for pages)."""
    return {
        "_id": doc["_id"],
        "nonce": doc["nonce"],
        "standalone": bool(doc.get("standalone")),
        "host": doc.get("host"),
        "stopRequestedAt": at,
        "alreadyAsked": again,
    }


MAX_WORKER_ID_CHARS = 200


def tasks() -> Operation[list[Doc]]:
    """Every task announced by a worker or named by a job, with its jobs counted by state.

    Tasks that only standalone workers run are never announced, so a task
    that has jobs (or is paused) but no announcement is listed too, with
    ``valid`` None. ``paused``: paused fleet-wide (``qworker.controls``);
    ``limits``: its fleet-wide limits and their use (``qworker.limits.summary``).
    ``liveWorkers`` are the running workers (managed or standalone) that
    serve it now; ``workers`` are those that ever announced it.
    """
    counts: dict[str, dict[str, int]] = defaultdict(lambda: {s.value: 0 for s in JobState})
    rows: list[Doc] = yield Call("jobs", "aggregate", (COUNT_BY_TASK_AND_STATE,))
    for name, by_state in counts_of(rows).items():
        counts[name].update(by_state)
    now = utcnow()
    live: dict[str, list[str]] = defaultdict(list)
    fields = {"tasks": 1, "state": 1, "pingedAt": 1, "pingInterval": 1}
    running: list[Doc] = yield Call("workers", "find", ({"state": "running"}, fields))
    for worker in running:
        if status(worker, now) == "running":
            for task_id in worker.get("tasks") or []:
                live[task_id].append(str(worker["_id"]))
    announced: list[Doc] = yield Call("tasks", "find", ())
    paused = yield from controls.paused_among()
    limited = yield from limits.by_task(now)
    found = {str(doc["_id"]): doc for doc in announced}
    for name in (counts.keys() | paused | limited.keys()) - found.keys():
        found[name] = {
            "_id": name,
            "name": name,
            "description": "",
            "metadata": None,
            "valid": None,
            "problems": [],
            "workers": [],
            "definedAt": None,
        }
    for task_id, doc in found.items():
        doc["jobs"] = counts[task_id]
        doc["liveWorkers"] = sorted(live.get(task_id, []))
        doc["paused"] = task_id in paused
        doc["limits"] = limited.get(task_id)
    return [found[task_id] for task_id in sorted(found)]


def moment(value: str | datetime | None, what: str, now: datetime | None = None) -> datetime | None:
    """A bound of a job listing: a datetime, an ISO time, or a duration meaning that long ago."""
    if value is None or isinstance(value, datetime):
        return None if value is None else parse_when(value)
    if len(value) > MAX_MOMENT_CHARS:
        raise InvalidJobError(
            f"{what} is {len(value)} characters long: at most {MAX_MOMENT_CHARS}", what
        )
    now = now or utcnow()
    text = value.strip().lower().removesuffix("ago").strip()
    try:
        return now - timedelta(seconds=parse_duration(text))
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidJobError(
            f"{what}={value!r} is not a time: use an ISO 8601 time such as 2030-01-31T09:00:00Z "
            "or a duration meaning that long ago, such as '2 hours' or '7d'",
            what,
        ) from None
    return parse_when(parsed)


def age(value: str | float | timedelta, what: str = "older_than") -> timedelta:
    """A duration given as ``'7 days'``, seconds, or a timedelta."""
    if isinstance(value, timedelta):
        return value
    try:
        return timedelta(seconds=parse_duration(value))
    except (ValueError, OverflowError) as exc:
        raise InvalidJobError(f"{what}: {exc}", what) from None


class Listing:
    """A standalone worker's own entry in ``workers``, kept as the manager keeps the others'.

    It is refreshed with the worker's lease upkeep (every ``interval``). It
    takes over the id's entry only from a worker that stopped, died or went
    silent: two live workers with one id (default ids are ``worker-<pid>``,
    and pids repeat across hosts and containers) must not hide each other.
    """

    def __init__(
        self, worker_id: str, nonce: str, host: str, pid: int, tasks: list[str], interval: float
    ) -> None:
        self.id, self.nonce, self.interval = worker_id, nonce, interval
        self.fields: Doc = {
            "host": host,
            "pid": pid,
            "nonce": nonce,
            "tasks": tasks,
            "standalone": True,
            "pingInterval": interval,
            "startedAt": utcnow(),
        }
        self.stopped = self.refused = False

    async def refresh(self, registry: AsyncCollection[Doc], running: int) -> bool:
        """List this worker as running now (taking the entry over if it is free); True if
        its entry says an operator asked this instance to stop (``ask_stop``)."""
        if self.stopped:
            return False
        now = utcnow()
        silent = now - timedelta(seconds=LOST_AFTER_PINGS * self.interval)
        others = {"$ne": self.nonce}
        query = {
            "_id": self.id,
            "$or": [
                {"nonce": self.nonce, "state": {"$ne": "stopped"}},
                {"nonce": others, "state": {"$ne": "running"}},
                {"nonce": others, "pingedAt": {"$lt": silent}},
            ],
        }
        update = {
            "$set": {
                **self.fields,
                "state": "running",
                "pingedAt": now,
                "running": running,
                "expireAt": kept_until(now),
            },
            "$unset": {"stoppedAt": "", "diedAt": ""},
        }
        try:
            after = await registry.find_one_and_update(
                query,
                update,
                {"stopRequested": 1},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        except DuplicateKeyError:
            if not self.refused and not self.stopped:
                log.warning(
                    "another live worker is listed under this worker's id; this one is "
                    "not listed until that one stops (give each worker its own --id)",
                    worker_id=self.id,
                )
            self.refused = True
            return False
        self.refused = False
        return self.stop_asked(after)

    def stop_asked(self, entry: Doc | None) -> bool:
        """Whether this entry asks this very instance to stop."""
        asked = (entry or {}).get("stopRequested")
        return isinstance(asked, dict) and asked.get("nonce") == self.nonce

    async def stop(self, registry: AsyncCollection[Doc]) -> None:
        """Mark the entry stopped, if it is still this instance's."""
        self.stopped = True
        await registry.update_one(
            {"_id": self.id, "nonce": self.nonce},
            {
                "$set": {
                    "state": "stopped",
                    "stoppedAt": utcnow(),
                    "running": 0,
                    "expireAt": kept_until(),
                }
            },
        )
