"""Throughput, latency and claim cost of qworker on one MongoDB-protocol server.

    python bench/throughput.py                     # SecantusDB started for the run
    python bench/throughput.py --mongo URL         # any server
    python bench/throughput.py --jobs 2000 --workers 1 --workers 3

Writes bench/results/throughput-<timestamp>.json and prints a table. Every
figure comes with its queue depth, worker count and the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import HERE, fresh, machine, percentile, qworker_fleet, server
from pymongo import MongoClient

from qworker import Client
from qworker.channel import Channel, publish_sync
from qworker.model import new_job
from qworker.mongo import Names, async_client
from qworker.when import utcnow


def _wait_done(db: Any, expected: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while db.jobs.count_documents({"state": {"$in": ["queued", "running"]}}):
        if time.monotonic() > deadline:
            raise TimeoutError("jobs did not finish")
        time.sleep(0.5)
    done = db.jobs.count_documents({"state": "succeeded"})
    if done != expected:
        raise RuntimeError(f"{done} of {expected} jobs succeeded")


def throughput(url: str, jobs: int, workers: int, concurrency: int) -> dict[str, Any]:
    """N no-op jobs, enqueued in batches while K workers wait: end-to-end jobs/s."""
    db_url, db = fresh(url, f"bench_tp_{workers}")
    with Client(db_url) as client:
        fleet = qworker_fleet(db_url, workers, concurrency)
        started = utcnow()
        for start in range(0, jobs, 500):
            client.enqueue_many("noop", [None] * min(500, jobs - start))
        enqueued = utcnow()
        _wait_done(db, jobs, 600)
        fleet.stop()
    last = db.jobs.find_one(sort=[("lastFinishedAt", -1)])["lastFinishedAt"]
    seconds = (last - started).total_seconds()
    return {
        "jobs": jobs,
        "workers": workers,
        "concurrency": concurrency,
        "queue_depth_at_start": jobs,
        "seconds": round(seconds, 3),
        "jobs_per_second": round(jobs / seconds, 1),
        "enqueue_per_second": round(jobs / (enqueued - started).total_seconds(), 1),
    }


def latency(url: str, samples: int) -> dict[str, Any]:
    """One job at a time to an idle worker: enqueue (before insert) to start."""
    db_url, _ = fresh(url, "bench_latency")
    with Client(db_url) as client:
        fleet = qworker_fleet(db_url, 1, 8)
        time.sleep(1)
        ms = []
        for _ in range(samples):
            doc = client.wait(client.now("noop"), timeout=30)
            ms.append((doc["lastRunAt"] - doc["createdAt"]).total_seconds() * 1000)
            time.sleep(0.05)
        rss = fleet.rss_mb()[0]
        fleet.stop()
    return {
        "samples": samples,
        "workers": 1,
        "queue_depth": 0,
        "p50_ms": round(statistics.median(ms), 2),
        "p95_ms": round(percentile(ms, 0.95), 2),
        "max_ms": round(max(ms), 2),
        "idle_worker_rss_mb": round(rss, 1),
    }


def backend(url: str, count: int = 500) -> dict[str, Any]:
    """The server's own rate for one client: the ceiling every figure sits under."""
    _, db = fresh(url, "bench_backend")
    started = time.perf_counter()
    ids = [db.raw.insert_one({"n": n}).inserted_id for n in range(count)]
    inserted = time.perf_counter()
    for job_id in ids:
        db.raw.update_one({"_id": job_id}, {"$set": {"done": True}})
    updated = time.perf_counter()
    return {
        "operations": count,
        "insert_one_per_second": round(count / (inserted - started), 1),
        "update_one_by_id_per_second": round(count / (updated - inserted), 1),
    }


def channel_latency(url: str, samples: int, burst: int = 1000) -> dict[str, Any]:
    """The channel's publish -> receive time (the floor for wake-ups) and messages/s.

    Latency: one message every 50 ms. Rate: ``burst`` messages published back
    to back by one client, from the first publish to the last delivery.
    """
    db_url, db = fresh(url, "bench_channel")
    with Client(db_url):
        pass  # creates the channel
    received: list[float] = []
    burst_done: list[float] = []
    ready = threading.Event()

    async def listen() -> None:
        mongo = async_client(db_url)
        channel = Channel(mongo.get_default_database()[Names().channel])
        opened = asyncio.Event()

        async def on(event: str, body: dict[str, Any]) -> None:
            if "sent" in body:
                received.append((time.time() - body["sent"]) * 1000)
            else:
                burst_done.append(time.perf_counter())

        task = asyncio.create_task(channel.subscribe(["bench:ping"], on, opened))
        await opened.wait()
        ready.set()
        while len(received) < samples or len(burst_done) < burst:
            await asyncio.sleep(0.01)
        task.cancel()
        await mongo.close()

    thread = threading.Thread(target=asyncio.run, args=(listen(),), daemon=True)
    thread.start()
    ready.wait(30)
    for _ in range(samples):
        publish_sync(db[Names().channel], "bench:ping", {"sent": time.time()})
        time.sleep(0.05)
    started = time.perf_counter()
    for n in range(burst):
        publish_sync(db[Names().channel], "bench:ping", {"n": n})
    thread.join(60)
    return {
        "samples": len(received),
        "p50_ms": round(statistics.median(received), 2),
        "p95_ms": round(percentile(received, 0.95), 2),
        "burst": burst,
        "messages_per_second": round(len(burst_done) / (burst_done[-1] - started), 1),
    }


def depth_cost(url: str, depth: int, measured: int) -> dict[str, Any]:
    """Per-job cost for the first ``measured`` jobs with ``depth`` jobs waiting."""
    db_url, db = fresh(url, f"bench_depth_{depth}")
    now = utcnow()
    db.jobs.insert_many([new_job("noop", None, now=now, run_at=now) for _ in range(depth)])
    with Client(db_url):
        pass  # creates the indexes
    fleet = qworker_fleet(db_url, 1, 8)
    count = min(depth, measured)
    deadline = time.monotonic() + 600
    while db.jobs.count_documents({"state": "succeeded"}) < count:
        if time.monotonic() > deadline:
            raise TimeoutError("depth run did not progress")
        time.sleep(0.5)
    fleet.stop()
    first = db.jobs.find_one({"lastRunAt": {"$exists": True}}, sort=[("lastRunAt", 1)])
    finished = sorted(
        d["lastFinishedAt"] for d in db.jobs.find({"state": "succeeded"}, {"lastFinishedAt": 1})
    )[:count]
    seconds = (finished[-1] - first["lastRunAt"]).total_seconds()
    return {
        "queue_depth": depth,
        "jobs_measured": count,
        "workers": 1,
        "ms_per_job": round(seconds * 1000 / count, 3),
    }


def _median(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The run with the median ``key``, with every run's value beside it."""
    ordered = sorted(runs, key=lambda run: float(run[key]))
    return {**ordered[len(ordered) // 2], f"{key}_runs": [run[key] for run in runs]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--mongo", help="server URL (default: start SecantusDB for the run)")
    parser.add_argument("--jobs", type=int, default=2000, help="jobs in the throughput run")
    parser.add_argument("--workers", type=int, action="append", help="worker processes (repeat)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--latency-samples", type=int, default=100)
    parser.add_argument("--depths", default="100,1000,10000")
    parser.add_argument("--measured", type=int, default=300, help="jobs timed per depth")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median kept)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    import importlib.metadata as md

    result: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": {p: md.version(p) for p in ("qworker", "pymongo")},
        "throughput": [],
        "depth": [],
    }
    with server(args.mongo) as url:
        client: MongoClient[dict[str, Any]] = MongoClient(url)
        result["server"] = args.mongo or f"SecantusDB {md.version('secantusdb')}"
        result["server_version"] = client.server_info().get("version")
        client.close()
        result["backend"] = backend(url)
        print("backend", result["backend"], flush=True)
        for workers in args.workers or [1, 3]:
            runs = [
                throughput(url, args.jobs, workers, args.concurrency) for _ in range(args.repeat)
            ]
            result["throughput"].append(_median(runs, "jobs_per_second"))
            print("throughput", result["throughput"][-1], flush=True)
        result["channel"] = channel_latency(url, args.latency_samples)
        print("channel", result["channel"], flush=True)
        result["latency"] = latency(url, args.latency_samples)
        print("latency", result["latency"], flush=True)
        for depth in (int(d) for d in args.depths.split(",")):
            runs = [depth_cost(url, depth, args.measured) for _ in range(args.repeat)]
            result["depth"].append(_median(runs, "ms_per_job"))
            print("depth", result["depth"][-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"throughput-{result['when'].replace(':', '')}.json"
    path.write_text(json.dumps(result, indent=2))
    report(result, path)


def report(result: dict[str, Any], path: Path) -> None:
    m = result["machine"]
    print(
        f"\nqworker {result['versions']['qworker']} on {result['server']}, "
        f"{m['cores']} cores, Python {m['python']}"
    )
    print(f"{'run':<34}{'depth':>8}{'workers':>9}{'figure':>22}")
    for t in result["throughput"]:
        depth, workers = t["queue_depth_at_start"], t["workers"]
        rate = t["jobs_per_second"]
        print(f"{'end-to-end throughput':<34}{depth:>8}{workers:>9}{rate:>16} jobs/s")
        rate = t["enqueue_per_second"]
        print(f"{'enqueue rate (batches of 500)':<34}{depth:>8}{workers:>9}{rate:>16} jobs/s")
    b = result["backend"]
    rates = f"{b['insert_one_per_second']} / {b['update_one_by_id_per_second']} ops/s"
    print(f"{'server: insert_one / update_one':<34}{'-':>8}{'-':>9}  {rates:>20}")
    lat = result["latency"]
    figure = f"p50 {lat['p50_ms']} p95 {lat['p95_ms']} max {lat['max_ms']} ms"
    print(f"{'enqueue->start, idle worker':<34}{0:>8}{1:>9}  {figure:>20}")
    ch = result["channel"]
    figure = f"p50 {ch['p50_ms']} p95 {ch['p95_ms']} ms"
    print(f"{'channel publish->receive':<34}{'-':>8}{'-':>9}  {figure:>20}")
    rate = f"{ch['messages_per_second']} msgs/s"
    print(f"{'channel, one publisher, burst':<34}{'-':>8}{'-':>9}  {rate:>20}")
    print(f"{'idle worker resident memory':<34}{0:>8}{1:>9}{lat['idle_worker_rss_mb']:>19} MB")
    for d in result["depth"]:
        print(
            f"{'per-job cost at depth':<34}{d['queue_depth']:>8}{d['workers']:>9}"
            f"{d['ms_per_job']:>19} ms"
        )
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
