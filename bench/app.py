"""A real application under load, for ``compare.py --parts app``.

A small FastAPI app answers ``POST /orders/{n}`` by enqueuing one no-op job:
through ``qworker.AsyncClient.now`` in an ``async`` route, or through Celery's
``send_task`` in a plain route (FastAPI runs it in its thread pool, as a Celery
user's app does). Uvicorn serves it in a process of its own; 2 workers of the
same system run the jobs; 50 concurrent HTTP clients send 5,000 requests in all
while the workers run.

Reported: requests/s, request latency p50 and p99, enqueue → finish p50 and
p99 (from the job's own stamps: qworker's ``createdAt``/``lastFinishedAt``,
the Celery task's ``enqueued``/``finished`` in ``done``). Checked: every
request answered 200 got a job, and each ran exactly once (qworker: one
succeeded job per request with one attempt; Celery: one completion document
per request).

    python bench/app.py --system qworker --mongo URL --port P   # the app alone
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from common import free_port, fresh, percentile

CLIENTS = 50
REQUESTS = 5_000
WORKERS = 2


def qworker_app(db_url: str) -> Any:
    from fastapi import FastAPI

    from qworker import AsyncClient

    queue = AsyncClient(db_url)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await queue.prepare()
        yield
        await queue.close()

    api = FastAPI(lifespan=lifespan)

    @api.post("/orders/{n}")
    async def order(n: int) -> dict[str, str]:
        return {"job": await queue.now("noop", {"request": n})}

    return api


def celery_app(db_url: str) -> Any:
    from celery import Celery
    from fastapi import FastAPI

    celery = Celery("bench-app", broker=db_url)
    celery.conf.task_ignore_result = True
    api = FastAPI()

    @api.post("/orders/{n}")
    def order(n: int) -> dict[str, str]:
        return {"job": celery.send_task("noop", args=[time.time(), n]).id}

    return api


def _serve(system: str, db_url: str, port: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, __file__, "--system", system, "--mongo", db_url]
    process = subprocess.Popen([*command, "--port", str(port)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/docs", timeout=1)
            return process
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("the app did not start within 60 s")


async def _load(port: int, clients: int, requests: int) -> tuple[list[float], list[int], float]:
    """``requests`` POSTs from ``clients`` at once: each one's latency (ms), the
    request numbers answered 200, and the seconds it all took."""
    ms: list[float] = []
    answered: list[int] = []
    numbers = iter(range(requests))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits) as http:

        async def one_client() -> None:
            for n in numbers:
                began = time.perf_counter()
                answer = await http.post(f"/orders/{n}", timeout=60)
                ms.append((time.perf_counter() - began) * 1000)
                if answer.status_code == 200:
                    answered.append(n)

        began = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        return ms, answered, time.perf_counter() - began


def _qworker_runs(db: Any) -> tuple[dict[int, int], list[float]]:
    """Succeeded jobs per request number (one attempt each), and enqueue → finish ms."""
    runs: dict[int, int] = {}
    spans = []
    for doc in db.jobs.find({"name": "noop"}):
        if doc["state"] == "succeeded":
            n = doc["data"]["request"]
            runs[n] = runs.get(n, 0) + doc.get("attempts", 1)
            spans.append((doc["lastFinishedAt"] - doc["createdAt"]).total_seconds() * 1000)
    return runs, spans


def _celery_runs(db: Any) -> tuple[dict[int, int], list[float]]:
    runs: dict[int, int] = {}
    spans = []
    for doc in db.done.find():
        n = doc.get("request")
        runs[n] = runs.get(n, 0) + 1
        spans.append((doc["finished"] - doc["enqueued"]) * 1000)
    return runs, spans


def _wait_runs(system: str, db: Any, expected: int, timeout: float) -> Any:
    read = _qworker_runs if system == "qworker" else _celery_runs
    deadline = time.monotonic() + timeout
    while True:
        runs, spans = read(db)
        if len(spans) >= expected or time.monotonic() > deadline:
            return runs, spans
        time.sleep(1)


def _p(values: list[float], q: float) -> float | None:
    return round(percentile(values, q), 1) if values else None


def app_load(system: Any, url: str, timeout: float) -> dict[str, Any]:
    """The figures of the module's docstring for one system (``compare.System``)."""
    db_url, db = fresh(url, f"cmp_app_{system.name}")
    port = free_port()
    with system.fleet(db_url, WORKERS):
        app = _serve(system.name, db_url, port)
        try:
            ms, answered, seconds = asyncio.run(_load(port, CLIENTS, REQUESTS))
        finally:
            app.terminate()
            app.wait(30)
        runs, spans = _wait_runs(system.name, db, len(answered), timeout)
    db.client.drop_database(db.name)
    db.client.close()
    return {
        "system": system.name,
        "variant": system.variant,
        "http_clients": CLIENTS,
        "requests": REQUESTS,
        "workers": WORKERS,
        "answered_200": len(answered),
        "requests_per_second": round(len(ms) / seconds, 1),
        "request_ms": {"p50": round(statistics.median(ms), 1), "p99": _p(ms, 0.99)},
        "enqueue_to_finish_ms": {"p50": _p(spans, 0.5), "p99": _p(spans, 0.99)},
        "ran": len(runs),
        "ran_once": sum(1 for n in answered if runs.get(n) == 1),
        "ran_more_than_once": sum(1 for count in runs.values() if count > 1),
        "never_ran": sum(1 for n in answered if n not in runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the benchmark's FastAPI app.")
    parser.add_argument("--system", choices=["qworker", "celery"], required=True)
    parser.add_argument("--mongo", required=True, help="the database URL")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    import uvicorn

    make = qworker_app if args.system == "qworker" else celery_app
    uvicorn.run(make(args.mongo), port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
