"""Malformed and forged channel messages, against a real manager and real workers.

Anyone who can write to the database can write to the channel. Whatever
lands there — wrong types, missing fields, unknown or forged workers, a
terminate with the wrong nonce, jobs that are not jobs, documents without an
event, near-16 MiB bodies, an id stamped in the future — must be logged and
ignored: the manager and the workers stay up, keep answering, run every job
exactly once, and insert nothing on the strength of a bad message.

Each test runs ``qworker-manager serve`` (with a webhook sink, so that
notifications go through the sink filters too), a managed worker running
``record`` and a standalone worker running ``hostile_echo``.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bson
import httpx
import pytest
from bson import ObjectId
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymongo.errors import DuplicateKeyError, PyMongoError
from support.effects import effects_env
from support.jobs import messages, wait_finished
from support.logs import (
    alive,
    count_logged,
    log_events,
    ready,
    wait_accepted,
    wait_leading,
    wait_logged,
)
from support.processes import ManagerProcess, WorkerProcess, managed
from support.server import free_port
from support.waits import wait_for

from qworker import Client, protocol
from qworker.channel import message, publish_sync

MANAGED, STANDALONE = "wm", "ws"
WRONG_NONCE = "0badc0ffee00"  # no instance has it: instance nonces are 12 hex digits of uuid4
# Every event a process acts on, messages to workers by id, and some it does not know.
EVENTS = [
    protocol.WORKER_CONNECTED,
    protocol.DEFINE_TASKS,
    protocol.WORKER_INITIALIZE,
    protocol.WORKER_START,
    protocol.WORKER_PING,
    protocol.WORKER_STOP,
    protocol.WORKER_TERMINATE,
    protocol.WORKER_DEAD,
    protocol.WORKER_NOTIFICATION,
    protocol.JOB_QUEUED,
    "schedule:task",
    protocol.JOB_CANCEL,
    protocol.SCHEDULES_CHANGED,
    *(
        f"{w}/{kind}"
        for w in (MANAGED, STANDALONE, "ghost")
        for kind in ("start", "stop", "terminate")
    ),
    "hostile:unknown",
    "",
    "JOB:QUEUED",
    "job:queued ",
]
NOT_DICTS: list[Any] = [
    "text",
    "",
    [],
    [1, "two", None],
    None,
    0,
    -1,
    2**63 - 1,
    3.5,
    math.nan,
    True,
    b"\x00\xff",
    datetime(2030, 1, 1, tzinfo=UTC),
    ObjectId(),
]


@dataclass
class Fleet:
    db: Any
    client: Client
    manager: ManagerProcess
    managed: WorkerProcess
    standalone: WorkerProcess
    nonce: str  # the managed worker's

    @property
    def processes(self) -> list[ManagerProcess | WorkerProcess]:
        return [self.manager, self.managed, self.standalone]


@pytest.fixture
def fleet(
    request: pytest.FixtureRequest,
    db: Any,
    mongo_url: str,
    spawn_manager: Any,
    spawn_worker: Any,
    tmp_path: Path,
) -> Iterator[Fleet]:
    """The processes; ``request.param``, if given, is the manager's ping interval."""
    # A webhook that nothing answers: notifications go through its filters, then give up.
    sinks = tmp_path / "sinks.yaml"
    sinks.write_text(
        "log: true\nwebhooks:\n"
        f"  - {{url: 'http://127.0.0.1:{free_port()}/hook', events: [fail, success],"
        " tasks: [record], retries: 0, timeout: 0.2}\n"
    )
    pings = ["--ping-interval", str(request.param)] if hasattr(request, "param") else []
    manager = spawn_manager("m1", extra=["--sinks", str(sinks), *pings])
    wait_leading(manager)
    worker = managed(spawn_worker, mongo_url, "record", worker_id=MANAGED)
    standalone = spawn_worker("hostile_echo", worker_id=STANDALONE, env=effects_env(mongo_url))
    wait_accepted(worker)
    ready(standalone)
    [nonce] = {b["nonce"] for b in messages(db, "worker:initialize") if b["pid"] == worker.pid}
    with Client(mongo_url) as client:
        yield Fleet(db, client, manager, worker, standalone, nonce)


# -- what is published ---------------------------------------------------------


def doc(event: Any, body: Any, **fields: Any) -> dict[str, Any]:
    """A channel document as publish would write it, or with any field changed.

    Its ``_id`` is made when it is inserted (unless given), as publishers do:
    subscribers skip ids more than a moment older than what they have seen.
    """
    fresh = message("x", {})
    del fresh["_id"]
    return {**fresh, "event": event, "message": body, **fields}


def publish(db: Any, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Insert raw documents, bypassing every helper; the ones the server refused."""
    refused = []
    for start in range(0, len(docs), 200):
        chunk = docs[start : start + 200]
        try:
            db.channel.insert_many(chunk, ordered=True)
        except PyMongoError:
            for one in chunk:  # insert one by one to know which the server refuses
                try:
                    db.channel.insert_one(one)
                except DuplicateKeyError:
                    pass  # inserted before the one the batch stopped at
                except PyMongoError:
                    refused.append(one)
    return refused


_sentinels = itertools.count()


def manager_caught_up(fleet: Fleet, timeout: float = 60) -> None:
    """Wait until the manager has handled everything published so far.

    It handles messages in order, and answers a worker:initialize without a
    task list with a terminate: once that answer is out, all before it are done.
    """
    name = f"sentinel-{next(_sentinels)}"
    body = {"workerId": name, "nonce": WRONG_NONCE, "tasks": None}
    sent = [0.0]

    def answered() -> bool:
        for process in fleet.processes:
            alive(process)
        if fleet.db.channel.find_one({"event": protocol.terminate(name)}) is not None:
            return True
        if time.monotonic() - sent[0] > 10:  # lost with a rolled capped window: ask again
            fleet.db.channel.insert_one(message(protocol.WORKER_INITIALIZE, body))
            sent[0] = time.monotonic()
        return False

    wait_for(answered, timeout, f"the manager to answer {name}", every=0.1)


def corpus(nonce_of_managed: str) -> list[dict[str, Any]]:
    """Malformed and forged messages for every event, deterministic."""
    now = datetime.now(UTC)
    soon = (now + timedelta(minutes=1)).isoformat()
    docs: list[dict[str, Any]] = []

    def add(event: Any, body: Any) -> None:
        docs.append(doc(event, body))

    # Bodies that are not objects, and objects with nothing in them, for every event.
    for event in EVENTS:
        for body in NOT_DICTS:
            add(event, body)
        add(event, {})
        add(event, {"unexpected": {"deeply": [{"nested": None}]}, "extra": 1})
    # Documents without an event or a message, non-string events, odd ids.
    docs += [
        {"_id": ObjectId(), "hello": "world"},
        doc(None, {}),
        doc(5, {}),
        doc({"job:queued": 1}, {}),
        doc(["job:queued", "x"], {"jobs": []}),
        doc([protocol.WORKER_PING], {"workerId": MANAGED}),
        {"_id": ObjectId(), "event": protocol.JOB_QUEUED},
        {"_id": ObjectId(), "message": {"jobs": []}},
        doc(protocol.JOB_QUEUED, {"jobs": []}, _id="a-string-id"),
        doc(protocol.JOB_QUEUED, {"jobs": []}, _id=12345),
        doc(protocol.JOB_QUEUED, {"jobs": []}, _id={"nested": "id"}),
        doc(protocol.JOB_QUEUED, {"jobs": []}, _id=ObjectId.from_datetime(datetime(1971, 1, 1))),
    ]
    # Identities of the wrong type: a string workerId and nonce are required.
    for event in protocol.TO_MANAGER:
        for worker_id, nonce in [
            (None, None),
            (5, "n"),
            (MANAGED, 5),
            (MANAGED, None),
            ({"$ne": None}, {"$ne": None}),
            ([MANAGED], "n"),
            (MANAGED, [nonce_of_managed]),
        ]:
            add(event, {"workerId": worker_id, "nonce": nonce, "tasks": ["record"]})
    # Unknown workers, and the managed worker under a nonce that is not its own.
    for worker_id in (MANAGED, STANDALONE, "ghost", "", "x" * 10_000, "a/terminate"):
        for event in (
            protocol.WORKER_PING,
            protocol.WORKER_STOP,
            protocol.WORKER_TERMINATE,
            protocol.WORKER_START,
            protocol.WORKER_CONNECTED,
        ):
            add(event, {"workerId": worker_id, "nonce": WRONG_NONCE, "running": "lots"})
    # Forged orders to the workers: a wrong, missing or mistyped nonce.
    for target in (MANAGED, STANDALONE):
        for kind in ("terminate", "stop", "start"):
            for nonce in (WRONG_NONCE, None, 5, "", {"$ne": ""}, [nonce_of_managed]):
                add(f"{target}/{kind}", {"nonce": nonce, "reason": "forged", "pingInterval": 1e308})
            add(f"{target}/{kind}", {"reason": "forged, no nonce"})
    # worker:initialize that must be rejected: an id in use, unknown or bad task lists.
    for worker_id, tasks in [
        (MANAGED, ["record"]),
        ("ghost-1", ["no-such-task"]),
        ("ghost-2", "record"),
        ("ghost-3", [5, None]),
        ("ghost-4", [["record"]]),
        ("ghost-5", {"record": 1}),
        ("ghost-6", None),
    ]:
        body = {"workerId": worker_id, "nonce": WRONG_NONCE, "tasks": tasks, "host": 5, "pid": "x"}
        add(protocol.WORKER_INITIALIZE, body)
    # define:tasks without a list, with junk in the list, with invalid metadata.
    ident = {"workerId": "ghost", "nonce": WRONG_NONCE}
    bad_metadata = [
        {
            "id": "hostile-bad-1",
            "concurrency": "lots",
            "timeout": -1,
            "maxAttempts": 0,
            "priority": [1],
            "isolation": "fork",
            "backoff": {"factor": 1e308, "max": 1e300},
            "retention": "9" * 400 + " days",
            "schedule": "not a cron",
        },
        {"id": "hostile-bad-2", "colour": "red", "every": "often"},
        {"id": "hostile-bad-3", "schedule": {"cron": "0 0 30 2 *", "timezone": "America"}},
        {"id": "hostile-bad-4", "schedule": {"every": "1 minute", "data": {"n": math.nan}}},
        {"id": "hostile-bad-5", "jobAttributes": "data", "disabled": "no", "name": 5},
        {"id": "Not Url Safe"},
        {"id": ""},
        {"id": "hostile-bad-6\n"},
    ]
    for tasks in [
        "record",
        5,
        None,
        {"id": "x"},
        [None, 5, "record", [], {}],
        [{"id": 5}],
        [{"name": "no id"}],
        bad_metadata,
    ]:
        add(protocol.DEFINE_TASKS, {**ident, "tasks": tasks})
    # schedule:task, which workers of qworker 0.1 sent for sub-tasks: no one inserts
    # jobs from the channel any more (sub-tasks go with a worker's own writes).
    add(
        "schedule:task",
        {
            "workerId": MANAGED,
            "nonce": nonce_of_managed,
            "job": {"name": "record", "nextRunAt": now, "_id": ObjectId()},
        },
    )
    # job:queued wake-ups whose entries are not jobs; some name the workers' tasks.
    oid = str(ObjectId())
    for jobs in [
        "x",
        5,
        None,
        {"id": oid},
        [None, 5, "x", [], {}],
        [{"id": "zz", "name": "record", "priority": 0, "nextRunAt": soon}],
        [{"id": oid, "name": "hostile_echo", "priority": math.inf, "nextRunAt": soon}],
        [{"id": oid, "name": "hostile_echo", "priority": math.nan, "nextRunAt": soon}],
        [{"id": oid, "name": "record", "priority": 0, "nextRunAt": "2020-01-01T00:00:00"}],
        [{"id": oid, "name": "hostile_echo", "nextRunAt": "2020-01-01T00:00:00"}],
        [{"id": oid, "name": "record", "nextRunAt": 5}],
        [{"id": oid, "name": "record", "nextRunAt": "tomorrow"}],
        [{"id": oid, "name": ["record"], "nextRunAt": soon}],
        [{"id": 5, "name": "hostile_echo", "nextRunAt": soon}],
        [{"id": oid, "name": "hostile_echo", "priority": "high", "nextRunAt": soon}],
        [{"name": "record"}],
    ]:
        add(protocol.JOB_QUEUED, {"jobs": jobs})
    for tasks in ["record", 5, [["record"]], [None], {"record": 1}]:
        add(protocol.JOB_QUEUED, {"tasks": tasks})
    # job:cancel of jobs that do not exist, or ids that are not ids.
    for job_id in [str(ObjectId()), "garbage", None, 5, [1], {"$ne": 1}, "x" * 100_000]:
        add(protocol.JOB_CANCEL, {"jobId": job_id})
    # Notifications the sinks cannot filter on, or log, as they expect.
    for note in [
        {"type": ["fail"], "task": "record"},
        {"type": "fail", "task": {"a": 1}},
        {"type": {"$ne": 1}, "task": ["record"]},
        {"event": "x", "level": 5, "job": "x"},
        {"workerId": MANAGED, "type": "success", "task": "record", "job": [1] * 1000},
    ]:
        add(protocol.WORKER_NOTIFICATION, note)
    # Managers and schedules said to change.
    add(protocol.MANAGER_START, {"managerId": 5})
    add(protocol.SCHEDULES_CHANGED, {"what": [None]})
    add(protocol.WORKER_DEAD, {"workerId": MANAGED, "nonce": nonce_of_managed, "recovered": 5})
    return docs


# Generated bodies: the fields the processes read, with values of every kind.
FIELDS = [
    "workerId",
    "nonce",
    "tasks",
    "job",
    "jobs",
    "jobId",
    "running",
    "reason",
    "pingInterval",
    "host",
    "pid",
    "managerId",
    "type",
    "task",
    "id",
    "name",
    "nextRunAt",
    "priority",
    "_id",
    "data",
    "recovered",
]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from(
        [
            MANAGED,
            STANDALONE,
            "ghost",
            WRONG_NONCE,
            "record",
            "hostile_echo",
            str(ObjectId()),
            "2020-01-01T00:00:00",
            "2030-01-01T00:00:00+00:00",
            "zz",
        ]
    ),
    st.datetimes(
        min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
    ),
    st.builds(ObjectId),
)
VALUES = st.recursive(
    SCALARS,
    lambda kids: (
        st.lists(kids, max_size=4)
        | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), kids, max_size=5)
    ),
    max_leaves=15,
)
BODIES = st.one_of(
    st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=6),
    VALUES,
)
# Events a generated message may carry (no terminate with the managed worker's real nonce
# can be generated: it is not in the values above).
GENERATED_EVENTS = st.one_of(st.sampled_from(EVENTS), st.text(max_size=12))


def storable(body: Any) -> bool:
    try:
        bson.encode({"message": body})
    except (bson.errors.InvalidDocument, OverflowError, ValueError):
        return False
    return True


def no_job_from_a_bad_message(fleet: Fleet) -> None:
    assert fleet.db.jobs.count_documents({}) == 0, list(fleet.db.jobs.find())


def still_in_service(fleet: Fleet, jobs: int = 8) -> None:
    """Both workers run new jobs, each exactly once, by the worker meant to run them."""
    for process in fleet.processes:
        alive(process)
    record = fleet.client.enqueue_many("record", [{"n": n} for n in range(jobs)])
    echo = fleet.client.enqueue_many("hostile_echo", [{"n": n} for n in range(jobs)])
    for job_id in record + echo:
        done = wait_finished(fleet.db, job_id, 60)
        assert done["state"] == "succeeded", done
    effects = list(fleet.db.effects.find({"job": {"$in": record + echo}}))
    assert sorted(e["job"] for e in effects) == sorted(record + echo), "a job ran twice or never"
    assert {e["pid"] for e in effects if e["job"] in record} == {fleet.managed.pid}
    assert {e["pid"] for e in effects if e["job"] in echo} == {fleet.standalone.pid}


def nothing_crashed(fleet: Fleet) -> None:
    for process in fleet.processes:
        alive(process)
        output = process.output()
        assert count_logged(process, "channel handler failed") == 0, output[-5000:]
        assert "Traceback" not in output, output[-5000:]
    # The managed worker was neither terminated nor stopped by a forged order.
    assert "terminated by the manager" not in fleet.managed.output()
    assert count_logged(fleet.managed, "stopping") == 0
    entry = fleet.db.workers.find_one({"_id": MANAGED})
    assert entry is not None and entry["state"] == "running" and entry["nonce"] == fleet.nonce


# -- the tests -------------------------------------------------------------------


# The 601 messages keep the workers busy too: on a slow machine a 0.5 s ping may come over
# a second late; the manager then rightly buries the worker, and the forged
# worker:initialize of its id is a restart. (For the manager's own lag, see
# test_a_manager_behind_its_channel_gives_no_one_a_live_workers_id.)
@pytest.mark.parametrize("fleet", [2.0], indirect=True, ids=["pings-every-2s"])
def test_malformed_and_forged_messages_are_logged_and_ignored(fleet: Fleet) -> None:
    docs = corpus(fleet.nonce)
    refused = publish(fleet.db, docs)
    manager_caught_up(fleet)
    # Every worker heard the forged orders addressed to it, and ignored them.
    wait_logged(fleet.managed, "ignoring a message for another instance", 30, times=12)
    wait_logged(fleet.standalone, "ignoring a malformed job:cancel", 30, times=4)
    nothing_crashed(fleet)
    no_job_from_a_bad_message(fleet)
    assert len(refused) < 5, refused  # ids the server would not take (an array, perhaps)

    # What was ignored was said, by the manager and by both workers.
    manager_said = [
        "ignoring malformed channel message",
        "ignoring a message without workerId/nonce",
        "ignoring a message from an unknown or stopped worker instance",
        "ignoring define:tasks without a task list",
        "ignoring a task definition that is not a mapping with an id",
        "worker rejected",
    ]
    workers_said = [
        "ignoring malformed channel message",
        "ignoring malformed job:queued entry",
        "ignoring a malformed job:queued message",
    ]
    said = [
        (fleet.manager, manager_said),
        (fleet.managed, [*workers_said, "ignoring a message for another instance"]),
        (fleet.standalone, [*workers_said, "ignoring a malformed job:cancel"]),
    ]
    for process, lines in said:
        for line in lines:
            assert count_logged(process, line), f"{line!r} not logged:\n{process.output()[-3000:]}"
    # Invalid announced metadata is recorded as invalid, with its problems.
    for task_id in ("hostile-bad-1", "hostile-bad-2", "hostile-bad-3", "hostile-bad-4"):
        task = fleet.db.tasks.find_one({"_id": task_id})
        assert task is not None and task["valid"] is False and task["problems"], task
    assert fleet.db.schedules.count_documents({}) == 0
    # The real task was not touched by any of it.
    task = fleet.db.tasks.find_one({"_id": "record"})
    assert task is not None and task["valid"] is True and task["workers"] == [MANAGED]

    # Generated messages, a batch at a time, each batch followed by a liveness check.
    @given(batch=st.lists(st.tuples(GENERATED_EVENTS, BODIES), min_size=20, max_size=40))
    @settings(max_examples=8, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def barrage(batch: list[tuple[str, Any]]) -> None:
        publish(fleet.db, [doc(event, body) for event, body in batch if storable(body)])
        manager_caught_up(fleet)
        for process in fleet.processes:
            alive(process)

    barrage()
    nothing_crashed(fleet)
    no_job_from_a_bad_message(fleet)
    still_in_service(fleet)
    nothing_crashed(fleet)
    assert fleet.db.jobs.count_documents({}) == 16


def test_a_forged_manager_start_then_stop_are_ignored(fleet: Fleet) -> None:
    """Only the manager that holds the lease leads; a forged start used to make the
    forger the leader in the workers' eyes, and its stop then paused them."""
    publish_sync(fleet.db.channel, protocol.MANAGER_START, {"managerId": "not-a-manager"})
    publish_sync(fleet.db.channel, protocol.MANAGER_STOP, {"managerId": "not-a-manager"})
    publish_sync(fleet.db.channel, protocol.MANAGER_STOP, {"managerId": "also-not-one"})
    said = "from a manager that does not hold the lease"
    wait_logged(fleet.managed, f"ignoring manager:start {said}", 30)
    wait_logged(fleet.managed, f"ignoring manager:stop {said}", 30, times=2)
    assert count_logged(fleet.managed, "manager stopped: pausing") == 0
    still_in_service(fleet)
    nothing_crashed(fleet)


def test_a_forged_definition_neither_rewrites_nor_invalidates_a_live_one(
    fleet: Fleet, spawn_worker: Any, mongo_url: str
) -> None:
    standing = fleet.db.tasks.find_one({"_id": "record"})["metadata"]
    ident = {"workerId": "ghost", "nonce": WRONG_NONCE}
    for forged in (
        {**standing, "maxAttempts": 9, "schedule": "* * * * *"},
        {"id": "record", "concurrency": "lots"},
    ):
        publish_sync(fleet.db.channel, protocol.DEFINE_TASKS, {**ident, "tasks": [forged]})
    manager_caught_up(fleet)
    task = fleet.db.tasks.find_one({"_id": "record"})
    assert task["metadata"] == standing and task["valid"] is True
    assert fleet.db.schedules.count_documents({}) == 0  # no schedule installed
    another = managed(spawn_worker, mongo_url, "record", worker_id="wm2")
    wait_accepted(another)  # the live definition still admits its workers
    nothing_crashed(fleet)


def test_a_forged_cancel_of_a_running_job_is_ignored(fleet: Fleet) -> None:
    """A cancel is asked by a client on the job itself (cancelRequested): a message
    on the channel alone, which anyone who enqueues can write, stops nothing."""
    # Long enough for the channel to deliver the message while it runs, on a loaded server
    # (once, with 3 s, the message came after the job had ended, and nothing was checked).
    job_id = fleet.client.now("record", {"sleep": 10})
    wait_for(lambda: fleet.client.get(job_id)["state"] == "running", 30, "the job to run")
    publish_sync(fleet.db.channel, protocol.JOB_CANCEL, {"jobId": job_id})
    wait_logged(fleet.managed, "ignoring a job:cancel for a job whose cancel nobody asked for", 30)
    assert wait_finished(fleet.db, job_id, 60)["state"] == "succeeded"
    # A client's cancel still stops a running job.
    asked = fleet.client.now("record", {"sleep": 30})
    wait_for(lambda: fleet.client.get(asked)["state"] == "running", 30, "the job to run")
    fleet.client.cancel(asked)
    assert wait_finished(fleet.db, asked, 60)["state"] == "cancelled"


def test_the_api_shows_no_worker_nonce(fleet: Fleet) -> None:
    base = fleet.manager.api_url()
    listed = httpx.get(f"{base}/api/workers", timeout=30).json()
    assert {w["_id"] for w in listed} >= {MANAGED, STANDALONE}
    assert all("nonce" not in worker for worker in listed)


def test_a_message_stamped_in_the_future_does_not_deafen_anyone(fleet: Fleet) -> None:
    """An ``_id`` from tomorrow must not move a subscriber's position past today's messages."""
    tomorrow = ObjectId.from_datetime(datetime.now(UTC) + timedelta(days=1))
    later = ObjectId.from_datetime(datetime.now(UTC) + timedelta(days=1, seconds=1))
    publish(
        fleet.db,
        [
            doc(protocol.WORKER_PING, {"workerId": "ghost", "nonce": WRONG_NONCE}, _id=tomorrow),
            doc(protocol.JOB_QUEUED, {"jobs": "from the future"}, _id=later),
        ],
    )
    wait_logged(fleet.standalone, "ignoring a malformed job:queued message", 30)
    # Messages published now still reach everyone.
    manager_caught_up(fleet)
    publish(
        fleet.db,
        [
            doc(protocol.stop(MANAGED), {"nonce": WRONG_NONCE}),
            doc(protocol.JOB_CANCEL, {"jobId": None}),
        ],
    )
    wait_logged(fleet.managed, "ignoring a message for another instance", 30)
    wait_logged(fleet.standalone, "ignoring a malformed job:cancel", 30)
    # The manager still records the managed worker's pings: it is not declared dead.
    pinged = fleet.db.workers.find_one({"_id": MANAGED})["pingedAt"]
    wait_for(
        lambda: fleet.db.workers.find_one({"_id": MANAGED})["pingedAt"] > pinged,
        10,
        "a ping recorded after the message from the future",
    )
    still_in_service(fleet)
    nothing_crashed(fleet)
    assert count_logged(fleet.manager, "worker dead") == 0


# A near-16 MiB document in the channel makes every tailing read cost SecantusDB seconds:
# the fleet's pings (every 0.5 s elsewhere in the tests) would be recorded late and the
# manager would declare live workers dead. Pings here come every 5 s, as by default.
@pytest.mark.parametrize("fleet", [5.0], indirect=True, ids=["pings-every-5s"])
def test_oversized_messages_are_logged_and_ignored(fleet: Fleet) -> None:
    """Bodies over MAX_MESSAGE_BYTES, up to MongoDB's 16 MiB, in the 16 MiB capped channel."""
    mib = 1024 * 1024
    options = fleet.db.channel.options()
    assert options["capped"] and options["size"] == 16 * mib, options
    huge = "x" * (15 * mib)
    many = [{"id": "zz", "name": "record", "nextRunAt": "x"}] * 1_000
    many += [{"id": str(ObjectId()), "name": "nobody-runs-this", "nextRunAt": "x"}] * 180_000
    descriptions = [{"id": f"hostile-{n}", "description": "d" * 14_000} for n in range(1_000)]
    ident = {"workerId": "ghost", "nonce": WRONG_NONCE}
    m, w, s = fleet.manager, fleet.managed, fleet.standalone
    said = "ignoring an oversized channel message"
    oversized: list[tuple[dict[str, Any], list[tuple[Any, str, int]]]] = [
        (
            doc(
                protocol.WORKER_NOTIFICATION, {"type": "fail", "task": "record", "job": {"x": huge}}
            ),
            [(m, said, 1)],
        ),
        (
            doc(
                protocol.DEFINE_TASKS,
                {**ident, "tasks": [{"id": "hostile-1", "description": huge}]},
            ),
            [(m, said, 2)],
        ),
        (doc(protocol.DEFINE_TASKS, {**ident, "tasks": descriptions}), [(m, said, 3)]),
        (doc(protocol.JOB_QUEUED, {"jobs": many}), [(w, said, 1), (s, said, 1)]),
        (doc(protocol.terminate(MANAGED), {"nonce": fleet.nonce, "reason": huge}), [(w, said, 2)]),
        (doc(protocol.JOB_CANCEL, {"jobId": [huge]}), [(w, said, 3), (s, said, 2)]),
        (doc("hostile:unknown", {"padding": huge}), []),
        # Just under the limit: delivered, and recorded.
        (doc(protocol.DEFINE_TASKS, {**ident, "tasks": descriptions[:250]}), []),
    ]
    for one, heard in oversized:
        assert len(bson.encode(one)) < 16 * mib
        assert publish(fleet.db, [one]) == []
        for process, line, times in heard:
            wait_logged(process, line, 60, times=times)
        manager_caught_up(fleet, timeout=120)
    wait_for(
        lambda: fleet.db.tasks.count_documents({"_id": {"$regex": "^hostile-[0-9]"}}) == 250,
        30,
        "the 250 tasks of the message under the limit",
    )
    assert fleet.db.tasks.find_one({"_id": "hostile-1"})["description"] == "d" * 14_000
    nothing_crashed(fleet)
    no_job_from_a_bad_message(fleet)
    still_in_service(fleet)
    nothing_crashed(fleet)


@pytest.mark.parametrize("fleet", [1.0], indirect=True, ids=["pings-every-1s"])
def test_a_manager_behind_its_channel_gives_no_one_a_live_workers_id(fleet: Fleet) -> None:
    """Behind a flood, the manager has not heard the live worker's latest pings: its
    last recorded ping is older than two intervals, and the worker is alive all the same.
    A worker:initialize of its id under another nonce must still be refused."""
    ident = {"workerId": "ghost", "nonce": WRONG_NONCE}
    # Each announced task costs the manager a lookup and a write.
    flood = [
        doc(protocol.DEFINE_TASKS, {**ident, "tasks": [{"id": f"lag-{n}-{k}"} for k in range(50)]})
        for n in range(120)
    ]
    forged = {"workerId": MANAGED, "nonce": WRONG_NONCE, "tasks": ["record"], "host": "forger"}
    published = time.monotonic()
    publish(fleet.db, [*flood, doc(protocol.WORKER_INITIALIZE, forged)])
    wait_logged(fleet.manager, "worker rejected", 120)
    behind = time.monotonic() - published
    assert behind > 2 * 1.0, f"the premise: the manager was only {behind:.1f} s behind"
    [rejected] = [e for e in log_events(fleet.manager.output()) if e["event"] == "worker rejected"]
    assert "already used by a live worker" in rejected["reason"], rejected
    nothing_crashed(fleet)
    assert count_logged(fleet.manager, "worker dead") == 0
