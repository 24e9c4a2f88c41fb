"""Celery's side of bench/compare.py: a no-op task on kombu's MongoDB transport.

    BENCH_BROKER=mongodb://host:port/db celery -A celery_noop worker --pool solo -c 1 \\
        --without-gossip --without-mingle --without-heartbeat -l WARNING

There is no result backend (``task_ignore_result``): each run writes one
completion document into ``done`` instead (its id, the enqueue time it was
given, the HTTP request's number when bench/app.py enqueued it, and its start
and finish times) — one write per job, as a result
backend's would be, and as qworker's and Agenda's own outcome writes are.
``BENCH_POLL`` sets the transport's ``polling_interval`` (kombu's default: 1 s).
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery
from celery.signals import worker_ready
from pymongo import MongoClient

BROKER = os.environ.get("BENCH_BROKER", "mongodb://127.0.0.1:27017/bench_celery")

app = Celery("celery_noop", broker=BROKER)
app.conf.update(
    task_ignore_result=True,
    # The remote-control mailbox is a fanout queue: on this transport a tailed
    # capped collection, which every worker would poll. Tasks do not need it.
    worker_enable_remote_control=False,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)
if "BENCH_POLL" in os.environ:
    app.conf.broker_transport_options = {"polling_interval": float(os.environ["BENCH_POLL"])}

_done: Any = None


def done_collection() -> Any:
    """The ``done`` collection of the broker's database (one client per process)."""
    global _done
    if _done is None:
        _done = MongoClient(BROKER).get_default_database()["done"]
    return _done


@app.task(name="noop", bind=True)
def noop(self: Any, enqueued: float, request: int | None = None) -> None:
    """``request``: the number of the HTTP request that enqueued it (bench/app.py)."""
    started = time.time()
    done = {"_id": self.request.id, "enqueued": enqueued, "started": started}
    done_collection().insert_one({**done, "request": request, "finished": time.time()})


@worker_ready.connect
def _ready(**_: Any) -> None:
    done_collection()  # connected before the first job, like the other workers
    os.write(2, b"bench-ready\n")  # fd 2 directly: Celery redirects sys.stderr to its log
