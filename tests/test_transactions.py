"""Enqueueing in the application's transaction, and over the application's connection.

Against the real server: a job written with ``session=`` is seen by nobody
before the commit, runs after it, and leaves nothing after an abort; the
client shares a pool it was given and never closes it.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.errors import OperationFailure

from qworker import Client, TransactionsUnsupported


def hints(db: Any) -> int:
    return int(db.channel.count_documents({"event": "job:queued"}))


def test_a_committed_transaction_s_job_runs_and_nobody_sees_it_before(
    mongo_url: str, db: Any, burst: Any
) -> None:
    with Client(mongo_url) as client:
        with client.transaction() as s:
            db.orders.insert_one({"_id": "o1"})  # outside: visible at once
            job_id = client.now("double", {"x": 2}, session=s)
            client.chain([("double", {"x": 1}), "double"], session=s)
            assert client.count_jobs() == 0  # nobody else sees them yet
            assert client.get(job_id, session=s)["state"] == "queued"  # the session does
        assert client.count_jobs() == 3
        burst("double")
        assert client.get(job_id)["result"] == {"x": 4.0}


def test_an_aborted_transaction_leaves_no_job_and_no_wake_up(mongo_url: str, db: Any) -> None:
    with Client(mongo_url, wakeups="channel") as client:
        with pytest.raises(RuntimeError, match="payment declined"), client.transaction() as s:
            client.db.orders.insert_one({"_id": "o2"}, session=s)
            client.now("double", {"x": 2}, session=s)
            client.enqueue_many("double", [{"x": 3}, {"x": 4}], session=s)
            raise RuntimeError("payment declined")
        assert client.flush()
        assert db.orders.count_documents({}) == 0
        assert client.count_jobs() == 0 and client.jobs() == []  # what the API lists
        assert hints(db) == 0


def test_wake_ups_wait_for_the_commit(mongo_url: str, db: Any) -> None:
    with Client(mongo_url, wakeups="channel") as client:
        with client.transaction() as s:
            job_id = client.now("double", {"x": 2}, session=s)
            assert client.flush() and hints(db) == 0  # a capped write cannot join it
        assert client.flush()
        named = [
            j["id"] for m in db.channel.find({"event": "job:queued"}) for j in m["message"]["jobs"]
        ]
        assert named == [job_id]


def test_a_transient_error_reruns_the_body_and_enqueues_exactly_once(
    mongo_url: str, db: Any
) -> None:
    """A write conflict (another transaction wrote the same order first) is a
    TransientTransactionError: the body runs again, and one job is stored."""
    db.orders.insert_one({"_id": "o3", "n": 0})
    attempts = []

    def ship(s: Any) -> str:
        attempts.append(s)
        job_id = client.now("double", {"x": 1}, session=s)
        if len(attempts) == 1:
            rival_wrote.wait(5)  # another transaction holds the order now
        try:
            client.db.orders.update_one({"_id": "o3"}, {"$inc": {"n": 1}}, session=s)
        finally:
            tried.set()
        return job_id

    rival_wrote, tried = threading.Event(), threading.Event()

    def rival() -> None:
        with db.client.start_session() as other, other.start_transaction():
            db.orders.update_one({"_id": "o3"}, {"$inc": {"n": 10}}, session=other)
            rival_wrote.set()
            # Committed only once the body tried its write: committed before, the
            # order is simply newer, and a server may let the body write it.
            tried.wait(5)

    with Client(mongo_url) as client:
        thread = threading.Thread(target=rival)
        thread.start()
        job_id = client.run_in_transaction(ship)
        thread.join()
        assert len(attempts) >= 2  # the conflict was hit, and the body ran again
        assert client.count_jobs() == 1 and client.get(job_id)["state"] == "queued"
        assert db.orders.find_one({"_id": "o3"})["n"] == 11


def test_a_transient_error_in_a_with_block_raises_and_stores_nothing(
    mongo_url: str, db: Any
) -> None:
    """A ``with`` block cannot be run again: the error says it is transient, and the
    job went with the transaction."""
    db.orders.insert_one({"_id": "o4", "n": 0})
    with Client(mongo_url) as client:
        with pytest.raises(OperationFailure) as raised, client.transaction() as s:
            client.now("double", {"x": 1}, session=s)
            with db.client.start_session() as other, other.start_transaction():
                db.orders.update_one({"_id": "o4"}, {"$inc": {"n": 1}}, session=other)
                client.db.orders.update_one({"_id": "o4"}, {"$inc": {"n": 1}}, session=s)
        assert raised.value.has_error_label("TransientTransactionError")
        assert client.count_jobs() == 0


def test_cancel_and_retry_join_the_transaction(mongo_url: str, db: Any) -> None:
    with Client(mongo_url) as client:
        job_id = client.now("double", {"x": 1})
        with pytest.raises(RuntimeError), client.transaction() as s:
            client.cancel(job_id, session=s)
            raise RuntimeError("changed my mind")
        assert client.get(job_id)["state"] == "queued"
        with client.transaction() as s:
            client.cancel(job_id, session=s)
        assert client.get(job_id)["state"] == "cancelled"
        with client.transaction() as s:
            client.retry(job_id, session=s)
        assert client.get(job_id)["state"] == "queued"


def test_the_application_s_connection_is_shared_and_left_open(mongo_url: str) -> None:
    app: MongoClient[dict[str, Any]] = MongoClient(mongo_url)  # not tz-aware, as apps often are
    try:
        for target in (app, app.get_default_database()):
            client = Client(target)
            assert client.db.client is app and client.db.name == app.get_default_database().name
            job_id = client.now("double", {"x": 1})
            assert client.get(job_id)["createdAt"].tzinfo is not None  # read as qworker needs
            assert client.workers() == [] and client.cancel(job_id)["state"] == "cancelled"
            client.close()
            app.admin.command("ping")  # still open
        with app.start_session() as s, s.start_transaction():
            Client(app).now("double", {"x": 5}, session=s)  # the app's own session
        assert app.get_default_database().jobs.count_documents({"data.x": 5}) == 1
    finally:
        app.close()


def test_a_bad_target_is_a_clear_error() -> None:
    with pytest.raises(Exception, match=r"a client connects to a MongoDB URL.*not int"):
        Client(42)  # type: ignore[arg-type]


def test_a_server_without_transactions_says_so(mongo_url: str) -> None:
    probe: MongoClient[dict[str, Any]] = MongoClient(mongo_url)
    try:
        hello = probe.admin.command("hello")
    finally:
        probe.close()
    if hello.get("setName") or hello.get("msg") == "isdbgrid":
        pytest.skip("this server runs transactions: the refusal needs a standalone mongod")
    with Client(mongo_url) as client:
        with pytest.raises(TransactionsUnsupported, match="replica set"), client.transaction() as s:
            client.now("double", {"x": 1}, session=s)
        assert client.count_jobs() == 0
