"""A ``qworker`` worker whose MongoDB commands are counted: every command it sends is
classified (candidate read, claim, read-back, renewal, outcome write, wake-up, ...)
and its count and client-side time (a loopback round trip: the server's time plus
the socket's) are written as JSON to ``$QWORKER_BENCH_COMMANDS`` (``{pid}`` in it: the process id)
when it exits.

Run as ``python bench/counted.py <qworker arguments>``; used by ``bench/breakdown.py``.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import threading
from collections import defaultdict
from typing import Any

from pymongo import monitoring

Doc = dict[str, Any]


def _first_update(command: Doc) -> Doc:
    updates = command.get("updates") or [{}]
    return dict(updates[0].get("q") or {})


def _is_claim(query: Doc) -> bool:
    return isinstance(query.get("_id"), dict) and query.get("state") == "queued"


def _is_renewal(query: Doc) -> bool:
    return isinstance(query.get("lockToken"), dict) and query.get("state") == "running"


# What a find on jobs is, by its filter: read-back by token, or the candidates' read.
def _find(filter_: Doc) -> str:
    if isinstance(filter_.get("lockToken"), dict):
        return "cancel check"
    if "lockToken" in filter_:
        return "claim read-back"
    if "state" in filter_:
        return "candidate read"
    return "find (other)"


def _update(collection: str, command: Doc) -> str:
    if collection != "jobs":
        return f"update {collection}"
    query = _first_update(command)
    if _is_claim(query):
        return "claim"
    if _is_renewal(query):
        return "lease renewal"
    return "outcome write"


def classify(name: str, command: Doc) -> str:
    """The operation a command is, as docs/benchmarks.md names them."""
    collection = command.get(name)
    if name == "find":
        return (
            _find(dict(command.get("filter") or {}))
            if collection == "jobs"
            else f"find {collection}"
        )
    if name == "update":
        return _update(str(collection), command)
    if name == "aggregate":
        stages = command.get("pipeline") or [{}]
        return "change stream open" if "$changeStream" in stages[0] else f"aggregate {collection}"
    if name == "getMore":  # a change stream's or a tail's: it waits on the server for news
        return f"await {command.get('collection')}"
    if name == "insert":
        return f"insert {collection}"
    return name


class Counter(monitoring.CommandListener):
    """Counts and times commands by operation (thread-safe: the loop and its threads)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: dict[tuple[Any, int], str] = {}
        self.calls: defaultdict[str, int] = defaultdict(int)
        self.micros: defaultdict[str, int] = defaultdict(int)

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        kind = classify(event.command_name, dict(event.command))
        with self.lock:
            self.pending[(event.connection_id, event.request_id)] = kind

    def _ended(self, event: Any) -> None:
        with self.lock:
            kind = self.pending.pop((event.connection_id, event.request_id), None)
            if kind is not None:
                self.calls[kind] += 1
                self.micros[kind] += event.duration_micros

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        self._ended(event)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self._ended(event)

    def dump(self, path: str) -> None:
        with self.lock:
            figures = {k: {"calls": self.calls[k], "ms": self.micros[k] / 1000} for k in self.calls}
        with open(path, "w") as out:
            json.dump(figures, out)


def main() -> None:
    counter = Counter()
    monitoring.register(counter)  # before any client exists: every client reports
    path = os.environ.get("QWORKER_BENCH_COMMANDS", "").replace("{pid}", str(os.getpid()))
    if path:
        atexit.register(counter.dump, path)
    from qworker.cli.worker import main as worker_main

    sys.argv = ["qworker", *sys.argv[1:]]
    worker_main()


if __name__ == "__main__":
    main()
