"""The application's side: what the change-stream wake-up path costs and gives,
and what the async and transactional enqueues give, for ``compare.py``.

* ``stream_latency``: the server's own insert -> change-stream event time, the
  floor of qworker's enqueue -> start latency on the stream path.
* ``watcher_cost``: ``insert_one`` per second into ``jobs`` with 0, 1, 2 and 4
  watchers, with qworker's projected pipeline and with whole documents: what
  each watching worker costs every enqueue on this server.
* ``enqueue_async``: ``AsyncClient.now`` with many enqueues in flight.
* ``enqueue_transactional``: an order and its job per request, plainly and in
  one transaction: what the transaction costs.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from typing import Any

from common import fresh, percentile
from pymongo import MongoClient

from qworker import AsyncClient, Client
from qworker.streams import for_workers

Doc = dict[str, Any]


def _summary(ms: list[float]) -> Doc:
    return {
        "samples": len(ms),
        "p50_ms": round(statistics.median(ms), 2),
        "p95_ms": round(percentile(ms, 0.95), 2),
    }


class _Watcher(threading.Thread):
    """A change stream on ``jobs`` in a thread and a connection of its own."""

    def __init__(self, db_url: str, pipeline: list[Doc], await_ms: int = 200) -> None:
        super().__init__(daemon=True)
        self.await_ms = await_ms
        self.mongo: MongoClient[Doc] = MongoClient(db_url, tz_aware=True)
        self.pipeline = pipeline
        self.seen: list[float] = []
        self.opened = threading.Event()
        self.done = threading.Event()

    def run(self) -> None:
        jobs = self.mongo.get_default_database().jobs
        with jobs.watch(self.pipeline, max_await_time_ms=self.await_ms) as stream:
            self.opened.set()
            while not self.done.is_set():
                if stream.try_next() is not None:
                    self.seen.append(time.time())

    def stop(self) -> None:
        self.done.set()
        self.join(10)
        self.mongo.close()


def _job(n: int) -> Doc:
    return {"name": "noop", "state": "queued", "priority": 0, "n": n, "sent": time.time()}


def stream_latency(url: str, samples: int) -> Doc:
    """Insert a queued job every 50 ms into ``jobs`` as qworker sets it up (its indexes
    are part of an insert's cost); the time until a watcher sees it."""
    db_url, db = fresh(url, "bench_stream")
    Client(db_url).close()
    watcher = _Watcher(db_url, for_workers(["noop"]))
    watcher.start()
    watcher.opened.wait(30)
    sent = []
    for n in range(samples):
        sent.append(time.time())
        db.jobs.insert_one(_job(n))
        time.sleep(0.05)
    time.sleep(0.5)
    watcher.stop()
    ms = [(seen - at) * 1000 for at, seen in zip(sent, watcher.seen, strict=False)]
    return {"figure": "insert -> change-stream event", **_summary(ms)}


def watcher_cost(url: str, inserts: int, counts: tuple[int, ...] = (0, 1, 2, 4)) -> Doc:
    """Inserts per second from one client, one at a time, with each number of watchers;
    one watcher with whole documents; one watcher with each ``max_await_time_ms``."""
    projected = for_workers(["noop"])
    shapes = [(count, projected, 200) for count in counts]
    shapes += [(1, [], 200), *((1, projected, ms) for ms in (20, 1_000, 5_000))]
    rows = []
    for count, pipeline, await_ms in shapes:
        db_url, db = fresh(url, "bench_watchers")
        Client(db_url).close()  # jobs with qworker's indexes
        watchers = [_Watcher(db_url, pipeline, await_ms) for _ in range(count)]
        for w in watchers:
            w.start()
            w.opened.wait(30)
        started = time.perf_counter()
        for n in range(inserts):
            db.jobs.insert_one(_job(n))
        rate = inserts / (time.perf_counter() - started)
        for w in watchers:
            w.stop()
        rows.append(
            {
                "watchers": count,
                "pipeline": "qworker's (matched, projected)" if pipeline else "everything",
                "max_await_time_ms": await_ms,
                "inserts_per_second": round(rate, 1),
                "queue_depth_at_end": inserts,
            }
        )
    return {"inserts": inserts, "rows": rows}


def enqueue_async(url: str, jobs: int, in_flight: int = 50) -> Doc:
    """``AsyncClient.now`` with ``in_flight`` calls at once, no worker running."""
    db_url, db = fresh(url, "bench_async_enqueue")
    Client(db_url).close()  # the collections, as for the blocking client's figure

    async def run() -> float:
        async with AsyncClient(db_url) as client:
            await client.prepare()
            gate = asyncio.Semaphore(in_flight)

            async def one() -> None:
                async with gate:
                    await client.now("noop")

            started = time.perf_counter()
            await asyncio.gather(*(one() for _ in range(jobs)))
            return time.perf_counter() - started

    seconds = asyncio.run(run())
    stored = db.jobs.count_documents({})
    db.client.drop_database(db.name)
    return {
        "system": "qworker",
        "client": "AsyncClient",
        "in_flight": in_flight,
        "jobs": stored,
        "queue_depth_at_end": stored,
        "enqueue_per_second": round(stored / seconds, 1),
    }


def enqueue_transactional(url: str, jobs: int, rounds: int = 3) -> Doc:
    """An order and its job written one request at a time, no worker running: plainly
    (the order, then ``Client.now``) and in one transaction (``client.transaction()``),
    ``rounds`` times each, taking turns; the medians."""
    _, db = fresh(url, "bench_tx_enqueue")
    seconds: dict[str, list[float]] = {"plain": [], "transaction": []}
    with Client(db) as client:  # the app's own connection: its session writes both
        client.now("noop")  # the collections exist before the first transaction
        for _ in range(rounds):
            for kind in seconds:
                started = time.perf_counter()
                for n in range(jobs // rounds):
                    if kind == "plain":
                        db.orders.insert_one({"n": n})
                        client.now("noop", {"order": n})
                        continue
                    with client.transaction() as s:
                        db.orders.insert_one({"n": n}, session=s)
                        client.now("noop", {"order": n}, session=s)
                seconds[kind].append(time.perf_counter() - started)
    stored = db.jobs.count_documents({})
    db.client.drop_database(db.name)
    rate = {kind: (jobs // rounds) / statistics.median(s) for kind, s in seconds.items()}
    return {
        "system": "qworker",
        "jobs": stored,
        "queue_depth_at_end": stored,
        "rounds": rounds,
        "plain_per_second": round(rate["plain"], 1),
        "transaction_per_second": round(rate["transaction"], 1),
        "transaction_vs_plain": round(rate["transaction"] / rate["plain"], 3),
    }
