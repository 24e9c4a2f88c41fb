"""What an enqueue writes, shared by ``Client`` and ``AsyncClient``.

Each function validates everything before anything is stored, and is an
operation (``qworker.operations``) that returns the new ids and the jobs
whose wake-up the caller may publish: only jobs due soon are announced.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from qworker import store
from qworker.model import new_job, parse_unique
from qworker.operations import Operation
from qworker.when import parse_when, utcnow

Doc = dict[str, Any]

# Jobs due within this window are announced to workers with their ids, so an
# idle worker claims them at once; later ones are found by the workers' reads.
HINT_HORIZON = timedelta(seconds=60)


@dataclass
class Enqueued:
    """The ids an enqueue returns, and the stored jobs that want a wake-up."""

    ids: list[str]
    due: list[Doc] = field(default_factory=list)


def due_soon(docs: list[Doc], now: datetime) -> list[Doc]:
    return docs if docs and docs[0]["nextRunAt"] <= now + HINT_HORIZON else []


def many(
    task: str, items: Iterable[Any], when: str | datetime | None, **options: Any
) -> Operation[Enqueued]:
    """One job per item of data, in one round trip."""
    now = utcnow()
    run_at = parse_when(when, now)
    docs = [new_job(task, data, now=now, run_at=run_at, **options) for data in items]
    yield from store.insert(docs)
    return Enqueued([str(doc["_id"]) for doc in docs], due_soon(docs, now))


def unique(
    task: str, data: Any, when: str | datetime | None, key: Any, **options: Any
) -> Operation[Enqueued]:
    """A job with a unique key (``model.parse_unique``): the id of the new job, or of the
    one that holds the key.

    Modes ``active`` and ``queued`` hold ``uniqueKey`` under the partial unique index
    (``store.insert_unique``; the mode is stored as ``uniqueWhile`` when not the
    default); mode ``period`` holds a throttle ``fireKey`` under the ``fire_key`` index
    (``store.insert_throttled``). A debounce that moved the holder announces its new
    run time, when that is soon, as an insert would.
    """
    spec = parse_unique(key)
    now = utcnow()
    run_at = parse_when(when, now)
    if spec.mode == "period":
        assert spec.period is not None
        doc = new_job(task, data, now=now, run_at=run_at, **options)
        doc["fireKey"] = store.throttle_key(task, spec.key)
        doc["uniqueWhile"] = spec.mode
        throttled = yield from store.insert_throttled(doc, spec.period)
        if throttled is not None:
            return Enqueued([str(throttled)])
        return Enqueued([str(doc["_id"])], due_soon([doc], now))
    doc = new_job(task, data, now=now, run_at=run_at, unique=spec.key, **options)
    if spec.mode != "active":  # a default-mode job is stored as before modes existed
        doc["uniqueWhile"] = spec.mode
    holder = yield from store.insert_unique(doc, spec.replace)
    if holder is not None:
        moved = [holder.moved] if holder.moved is not None else []
        return Enqueued([str(holder.id)], due_soon(moved, now))
    return Enqueued([str(doc["_id"])], due_soon([doc], now))
