"""Fleet-wide limits of a task: how many of its jobs run at once, and how many start
per window, across every worker, per partition of its jobs if asked.

A task's metadata says ``globalConcurrency: 5``, ``rateLimit: "100/minute"``
(or ``{limit, period}``) and ``partitionBy: "data.customer"``. Each partition
(each value of that field; the whole task without one) has one document in
``limits``: the slots held (``running``: job, claim token, time) and the
recent starts (``starts``). A worker takes slots before it claims the jobs,
with one conditional update of that document (``acquire``), so a limit holds
whatever number of workers race for it; a slot is given back when its job
ends (``release``), and one whose job is no longer running under its claim
(its worker died, or died between taking the slot and claiming) is taken
back by the next worker refused a slot (``stale_entries``), once it is older
than a lease.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import ObjectId, json_util
from pymongo import ReturnDocument, UpdateOne

from qworker.model import JobState
from qworker.operations import Call, Operation
from qworker.when import parse_duration

Doc = dict[str, Any]

MAX_GLOBAL = 10_000  # slots: each held one is an entry of the partition's document
MAX_RATE = 10_000  # starts per window: each one is an entry of the partition's document
PERIODS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}
MAX_PERIOD = 86400.0
RATE_EXPECTED = "'N/second', 'N/minute', 'N/hour', 'N/day' or {limit, period}"
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(second|minute|hour|day)s?\s*$")
_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")
MAX_PARTITION_CHARS = 200
SEPARATOR = "\x1f"  # between a task and a partition in a document's _id


@dataclass(frozen=True)
class Rate:
    limit: int
    period: float  # seconds

    def describe(self) -> str:
        for name, seconds in PERIODS.items():
            if self.period == seconds:
                return f"{self.limit}/{name}"
        return f"{self.limit} per {self.period:g} s"


@dataclass(frozen=True)
class Limits:
    """A task's fleet-wide limits; ``None`` fields do not limit."""

    concurrency: int | None = None
    rate: Rate | None = None
    partition_by: str | None = None  # a dotted path into the job: "data.customer"

    def __bool__(self) -> bool:
        return self.concurrency is not None or self.rate is not None

    def stored(self) -> Doc:
        """What a partition's document says of the limits its slots were taken under."""
        rate = None if self.rate is None else {"limit": self.rate.limit, "period": self.rate.period}
        return {"concurrency": self.concurrency, "rate": rate, "partitionBy": self.partition_by}


def parse_rate(value: Any) -> Rate:
    """``"100/minute"`` (also ``/second``, ``/hour``, ``/day``) or ``{limit, period}``."""
    if isinstance(value, str):
        match = _RATE.match(value.lower())
        if match is None:
            raise ValueError("not a rate such as '100/minute'")
        limit, period = int(match[1]), PERIODS[match[2]]
    elif isinstance(value, dict) and set(value) == {"limit", "period"}:
        limit = value["limit"]
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise ValueError("a rate's limit must be a whole number")
        period = parse_duration(value["period"])
    else:
        raise ValueError(f"a rate is {RATE_EXPECTED}")
    if not 1 <= limit <= MAX_RATE:
        raise ValueError(f"a rate's limit must be from 1 to {MAX_RATE}")
    if not 0 < period <= MAX_PERIOD:
        raise ValueError("a rate's period must be more than 0 and at most a day")
    return Rate(limit, period)


def check_path(value: Any) -> str:
    """A dotted path into a job document, such as ``data.customer``."""
    if not isinstance(value, str) or not _PATH.fullmatch(value):
        raise ValueError("not a dotted field path such as 'data.customer'")
    return value


def fields(paths: Iterable[str], base: Iterable[str] = ()) -> list[str]:
    """The partition ``paths`` a projection must add to ``base``: none inside another
    (MongoDB refuses a projection of both ``data`` and ``data.x``)."""
    kept = set(base)
    for path in sorted(set(paths), key=len):
        if not any(path == k or path.startswith(f"{k}.") for k in kept):
            kept.add(path)
    return sorted(kept - set(base))


def partition_of(doc: Doc, path: str | None) -> str:
    """The partition of a job: the value at ``path`` as text ("" where it has none)."""
    if path is None:
        return ""
    value: Any = doc
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        return ""
    text = value if isinstance(value, str) else json_util.dumps(value, sort_keys=True)
    return text[:MAX_PARTITION_CHARS]


def slot_id(task: str, partition: str) -> str:
    return f"{task}{SEPARATOR}{partition}" if partition else task


def _recent(since: datetime) -> Doc:
    return {"$filter": {"input": "$starts", "cond": {"$gt": ["$$this.t", since]}}}


def acquire_pipeline(
    task: str, partition: str, limits: Limits, entries: list[Doc], now: datetime
) -> list[Doc]:
    """The update that grants as many of ``entries`` as the limits leave room for.

    Starts are kept for two periods, not one: a worker whose clock reads a little
    behind another's must still count the starts the other made.
    """
    rooms: list[Any] = [len(entries)]
    keep = now
    if limits.concurrency is not None:
        rooms.append({"$subtract": [limits.concurrency, {"$size": "$running"}]})
    if limits.rate is not None:
        period = timedelta(seconds=limits.rate.period)
        keep = now - 2 * period
        rooms.append({"$subtract": [limits.rate.limit, {"$size": _recent(now - period)}]})
    return [
        {
            "$set": {
                # literals: a partition is the job's data, and "$..." would be a path
                "task": {"$literal": task},
                "partition": {"$literal": partition},
                "limits": {"$literal": limits.stored()},
                "running": {"$ifNull": ["$running", []]},
                "starts": {
                    "$filter": {
                        "input": {"$ifNull": ["$starts", []]},
                        "cond": {"$gt": ["$$this.t", keep]},
                    }
                },
            }
        },
        {"$set": {"_grant": {"$slice": [{"$literal": entries}, {"$max": [0, {"$min": rooms}]}]}}},
        {
            "$set": {
                "running": {"$concatArrays": ["$running", "$_grant" if limits.concurrency else []]},
                "starts": {"$concatArrays": ["$starts", "$_grant" if limits.rate else []]},
                "usedAt": now,
            }
        },
        {"$unset": ["_grant"]},
    ]


def acquire(
    task: str,
    partition: str,
    limits: Limits,
    job_ids: Sequence[ObjectId],
    token: str,
    now: datetime,
) -> Operation[Doc]:
    """Take a slot for as many of ``job_ids`` as the limits allow; the partition's
    document after (the entries with ``token`` are the slots granted)."""
    entries = [{"j": job_id, "w": token, "t": now} for job_id in job_ids]
    pipeline = acquire_pipeline(task, partition, limits, entries, now)
    doc = yield Call(
        "limits",
        "find_one_and_update",
        ({"_id": slot_id(task, partition)}, pipeline),
        {"upsert": True, "return_document": ReturnDocument.AFTER},
    )
    return doc  # type: ignore[no-any-return]


def granted(doc: Doc, token: str) -> set[ObjectId]:
    return {e["j"] for e in doc.get("running", []) + doc.get("starts", []) if e.get("w") == token}


def next_start(doc: Doc, rate: Rate | None, now: datetime) -> datetime | None:
    """When the window next lets a job start, if the rate is what refused it."""
    if rate is None:
        return None
    since = now - timedelta(seconds=rate.period)
    recent: list[datetime] = sorted(e["t"] for e in doc.get("starts", []) if e["t"] > since)
    if len(recent) < rate.limit:
        return None
    return recent[len(recent) - rate.limit] + timedelta(seconds=rate.period)


def release(slots: dict[str, list[tuple[ObjectId, str]]], starts_too: bool) -> Operation[None]:
    """Give back the slots of these (job, claim token) pairs, by partition document;
    with ``starts_too`` (the jobs never started) their starts as well."""
    ops = []
    for doc_id, pairs in slots.items():
        entry = {"j": {"$in": [j for j, _ in pairs]}, "w": {"$in": sorted({w for _, w in pairs})}}
        pull = {"running": entry, **({"starts": entry} if starts_too else {})}
        ops.append(UpdateOne({"_id": doc_id}, {"$pull": pull}))
    if ops:
        yield Call("limits", "bulk_write", (ops,), {"ordered": False})


def stale_entries(doc: Doc, older_than: datetime) -> Operation[list[tuple[ObjectId, str]]]:
    """The slots, older than ``older_than``, whose job no longer runs under their claim."""
    old = [e for e in doc.get("running", []) if e["t"] < older_than]
    if not old:
        return []
    live: list[Doc] = yield Call(
        "jobs",
        "find",
        (
            {
                "_id": {"$in": [e["j"] for e in old]},
                "state": JobState.RUNNING.value,
                "lockToken": {"$in": sorted({e["w"] for e in old})},
            },
            {"lockToken": 1},
        ),
    )
    held = {(d["_id"], d["lockToken"]) for d in live}
    return [(e["j"], e["w"]) for e in old if (e["j"], e["w"]) not in held]


def take_back(doc_id: str, stale: Iterable[tuple[ObjectId, str]]) -> Operation[None]:
    """Free stale slots one (job, token) pair at a time: a pair is exact, where two
    ``$in`` lists could match a live slot that shares a token with a stale one."""
    ops = [UpdateOne({"_id": doc_id}, {"$pull": {"running": {"j": j, "w": w}}}) for j, w in stale]
    if ops:
        yield Call("limits", "bulk_write", (ops,), {"ordered": False})


def declared(metadata: Doc | None) -> Limits:
    """The limits in a task's announced metadata (what does not parse limits nothing)."""
    meta = metadata or {}
    try:
        rate = parse_rate(meta["rateLimit"]) if "rateLimit" in meta else None
    except ValueError:
        rate = None
    concurrency = meta.get("globalConcurrency")
    path = meta.get("partitionBy")
    return Limits(
        concurrency if isinstance(concurrency, int) else None,
        rate,
        path if isinstance(path, str) else None,
    )


def summary(limits: Limits, partitions: list[Doc]) -> Doc | None:
    """A task's limits and their use, summed over its partitions (``usage`` rows), for
    the operator's views; None for a task without limits."""
    if not limits and limits.partition_by is None and not partitions:
        return None
    if not limits and partitions:  # only standalone workers know it: what they stored
        newest = max(partitions, key=lambda p: p.get("usedAt") or datetime.min.replace(tzinfo=UTC))
        stored = newest.get("stored") or {}
        rate = stored.get("rate")
        limits = Limits(
            stored.get("concurrency"),
            Rate(rate["limit"], rate["period"]) if rate else None,
            stored.get("partitionBy"),
        )
    recent = [p["recentStarts"] for p in partitions if p.get("recentStarts") is not None]
    return {
        "concurrency": limits.concurrency,
        "rate": None if limits.rate is None else limits.rate.describe(),
        "rateLimit": None if limits.rate is None else limits.rate.limit,
        "ratePeriod": None if limits.rate is None else limits.rate.period,
        "partitionBy": limits.partition_by,
        "running": sum(p["running"] for p in partitions),
        "recentStarts": sum(recent) if limits.rate is not None else None,
        "partitions": len(partitions),
    }


def by_task(now: datetime) -> Operation[dict[str, Doc]]:
    """Each limited task's ``summary``: its announced limits (or, for a task only
    standalone workers run, those its slots were last taken under) and their use."""
    partitions: dict[str, list[Doc]] = {}
    for row in (yield from usage(now)):
        partitions.setdefault(str(row["task"]), []).append(row)
    announced: list[Doc] = yield Call("tasks", "find", ({}, {"metadata": 1}))
    metadata = {str(doc["_id"]): doc.get("metadata") for doc in announced}
    found = {
        task: summary(declared(metadata.get(task)), partitions.get(task, []))
        for task in metadata.keys() | partitions.keys()
    }
    return {task: view for task, view in found.items() if view is not None}


def usage(now: datetime, task: str | None = None) -> Operation[list[Doc]]:
    """Each partition's limits and use: slots in use, starts in the rate's last window."""
    query: Doc = {} if task is None else {"task": task}
    docs: list[Doc] = yield Call("limits", "find", (query,))
    return [_usage(doc, now) for doc in docs]


def _usage(doc: Doc, now: datetime) -> Doc:
    limits = doc.get("limits") or {}
    rate = limits.get("rate")
    recent = None
    if rate:
        since = now - timedelta(seconds=rate["period"])
        recent = sum(1 for e in doc.get("starts", []) if e["t"] > since)
    return {
        "task": doc.get("task"),
        "partition": doc.get("partition", ""),
        "stored": limits,
        "running": len(doc.get("running", [])),
        "recentStarts": recent,
        "usedAt": doc.get("usedAt"),
    }
