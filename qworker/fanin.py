"""Fan-in: what a finished workflow node writes to the nodes waiting for it, and what a
node reads of its dependencies when it starts.

A waiting node holds ``flow.pending`` (its dependencies not finished) and
``flow.bits`` (one bit per dependency, in words of ``WORD`` bits: ``w0``,
``w1``, ...). A dependency's end clears its bit and counts down in one update
(``count_down``, an update pipeline) that counts only the bits still set, so an
outcome written twice (a retried batch) counts once, and that queues the node
when the count reaches zero. A worker counts down all the ends of one batch of
writes for one node in one update, after their outcomes in the same ordered
write: a chord's callback costs each child a share of one write, whatever the
group's size, and nothing scans the group. A failure that the edge does not
ignore queues the node at once, marked ``doomedBy``: the worker that claims it
ends it cancelled, naming the failed node, and its own end moves the nodes
after it, so a failure goes down the graph one claim at a time, through the
same crash-proof path as any outcome. A chain's step (``flow.rest``) needs no
such walk: the steps after it are the range of ids after it, and its failure
cancels them all in one write.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bson import ObjectId
from bson.int64 import Int64
from pymongo import UpdateMany, UpdateOne

from qworker.model import ACTIVE_STATES, JobState

Doc = dict[str, Any]

# Bits per word: below 2**53, so that the pipeline's arithmetic (doubles) is exact.
WORD = 52
_FULL = (1 << WORD) - 1
_ACTIVE = {s.value for s in ACTIVE_STATES}
# What a starting node reads of each job it depends on.
INPUT_FIELDS = {"result": 1, "state": 1, "failReason": 1, "flow.node": 1}


@dataclass(frozen=True)
class UpstreamFailure:
    """What ``job.upstream`` holds for a dependency that did not succeed."""

    state: str
    reason: str | None


@dataclass(frozen=True)
class Edge:
    """A dependency of a node: the job it waits for, its bit, and whether its failure
    is ignored."""

    source: ObjectId
    bit: int
    ignore: bool


def incoming(nodes: Iterable[Doc]) -> dict[ObjectId, list[Edge]]:
    """Each node's dependencies, from the edges its dependencies point at it with."""
    edges: dict[ObjectId, list[Edge]] = {}
    for node in nodes:
        for edge in flow_of(node).get("next") or []:
            ignore = bool(edge.get("ignoreFailure"))
            edges.setdefault(edge["id"], []).append(Edge(node["_id"], int(edge["bit"]), ignore))
    return edges


def unsettled(nodes: list[Doc], now: datetime) -> list[UpdateOne | UpdateMany]:
    """The ends that did not reach the nodes waiting for them, written again: a node
    that ended outside a run (a cancel, a deletion, a deadline) whose count-down a
    crash kept from following. Each write counts only what it had not counted."""
    by_id = {node["_id"]: node for node in nodes}
    stale: set[ObjectId] = set()
    for node_id, edges in incoming(nodes).items():
        node = by_id.get(node_id)
        if node is None or node["state"] != JobState.WAITING.value:
            continue
        words = flow_of(node).get("bits") or {}
        for edge in edges:
            source = by_id.get(edge.source)
            ended = source is not None and source["state"] not in _ACTIVE
            if ended and _is_set(words, edge.bit):
                stale.add(edge.source)
    writes: list[UpdateOne | UpdateMany] = []
    for source_id in sorted(stale):
        source = by_id[source_id]
        state = JobState(source["state"])
        writes += released(source, state, source.get("failReason"), now, None)
    return writes


def _is_set(words: Doc, bit: int) -> bool:
    word, offset = divmod(bit, WORD)
    return bool(int(words.get(f"w{word}", 0)) >> offset & 1)


def bit_words(count: int) -> Doc:
    """``count`` set bits, as the words of ``flow.bits``."""
    return set_bits(range(count), count)


def set_bits(bits: Iterable[int], width: int) -> Doc:
    """The words of ``width`` bits of which ``bits`` are set."""
    words = [0] * -(-width // WORD)
    for bit in bits:
        words[bit // WORD] |= 1 << (bit % WORD)
    return {f"w{n}": word for n, word in enumerate(words)}


def flow_of(doc: Doc) -> Doc:
    """A job's ``flow``, or nothing (a malformed one, failed as such, sets nothing off)."""
    flow = doc.get("flow")
    return flow if isinstance(flow, dict) else {}


def ends(
    doc: Doc, state: JobState, reason: str | None, now: datetime, keep_until: datetime | None
) -> tuple[list[tuple[ObjectId, int]], list[UpdateOne | UpdateMany]]:
    """What ``doc`` ending ``state`` sets off: the (node, bit) edges to count down
    (``count_down``), and the writes that doom the nodes its failure cancels (a
    chain's later steps: cancelled, kept until ``keep_until``)."""
    flow = flow_of(doc)
    counted: list[tuple[ObjectId, int]] = []
    dooms: list[UpdateOne | UpdateMany] = []
    if state is not JobState.SUCCEEDED and isinstance(flow.get("rest"), dict):
        return counted, [_stop_rest(doc, flow["rest"], state, reason, now, keep_until)]
    for edge in flow.get("next") or []:
        bit = int(edge["bit"])
        if state is JobState.SUCCEEDED or edge.get("ignoreFailure"):
            counted.append((edge["id"], bit))
            continue
        word, offset = divmod(bit, WORD)
        path = f"flow.bits.w{word}"
        pending = {
            "_id": edge["id"],
            "state": JobState.WAITING.value,
            path: {"$bitsAllSet": [offset]},
        }
        fields = {
            "state": JobState.QUEUED.value,
            "nextRunAt": now,
            "flow.doomedBy": _doom(doc, state, reason),
        }
        clear = {
            "$bit": {path: {"and": Int64(_FULL ^ (1 << offset))}},
            "$inc": {"flow.pending": -1},
        }
        dooms.append(UpdateOne(pending, {**clear, "$set": fields}))
    return counted, dooms


def _stop_rest(
    doc: Doc, rest: Doc, state: JobState, reason: str | None, now: datetime, keep: datetime | None
) -> UpdateMany:
    """Cancel the steps of a chain still waiting after ``doc``, saying where it stopped."""
    where = (
        f"chain stopped at step {rest['step']} of {rest['size']} "
        f"(task {doc.get('name')!r}, job {doc['_id']}): {reason or state.value}"
    )
    fields: Doc = {
        "state": JobState.CANCELLED.value,
        "failReason": where,
        "lastFinishedAt": now,
        "flow.doomedBy": _doom(doc, state, reason),
    }
    if keep is not None:
        fields["flow.keepUntil"] = keep
    after = {"$gt": doc["_id"], "$lte": rest["to"]}
    return UpdateMany({"_id": after, "state": JobState.WAITING.value}, {"$set": fields})


def released(
    doc: Doc, state: JobState, reason: str | None, now: datetime, keep_until: datetime | None
) -> list[UpdateOne | UpdateMany]:
    """``ends`` as writes, one count-down per node: for a job that ends on its own."""
    counted, dooms = ends(doc, state, reason, now, keep_until)
    by_node: dict[ObjectId, list[int]] = {}
    for node, bit in counted:
        by_node.setdefault(node, []).append(bit)
    return [*(count_down(node, bits, now) for node, bits in by_node.items()), *dooms]


def count_down(node: ObjectId, bits: Iterable[int], now: datetime) -> UpdateOne:
    """Clear these bits of a waiting node and count down by those that were still set;
    queue it if none is left. Applied twice, the second time changes nothing."""
    clears: dict[int, list[int]] = {}
    for bit in set(bits):
        word, offset = divmod(bit, WORD)
        clears.setdefault(word, []).append(offset)
    words: Doc = {}
    counted: list[Doc] = []
    for word, offsets in sorted(clears.items()):
        path = f"$flow.bits.w{word}"
        still = [{"$cond": [_bit_set(path, offset), 1 << offset, 0]} for offset in offsets]
        words[f"flow.bits.w{word}"] = {"$subtract": [path, {"$add": still}]}
        counted += [{"$cond": [_bit_set(path, offset), 1, 0]} for offset in offsets]
    last = {"$eq": ["$flow.pending", 0]}
    return UpdateOne(
        {"_id": node, "state": JobState.WAITING.value},
        [
            {
                "$set": {
                    **words,
                    "flow.pending": {"$subtract": ["$flow.pending", {"$add": counted}]},
                }
            },
            {
                "$set": {
                    "state": {"$cond": [last, JobState.QUEUED.value, "$state"]},
                    "nextRunAt": {"$cond": [last, now, "$nextRunAt"]},
                }
            },
        ],
    )


def _bit_set(path: str, offset: int) -> Doc:
    """Whether bit ``offset`` of the word at ``path`` is set, in the pipeline's arithmetic
    (``$bitAnd`` is MongoDB 6.3's; this is 4.2's)."""
    return {"$eq": [{"$mod": [{"$floor": {"$divide": [path, 1 << offset]}}, 2]}, 1]}


def _doom(doc: Doc, state: JobState, reason: str | None) -> Doc:
    """What dooms the nodes after ``doc``: its failure, or the failure that doomed it
    (the node that failed is named, and the last node it came through)."""
    flow = flow_of(doc)
    before = flow.get("doomedBy")
    if isinstance(before, dict):
        return {**before, "through": flow.get("node")}
    return {"node": flow.get("node"), "job": doc["_id"], "state": state.value, "reason": reason}


def doomed_reason(doc: Doc) -> str | None:
    """Why a claimed node must not run (a dependency failed), or None."""
    doomed = flow_of(doc).get("doomedBy")
    if not isinstance(doomed, dict):
        return None
    why = f": {doomed['reason']}" if doomed.get("reason") else ""
    through = f" (through node {doomed['through']!r})" if doomed.get("through") else ""
    failed = f"node {doomed.get('node')!r} (job {doomed.get('job')}) {doomed.get('state')}"
    return f"not run: {failed}{why}{through}"


def reads(doc: Doc) -> Doc | None:
    """The filter of the jobs a starting node reads (its dependencies), or None."""
    flow = flow_of(doc)
    if flow.get("input") in ("upstream", "previous"):
        return {"_id": {"$in": [dep["id"] for dep in flow.get("deps") or []]}}
    if flow.get("input") in ("results", "summary"):
        over = flow["over"]
        return {"_id": {"$gte": over["from"], "$lte": over["to"]}}
    return None


def inputs(doc: Doc, found: list[Doc]) -> tuple[Any, dict[str, Any]]:
    """The node's data and its ``upstream``, from the jobs ``reads`` found."""
    flow = doc["flow"]
    if flow["input"] in ("upstream", "previous"):
        by_id = {job["_id"]: job for job in found}
        upstream = {dep["node"]: _value(by_id.get(dep["id"])) for dep in flow["deps"]}
        if flow["input"] == "previous":  # a chain's step given as a bare task
            return by_id.get(flow["deps"][0]["id"], {}).get("result"), upstream
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
