"""Fault injection: the MongoDB server restarts under applications and workers.

Both tests use a server of their own (``own_server``), stopped and started again on
the same data, so the rest of the suite is not disturbed and the tests run even
where QWORKER_TEST_MONGO_URL names an outside server.

* **Transactional enqueue.** Two applications place orders, each an ``orders``
  insert and its job (``client.now(..., session=s)``) in one ``client.transaction()``,
  while the server restarts twice under them. At each restart one of them holds a
  transaction open, its order and job written: it commits while the server is down
  (a commit whose outcome the client does not know, so it tries it again) or once
  the server is back. A transaction an application saw commit must have stored
  both, and its job must run once; one that raised must have stored neither, or
  both where the commit's outcome was unknown to the client (the commit reached
  the server, its answer did not): never an order without its job, nor a job
  without its order. An application tries an order again until one of its
  transactions commits, or its insert finds the order stored (such an unknown
  commit that did commit): each order then has one job.
* **Wake-ups.** A worker polling every 30 s must keep starting new jobs within
  seconds after the server restarts, a job enqueued while it was down included:
  its change stream on ``jobs`` (or, with ``--no-watch-jobs``, its tail of the
  channel) breaks, is reopened by the worker and finds them, where a poll would
  take up to 30 s (docs/decisions.md, "The application's side").
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from bson import ObjectId
from pymongo import MongoClient
from pymongo.errors import DuplicateKeyError, PyMongoError
from support.chaos import audit
from support.effects import effects_env
from support.jobs import FINISHED, wait_finished
from support.logs import alive, count_logged, ready, wait_logged
from support.server import Server
from support.waits import wait_for

from qworker import Client

pytestmark = pytest.mark.timeout(150)

RESTARTS = 2
DOWN_FOR = 2.0  # seconds between the server's stop and its start again
# Giving up on a call after a second without the server: the applications'
# transactions raise during an outage instead of waiting it out, and a worker's
# cursors break.
IMPATIENT = "serverSelectionTimeoutMS=1000&connectTimeoutMS=1000&socketTimeoutMS=5000"
COMMITS_BETWEEN = 10  # committed orders before, between and after the restarts
IN_TRANSACTION = 0.05  # seconds each transaction spends after its writes, before its commit
SETTLE_WITHIN = 60.0  # seconds an order is tried again before the application gives up
SLOW_POLL = 30.0
PROMPT = 10.0  # a start this soon after an enqueue is a wake-up, not a 30 s poll
# What a worker logs as it opens its wake-ups again after they broke.
REOPENED = {"stream": "the change stream on jobs is back", "channel": "channel cursor broken"}


@dataclass
class Restartable:
    """The test's own server, and a database on it."""

    server: Server
    url: str
    db: Any  # the test database on that server, for asserting on documents


@pytest.fixture
def restartable(own_server: Server) -> Iterator[Restartable]:
    url = f"{own_server.url}/restarts"
    mongo: MongoClient[dict[str, Any]] = MongoClient(url, tz_aware=True)
    yield Restartable(own_server, url, mongo.get_default_database())
    mongo.close()


@dataclass
class Attempt:
    """One transaction of the application, and what the application saw of it."""

    order: str
    attempt: int
    committed: bool
    error: str = ""  # what it raised; "" if it committed
    held: bool = False  # kept open across a restart, its order and job written

    @property
    def found_stored(self) -> bool:
        """Its insert found the order already stored (an earlier attempt committed)."""
        return self.error.startswith("DuplicateKeyError")


class Application:
    """Places orders ``<name>0``, ``<name>1``, ... in a thread of its own until stopped,
    each tried again until it is settled, recording every attempt."""

    def __init__(self, url: str, name: str) -> None:
        self.client, self.name = Client(url), name
        self.attempts: list[Attempt] = []
        self.crashed: list[BaseException] = []  # anything but a PyMongoError
        self._stop = threading.Event()
        self._hold, self._holding, self._release = (threading.Event() for _ in range(3))
        self._thread = threading.Thread(target=self._run, daemon=True)

    def committed(self) -> int:
        return sum(a.committed for a in self.attempts)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._release.set()  # a transaction still held open (the test failed) goes on
        self._thread.join(SETTLE_WITHIN + 30)
        self.client.close()
        assert not self._thread.is_alive(), f"application {self.name} did not stop"

    def hold_open(self) -> None:
        """Have the next transaction wait, its order and job written, until ``release``."""
        self._holding.clear()
        self._hold.set()
        assert self._holding.wait(30), "no transaction was held open"

    def release(self) -> None:
        """Let the transaction held open go on to its commit."""
        self._release.set()

    def _run(self) -> None:
        try:
            n = 0
            while not self._stop.is_set():
                self._settle(f"{self.name}{n}")
                n += 1
        except BaseException as exc:
            self.crashed.append(exc)

    def _settle(self, order: str) -> None:
        """Try ``order`` until a transaction commits or finds it stored, or time is up."""
        deadline = time.monotonic() + SETTLE_WITHIN
        attempt = 0
        while time.monotonic() < deadline:
            attempt += 1
            held: list[bool] = []
            try:
                self._place(order, attempt, held)
            except PyMongoError as exc:
                error = f"{type(exc).__name__}: {exc}"[:300]
                self.attempts.append(Attempt(order, attempt, False, error, bool(held)))
                if isinstance(exc, DuplicateKeyError):
                    return
                time.sleep(0.2)
                continue
            self.attempts.append(Attempt(order, attempt, True, "", bool(held)))
            return

    def _place(self, order: str, attempt: int, held: list[bool]) -> None:
        with self.client.transaction() as s:
            self.client.db.orders.insert_one({"_id": order, "attempt": attempt}, session=s)
            data = {"order": order, "attempt": attempt, "sleeps": [0.05]}
            self.client.now("chaos_record", data, session=s)
            if self._hold.is_set():
                self._hold.clear()
                held.append(True)
                self._holding.set()
                assert self._release.wait(60), "the held transaction was never released"
                self._release.clear()
            else:  # the application's own work, after the enqueue, before the commit
                time.sleep(IN_TRANSACTION)


def crashed(apps: list[Application]) -> list[BaseException]:
    return [exc for app in apps for exc in app.crashed]


def restart(server: Server, holder: Application, release_while_down: bool) -> None:
    """Stop and start the server while a transaction of ``holder`` is held open with
    its order and job written. It then commits while the server is down (the commit's
    outcome unknown to the client, which tries it again) or once it is back (to a
    server that never saw it commit). Other transactions fail or commit as they come."""
    holder.hold_open()
    server.stop()
    if release_while_down:
        holder.release()
    time.sleep(DOWN_FOR)
    server.start()
    if not release_while_down:
        holder.release()


def test_a_transaction_s_order_and_job_are_stored_together_across_server_restarts(
    restartable: Restartable, spawn_worker: Any
) -> None:
    url, db = restartable.url, restartable.db
    env = effects_env(url)
    workers = [
        spawn_worker("chaos_record", worker_id=f"t{n}", env=env, extra=["--lease", "5"], mongo=url)
        for n in range(2)
    ]
    ready(*workers)
    db.create_collection("orders")  # a collection is not created inside a transaction
    # Two applications: one holds a transaction open across each restart, the other
    # goes on placing orders through it.
    holder, other = apps = [Application(f"{url}?{IMPATIENT}", name) for name in "ab"]
    for app in apps:
        app.start()
    try:
        for n in range(RESTARTS + 1):
            mark = (n + 1) * COMMITS_BETWEEN
            wait_for(
                lambda m=mark: min(a.committed() for a in apps) >= m or crashed(apps),
                60,
                f"{mark} commits by each application",
            )
            assert not crashed(apps), crashed(apps)
            if n < RESTARTS:
                restart(restartable.server, holder, release_while_down=n == 0)
    finally:
        for app in apps:
            app.stop()
    assert not crashed(apps), crashed(apps)
    attempts = holder.attempts + other.attempts

    jobs = list(db.jobs.find({"name": "chaos_record"}))
    wait_for(
        lambda: db.jobs.count_documents({"state": {"$in": FINISHED}}) == len(jobs),
        60,
        "every stored job to finish",
    )
    orders = {doc["_id"]: doc["attempt"] for doc in db.orders.find()}
    stored = Counter((job["data"]["order"], job["data"]["attempt"]) for job in jobs)
    unknown = check_attempts(attempts, orders, stored)
    report = audit(db, [str(job["_id"]) for job in jobs], {}, workers)
    held = [a for a in attempts if a.held]
    raised = [a for a in attempts if not a.committed]
    outcomes = [a.error.split(",")[0][:80] or "committed" for a in held]
    print(
        f"\n{len(orders)} orders, {len(attempts)} transactions: {len(attempts) - len(raised)} "
        f"committed, {len(raised)} raised ({unknown} of them committed all the same); "
        f"{len(jobs)} jobs, {report.runs} runs; held open across a restart: {outcomes}"
    )
    # Every stored job ran once, by one completed run (no worker was killed).
    assert report.interrupted == 0 and report.completed_twice == []
    assert report.runs == len(jobs)
    for worker in workers:
        alive(worker)
    # The premise: a transaction was open, its job written, at each restart, and the
    # restarts made the other application's transactions fail too.
    assert len(held) == RESTARTS, attempts
    assert sum(not a.committed for a in other.attempts) >= RESTARTS, other.attempts


def check_attempts(
    attempts: list[Attempt], orders: dict[str, int], stored: Counter[tuple[str, int]]
) -> int:
    """Assert the order and the job of each attempt were stored together, as the
    application saw it; how many attempts raised and yet stored both."""
    assert max(stored.values(), default=1) == 1, f"a job stored twice: {stored.most_common(3)}"
    tried = {(a.order, a.attempt) for a in attempts}
    assert set(stored) <= tried, f"jobs of no transaction: {set(stored) - tried}"
    assert set(orders.items()) <= tried, f"orders of no transaction: {set(orders.items()) - tried}"
    unknown = 0
    for a in attempts:
        has_order, has_job = orders.get(a.order) == a.attempt, (a.order, a.attempt) in stored
        if a.committed:
            assert has_order and has_job, (a, has_order, has_job)
        else:
            assert has_order == has_job, (a, has_order, has_job)
            unknown += has_order
    # Each order was settled: stored once, by one attempt, with one job.
    settled = {a.order for a in attempts if a.committed or a.found_stored}
    assert settled == {a.order for a in attempts}, "an order was never settled"
    assert set(orders) == settled
    assert Counter(order for order, _ in stored) == Counter(dict.fromkeys(orders, 1))
    return unknown


def enqueued(client: Client) -> tuple[str, float]:
    """A new job's id, and when the call that queued it returned."""
    job_id = client.now("noop")
    return job_id, time.time()


def enqueued_while_down(restartable: Restartable, patient: Client) -> tuple[str, float]:
    """A job queued by a client that waits for the server, during a restart."""
    during: list[tuple[str, float]] = []
    enqueuer = threading.Thread(target=lambda: during.append(enqueued(patient)))
    restartable.server.stop()
    enqueuer.start()
    time.sleep(DOWN_FOR)
    restartable.server.start()
    enqueuer.join(60)
    assert len(during) == 1, "the enqueue made while the server was down never returned"
    return during[0]


def claimed_after(db: Any, job: tuple[str, float]) -> float:
    """Seconds from the return of a job's enqueue to its claim, once it has finished;
    fails at once if it has not finished well within a poll interval."""
    job_id, returned = job
    try:
        done = wait_finished(db, job_id, PROMPT + 5)
    except AssertionError:
        doc = db.jobs.find_one({"_id": ObjectId(job_id)})
        raise AssertionError(
            f"job {job_id} did not run within {PROMPT + 5:g}s of its enqueue: no wake-up "
            f"reached the worker (it polls every {SLOW_POLL:g}s); {doc}"
        ) from None
    assert done["state"] == "succeeded", done
    time.sleep(0.5)  # past any read of the queue that the job's end led to
    return float(done["lastRunAt"].timestamp() - returned)


@pytest.mark.parametrize("wakeups", ["stream", "channel"])
def test_a_slow_polling_worker_starts_new_jobs_promptly_after_server_restarts(
    restartable: Restartable, spawn_worker: Any, wakeups: str
) -> None:
    url, db = restartable.url, restartable.db
    extra = ["--poll-interval", str(SLOW_POLL), "--lease", "5"]
    if wakeups == "channel":
        extra.append("--no-watch-jobs")
    # Impatient, so that its cursors break during the outage and it reopens them
    # itself (pymongo, left to wait for the server, would resume a stream on its own).
    worker = spawn_worker("noop", worker_id="slow", extra=extra, mongo=f"{url}?{IMPATIENT}")
    ready(worker)
    if wakeups == "stream":
        wait_logged(worker, "new jobs come from a change stream on jobs", 30)
    mode = "channel" if wakeups == "channel" else "auto"
    client = Client(url, wakeups=mode)
    patient = Client(f"{url}?serverSelectionTimeoutMS=60000", wakeups=mode)
    try:
        latencies = {"before": claimed_after(db, enqueued(client))}
        for n in range(1, RESTARTS + 1):
            latencies[f"during outage {n}"] = claimed_after(
                db, enqueued_while_down(restartable, patient)
            )
            # One after the other: a poll that happened to fall due could start one
            # of them, never both (the next poll is 30 s after the one that claims).
            for k in (1, 2):
                latencies[f"after restart {n}, job {k}"] = claimed_after(db, enqueued(client))
    finally:
        client.close()
        patient.close()
    alive(worker)
    reopened = count_logged(worker, REOPENED[wakeups])
    print(f"\n{wakeups}: seconds to each start {latencies}; reopened {reopened} times")
    late = {what: s for what, s in latencies.items() if s >= PROMPT}
    assert late == {}, f"started by a poll, not a wake-up: {late}"
    assert db.jobs.count_documents({"state": "succeeded"}) == len(latencies)
    # The premise: each restart broke what wakes the worker, which reopened it.
    assert reopened >= RESTARTS, worker.output()
