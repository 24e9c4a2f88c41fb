"""Assertions on what an application enqueued: the queued and waiting jobs of a task.

A failure is an ``AssertionError`` that lists the jobs of the task that are
enqueued, showing the fields asked about, so that the difference shows. A
dict (``data``, or any field) matches a job that has at least its keys, each
matching in turn; anything else must be equal.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from qworker.client import Client
from qworker.model import JobState, check_json, check_task_id, parse_priority

Doc = dict[str, Any]
ENQUEUED = [JobState.QUEUED.value, JobState.WAITING.value]
# Names of the job options for the stored fields they fill, where camelCase is not it.
STORED_NAMES = {"unique": "uniqueKey", "run_at": "nextRunAt"}
SHOWN = 20  # jobs listed in a failure


class _Unset:
    def __repr__(self) -> str:
        return "<missing>"


_ANY = _Unset()  # no ``data`` given: any data matches
_MISSING = _Unset()  # a field the job does not have

# What a job must have: the name as given, the stored field, and the value.
Criterion = tuple[str, str, Any]


def enqueued(client: Client, task: str) -> list[Doc]:
    """The queued and waiting jobs of ``task``, in the order they were enqueued."""
    query = {"name": check_task_id(task), "state": {"$in": ENQUEUED}}
    found = client.db[client.names.jobs].find(query)
    return list(found.sort([("createdAt", 1), ("_id", 1)]))


def assert_enqueued(client: Client, task: str, data: Any = _ANY, **fields: Any) -> Doc:
    """The first enqueued job of ``task`` with ``data`` and ``fields`` (``priority=5``,
    ``max_attempts=3``: the options of ``Client.now``, or stored names); else fail."""
    criteria = _criteria(data, fields)
    jobs = enqueued(client, task)
    for job in jobs:
        if _matches(job, criteria):
            return job
    wanted = f" with {_show(criteria)}" if criteria else ""
    raise AssertionError(
        f"no job of task {task!r} is enqueued{wanted}\n{_listing(client, task, jobs, criteria)}"
    )


def refute_enqueued(client: Client, task: str, data: Any = _ANY, **fields: Any) -> None:
    """Fail if a job of ``task`` with ``data`` and ``fields`` is enqueued (see
    ``assert_enqueued``); with neither, if any job of ``task`` is."""
    criteria = _criteria(data, fields)
    jobs = enqueued(client, task)
    matching = sum(_matches(job, criteria) for job in jobs)
    if matching:
        wanted = f" with {_show(criteria)}" if criteria else ""
        raise AssertionError(
            f"{matching} job(s) of task {task!r} enqueued{wanted}, expected none\n"
            f"{_listing(client, task, jobs, criteria)}"
        )


def _criteria(data: Any, fields: dict[str, Any]) -> list[Criterion]:
    found: list[Criterion] = []
    if data is not _ANY:
        found.append(("data", "data", check_json(data, "data", "data")))
    for name, value in fields.items():
        stored = _stored_name(name)
        found.append((name, stored, _normalised(name, stored, value)))
    return found


def _stored_name(name: str) -> str:
    """``max_attempts`` is stored as ``maxAttempts``; stored names pass unchanged."""
    if name in STORED_NAMES:
        return STORED_NAMES[name]
    return re.sub(r"(?<=[a-z0-9])_([a-z])", lambda m: m[1].upper(), name)


def _normalised(name: str, stored: str, value: Any) -> Any:
    """The value as it is stored: a priority by name is a number."""
    if stored == "priority":
        return parse_priority(value)
    if stored == "state" and value not in ENQUEUED:
        raise ValueError(f"only queued and waiting jobs are enqueued: {name}={value!r} never is")
    return value


def _matches(job: Doc, criteria: list[Criterion]) -> bool:
    return all(_contains(job.get(stored, _MISSING), value) for _, stored, value in criteria)


def _contains(stored: Any, wanted: Any) -> bool:
    """Whether ``stored`` has ``wanted``: a dict its keys (recursively), anything else equal."""
    if isinstance(wanted, dict):
        return isinstance(stored, dict) and all(
            key in stored and _contains(stored[key], value) for key, value in wanted.items()
        )
    return bool(stored == wanted)


def _show(criteria: list[Criterion]) -> str:
    return ", ".join(f"{name}={value!r}" for name, _, value in criteria)


def _listing(client: Client, task: str, jobs: list[Doc], criteria: list[Criterion]) -> str:
    """The enqueued jobs of ``task``, those that match marked ``*``; or, if it has none,
    the tasks that do have some (a misspelt task id shows there)."""
    if not jobs:
        return f"task {task!r} has none{_others(client)}"
    shown = [("data", "data"), *((n, s) for n, s, _ in criteria if s != "data")]
    marks = ["*" if _matches(job, criteria) else " " for job in jobs]
    legend = ", * marks those that match" if "*" in marks else ""
    lines = [f"enqueued jobs of task {task!r} ({len(jobs)}){legend}:"]
    for mark, job in zip(marks[:SHOWN], jobs, strict=False):
        values = ", ".join(f"{name}={job.get(stored, _MISSING)!r}" for name, stored in shown)
        lines.append(f"{mark} {job['_id']} ({job['state']}): {values}")
    if len(jobs) > SHOWN:
        lines.append(f"  … and {len(jobs) - SHOWN} more")
    return "\n".join(lines)


def _others(client: Client) -> str:
    jobs = client.db[client.names.jobs].find({"state": {"$in": ENQUEUED}}, {"name": 1})
    counts = Counter(str(job["name"]) for job in jobs)
    if not counts:
        return ", nor has any other task"
    return "; other tasks have: " + ", ".join(
        f"{name!r} ({n})" for name, n in sorted(counts.items())
    )
