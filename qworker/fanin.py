"""Fan-in: what a finished workflow node writes to the nodes waiting for it, and what a
node reads of its dependencies when it starts.

A waiting node holds ``flow.pending`` (its dependencies not finished) and
``flow.bits`` (one bit per dependency, 64 to a word). A dependency's end
clears its bit and counts down in one update that matches only while the bit
is set, so an outcome written twice (a retried batch) counts once, at O(1)
writes whatever the group's size, and nothing scans the group. The update that
follows queues the node once the count is zero. A failure that the edge does
not ignore queues the node at once, marked ``doomedBy``: the worker that
claims it ends it cancelled, naming the failed node, and its own end moves the
nodes after it, so a failure goes down the graph one claim at a time, through
the same crash-proof path as any outcome.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bson.int64 import Int64
from pymongo import UpdateOne

from qworker.model import JobState

Doc = dict[str, Any]

WORD = 64
_ALL = (1 << WORD) - 1
# What a starting node reads of each job it depends on.
INPUT_FIELDS = {"result": 1, "state": 1, "failReason": 1, "flow.node": 1}


@dataclass(frozen=True)
class UpstreamFailure:
    """What ``job.upstream`` holds for a dependency that did not succeed."""

    state: str
    reason: str | None


def bit_words(count: int) -> list[Int64]:
    """``count`` set bits, as the 64-bit words of ``flow.bits``."""
    return set_bits(range(count), count)


def set_bits(bits: Iterable[int], width: int) -> list[Int64]:
    """The words of ``width`` bits of which ``bits`` are set."""
    words = [0] * -(-width // WORD)
    for bit in bits:
        words[bit // WORD] |= 1 << (bit % WORD)
    return [Int64(_signed(word)) for word in words]


def _signed(value: int) -> int:
    return value - (1 << WORD) if value >= 1 << (WORD - 1) else value


def released(doc: Doc, state: JobState, reason: str | None, now: datetime) -> list[UpdateOne]:
    """The writes that ``doc`` ending in ``state`` sets off in the nodes waiting for it."""
    flow = doc.get("flow") or {}
    writes: list[UpdateOne] = []
    for edge in flow.get("next") or []:
        word, bit = divmod(int(edge["bit"]), WORD)
        path = f"flow.bits.{word}"
        pending = {"_id": edge["id"], "state": JobState.WAITING.value, path: {"$bitsAllSet": [bit]}}
        count: Doc = {
            "$bit": {path: {"and": Int64(_signed(_ALL ^ (1 << bit)))}},
            "$inc": {"flow.pending": -1},
        }
        if state is JobState.SUCCEEDED or edge.get("ignoreFailure"):
            last = {"_id": edge["id"], "state": JobState.WAITING.value, "flow.pending": 0}
            queued = {"$set": {"state": JobState.QUEUED.value, "nextRunAt": now}}
            writes += [UpdateOne(pending, count), UpdateOne(last, queued)]
        else:
            doomed = _doom(doc, state, reason)
            fields = {"state": JobState.QUEUED.value, "nextRunAt": now, "flow.doomedBy": doomed}
            writes.append(UpdateOne(pending, {**count, "$set": fields}))
    return writes


def _doom(doc: Doc, state: JobState, reason: str | None) -> Doc:
    """What dooms the nodes after ``doc``: its failure, or the failure that doomed it
    (the node that failed is named, and the last node it came through)."""
    flow = doc.get("flow") or {}
    before = flow.get("doomedBy")
    if isinstance(before, dict):
        return {**before, "through": flow.get("node")}
    return {"node": flow.get("node"), "job": doc["_id"], "state": state.value, "reason": reason}


def doomed_reason(doc: Doc) -> str | None:
    """Why a claimed node must not run (a dependency failed), or None."""
    doomed = (doc.get("flow") or {}).get("doomedBy")
    if not isinstance(doomed, dict):
        return None
    why = f": {doomed['reason']}" if doomed.get("reason") else ""
    through = f" (through node {doomed['through']!r})" if doomed.get("through") else ""
    failed = f"node {doomed.get('node')!r} (job {doomed.get('job')}) {doomed.get('state')}"
    return f"not run: {failed}{why}{through}"


def reads(doc: Doc) -> Doc | None:
    """The filter of the jobs a starting node reads (its dependencies), or None."""
    flow = doc.get("flow") or {}
    if flow.get("input") == "upstream":
        return {"_id": {"$in": [dep["id"] for dep in flow.get("deps") or []]}}
    if flow.get("input") in ("results", "summary"):
        over = flow["over"]
        return {"_id": {"$gte": over["from"], "$lte": over["to"]}}
    return None


def inputs(doc: Doc, found: list[Doc]) -> tuple[Any, dict[str, Any]]:
    """The node's data and its ``upstream``, from the jobs ``reads`` found."""
    flow = doc["flow"]
    if flow["input"] == "upstream":
        by_id = {job["_id"]: job for job in found}
        upstream = {dep["node"]: _value(by_id.get(dep["id"])) for dep in flow["deps"]}
        return doc.get("data"), upstream
    children = sorted(found, key=lambda job: job["_id"])  # the order they were given in
    results = [job.get("result") if _succeeded(job) else None for job in children]
    if flow["input"] == "results":
        return results, {}
    failures = [
        {
            "index": n,
            "job": str(job["_id"]),
            "state": job.get("state"),
            "reason": job.get("failReason"),
        }
        for n, job in enumerate(children)
        if not _succeeded(job)
    ]
    summary = {
        "total": flow["over"]["count"],
        "succeeded": len(children) - len(failures),
        "failed": len(failures),
        "results": results,
        "failures": failures,
    }
    return summary, {}


def _succeeded(job: Doc) -> bool:
    return job.get("state") == JobState.SUCCEEDED.value


def _value(job: Doc | None) -> Any:
    if job is None:
        return UpstreamFailure("deleted", "the job is gone")
    if _succeeded(job):
        return job.get("result")
    return UpstreamFailure(str(job.get("state")), job.get("failReason"))
