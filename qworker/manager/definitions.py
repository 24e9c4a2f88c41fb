"""Task definitions that workers announce: which one stands when two differ.

Every worker that runs a task announces its metadata (``define:tasks``). Two
workers of one fleet must run a task by the same rules (``maxAttempts``,
``timeout``, the schedule...), so the first definition stands while a live
worker holds it, and a worker announcing another one is refused, with the
fields that differ, until none does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

Doc = dict[str, Any]
SHOWN_CHARS = 60  # of each differing value, in a refusal
REMEMBERED = 1_000  # instances whose conflicts wait for their worker:initialize


def differences(standing: Doc, announced: Doc) -> list[str]:
    """The fields whose values differ, as ``"maxAttempts (3 here, 1 there)"``."""
    names = sorted(set(standing) | set(announced), key=str)
    return [
        f"{name} ({_shown(announced, name)} here, {_shown(standing, name)} there)"
        for name in names
        if standing.get(name, _ABSENT) != announced.get(name, _ABSENT)
    ]


def refusal(task_id: str, holders: Sequence[str], fields: Sequence[str]) -> str:
    """Why a worker announcing another definition of ``task_id`` may not run."""
    who = ", ".join(sorted(holders))
    return (
        f"task '{task_id}' is defined differently by live worker(s) {who}: "
        f"{'; '.join(fields)}. Their definition stands until none of them runs"
    )


class Conflicts:
    """Refusals found when instances defined their tasks, kept for their initialize;
    and which instances' definitions were heard at all."""

    def __init__(self) -> None:
        self._by_instance: dict[tuple[str, str], list[str]] = {}
        self._heard: dict[tuple[str, str], None] = {}  # ordered: the oldest forgotten first

    def record(self, worker_id: str, nonce: str, reasons: list[str]) -> None:
        key = (worker_id, nonce)
        self._by_instance.pop(key, None)
        self._heard[key] = None
        if reasons:
            self._by_instance[key] = reasons
        for kept in (self._by_instance, self._heard):
            while len(kept) > REMEMBERED:  # forged defines never initialize
                del kept[next(iter(kept))]

    def heard(self, worker_id: str, nonce: str) -> bool:
        return (worker_id, nonce) in self._heard

    def take(self, worker_id: str, nonce: str) -> list[str]:
        self._heard.pop((worker_id, nonce), None)
        return self._by_instance.pop((worker_id, nonce), [])


_ABSENT = object()


def _shown(doc: Doc, name: str) -> str:
    if name not in doc:
        return "unset"
    text = json.dumps(doc[name], default=str, sort_keys=True)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1] + "…"
