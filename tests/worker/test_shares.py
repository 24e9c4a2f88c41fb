"""Workers that share a queue each take their own share of a batch first.

Jobs due together are in no order of their own; were every worker to walk them
alike (or each at random), most claims would ask for jobs a peer took already.
The in-process tests place candidates as two workers would; the last one lets
two workers' claims race on a real server and counts the claims that came back
short.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import ObjectId
from pymongo import AsyncMongoClient

from qworker import Client
from qworker.mongo import Names
from qworker.store import WorkerStore
from qworker.when import utcnow
from qworker.worker.candidates import Candidates, Pick
from qworker.worker.claims import Claims
from qworker.worker.shares import Shares

NOW = datetime(2030, 1, 31, 9, 0, tzinfo=UTC)


def entry(worker_id: str, tasks: list[str], pinged: timedelta = timedelta(0), **more: Any) -> Any:
    return {
        "_id": worker_id,
        "state": "running",
        "tasks": tasks,
        "pingedAt": utcnow() - pinged,
        "pingInterval": 10,
        **more,
    }


def batch(count: int, task: str = "a") -> list[dict[str, Any]]:
    return [{"_id": ObjectId(), "name": task, "nextRunAt": NOW} for _ in range(count)]


def unlimited(task: str) -> int:
    return 1_000


def take(candidates: Candidates, n: int) -> list[Pick]:
    return candidates.take(n, NOW, unlimited)[0]


def two_workers(docs: list[dict[str, Any]]) -> dict[str, Candidates]:
    placed = {}
    for me in ("w1", "w2"):
        shares = Shares(me, ["a"])
        assert shares.update([entry("w1", ["a"]), entry("w2", ["a"])])
        placed[me] = Candidates(shares.place)
        placed[me].add(docs)
    return placed


def test_the_live_workers_of_a_task_share_it_and_no_one_else_does() -> None:
    shares = Shares("me", ["a", "b", "c"])
    changed = shares.update(
        [
            entry("w1", ["a"]),
            entry("w2", ["a", "b"]),
            entry("silent", ["a", "b", "c"], pinged=timedelta(minutes=5)),  # lost
            entry("gone", ["a", "b", "c"], state="stopped"),
            entry("other", ["z"]),
            {"_id": "broken", "state": "running", "tasks": "a", "pingedAt": utcnow()},
        ]
    )
    assert changed
    spread = {
        task: {shares.place(task, ObjectId())[0] for _ in range(300)} for task in ("a", "b", "c")
    }
    assert spread == {"a": {0, 1, 2}, "b": {0, 1}, "c": {0}}
    assert (shares.shared("a"), shares.shared("c")) == (True, False)
    assert not shares.update([entry("w2", ["a", "b"]), entry("w1", ["a"])])  # the same peers


def test_alone_a_worker_takes_a_batch_in_id_order() -> None:
    docs = batch(20)
    candidates = Candidates(Shares("w1", ["a"]).place)
    candidates.add(reversed(docs))
    assert [pick.id for pick in take(candidates, 20)] == [doc["_id"] for doc in docs]


def test_two_workers_take_their_own_shares_first_then_the_others_from_its_far_end() -> None:
    docs = batch(200)
    urgent = {"_id": ObjectId(), "name": "a", "priority": 10, "nextRunAt": NOW}
    placed = two_workers([*docs, urgent])
    walks = {me: [pick.id for pick in take(c, 201)] for me, c in placed.items()}
    assert walks["w1"][0] == walks["w2"][0] == urgent["_id"]  # priority before shares
    mine = {
        me: [pick.id for pick in picks if pick.key[3][0] == 0]
        for me, picks in ((me, take(two_workers(docs)[me], 200)) for me in ("w1", "w2"))
    }
    assert not set(mine["w1"]) & set(mine["w2"])
    assert set(mine["w1"]) | set(mine["w2"]) == {doc["_id"] for doc in docs}
    for me, walk in walks.items():
        own, others = walk[1 : 1 + len(mine[me])], walk[1 + len(mine[me]) :]
        assert own == sorted(mine[me])  # upward through its own share
        assert others == sorted(others, reverse=True)  # downward through the other's


def test_a_worker_that_learns_of_a_peer_places_its_candidates_anew() -> None:
    docs = batch(100)
    shares = Shares("w2", ["a"])
    candidates = Candidates(shares.place)
    candidates.add(docs)
    assert shares.update([entry("w1", ["a"]), entry("w2", ["a"])])
    candidates.reorder()
    first = take(candidates, 10)
    assert all(pick.key[3][0] == 0 for pick in first)
    assert len(candidates) == 90


def test_where_shares_meet_a_worker_leaves_what_the_peer_has_taken() -> None:
    docs = batch(200)
    placed = two_workers(docs)
    w1 = placed["w1"]
    walk = take(w1, 200)
    own = [pick for pick in walk if pick.key[3][0] == 0]
    stolen = [pick for pick in walk if pick.key[3][0] == 1]
    w1.put_back(walk)
    # The peer came down this worker's share from the top to own[-5], and this
    # worker's claim reached it at own[-6:-4]: all above own[-6] is the peer's.
    w1.leave([own[-5]])
    # A claim in the peer's share missed too: the peer is there, the rest is its own.
    w1.leave([stolen[3]])
    left = {pick.id for pick in take(w1, 200)}
    assert left == {pick.id for pick in own[:-5]}


async def claim_race(mongo_url: str, peers: list[str]) -> tuple[int, int, int]:
    """Two workers claim five at a time, in turn, until the queue is empty: how many
    jobs were claimed, how many claims came back short, and how many claims there were."""
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url, tz_aware=True)
    db = mongo.get_default_database()
    names = Names()
    registry = db[names.workers]
    if peers:
        await registry.insert_many([entry(worker, ["noop"]) for worker in peers])
    store = WorkerStore(db[names.jobs], db[names.workflows])
    workers = [Claims(store, ["noop"], w, "n", 30, 0.05) for w in ("w1", "w2")]
    claimed = short = claims = 0
    try:
        for worker in workers:
            await worker.read_peers(registry)
            await worker.read()
        while await db[names.jobs].count_documents({"state": "queued"}):
            for worker in workers:
                if worker.should_read():
                    await worker.read()
                picks = take_due(worker)
                if not picks:
                    await asyncio.sleep(0.01)
                    continue
                docs = await worker.claim([p.id for p in picks], worker.token(), utcnow())
                claims, claimed = claims + 1, claimed + len(docs)
                if len(docs) < len(picks):
                    short += 1
                    got = {doc["_id"] for doc in docs}
                    await worker.fell_short([p for p in picks if p.id not in got], registry)
    finally:
        await mongo.close()
    return claimed, short, claims


def take_due(claims: Claims) -> list[Pick]:
    return claims.candidates.take(5, utcnow(), unlimited)[0]


def test_two_workers_claiming_a_batch_on_a_real_server_rarely_collide(
    client: Client, mongo_url: str
) -> None:
    client.enqueue_many("noop", [None] * 400)
    claimed, short, claims = asyncio.run(claim_race(mongo_url, ["w1", "w2"]))
    assert claimed == 400
    assert short <= 6, f"{short} of {claims} claims came back short"


def test_without_the_registry_two_workers_walk_alike_and_collide(
    client: Client, mongo_url: str
) -> None:
    """The control for the test above: it fails if shares did not do the work."""
    client.enqueue_many("noop", [None] * 400)
    claimed, short, claims = asyncio.run(claim_race(mongo_url, []))
    assert claimed == 400
    assert short >= 20, f"only {short} of {claims} claims came back short"
