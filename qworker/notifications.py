"""``worker:notification`` messages: one per job event, with chosen attributes.

A task's metadata picks which job attributes each event carries
(``jobAttributes``, or ``jobStartAttributes`` … ``jobFailAttributes`` for one
event), as dotted paths such as ``data.to``; nothing else of the job leaves.
Workers announce what their runs do; the leader manager announces the jobs it
expires (``expire``), which no worker touched, in the same shape.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from qworker import protocol
from qworker.channel import MAX_MESSAGE_BYTES, message, oversized
from qworker.when import utcnow

_MISSING = object()


def pick(doc: dict[str, Any], paths: Iterable[str]) -> dict[str, Any]:
    """The values at ``paths`` (dotted), nested as in ``doc``; absent ones are left out."""
    picked: dict[str, Any] = {}
    for path in paths:
        value: Any = doc
        for part in path.split("."):
            value = value.get(part, _MISSING) if isinstance(value, dict) else _MISSING
            if value is _MISSING:
                break
        if value is _MISSING:
            continue
        target = picked
        *parents, leaf = path.split(".")
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = value
    return picked


def notification(
    worker_id: str | None, job: dict[str, Any], kind: str, paths: Iterable[str], **extra: Any
) -> dict[str, Any]:
    """A channel message announcing ``kind`` (start, progress, success, fail, log…);
    ``worker_id`` None for an event of no worker's (the manager's, in ``extra``)."""
    body = {
        "workerId": worker_id,
        "sourceType": "job",
        "sourceId": str(job["_id"]),
        "task": job.get("name"),
        "type": kind,
        "triggeredAt": utcnow(),
        "job": pick(job, paths),
        **extra,
    }
    note = message(protocol.WORKER_NOTIFICATION, body)
    if oversized(note):  # the selected attributes are too big to travel: say so instead
        body["job"], body["jobOmitted"] = {}, f"over {MAX_MESSAGE_BYTES} bytes"
    return note
