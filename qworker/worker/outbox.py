"""Writes a worker owes MongoDB, batched: progress, log lines and outcomes.

Handlers report from threads, child-process relays and the event loop; the
outbox collects it under a lock and its writer flushes it in one ordered
``bulk_write``, so a busy worker pays one round trip for many jobs. Every
write is conditional on the claim's ``lockToken``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from pymongo import InsertOne, UpdateMany, UpdateOne
from pymongo.errors import BulkWriteError, PyMongoError

from qworker import fanin, protocol, tracing
from qworker.aio import check_cancelled
from qworker.channel import Channel, bundled, message
from qworker.job import Job
from qworker.lifecycle import Outcome, kept_with_workflow, log_lines, owned
from qworker.lifecycle import progress as progress_update
from qworker.model import JobState, Retention
from qworker.notifications import notification
from qworker.store import WorkerStore
from qworker.when import utcnow

Write = UpdateOne | UpdateMany | InsertOne[Any]
# The notification each outcome makes; any other is a failure ("fail").
EVENTS = {
    JobState.SUCCEEDED: "success",
    JobState.CANCELLED: "cancel",
    JobState.EXPIRED: "expire",
    JobState.QUEUED: "snooze",
}
# A snooze this short is announced with the job's id, so it is claimed on time
# (as a client announces the jobs it enqueues due within a minute).
HINTED_SNOOZE = timedelta(seconds=60)
NOTES_BATCH = 500
# Notifications wait this long for others to share their channel document (see
# qworker.channel); a wake-up among them goes at once.
NOTES_LINGER = 1.0
MAX_PENDING_NOTES = 20_000  # notifications, not jobs: bounded, oldest dropped
log = structlog.get_logger("qworker.worker")
Attributes = Callable[[str, str], Iterable[str]]  # (task id, event) -> attribute paths


class Outbox:
    """Also collects the notifications of these events, written to the channel.

    Notifications are made only while ``notifying``: a managed worker's
    manager relays them; a standalone worker has no one to tell, and on some
    servers every message on a tailed capped collection is costly.
    """

    def __init__(
        self, lease: float, notify: Callable[[], None], worker_id: str, attributes: Attributes
    ) -> None:
        self.lease = lease
        self._notify = notify
        self._worker_id = worker_id
        self._attributes = attributes
        self._lock = threading.Lock()
        self._progress: dict[str, tuple[Job, float, str | None]] = {}
        self._logs: dict[str, tuple[Job, list[dict[str, Any]]]] = {}
        self._ops: list[Write] = []
        self._workflows: list[dict[str, Any]] = []  # documents for ``workflows``, first
        self._countdowns: dict[Any, list[int]] = {}  # workflow node -> bits of ended deps
        self._notes: list[dict[str, Any]] = []
        # Outcomes not yet written, by claim token and job (one claim's token is
        # shared by the jobs it took): their leases must still be renewed, or a
        # slow or unreachable server would let the job be recovered as lost and
        # run again although it finished. Their count holds back claims.
        self._unwritten: dict[tuple[str, str], Write] = {}
        self.last_written = 0.0  # monotonic: when a write last reached the server
        # What each pending write is, for the log of a worker that stops without
        # being able to write them: by id() of the write, while it is pending.
        self._what: dict[int, str] = {}
        self.notifying = False

    @property
    def worker_id(self) -> str:
        return self._worker_id

    def progress(self, job: Job, percent: float, step: str | None) -> None:
        with self._lock:
            self._progress[job.id] = (job, percent, step)
        self._notify()

    def log(self, job: Job, level: str, text: str) -> None:
        entry = {"ts": utcnow(), "level": level, "msg": text}
        kind = "log" if level == "log" else f"log:{level}"
        with self._lock:
            self._logs.setdefault(job.id, (job, []))[1].append(entry)
        if self.notifying:
            self.publish(self._note(job.doc, kind, level=level, message=text))
        else:
            self._notify()

    def _note(self, doc: dict[str, Any], kind: str, **extra: Any) -> dict[str, Any]:
        paths = self._attributes(doc["name"], kind.split(":")[0])
        return notification(self._worker_id, doc, kind, paths, **extra)

    def event(self, job: Job, kind: str, view: dict[str, Any] | None = None, **extra: Any) -> None:
        """Announce a job event; ``view`` is the job as the event leaves it."""
        if self.notifying:
            self.publish(self._note(view or job.doc, kind, **extra))

    def publish(self, note: dict[str, Any]) -> None:
        """A channel message to send with the next batch."""
        with self._lock:
            self._notes.append(note)
        self._notify()

    def add(self, op: Write, what: str) -> None:
        """A write to make with the next batch; ``what`` says what it is ("outcome of job …")."""
        with self._lock:
            self._ops.append(op)
            self._what[id(op)] = what
        self._notify()

    def add_workflow(self, doc: dict[str, Any]) -> None:
        """A workflow's own document, written before the next batch (its jobs are in it)."""
        with self._lock:
            self._workflows.append(doc)
        self._notify()

    def finish(self, job: Job, outcome: Outcome, retention: Retention) -> None:
        now = utcnow()
        update = kept_with_workflow(job.doc, outcome.update(now, retention))
        view = {**job.doc, **{k: v for k, v in update["$set"].items() if "." not in k}}
        for key in update.get("$inc", {}):
            view[key] = int(job.doc.get(key, 0)) + update["$inc"][key]
        for key in update["$unset"]:
            view.pop(key, None)
        kind = EVENTS.get(outcome.state, "fail")
        extra: dict[str, Any] = {"retry": outcome.retry_at is not None} if kind == "fail" else {}
        if outcome.error:
            extra["error"] = {"type": outcome.error["type"], "message": outcome.error["message"]}
        op = UpdateOne(_owned(job), update)
        with self._lock:
            self._unwritten[job.doc["lockToken"], job.id] = op
        self.add(op, f"outcome of job {job.id} ({kind})")
        self._follow_up(job.doc, outcome, now, retention)
        self.event(job, kind, view, **extra)

    def _follow_up(
        self, doc: dict[str, Any], outcome: Outcome, now: datetime, retention: Retention
    ) -> None:
        """What an outcome sets off, in the same ordered batch: a final outcome's
        count-down in the workflow nodes waiting for it, or the rest of its chain
        stopped (``fanin``), or a snooze's wake-up, so that the job is claimed on time."""
        if outcome.state is JobState.QUEUED:
            if outcome.retry_at is not None and outcome.retry_at - now <= HINTED_SNOOZE:
                self._hint(doc["_id"], doc["name"], doc.get("priority", 0), outcome.retry_at)
            return
        if outcome.retry_at is None:
            keep = retention.expire_at(JobState.CANCELLED, now)
            counted, dooms = fanin.ends(doc, outcome.state, outcome.reason, now, keep)
            with self._lock:
                for node, bit in counted:  # one count-down per node and batch (drain)
                    self._countdowns.setdefault(node, []).append(bit)
            for op in dooms:
                self.add(op, f"workflow node doomed by job {doc['_id']}")

    def _hint(self, job_id: Any, task: str, priority: int, due: datetime) -> None:
        """A ``job:queued`` wake-up naming a job, sent after the batch that queues it."""
        hint = {"_id": job_id, "name": task, "priority": priority, "nextRunAt": due}
        self.publish(message(protocol.JOB_QUEUED, protocol.queued([hint])))

    def drain(self) -> Drained:
        """Pending writes (progress and logs before the outcomes they precede), notes, and
        the workflow documents of the jobs among them, taken at once."""
        now = utcnow()
        with self._lock:
            progress, logs, ops = self._progress, self._logs, self._ops
            self._progress, self._logs, self._ops = {}, {}, []
            workflows, self._workflows = self._workflows, []
            notes, self._notes = self._notes, []
            countdowns, self._countdowns = self._countdowns, {}
        for node, bits in countdowns.items():  # after the outcomes that end the deps
            ops.append(fanin.count_down(node, bits, now))
            self._what[id(ops[-1])] = f"count-down of workflow node {node} ({len(bits)})"
        if self.notifying:
            notes += [
                self._note(
                    {**job.doc, "progress": {"percent": value, "step": step}},
                    "progress",
                    percent=value,
                    step=step,
                )
                for job, value, step in progress.values()
            ]
        first: list[Write] = []
        with self._lock:
            for job, value, step in progress.values():
                lease = now + timedelta(seconds=self.lease)
                first.append(UpdateOne(_owned(job), progress_update(value, step, lease)))
                self._what[id(first[-1])] = f"progress of job {job.id}"
            for job, entries in logs.values():
                first.append(UpdateOne(_owned(job), log_lines(entries)))
                self._what[id(first[-1])] = f"log lines of job {job.id}"
        return Drained(workflows, first + ops, notes)

    def pending_outcomes(self) -> int:
        return len(self._unwritten)

    def unwritten(self) -> list[str]:
        """Claim tokens of finished runs whose outcome is still to be written."""
        with self._lock:
            return list({token for token, _ in self._unwritten})

    def written(self, ops: Sequence[Write]) -> None:
        """These writes reached the server: their runs need no lease any more."""
        done = {id(op) for op in ops}
        with self._lock:
            for run in [run for run, op in self._unwritten.items() if id(op) in done]:
                del self._unwritten[run]
            for key in done:
                self._what.pop(key, None)
            self.last_written = time.monotonic()

    def describe(self, ops: Sequence[Write]) -> list[str]:
        """What these pending writes are, in order."""
        with self._lock:
            return [self._what.get(id(op), "a write") for op in ops]

    def restore(self, ops: Sequence[Write], notes: Sequence[dict[str, Any]] = ()) -> None:
        """Put back writes that failed, ahead of newer ones, to try again."""
        with self._lock:
            self._ops[:0] = ops
            self._notes[:0] = notes


@dataclass
class Drained:
    """What the outbox held: workflow documents (written first: their jobs are among the
    writes), the job writes in order, and the notes that announce them."""

    workflows: list[dict[str, Any]]
    ops: list[Write]
    notes: list[dict[str, Any]]


def _owned(job: Job) -> dict[str, Any]:
    return owned(job.doc["_id"], job.doc["lockToken"])


class OutboxWriter:
    """What writes the outbox: job writes in one ordered batch at a time, retried
    until made; channel messages on their own, after the writes they announce, so
    that they never hold up a job's write.

    On some servers an insert into a tailed capped collection costs tens of
    milliseconds, so every message pending goes in one insert.
    """

    def __init__(
        self,
        outbox: Outbox,
        store: WorkerStore,
        channel: Channel,
        written: Callable[[], None],
        failed: Callable[[], None],
        trace_writes: bool = False,
    ) -> None:
        """``written()`` after each batch (slots held by unwritten outcomes are free);
        ``failed()`` when the server did not take one; ``trace_writes``
        (``--trace-writes``): each batch write in a span of its own (``tracing``)."""
        self.outbox, self.store, self.channel = outbox, store, channel
        self.trace_writes = trace_writes
        self._written, self._failed = written, failed
        self.wanted = asyncio.Event()  # set (from the loop) when the outbox has something
        self._notes_wanted = asyncio.Event()
        self._notes_urgent = asyncio.Event()
        self.notes: list[dict[str, Any]] = []  # messages to publish
        self.unsent: list[dict[str, Any]] = []  # channel documents of a publish to retry
        self.stopping = False  # then a failed publish gives up at once

    async def flush_loop(self) -> None:
        while True:
            await self.wanted.wait()
            self.wanted.clear()
            await self.flush()

    async def flush(self) -> None:
        """Write what the outbox holds, retrying until it is written (or cancelled:
        then it is put back, for the last writes of a stop to try or to report)."""
        drained = self.outbox.drain()
        workflows, ops, notes = drained.workflows, drained.ops, drained.notes
        delay = 0.1
        try:
            while ops or workflows:
                try:
                    with tracing.write(self.trace_writes, "write", "settle", self._traced(ops)):
                        await self.store.add_workflows(workflows)
                        workflows = []
                        await self.store.write(ops)
                    self.outbox.written(ops)
                    self._written()
                    break
                except PyMongoError as exc:
                    rest = self._skip_refused(ops, exc) if isinstance(exc, BulkWriteError) else None
                    if rest is not None:
                        ops = rest
                        continue
                    check_cancelled()
                    self._failed()
                    log.warning(
                        "cannot record job updates; retrying", error=str(exc), pending=len(ops)
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
        except asyncio.CancelledError:
            for doc in workflows:
                self.outbox.add_workflow(doc)
            self.outbox.restore(ops, notes)
            raise
        if notes:  # after the writes they announce
            self.notes.extend(notes)
            self._notes_wanted.set()
            if any(note["event"] != protocol.WORKER_NOTIFICATION for note in notes):
                self._notes_urgent.set()

    def _traced(self, ops: list[Write]) -> dict[str, str | int | bool]:
        """The attributes of a batch write's span (``--trace-writes``)."""
        if not self.trace_writes:
            return {}
        return {"qworker.worker.id": self.outbox.worker_id, "qworker.write.count": len(ops)}

    def _skip_refused(self, ops: list[Write], exc: BulkWriteError) -> list[Write] | None:
        """After a write the server refused, the writes still to make; None to retry all.

        The batch is ordered: the writes before the refused one were made, and
        the refused one would be refused again (a malformed job's counters),
        so it is dropped and said, instead of blocking every later write.
        """
        errors = exc.details.get("writeErrors") or []
        if not errors:
            return None  # a write concern problem: try the whole batch again
        index = int(errors[0]["index"])
        self.outbox.written(ops[: index + 1])
        log.error(
            "a job write was refused; dropped",
            error=str(errors[0].get("errmsg"))[:300],
            write=str(ops[index])[:300],
        )
        return ops[index + 1 :]

    async def publish_loop(self) -> None:
        while True:
            await self._notes_wanted.wait()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._notes_urgent.wait(), NOTES_LINGER)
            self._notes_wanted.clear()
            self._notes_urgent.clear()
            await self.publish()

    async def publish(self) -> None:
        while self.notes or self.unsent:
            if not self.unsent:  # bundled once: a batch retried keeps its documents' ids
                self.unsent = bundled(self.notes[:NOTES_BATCH])
                del self.notes[:NOTES_BATCH]
            try:
                await self.channel.collection.insert_many(self.unsent, ordered=False)
            except BulkWriteError as exc:
                # Unordered: the rest went in. A duplicate id is a message already
                # delivered (an insert whose answer was lost); any other refusal
                # would be refused again.
                refused = [e for e in exc.details.get("writeErrors", []) if e.get("code") != 11000]
                if refused:
                    log.warning(
                        "channel messages refused; dropped",
                        dropped=len(refused),
                        error=str(refused[0].get("errmsg"))[:300],
                    )
            except PyMongoError as exc:
                check_cancelled()
                if len(self.notes) > MAX_PENDING_NOTES:
                    dropped = len(self.notes) - MAX_PENDING_NOTES
                    del self.notes[:dropped]
                    log.warning("dropped the oldest notifications", dropped=dropped)
                log.warning("cannot publish on the channel; retrying", error=str(exc))
                await asyncio.sleep(1.0)
                if self.stopping:
                    return
                continue
            self.unsent = []
