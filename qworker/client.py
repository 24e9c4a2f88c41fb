"""The client library: enqueue jobs and look after them from application code.

``Client`` blocks; ``qworker.AsyncClient`` is the same for asyncio. Both run
the operations of ``qworker.store`` and ``qworker.enqueue``, so they write
the same documents, and both take the application's ``session=``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from functools import cached_property
from types import TracebackType
from typing import Any, TypeVar, Unpack

import pymongo
import structlog
from pymongo import MongoClient
from pymongo.client_session import ClientSession
from pymongo.database import Database
from pymongo.errors import PyMongoError

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
from qworker.awaits import Pace
from qworker.bulk import Bulk
from qworker.channel import publish_sync
from qworker.errors import InvalidJobError, ScheduleBusy, ScheduleNotFound, ScheduleOwnedByTask
from qworker.jobfilter import FilterKeywords, JobFilter
from qworker.manager.scheduler import Firing, run_now_key
from qworker.model import FINISHED_STATES, Expires, JobState, UniqueOption
from qworker.mongo import CHANNEL_BYTES, Names
from qworker.mongo import sync_database as open_database
from qworker.operations import Operation, run
from qworker.schedules import Schedule, ScheduleBook, make_schedule
from qworker.schema import ensure_schema
from qworker.steps import Step
from qworker.store import Doc
from qworker.transactions import Transactions
from qworker.wakeups import Wakeups
from qworker.when import parse_when, utcnow
from qworker.workflows import Workflow

log = structlog.get_logger("qworker.client")

PING_SECONDS = 3.0
T = TypeVar("T")
Target = str | MongoClient[Any] | Database[Any]


class Client:
    """``Client("mongodb://host/db")``, ``Client("embedded")`` for the local server, or
    ``Client(mongo_client)`` / ``Client(database)`` to share the application's connection
    (never closed by ``close``).

    ``wakeups="auto"`` publishes a ``job:queued`` wake-up only where the server has
    no change streams (workers watch ``jobs`` where it has them); ``"channel"``
    always does, for workers run with ``--no-watch-jobs``.
    """

    def __init__(
        self,
        target: Target,
        prefix: str = "",
        channel_size: int = CHANNEL_BYTES,
        *,
        wakeups: str = "auto",
    ) -> None:
        self._wakeup_mode = wakeup_mode(wakeups)
        self.db, opened = open_database(target)
        self.url = opened
        self._mongo: MongoClient[Doc] = self.db.client
        self.names = Names(prefix)
        ensure_schema(self.db, self.names, channel_size)
        self.jobs_collection = self.db[self.names.jobs]
        self._transactions = Transactions(self._mongo)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object | type[BaseException] | TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Publish what is pending and let go; a connection the application gave stays open."""
        if "_wakeups" in self.__dict__:
            self._wakeups.close()
        if "schedules" in self.__dict__:
            self.schedules.close()
        if self.url is not None:
            self._mongo.close()

    def _run(self, op: Operation[T], session: ClientSession | None) -> T:
        return run(op, self.db, self.names, session)

    # -- transactions ----------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[ClientSession]:
        """``with client.transaction() as s:``: the jobs enqueued with ``session=s``
        commit or abort with the block's other writes; a commit whose outcome is unknown
        is retried. Raises ``TransactionsUnsupported`` on a server without transactions."""
        with self._transactions.block() as session:
            yield session

    def run_in_transaction(self, body: Callable[[ClientSession], T]) -> T:
        """Run ``body(session)`` in a transaction, again from the start on MongoDB's
        transient transaction errors (as pymongo's ``with_transaction``); its result."""
        return self._transactions.run(body)

    # -- enqueueing ------------------------------------------------------

    def now(
        self, task: str, data: Any = None, *, session: ClientSession | None = None, **opts: Any
    ) -> str:
        """Queue a job to run as soon as a worker is free; returns its id."""
        return self.schedule(None, task, data, session=session, **opts)

    def schedule(
        self,
        when: str | datetime | None,
        task: str,
        data: Any = None,
        *,
        unique: UniqueOption | None = None,
        session: ClientSession | None = None,
        **opts: Any,
    ) -> str:
        """Queue a job for ``when`` (``now``, ``in 20 minutes``, an ISO time, ``tomorrow 9am``).

        With ``unique=KEY`` there is at most one queued or running job of
        ``task`` with that key: while one exists, its id is returned instead.
        ``unique={"key": KEY, "while": ..., "period": ..., "replace": [...]}``:
        ``while`` is ``"active"`` (as ``unique=KEY``), ``"queued"`` (one queued job
        per key; a running one does not count) or ``"period"`` (a throttle: one job
        per key per ``period``, such as ``"10 minutes"``, counted from its creation,
        finished or not). ``replace`` (``"data"``, ``"nextRunAt"``; not with a period)
        debounces: a queued holder takes this call's data and/or run time instead.
        """
        if unique is None:
            return self.enqueue_many(task, [data], when=when, session=session, **opts)[0]
        return self._enqueue(enqueue.unique(task, data, when, unique, **opts), session)[0]

    def enqueue_many(
        self,
        task: str,
        items: Iterable[Any],
        when: str | datetime | None = None,
        *,
        priority: int | str | None = None,
        max_attempts: int | None = None,
        timeout: float | None = None,
        description: str | None = None,
        expires: Expires | None = None,
        session: ClientSession | None = None,
    ) -> list[str]:
        """Queue one job per item of data in one round trip; all or nothing is validated.

        ``expires``: a job not started by then ends ``expired`` instead of running
        late (seconds or a duration from its run time, or a time).
        """
        op = enqueue.many(
            task,
            items,
            when,
            priority=priority,
            max_attempts=max_attempts,
            timeout=timeout,
            description=description,
            expires=expires,
        )
        return self._enqueue(op, session)

    def chain(
        self,
        steps: Sequence[Step | str | tuple[str, Any]],
        when: str | datetime | None = None,
        *,
        session: ClientSession | None = None,
    ) -> str:
        """Queue steps to run one after another; returns the chain's id (its last job's).

        A step is ``("task", data)``, a bare ``"task"`` whose data is the
        previous step's result, or a ``Step`` with job options. The chain
        stops at the first step that fails for good: the steps after it end
        ``cancelled``, their ``failReason`` naming the step. ``wait(chain_id)``
        returns the last step. A chain is a workflow (kind ``chain``): see
        ``workflows()``; retrying its failed step runs the rest again.
        """
        return self._enqueue(workflowstore.chain(steps, when), session)[0]

    # -- fleet-wide controls ---------------------------------------------

    def pause_task(self, task_id: str, *, session: ClientSession | None = None) -> Doc:
        """Claim no job of ``task_id`` on any worker until ``resume_task``: its queued jobs
        wait, its running ones finish. Kept in MongoDB, so it outlives restarts; each
        worker sees it within its poll interval (at once, from the channel's hint)."""
        return self._control(task_id, True, session)

    def resume_task(self, task_id: str, *, session: ClientSession | None = None) -> Doc:
        """Let every worker claim ``task_id``'s jobs again."""
        return self._control(task_id, False, session)

    def task_controls(self, task_id: str) -> Doc:
        """Whether ``task_id`` is paused fleet-wide (``paused``), and since when."""
        return self._run(controls.get(task_id), None)

    def task_limits(self) -> dict[str, Doc]:
        """Each limited task's fleet-wide limits and their use: ``concurrency`` and the
        slots ``running``, ``rate`` and the ``recentStarts`` in its last window,
        ``partitionBy`` and the number of ``partitions`` seen."""
        return self._run(limits.by_task(utcnow()), None)

    def paused_tasks(self) -> set[str]:
        """The tasks paused fleet-wide."""
        return self._run(controls.paused_among(), None)

    def _control(self, task_id: str, paused: bool, session: ClientSession | None) -> Doc:
        view = self._run(controls.set_paused(task_id, paused, utcnow()), session)
        channel = self.db[self.names.channel]
        hint = {"task": task_id}
        self._transactions.after_commit(
            session, lambda: publish_sync(channel, protocol.TASK_CONTROL, hint)
        )
        return view

    # -- workflows -------------------------------------------------------

    def group(
        self,
        steps: Sequence[Step | str | tuple[str, Any]],
        *,
        on_success: Step | str | tuple[str, Any] | None = None,
        on_complete: Step | str | tuple[str, Any] | None = None,
        name: str = "group",
        when: str | datetime | None = None,
        check_tasks: bool = True,
        unique: str | None = None,
        session: ClientSession | None = None,
    ) -> str:
        """Queue jobs to run side by side; returns the group's id (see ``group_info``).

        ``on_success`` runs once every one succeeded, with their results in
        order as its data (a chord); ``on_complete`` once every one finished,
        however, with a summary (``total``, ``succeeded``, ``failed``,
        ``results``, ``failures`` with their reasons). Steps are as ``chain``'s.
        ``check_tasks``: refuse a task that no worker has announced, where workers
        have announced any. ``unique=KEY``: while a group of this name and key is
        running, the enqueue stores nothing and returns its id.
        """
        now = utcnow()
        built = workflows.group(steps, now, parse_when(when, now), on_success, on_complete, name)
        return self._enqueue(workflowstore.insert(built, now, check_tasks, unique), session)[0]

    def workflow(
        self, name: str, check_tasks: bool = True, unique: str | None = None
    ) -> Workflow[str]:
        """A DAG to build: ``wf.add(task, data, deps=[...])``, then ``wf.enqueue()``
        (``check_tasks`` and ``unique`` as ``group``'s)."""

        def submit(wf: Workflow[str], session: ClientSession | None) -> str:
            now = utcnow()
            return self._enqueue(
                workflowstore.insert(wf.build(now, now), now, check_tasks, unique), session
            )[0]

        return Workflow(name, submit)

    def workflow_info(self, workflow_id: str) -> Doc:
        """A workflow's state, its counts by state, its progress and each node."""
        return self._run(workflowstore.info(workflow_id), None)

    def group_info(self, group_id: str) -> Doc:
        """``workflow_info`` of a group, with ``results`` (its jobs', in order) and its
        progress counted over its jobs."""
        return self.workflow_info(group_id)

    def wait_workflow(self, workflow_id: str, timeout: float | None = None) -> Doc:
        """Block until every node has ended; its ``workflow_info``. ``TimeoutError`` after
        ``timeout`` seconds."""
        waiting = Waiting(workflow_id, timeout, "workflow")
        while not waiting.over({"state": self._run(workflowstore.state(workflow_id), None)}):
            time.sleep(waiting.pause())
        return self.workflow_info(workflow_id)

    def workflows(self, limit: int = 50, skip: int = 0) -> list[Doc]:
        """Workflows and groups, newest first, each with its state and counts."""
        return self._run(workflowstore.listing(limit, skip), None)

    def cancel_workflow(self, workflow_id: str, *, session: ClientSession | None = None) -> Doc:
        """Cancel the nodes not started yet; ask the running ones to stop."""
        asked = self._run(workflowstore.cancel(workflow_id, utcnow()), session)
        self._cancel_hints([str(job_id) for job_id in asked], session)
        return self.workflow_info(workflow_id)

    def retry_workflow(
        self, workflow_id: str, *, session: ClientSession | None = None
    ) -> list[Doc]:
        """Run a finished workflow's failed and cancelled nodes again (the succeeded
        ones are kept); returns the nodes queued now, the rest wait for them."""
        queued = self._run(workflowstore.retry(workflow_id, utcnow()), session)
        self._announce(queued, session)
        return queued

    def _enqueue(self, op: Operation[enqueue.Enqueued], session: ClientSession | None) -> list[str]:
        done = self._run(op, session)
        self._announce(done.due, session)
        return done.ids

    def _announce(self, docs: list[Doc], session: ClientSession | None) -> None:
        """Wake idle workers where they do not watch ``jobs`` (see ``qworker.streams``):
        from the wake-up thread (``qworker.wakeups``), after the commit in a transaction."""
        if docs and not self._watched:
            self._transactions.after_commit(session, lambda: self._wakeups.announce(docs))

    @cached_property
    def _watched(self) -> bool:
        """Whether workers learn of new jobs from a change stream (the server has them)."""
        return self._wakeup_mode == "auto" and streams.watchable(self.jobs_collection)

    @cached_property
    def _wakeups(self) -> Wakeups:
        return Wakeups(self.db[self.names.channel])

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until the wake-ups of the jobs enqueued so far are on the channel.

        Jobs are stored when ``now``/``schedule``/``enqueue_many`` return; their
        wake-ups follow a moment later. ``close`` flushes too. True if all went out.
        """
        return "_wakeups" not in self.__dict__ or self._wakeups.flush(timeout)

    # -- recurring schedules ---------------------------------------------

    def every(
        self,
        interval: str | float,
        task: str,
        data: Any = None,
        *,
        name: str | None = None,
        start_at: str | datetime | None = None,
        replace: bool = True,
        overlap: str | None = None,
        pause_on_failure: bool = False,
        **opts: Any,
    ) -> Doc:
        """Run ``task`` every ``interval`` (``30 minutes``, ``1 hour``, seconds).

        The first run is one interval from now, or at ``start_at`` (``now``,
        ``midnight``, an ISO time). The schedule is named ``name`` (default:
        the task id); an existing one of that name is replaced unless
        ``replace=False``. ``overlap``: a fire while the previous fire's job is
        still queued or running starts (``allow``, the default), is dropped
        (``skip``; ``unique=True`` says the same) or is kept, one only, to start
        once that job has ended (``buffer-one``). ``pause_on_failure``: a fire's
        job that fails for good (after its retries) pauses the schedule, with the
        reason shown, until ``resume_schedule``. ``opts``: ``timezone``,
        ``misfire`` (``coalesce`` or ``skip``), ``grace``, and the job options of
        ``now``.
        """
        schedule = make_schedule(
            name or task,
            task,
            data,
            every=interval,
            start_at=start_at,
            overlap=overlap,
            pause_on_failure=pause_on_failure,
            **opts,
        )
        return self.add_schedule(schedule, replace)

    def cron(
        self,
        expr: str,
        task: str,
        data: Any = None,
        *,
        name: str | None = None,
        tz: str | None = None,
        replace: bool = True,
        overlap: str | None = None,
        pause_on_failure: bool = False,
        **opts: Any,
    ) -> Doc:
        """Run ``task`` on a crontab schedule: five fields, or six with seconds first.

        ``tz`` is the time zone the fields are read in (default UTC); ``overlap``,
        ``pause_on_failure`` and ``opts`` as ``every``'s.
        """
        schedule = make_schedule(
            name or task,
            task,
            data,
            cron=expr,
            timezone=tz,
            overlap=overlap,
            pause_on_failure=pause_on_failure,
            **opts,
        )
        return self.add_schedule(schedule, replace)

    def add_schedule(self, schedule: Schedule, replace: bool = True) -> Doc:
        view = self.schedules.add(schedule, replace)
        self._schedules_changed()
        return view

    def schedule_list(self) -> list[Doc]:
        """Every schedule, with its next fire and its last job, success and failure."""
        return self.schedules.list()

    def schedule_info(self, name: str) -> Doc:
        return self.schedules.show(name)

    def pause_schedule(self, name: str) -> Doc:
        view = self.schedules.pause(name)
        self._schedules_changed()
        return view

    def resume_schedule(self, name: str) -> Doc:
        view = self.schedules.resume(name)
        self._schedules_changed()
        return view

    def run_schedule_now(self, name: str) -> Doc:
        """Fire schedule ``name`` once, now, as its trigger would: its task, data and job
        options, ``scheduleId`` and ``scheduledFor`` set, under its overlap policy
        (``skip``: refused while the job of its last fire is queued or running;
        ``buffer-one``: kept ``waiting`` behind it, one at most). A paused schedule runs
        too; its next fire does not move. The job is the schedule's last job from then
        on, and its failure counts for ``pause_on_failure`` as a fire's would; its fire
        key, ``"<name>@<now> run-now <id>"``, is no scheduled fire's, and it has
        ``runNow: true``. ``{"schedule", "outcome": "queued"|"buffered", "jobId",
        "fireKey"}``; ``ScheduleBusy`` if the policy skipped it."""
        schedule = self.schedules.get(name)
        now = utcnow()
        key = run_now_key(name, now)
        fired = self._firing.fire(schedule, now, key, asked=True)
        self._firing.announce()
        if not fired.stored:
            raise ScheduleBusy(f"schedule {name!r} was not run now: {fired.reason}")
        if fired.outcome == "buffered":
            self._schedules_changed()  # the leader releases it when the last fire's job ends
        return {"schedule": name, "outcome": fired.outcome, "jobId": fired.job_id, "fireKey": key}

    @cached_property
    def _firing(self) -> Firing:
        """Where this client's "run now" fires go: the leader's own fire path."""
        return Firing(self._mongo, None, self.names, database=self.db.name)

    def remove_schedule(self, name: str) -> None:
        """Delete a schedule; its jobs stay. One from a task's metadata is refused: the
        manager would install it again when a worker defines the task (pause it instead)."""
        try:
            schedule: Schedule | None = self.schedules.get(name)
        except ScheduleNotFound:
            schedule = None  # or one the store would not read: deleted all the same
        if schedule is not None and schedule.origin == "metadata":
            raise ScheduleOwnedByTask(
                f"schedule {name!r} comes from the metadata of task {schedule.task!r}, and a "
                f"worker defining the task installs it again: pause it instead (schedules "
                f"pause {name}), or take 'schedule'/'every' out of the task's metadata"
            )
        self.schedules.remove(name)
        self._schedules_changed()

    @cached_property
    def schedules(self) -> ScheduleBook:
        return ScheduleBook.editor(
            self._mongo, self.db.name, self.names.schedules, self.db[self.names.jobs]
        )

    def _schedules_changed(self) -> None:
        """Tell the leader manager to look at the store now (it also looks every few seconds)."""
        try:
            publish_sync(self.db[self.names.channel], protocol.SCHEDULES_CHANGED, {})
        except PyMongoError as exc:
            log.warning("could not tell the manager; it will see the change", error=str(exc))

    def ping(self, timeout: float = PING_SECONDS) -> None:
        """Return if MongoDB answers within ``timeout`` seconds; else raise pymongo's error."""
        with pymongo.timeout(timeout):
            self.db.command("ping")

    # -- looking after jobs ----------------------------------------------

    def get(self, job_id: str, *, session: ClientSession | None = None) -> Doc:
        return self._run(store.get(job_id), session)

    def jobs(
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
        """Jobs without their logs, newest first, ``skip`` and ``limit`` for paging.

        The filters, every one given must match, are the fields of ``JobFilter``, whose
        docstring says what each means: ``state``, ``task``, ``text`` (in the
        description), and by keyword (``FilterKeywords``) ``worker`` (that runs or ran
        it last), ``since``/``until`` (created), ``finished_since``/``finished_until``
        (a datetime, an ISO 8601 time, or a duration ago: ``"2 hours"``, ``"7d"``),
        ``data_field``/``data_value`` (``"customer"``, ``"acme"``; ``"42"`` finds the
        number too) and ``error`` (text in the failure reason or error message). Or
        ``filter``: a ``JobFilter``, or a mapping of its fields as ``bulk`` takes it,
        instead of those (with them, a ``TypeError``). ``sort``: ``created``,
        ``finished`` or ``duration`` (of the last run of a succeeded or failed job);
        ``order``: ``desc`` or ``asc``.
        """
        query = JobFilter.from_call(filter, state, task, text, **fields).query()
        return self._run(store.find(query, limit, skip, sort, order), None)

    def count_jobs(
        self,
        state: str | None = None,
        task: str | None = None,
        text: str | None = None,
        *,
        filter: JobFilter | Mapping[str, Any] | None = None,
        **fields: Unpack[FilterKeywords],
    ) -> int:
        """How many jobs ``jobs`` would list without a limit (the same filters): the total,
        for paging."""
        query = JobFilter.from_call(filter, state, task, text, **fields).query()
        return self._run(store.count(query), None)

    def bulk(
        self,
        action: str,
        ids: Sequence[str] | None = None,
        filter: JobFilter | Mapping[str, Any] | None = None,
        *,
        dry_run: bool = False,
    ) -> Doc:
        """``retry``, ``cancel`` or ``delete`` the jobs of ``ids`` (at most 10,000), or every
        job ``filter`` matches (the filters of ``jobs`` as a mapping; ``{}`` is every job);
        ``{"action", "matched", "changed"}``.

        Each action keeps its rules: a retry runs finished jobs again, a cancel stops
        waiting and queued jobs and asks running ones to stop, a delete spares running
        jobs; the others are matched but not changed. Over a filter it takes the jobs in
        batches, newest first, each once, none enqueued (nor, for a retry, finished) after
        it began. ``dry_run``: nothing changes; ``matched``, and ``eligible``, how many the
        rule lets it act on (for a confirmation).
        """
        job = Bulk(action, ids, filter, utcnow())
        if dry_run:
            return self._run(job.count(), None)
        while (batch := self._run(job.next(), None)) is not None:
            self._announce(batch.queued, None)
            if batch.asked:
                self._cancel_hints(batch.asked, None)
        return job.result()

    def delete(self, job_id: str) -> Doc:
        """Delete a job that is not running, and return it; a running one must be cancelled first.

        Deleting a queued or waiting chain step stops its chain, as a cancel would.
        """
        return self._run(store.delete(job_id, utcnow()), None)

    def purge(
        self, state: str, older_than: str | float | timedelta, *, dry_run: bool = False
    ) -> int:
        """Delete finished jobs in ``state`` that ended over ``older_than`` ago; how many.

        ``state`` is succeeded, failed, cancelled or expired, ``older_than`` a duration
        (``"7 days"``): a clean-up sooner than retention's TTL. Waiting,
        queued and running jobs are never touched. ``dry_run`` only counts.
        """
        return self._run(purge_finished(state, older_than, dry_run), None)

    # -- the fleet -------------------------------------------------------

    def workers(self, state: str | None = None) -> list[Doc]:
        """The worker registry, managed and standalone, live workers first.

        Each has ``status``: its ``state``, or ``lost`` when a running worker
        has not pinged for 3 ping intervals (a killed standalone worker, or
        any worker while no manager leads); ``live`` (status is running);
        and ``runningJobs``, the jobs it holds now. ``state`` filters on
        ``status``: running, lost, stopped or dead.
        """
        return self._run(fleet.workers(state), None)

    def stop_worker(self, worker_id: str) -> Doc:
        """Ask a running worker, managed or standalone, to stop gracefully, as SIGTERM
        does: it claims no more jobs, lets its running ones finish within its ``--grace``
        and exits 0 (a supervisor with ``Restart=always`` starts it again). Recorded on
        its entry for its instance and sent on the channel; a standalone worker checks
        its entry before it obeys, and finds the request at its next refresh (a third
        of its lease) if the message is lost. Once per instance: asked again, it is
        ``alreadyAsked``. ``WorkerNotFound``, or ``WorkerStateError`` if it is not running.
        """
        asked = self._run(fleet.ask_stop(worker_id, utcnow()), None)
        if not asked["alreadyAsked"]:
            channel = self.db[self.names.channel]
            publish_sync(channel, protocol.stop(worker_id), {"nonce": asked["nonce"]})
        return {key: value for key, value in asked.items() if key != "nonce"}

    def tasks(self) -> list[Doc]:
        """Every task announced by workers or named by jobs, with ``jobs`` counted by state.

        ``liveWorkers`` serve it now; ``valid`` and ``problems`` are the
        manager's check of its metadata (None for a task never announced).
        """
        return self._run(fleet.tasks(), None)

    def task_charts(
        self, window: float = 3600.0, buckets: int = 60, *, task: str | None = None
    ) -> Doc:
        """Per task, over the last ``window`` seconds in ``buckets`` buckets (oldest
        first): ``succeeded`` and ``failed`` (jobs that ended so in each), and the
        enqueue-to-start wait of those jobs' last runs, ``waitP50`` and ``waitP95``
        (seconds; None in a bucket without one). The wait counts from the job's
        creation, or from its due time when later (a delayed job, a retry's backoff).
        One aggregation over the jobs that ended succeeded or failed (MongoDB 7.0+)."""
        return self._run(stats.task_charts(window, buckets, task), None)

    def wait(self, job_id: str, timeout: float | None = None) -> Doc:
        """Block until the job is finished; ``TimeoutError`` after ``timeout`` seconds.

        Where the server has change streams the job is watched, not polled.
        """
        waiting = Waiting(job_id, timeout)
        if not self._watched:
            while not waiting.over(self.get(job_id)):
                time.sleep(waiting.pause())
            return waiting.doc
        events = streams.finished(store.object_id(job_id))
        with self.jobs_collection.watch(events, max_await_time_ms=WATCH_AWAIT_MS) as stream:
            doc = self.get(job_id)
            while not waiting.over(doc):
                waiting.pace.begin()
                if stream.try_next() is not None or waiting.reread_due():
                    doc = self.get(job_id)
                else:
                    time.sleep(waiting.pace.rest())
        return waiting.doc

    def cancel(self, job_id: str, *, session: ClientSession | None = None) -> Doc:
        """Cancel a queued job; a running one is asked to stop (``job.cancelled``)."""
        doc = self._run(store.cancel(job_id, utcnow()), session)
        if doc.get("cancelRequested"):
            self._cancel_hints([str(doc["_id"])], session)
        return doc

    def _cancel_hints(self, job_ids: list[str], session: ClientSession | None) -> None:
        """Tell workers of cancels asked, where they do not see ``cancelRequested`` in
        their change stream (else they would at their next lease renewal anyway)."""
        if self._watched:
            return
        channel = self.db[self.names.channel]

        def send() -> None:
            for job_id in job_ids:
                publish_sync(channel, protocol.JOB_CANCEL, {"jobId": job_id})

        self._transactions.after_commit(session, send)

    def retry(self, job_id: str, *, session: ClientSession | None = None) -> Doc:
        """Run a finished (failed, cancelled, expired or succeeded) job again, now; an
        expired one loses its deadline."""
        doc = self._run(workflowstore.retry_job(job_id, utcnow()), session)
        self._announce([doc], session)
        return doc


# How long a waiter's change stream waits for an event before it checks its deadline,
# and how often it reads the job anyway (an event lost in a broken stream).
WATCH_AWAIT_MS = 250
REREAD_SECONDS = 5.0


class Waiting:
    """One ``wait``: its deadline, its polling pace, and the job once it finished."""

    def __init__(self, job_id: str, timeout: float | None, what: str = "job") -> None:
        self.job_id, self.timeout, self.what = job_id, timeout, what
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self._pause = 0.02
        self._read_at = time.monotonic()
        self.pace = Pace()  # a watcher's: see qworker.awaits
        self.doc: Doc = {}

    def over(self, doc: Doc) -> bool:
        """True once ``doc`` is finished; ``TimeoutError`` once the deadline has passed."""
        self.doc, self._read_at = doc, time.monotonic()
        if doc["state"] in FINISHED_STATES:
            return True
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise TimeoutError(
                f"{self.what} {self.job_id} is still {doc['state']} after {self.timeout}s"
            )
        return False

    def pause(self) -> float:
        """The next pause of a waiter that polls: short at first, then up to half a second."""
        pause, self._pause = self._pause, min(self._pause * 1.5, 0.5)
        return pause

    def reread_due(self) -> bool:
        """Read the job again: a watcher's safety net, and its deadline check."""
        now = time.monotonic()
        late = self.deadline is not None and now >= self.deadline
        return late or now - self._read_at >= REREAD_SECONDS


WAKEUP_MODES = ("auto", "channel")


def wakeup_mode(value: str) -> str:
    if value not in WAKEUP_MODES:
        raise InvalidJobError(
            f"wakeups must be one of {', '.join(WAKEUP_MODES)}, not {value!r}", "wakeups"
        )
    return value


def purge_finished(
    state: str, older_than: str | float | timedelta, dry_run: bool
) -> Operation[int]:
    """``Client.purge``'s checks, then ``store.purge``."""
    finished = [s.value for s in FINISHED_STATES]
    if state not in finished:
        raise InvalidJobError(
            f"purge deletes finished jobs: state must be one of {', '.join(finished)}, "
            f"not {state!r}",
            "state",
        )
    before = utcnow() - fleet.age(older_than, "older_than")
    return store.purge(JobState(state), before, dry_run=dry_run)
