"""qworker, Celery (kombu's MongoDB transport) and Agenda, side by side on one server.

    python bench/compare.py --quick        # smoke run: 200 jobs, a few minutes
    python bench/compare.py                # 1,000 and 10,000 jobs, 1 and 4 workers
    python bench/compare.py --memory       # also: one worker's memory over 100,000 jobs

Starts ONE fresh SecantusDB (or uses --mongo URL), measures the three on it in
the same run, prints a table, and writes bench/results/compare-<time>.json and
one PNG per figure beside it. Needs `pip install -e '.[bench]'` and node >= 18
(bench/agenda's packages are installed with `npm ci` when missing).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from bson import ObjectId
from common import (
    HERE,
    Fleet,
    fresh,
    loadavg,
    machine,
    percentile,
    qworker_fleet,
    rss_mb,
    server,
    wait_count,
)
from pymongo import MongoClient, UpdateOne

from qworker import Client
from qworker.model import new_job
from qworker.when import utcnow

AGENDA = HERE / "agenda"
PARTS = (
    "ceiling",
    "latency",
    "enqueue",
    "throughput",
    "channel",
    "streams",
    "depth",
    "scheduler",
    "workflows",
    "limits",
    "managed",
    "app",
)
BATCH = 500  # jobs per bulk enqueue
ENQUEUE_LIMIT = 120.0  # seconds the one-at-a-time enqueue gets
POLL = 0.02  # seconds between reads of a latency job's outcome


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def summary(ms: list[float]) -> dict[str, Any]:
    return {
        "samples": len(ms),
        "p50_ms": round(statistics.median(ms), 2),
        "p95_ms": round(percentile(ms, 0.95), 2),
        "p99_ms": round(percentile(ms, 0.99), 2),
        "max_ms": round(max(ms), 2),
    }


class System(Protocol):
    """What the comparison needs from each queue."""

    name: str
    variant: str

    def fleet(self, db_url: str, workers: int) -> Fleet: ...
    def enqueue(self, db_url: str, jobs: int, batch: int, limit: float) -> tuple[int, float]:
        """Enqueue up to ``jobs``, stopping after ``limit`` seconds: (enqueued, seconds)."""
        ...

    def finished(self, db: Any) -> int: ...
    def last_finish(self, db: Any) -> float: ...
    def latency(self, db_url: str, db: Any, samples: int) -> list[float]: ...
    def settings(self) -> dict[str, Any]: ...


def _wait_doc(find: Callable[[], dict[str, Any] | None], timeout: float = 60) -> dict[str, Any]:
    """The outcome document, read from ``POLL`` after the enqueue on: the times measured
    are in it, and the observer's reads stay out of the interval they measure."""
    deadline = time.monotonic() + timeout
    time.sleep(POLL)
    while (doc := find()) is None:
        if time.monotonic() > deadline:
            raise TimeoutError("a latency job did not finish")
        time.sleep(POLL)
    return doc


class Qworker:
    name, variant = "qworker", "defaults"

    def settings(self) -> dict[str, Any]:
        return {
            "command": "qworker --standalone --mongo URL --paths bench/tasks noop",
            "concurrency": 16,
            "poll_interval_s": 1.0,
            "lease_s": 30.0,
            "enqueue": f"Client.enqueue_many, {BATCH} a call; Client.now one at a time",
            "wake-ups": "a change stream on jobs in each worker; the client writes the job only",
        }

    def fleet(self, db_url: str, workers: int) -> Fleet:
        return qworker_fleet(db_url, workers)

    def enqueue(self, db_url: str, jobs: int, batch: int, limit: float) -> tuple[int, float]:
        with Client(db_url) as client:
            started = time.perf_counter()
            done = 0
            while done < jobs and time.perf_counter() - started < limit:
                if batch == 1:
                    client.now("noop")
                    done += 1
                else:
                    done += len(client.enqueue_many("noop", [None] * min(batch, jobs - done)))
            client.flush()  # the wake-ups too: they are part of an enqueue
            return done, time.perf_counter() - started

    def finished(self, db: Any) -> int:
        return int(db.jobs.count_documents({"state": "succeeded"}))

    def last_finish(self, db: Any) -> float:
        doc = db.jobs.find_one({"state": "succeeded"}, sort=[("lastFinishedAt", -1)])
        return float(doc["lastFinishedAt"].timestamp()) if doc else float("nan")

    def latency(self, db_url: str, db: Any, samples: int) -> list[float]:
        ms = []
        with Client(db_url) as client:
            for _ in range(samples):
                enqueued = time.time()
                query = {"_id": ObjectId(client.now("noop")), "state": "succeeded"}
                doc = _wait_doc(lambda: db.jobs.find_one(query, {"lastRunAt": 1}))  # noqa: B023
                ms.append(_ms(doc["lastRunAt"].timestamp() - enqueued))
                time.sleep(0.05)
        return ms


class Celery_:
    """Celery workers (``--pool solo -c 1``) on kombu's ``mongodb://`` transport."""

    name = "celery"

    def __init__(self, poll: float | None) -> None:
        self.poll = poll
        self.variant = "polling 1 s (default)" if poll is None else f"polling {poll} s"

    def settings(self) -> dict[str, Any]:
        return {
            "command": "celery -A celery_noop worker --pool solo -c 1 --without-gossip "
            "--without-mingle --without-heartbeat -l WARNING",
            "polling_interval_s": self.poll or 1.0,
            "prefetch_multiplier": 4,
            "remote_control": False,
            "result_backend": None,
            "completion": "the task inserts one document into `done` (no result backend)",
            "enqueue": "send_task, one message at a time (Celery has no bulk publish)",
        }

    def _env(self, db_url: str) -> dict[str, str]:
        env = {**os.environ, "BENCH_BROKER": db_url}
        if self.poll is not None:
            env["BENCH_POLL"] = str(self.poll)
        return env

    def fleet(self, db_url: str, workers: int) -> Fleet:
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "celery_noop",
            "worker",
            "--pool",
            "solo",
            "-c",
            "1",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-l",
            "WARNING",
        ]
        # kombu creates its broadcast collection when a connection first opens, with
        # a check-then-create that fails for one of several workers starting at once
        # ("collection messages.broadcast already exists"): open one here first.
        app = self._app(db_url)
        with app.connection_for_write() as connection:
            connection.default_channel.client  # noqa: B018 (creates the collections)
        app.close()
        return Fleet(
            [[*command, "-n", f"bench{n}@%h"] for n in range(workers)],
            b"bench-ready",
            cwd=HERE,
            env=self._env(db_url),
        )

    def _app(self, db_url: str) -> Any:
        from celery import Celery

        app = Celery("bench-client", broker=db_url)
        app.conf.task_ignore_result = True
        return app

    def enqueue(self, db_url: str, jobs: int, batch: int, limit: float) -> tuple[int, float]:
        app = self._app(db_url)
        with app.producer_or_acquire() as producer:
            started = time.perf_counter()
            done = 0
            while done < jobs and time.perf_counter() - started < limit:
                app.send_task("noop", args=[time.time()], producer=producer)
                done += 1
            seconds = time.perf_counter() - started
        app.close()
        return done, seconds

    def finished(self, db: Any) -> int:
        return int(db.done.count_documents({}))

    def last_finish(self, db: Any) -> float:
        doc = db.done.find_one(sort=[("finished", -1)])
        return float(doc["finished"]) if doc else float("nan")

    def latency(self, db_url: str, db: Any, samples: int) -> list[float]:
        app = self._app(db_url)
        ms = []
        with app.producer_or_acquire() as producer:
            for _ in range(samples):
                enqueued = time.time()
                task_id = app.send_task("noop", args=[enqueued], producer=producer).id
                doc = _wait_doc(lambda: db.done.find_one({"_id": task_id}))  # noqa: B023
                ms.append(_ms(doc["started"] - enqueued))
                time.sleep(0.05)
        app.close()
        return ms


class Agenda:
    """Agenda 6 (the npm package) with its MongoDB backend, in node."""

    name = "agenda"

    def __init__(self, process_every_ms: int) -> None:
        self.process_every = process_every_ms
        default = " (default)" if process_every_ms == 5000 else ""
        self.variant = f"processEvery {process_every_ms} ms{default}"

    def settings(self) -> dict[str, Any]:
        return {
            "command": f"node bench/agenda/bench.mjs worker URL {self.process_every}",
            "processEvery_ms": self.process_every,
            "maxConcurrency": 20,
            "defaultConcurrency": 5,
            "lockLimit": 0,
            "enqueue": f"agenda.now(), {BATCH} in flight at once; or one at a time",
        }

    def _node(self, *args: str) -> list[str]:
        return [node(), str(AGENDA / "bench.mjs"), *args]

    def fleet(self, db_url: str, workers: int) -> Fleet:
        command = self._node("worker", db_url, str(self.process_every))
        return Fleet([command] * workers, b"ready", stream="stdout")

    def _run(self, *args: str) -> Any:
        done = subprocess.run(self._node(*args), capture_output=True, text=True, timeout=3600)
        if done.returncode:
            raise RuntimeError(f"node bench.mjs {args[0]} failed:\n{done.stderr[-2000:]}")
        return json.loads(done.stdout)

    def enqueue(self, db_url: str, jobs: int, batch: int, limit: float) -> tuple[int, float]:
        out = self._run("enqueue", db_url, str(jobs), str(batch), str(limit))
        return int(out["jobs"]), float(out["seconds"])

    def finished(self, db: Any) -> int:
        return int(db.agendaJobs.count_documents({"lastFinishedAt": {"$ne": None}}))

    def last_finish(self, db: Any) -> float:
        doc = db.agendaJobs.find_one(
            {"lastFinishedAt": {"$ne": None}}, sort=[("lastFinishedAt", -1)]
        )
        return float(doc["lastFinishedAt"].timestamp()) if doc else float("nan")

    def latency(self, db_url: str, db: Any, samples: int) -> list[float]:
        return [float(v) for v in self._run("latency", db_url, str(samples))["ms"]]


def node() -> str:
    found = shutil.which("node")
    if not found:
        sys.exit("node is needed for Agenda (>= 18)")
    return found


def install_agenda() -> None:
    if not (AGENDA / "node_modules").is_dir():
        print("installing bench/agenda's packages (npm ci)", flush=True)
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=AGENDA, check=True)


# -- figures -------------------------------------------------------------------


def _drop(db: Any) -> None:
    db.client.drop_database(db.name)
    db.client.close()


def throughput(system: System, url: str, jobs: int, workers: int, timeout: float) -> dict[str, Any]:
    """N no-op jobs enqueued (in bulk where the system has it) while K workers wait.

    Throughput: jobs finished ÷ (last finish - first enqueue). A run that has
    not finished within ``timeout`` is reported with the jobs it did finish.
    """
    db_url, db = fresh(url, f"cmp_{system.name}_{jobs}_{workers}")
    if system.name == "qworker":
        Client(db_url).close()  # the indexes, as a deployment has them
    with system.fleet(db_url, workers) as fleet:
        started = time.time()
        deadline = time.monotonic() + timeout
        enqueued, enqueue_seconds = system.enqueue(db_url, jobs, BATCH, timeout)
        deadline = max(deadline, time.monotonic() + 10)
        done = wait_count(lambda: system.finished(db), enqueued, deadline)
        rss = fleet.rss_mb()
    last = system.last_finish(db)
    seconds = last - started if done else time.time() - started
    _drop(db)
    return {
        "system": system.name,
        "variant": system.variant,
        "jobs": jobs,
        "workers": workers,
        "queue_depth_at_start": jobs,
        "enqueued": enqueued,
        "finished": done,
        "complete": done >= jobs,
        "seconds": round(seconds, 3),
        "jobs_per_second": round(done / seconds, 1),
        "enqueue_seconds": round(enqueue_seconds, 3),
        "enqueue_per_second": round(enqueued / enqueue_seconds, 1),
        "worker_rss_mb": [round(r, 1) for r in rss],
    }


def enqueue_single(
    systems: list[System], url: str, jobs: int, rounds: int = 10
) -> list[dict[str, Any]]:
    """One job per call, no worker running: each client's own rate.

    The systems take turns, ``jobs / rounds`` calls at a time, so that the
    machine's drift in speed falls on all of them alike; the figure is each
    one's median round.
    """
    dbs = {s.name: fresh(url, f"cmp_{s.name}_enqueue") for s in systems}
    if "qworker" in dbs:
        Client(dbs["qworker"][0]).close()  # the schema, made before the clock starts
    rates: dict[str, list[float]] = {s.name: [] for s in systems}
    done = dict.fromkeys(rates, 0)
    for _ in range(rounds):
        for system in systems:
            made, seconds = system.enqueue(dbs[system.name][0], jobs // rounds, 1, ENQUEUE_LIMIT)
            rates[system.name].append(made / seconds)
            done[system.name] += made
    for _, db in dbs.values():
        _drop(db)
    return [
        {
            "system": name,
            "jobs": done[name],
            "queue_depth_at_end": done[name],
            "rounds_per_second": [round(r, 1) for r in rates[name]],
            "enqueue_per_second": round(statistics.median(rates[name]), 1),
        }
        for name in rates
    ]


def enqueue_watched(url: str, jobs: int) -> dict[str, Any]:
    """``Client.now`` one at a time while one idle worker watches ``jobs``: a watcher
    costs every insert on some servers (see ``streams.watcher_cost``)."""
    db_url, db = fresh(url, "cmp_qworker_enqueue_watched")
    Client(db_url).close()
    with qworker_fleet(db_url, 1):
        time.sleep(1)
        with Client(db_url) as client:
            started = time.perf_counter()
            for _ in range(jobs):
                client.schedule("in 1 day", "noop")  # not run: the worker only watches
            seconds = time.perf_counter() - started
    _drop(db)
    return {
        "system": "qworker",
        "workers": 1,
        "jobs": jobs,
        "queue_depth_at_end": jobs,
        "enqueue_per_second": round(jobs / seconds, 1),
    }


def latency(system: System, url: str, samples: int) -> dict[str, Any]:
    """One job at a time to one idle worker: enqueue call → the job's start."""
    db_url, db = fresh(url, f"cmp_{system.name}_latency")
    if system.name == "qworker":
        Client(db_url).close()
    with system.fleet(db_url, 1) as fleet:
        time.sleep(1)
        ms = system.latency(db_url, db, samples)
        rss = fleet.rss_mb()[0]
    _drop(db)
    return {
        "system": system.name,
        "variant": system.variant,
        "workers": 1,
        "queue_depth": 0,
        **summary(ms),
        "idle_worker_rss_mb": round(rss, 1),
        "ms": ms,
    }


def ceiling(url: str, count: int) -> dict[str, Any]:
    """The server's own rate for the writes one job needs, from one client.

    Single: insert_one, a claim-like conditional update_one by _id, a
    complete-like update_one by _id and token. Batched: the cheapest correct
    shape this server allows, not qworker's own calls: insert_many of 500 into a
    collection with the one index a queue needs (state, due time), a read of 500
    candidates' ids through it, a claim of 16 by ``_id`` (update_many) and their
    read-back by ``_id`` and token, and the 16 outcomes in one bulk_write.
    """
    _, db = fresh(url, "cmp_ceiling")
    now = utcnow()
    docs = [new_job("noop", None, now=now, run_at=now) for _ in range(count)]
    rates: dict[str, float] = {}

    def timed(name: str, ops: int, run: Callable[[], object]) -> None:
        started = time.perf_counter()
        run()
        rates[name] = round(ops / (time.perf_counter() - started), 1)

    single = db.single
    timed("insert_one", count, lambda: [single.insert_one(d) for d in docs])
    timed(
        "claim_update_one",
        count,
        lambda: [
            single.update_one(
                {"_id": d["_id"], "state": "queued"},
                {"$set": {"state": "running", "lockToken": "t", "lastRunAt": utcnow()}},
            )
            for d in docs
        ],
    )
    timed(
        "complete_update_one",
        count,
        lambda: [
            single.update_one(
                {"_id": d["_id"], "lockToken": "t"},
                {"$set": {"state": "succeeded", "lastFinishedAt": utcnow()}},
            )
            for d in docs
        ],
    )
    for d in docs:
        d.pop("_id")
    batched = db.batched
    batched.create_index([("state", 1), ("nextRunAt", 1)])
    timed(
        "insert_many_500",
        count,
        lambda: [batched.insert_many(docs[i : i + BATCH]) for i in range(0, count, BATCH)],
    )
    ids = [d["_id"] for d in docs]
    groups = [ids[i : i + 16] for i in range(0, count, 16)]

    def candidates() -> None:
        for _ in range(0, count, BATCH):
            list(batched.find({"state": "queued"}, {"_id": 1}).limit(BATCH))

    def claim() -> None:
        for group in groups:
            batched.update_many(
                {"_id": {"$in": group}, "state": "queued"},
                {"$set": {"state": "running", "lockToken": str(group[0])}},
            )
            list(batched.find({"_id": {"$in": group}, "lockToken": str(group[0])}))

    def complete() -> None:
        for group in groups:
            batched.bulk_write(
                [
                    UpdateOne(
                        {"_id": i, "lockToken": str(group[0])}, {"$set": {"state": "succeeded"}}
                    )
                    for i in group
                ]
            )

    timed("candidates_find_500", count, candidates)
    timed("claim_update_many_16", count, claim)
    timed("complete_bulk_16", count, complete)
    _drop(db)

    def model(*keys: str) -> float:
        return round(1 / sum(1 / rates[k] for k in keys), 1)

    return {
        "operations": count,
        "per_second": rates,
        "single_ceiling_jobs_per_second": model(
            "insert_one", "claim_update_one", "complete_update_one"
        ),
        "batched_ceiling_jobs_per_second": model(
            "insert_many_500", "candidates_find_500", "claim_update_many_16", "complete_bulk_16"
        ),
    }


def scheduler(url: str, schedules: int, window: float, workers: int, depth: int) -> dict[str, Any]:
    """Lateness of interval fires (every 1 s) while the fleet works through a queue.

    A ``qworker-manager serve`` runs ``schedules`` schedules of the no-op task;
    a feeder keeps about ``depth`` jobs queued for the whole window.
    """
    db_url, db = fresh(url, "cmp_scheduler")
    serve = [sys.executable, "-m", "qworker.cli.manager", "--mongo", db_url, "serve"]
    stop = threading.Event()
    depths: list[int] = []
    with (
        Client(db_url) as client,
        qworker_fleet(db_url, workers),
        Fleet([[*serve, "--http", "off", "--log-format", "json"]], b"running the schedules"),
    ):

        def feed() -> None:
            while not stop.is_set():
                queued = db.jobs.count_documents({"state": "queued", "scheduleId": None})
                depths.append(queued)
                if queued < depth:
                    client.enqueue_many("noop", [None] * min(BATCH, depth - queued))
                stop.wait(0.5)

        feeder = threading.Thread(target=feed, daemon=True)
        if depth:
            feeder.start()
            time.sleep(3)  # the queue is full before the first fire
        begin = utcnow()
        for n in range(schedules):
            client.every(1, "noop", name=f"bench-{n}")
        time.sleep(window)
        end = utcnow()
        stop.set()
        if depth:
            feeder.join()
        query = {"scheduleId": {"$ne": None}, "scheduledFor": {"$gte": begin, "$lte": end}}
        for _ in range(60):  # the fires of the window start (they queue behind the load)
            time.sleep(1)
            if not db.jobs.count_documents({**query, "state": "queued"}):
                break
        fires = list(db.jobs.find(query, {"scheduledFor": 1, "createdAt": 1, "lastRunAt": 1}))
    _drop(db)
    fire = [_ms((f["createdAt"] - f["scheduledFor"]).total_seconds()) for f in fires]
    start = [
        _ms((f["lastRunAt"] - f["scheduledFor"]).total_seconds())
        for f in fires
        if f.get("lastRunAt")
    ]
    return {
        "schedules": schedules,
        "every_s": 1,
        "window_s": window,
        "workers": workers,
        "queue_depth_target": depth,
        "queue_depth_seen": [min(depths), max(depths)] if depths else [0, 0],
        "fires": len(fires),
        "expected_fires": round(schedules * window),
        "fire_late": summary(fire) if fire else None,
        "start_late": summary(start) if start else None,
        "not_started": len(fire) - len(start),
        "fire_ms": fire,
        "start_ms": start,
    }


def memory(url: str, total: int, sample_every: int = 5_000) -> dict[str, Any]:
    """One worker's resident memory, idle and then over ``total`` no-op jobs."""
    db_url, db = fresh(url, "cmp_memory")
    with Client(db_url) as client, qworker_fleet(db_url, 1) as fleet:
        time.sleep(5)
        pid = fleet.pids[0]
        samples = [(0, round(rss_mb(pid), 1))]
        started = time.monotonic()
        enqueued = 0
        while True:
            waiting = db.jobs.count_documents({"state": {"$in": ["queued", "running"]}})
            done = enqueued - waiting
            if done >= samples[-1][0] + sample_every or (done >= total > samples[-1][0]):
                samples.append((done, round(rss_mb(pid), 1)))
                print(f"memory: {done} jobs run, {samples[-1][1]} MB", flush=True)
            if done >= total:
                break
            if waiting < 2_000 and enqueued < total:
                count = min(2_000, total - enqueued)
                for start in range(0, count, BATCH):
                    client.enqueue_many("noop", [None] * min(BATCH, count - start))
                enqueued += count
            time.sleep(1)
        seconds = time.monotonic() - started
        time.sleep(5)
        idle_after = round(rss_mb(pid), 1)
    _drop(db)
    warm = next((rss for done, rss in samples if done >= 10_000), samples[-1][1])
    return {
        "jobs": total,
        "workers": 1,
        "queue_depth": "kept between 0 and 4,000",
        "seconds": round(seconds, 1),
        "idle_rss_mb": samples[0][1],
        "final_rss_mb": samples[-1][1],
        "idle_after_rss_mb": idle_after,
        "rss_after_10000_mb": warm,
        "growth_after_10000_mb": round(samples[-1][1] - warm, 1),
        "samples": samples,
    }


def wait_quiet(threshold: float, hold: float, limit: float) -> dict[str, Any]:
    """Wait until the 1-minute load average stays under ``threshold`` for ``hold`` s."""
    started = time.monotonic()
    quiet_since: float | None = None
    seen = []
    while time.monotonic() - started < limit:
        load = loadavg()
        seen.append(load)
        if load < threshold:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= hold:
                return {
                    "quiet": True,
                    "waited_s": round(time.monotonic() - started),
                    "loadavg": load,
                }
        else:
            quiet_since = None
        time.sleep(2)
    return {
        "quiet": False,
        "waited_s": round(limit),
        "loadavg": loadavg(),
        "loadavg_min_seen": min(seen),
    }


# -- the run -------------------------------------------------------------------


@dataclass
class Plan:
    jobs: list[int]
    workers: list[int]
    latency_samples: int
    slow_latency_samples: int  # for the 1 s / 5 s pollers
    enqueue_jobs: int
    timeout: float
    depths: list[int]
    schedules: int
    schedule_window: float
    ceiling_ops: int
    fan_in_jobs: int  # the children of the workflows part's group


def plan(args: argparse.Namespace) -> Plan:
    if args.quick:
        return Plan([200], [1, 4], 20, 5, 100, 120, [100, 1000], 10, 10, 300, 500)
    return Plan(
        args.jobs or [1000, 10000],
        args.workers or [1, 4],
        args.latency_samples,
        args.slow_latency_samples,
        500,
        args.timeout,
        [100, 3000, 10000],
        20,
        30,
        1000,
        10_000,
    )


def versions() -> dict[str, str]:
    found = {p: md.version(p) for p in ("qworker", "celery", "kombu", "pymongo", "secantusdb")}
    lock = json.loads((AGENDA / "package-lock.json").read_text())["packages"]
    for name in ("agenda", "@agendajs/mongo-backend", "mongodb"):
        found[f"npm {name}"] = lock[f"node_modules/{name}"]["version"]
    found["node"] = subprocess.run(
        [node(), "--version"], capture_output=True, text=True
    ).stdout.strip()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--mongo", help="server URL (default: start SecantusDB for the run)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 200 jobs, few samples")
    parser.add_argument("--jobs", type=int, action="append", help="N (repeat; default 1000, 10000)")
    parser.add_argument("--workers", type=int, action="append", help="K (repeat; default 1, 4)")
    parser.add_argument("--latency-samples", type=int, default=100)
    parser.add_argument(
        "--slow-latency-samples",
        type=int,
        default=20,
        help="samples for the default 1 s / 5 s pollers",
    )
    parser.add_argument("--timeout", type=float, default=300, help="seconds a throughput run gets")
    parser.add_argument("--agenda-process-every", type=int, default=100, help="ms, tuned value")
    parser.add_argument(
        "--agenda-throughput-every",
        type=int,
        default=5000,
        help="ms, processEvery of Agenda's throughput runs (shorter ones never finished here)",
    )
    parser.add_argument("--celery-poll", type=float, default=0.1, help="s, tuned value")
    parser.add_argument("--only", action="append", choices=["qworker", "celery", "agenda"])
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"figures to measure, comma-separated (default: all of {','.join(PARTS)})",
    )
    parser.add_argument("--memory", action="store_true", help="also run 100,000 jobs on one worker")
    parser.add_argument("--memory-jobs", type=int, default=100_000)
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0,
        metavar="SECONDS",
        help="first wait up to this long for load average < 0.6 for 30 s",
    )
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    p = plan(args)
    install_agenda()
    only = set(args.only or ["qworker", "celery", "agenda"])
    tuned: list[System] = [Qworker(), Celery_(args.celery_poll), Agenda(args.agenda_process_every)]
    tuned = [s for s in tuned if s.name in only]
    defaults: list[System] = [s for s in (Celery_(None), Agenda(5000)) if s.name in only]

    result: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": " ".join(["python", "bench/compare.py", *sys.argv[1:]]),
        "versions": versions(),
        "quick": args.quick,
        "plan": p.__dict__,
        "settings": {f"{s.name} {s.variant}": s.settings() for s in [*tuned, *defaults]},
        "throughput": [],
        "enqueue_single": [],
        "latency": [],
    }
    if args.wait_quiet:
        print("waiting for a quiet machine", flush=True)
        result["load_before"] = wait_quiet(0.6, 30, args.wait_quiet)
    else:
        result["load_before"] = {"loadavg": loadavg()}
    print("load before the run:", result["load_before"], flush=True)
    clock = time.monotonic()
    with server(args.mongo) as url:
        mongo: MongoClient[dict[str, Any]] = MongoClient(url)
        result["server"] = args.mongo or f"SecantusDB {md.version('secantusdb')}"
        result["server_version"] = mongo.server_info().get("version")
        mongo.close()

        partial = args.out / "compare-partial.json"
        args.out.mkdir(parents=True, exist_ok=True)

        def step(key: str, measure: Callable[..., Any], *given: Any) -> None:
            try:
                value = measure(*given)
            except Exception as exc:  # one figure failing does not lose the others
                print(key, "FAILED:", repr(exc), flush=True)
                result.setdefault("errors", []).append({"figure": key, "error": repr(exc)})
                return
            for one in value if isinstance(value, list) else [value]:
                print(key, {k: v for k, v in one.items() if not isinstance(v, list) or len(v) < 8})
            if isinstance(value, list):
                result[key].extend(value)
            elif isinstance(result.get(key), list):
                result[key].append(value)
            else:
                result[key] = value
            partial.write_text(json.dumps(result, indent=2, default=str))

        parts = set(args.parts.split(","))
        if "ceiling" in parts:
            step("ceiling", ceiling, url, p.ceiling_ops)
        for system in tuned if "latency" in parts else []:
            step("latency", latency, system, url, p.latency_samples)
        for system in defaults if "latency" in parts else []:
            step("latency", latency, system, url, p.slow_latency_samples)
        if "enqueue" in parts:
            step("enqueue_single", enqueue_single, tuned, url, p.enqueue_jobs * 4)
        loaded = [Agenda(args.agenda_throughput_every) if s.name == "agenda" else s for s in tuned]
        result["settings"].update({f"{s.name} {s.variant}": s.settings() for s in loaded})
        for jobs in p.jobs if "throughput" in parts else []:
            for workers in p.workers:
                for system in loaded:
                    step("throughput", throughput, system, url, jobs, workers, p.timeout)
        if "app" in parts:
            from app import app_load

            result["app"] = []
            for system in [s for s in tuned if s.name in ("qworker", "celery")]:
                step("app", app_load, system, url, p.timeout)
        if "qworker" in only:
            from throughput import channel_latency, depth_cost

            if "channel" in parts:
                step("channel", channel_latency, url, p.latency_samples, 100)
            if "enqueue" in parts:
                step("enqueue_watched", enqueue_watched, url, p.enqueue_jobs)
            if "streams" in parts:
                from streams import (
                    enqueue_async,
                    enqueue_transactional,
                    stream_latency,
                    watcher_cost,
                )

                step("stream_latency", stream_latency, url, p.latency_samples)
                step("watcher_cost", watcher_cost, url, p.enqueue_jobs)
                step("enqueue_transactional", enqueue_transactional, url, p.enqueue_jobs)
                # last: after its 50 connections the server is slower for a while
                step("enqueue_async", enqueue_async, url, p.enqueue_jobs * 4)
            result["depth"] = []
            for depth in p.depths if "depth" in parts else []:
                step("depth", depth_cost, url, depth, 300)
            if "workflows" in parts:
                from workflows import callback_gaps, fan_in

                result["fan_in"] = []
                for workers in p.workers:
                    step("fan_in", fan_in, args.mongo, p.fan_in_jobs, workers, p.timeout)
                step("callback_gaps", callback_gaps, url, p.latency_samples // 5)
            if "limits" in parts:
                from limits import limit_overhead, limited_neighbour, rate_accuracy

                result["limit_overhead"], result["limited_neighbour"] = [], []
                result["rate_accuracy"] = []
                for workers in p.workers:
                    args_of = (args.mongo, p.jobs[0], workers, p.timeout)  # fresh servers
                    step("limit_overhead", limit_overhead, *args_of)
                    step("limited_neighbour", limited_neighbour, *args_of)
                    step("rate_accuracy", rate_accuracy, args.mongo, workers, p.timeout)
            if "managed" in parts:
                from managed import managed

                result["managed"] = []
                for jobs in p.jobs:
                    for workers in p.workers:  # a fresh server each, as for the limits
                        step("managed", managed, args.mongo, jobs, workers, p.timeout)
            if "scheduler" in parts:
                step("scheduler_idle", scheduler, url, p.schedules, p.schedule_window, 1, 0)
                step("scheduler", scheduler, url, p.schedules, p.schedule_window, 1, 500)
            if args.memory or "memory" in parts:
                step("memory", memory, url, args.memory_jobs)
    result["seconds"] = round(time.monotonic() - clock)
    result["load_after"] = loadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"compare-{result['when'].replace(':', '')}"
    path = args.out / f"{stem}.json"
    path.write_text(json.dumps(result, indent=2, default=str))  # kept if a plot fails
    from plots import plot_all

    result["plots"] = [str(p) for p in plot_all(result, args.out, stem)]
    path.write_text(json.dumps(result, indent=2, default=str))
    from report import report

    report(result, path)


if __name__ == "__main__":
    main()
