"""Running workflow nodes again: which nodes, and what each of them waits for.

A retry of one node (``client.retry``) runs it again with the nodes its
failure cancelled (``flow.doomedBy``, reached through ``flow.next``); a
workflow's retry runs every node that did not succeed. Each node run again
waits for those of its dependencies that run again or are still active, and is
queued when none is left. A node that another failure still dooms stays as it
is. A dependency that ends between the read and the write is settled after
it: its end is written again, which changes only what it had not reached
(``fanin``'s writes count each dependency once).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from bson import ObjectId
from pymongo import UpdateOne

from qworker import fanin, lifecycle
from qworker.fanin import Edge, incoming
from qworker.model import ACTIVE_STATES, JobState
from qworker.operations import Call, Operation

Doc = dict[str, Any]

# What a node is read with to plan its run again.
FIELDS = {"state": 1, "name": 1, "priority": 1, "nextRunAt": 1, "flow": 1, "failReason": 1}
ACTIVE = {s.value for s in ACTIVE_STATES}
_DOOMABLE = (JobState.CANCELLED.value, JobState.QUEUED.value)


def plan(nodes: list[Doc], asked: set[ObjectId]) -> dict[ObjectId, list[int]]:
    """The nodes to run again (``asked``, and the doomed nodes after them), each with
    the bits of the dependencies it is to wait for (none: it is queued)."""
    by_id = {node["_id"]: node for node in nodes}
    again = set(asked) | _doomed_after(by_id, asked)
    into = incoming(nodes)
    waits: dict[ObjectId, list[int]] = {}
    for node_id in sorted(again):  # dependencies first: their ids are lower
        bits = _waits_for(into.get(node_id, []), by_id, again, node_id in asked)
        if bits is None:
            again.discard(node_id)  # another failure still dooms it
        else:
            waits[node_id] = bits
    return waits


def _waits_for(
    edges: list[Edge], by_id: dict[ObjectId, Doc], again: set[ObjectId], asked: bool
) -> list[int] | None:
    """The bits of the dependencies a node run again waits for; None if a failure that
    is not run again dooms it (a node asked for runs all the same)."""
    bits = []
    for edge in edges:
        source = by_id.get(edge.source)
        if edge.source in again or (source is not None and source["state"] in ACTIVE):
            bits.append(edge.bit)
        elif not (asked or edge.ignore or _succeeded(source)):
            return None
    return bits


def _doomed_after(by_id: dict[ObjectId, Doc], asked: set[ObjectId]) -> set[ObjectId]:
    """The nodes that a failure cancelled, reached from ``asked`` through ``flow.next``."""
    found: set[ObjectId] = set()
    frontier = list(asked)
    while frontier:
        for edge in fanin.flow_of(by_id[frontier.pop()]).get("next") or []:
            target = by_id.get(edge["id"])
            if target is not None and target["_id"] not in found | asked and _doomed(target):
                found.add(target["_id"])
                frontier.append(target["_id"])
    return found


def _doomed(node: Doc) -> bool:
    return node["state"] in _DOOMABLE and isinstance(fanin.flow_of(node).get("doomedBy"), dict)


def _succeeded(node: Doc | None) -> bool:
    return node is not None and node["state"] == JobState.SUCCEEDED.value


def run_again(node: Doc, bits: list[int], width: int, now: datetime) -> UpdateOne:
    """``node`` run again, if nothing moved it since it was read: waiting for ``bits``
    of its ``width`` dependencies, or queued."""
    update = lifecycle.retry(now)
    update["$unset"].update({"flow.doomedBy": "", "flow.keepUntil": ""})
    if bits:
        update["$set"].update(
            {
                "state": JobState.WAITING.value,
                "flow.pending": len(bits),
                "flow.bits": fanin.set_bits(bits, width),
            }
        )
    return UpdateOne({"_id": node["_id"], "state": node["state"]}, update)


def rerun(nodes: list[Doc], asked: set[ObjectId], now: datetime) -> Operation[list[ObjectId]]:
    """Run ``asked`` again, with the nodes their failures cancelled (``plan``), asked
    first, one write each; the ids of the nodes written."""
    waits = plan(nodes, asked)
    by_id = {node["_id"]: node for node in nodes}
    into = incoming(nodes)
    writes = [
        run_again(by_id[node_id], bits, len(into.get(node_id, [])), now)
        for node_id, bits in sorted(waits.items(), key=lambda item: item[0] not in asked)
    ]
    if writes:
        yield Call("jobs", "bulk_write", (writes,), {"ordered": True})
    yield from _settle(by_id, into, waits, now)
    return list(waits)


def _settle(
    by_id: dict[ObjectId, Doc],
    into: dict[ObjectId, list[Edge]],
    waits: dict[ObjectId, list[int]],
    now: datetime,
) -> Operation[None]:
    """Write again the end of each dependency that was active when read and has ended
    since: the nodes it feeds may have been written as waiting for it after it ended."""
    watched = {
        edge.source
        for node_id in waits
        for edge in into.get(node_id, [])
        if edge.source not in waits and by_id.get(edge.source, {}).get("state") in ACTIVE
    }
    if not watched:
        return
    now_read: list[Doc] = yield Call("jobs", "find", ({"_id": {"$in": list(watched)}}, FIELDS))
    writes: list[Any] = []
    for source in now_read:
        if source["state"] not in ACTIVE:
            state = JobState(source["state"])
            writes += fanin.released(source, state, source.get("failReason"), now, None)
    if writes:
        yield Call("jobs", "bulk_write", (writes,), {"ordered": True})
