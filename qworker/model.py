"""The job document: its states, priorities, and how a new one is built.

Field names are the ones task metadata names, so that a selection such as
``jobAttributes: ["data.to", "lastFinishedAt"]`` selects them unchanged.
"""

from __future__ import annotations

import json
import random
import re
import reprlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import bson
from bson import ObjectId
from bson.errors import InvalidDocument

from qworker import tracing
from qworker.errors import InvalidJobError
from qworker.when import parse_duration, parse_when


class JobState(StrEnum):
    WAITING = "waiting"  # a chain step whose previous step has not succeeded yet
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"  # not started by its deadline (``expiresAt``): it never runs late


FINISHED_STATES = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.EXPIRED)
# A unique key is held by at most one job of a task in these states.
ACTIVE_STATES = (JobState.WAITING, JobState.QUEUED, JobState.RUNNING)

PRIORITY_NAMES: dict[str, int] = {
    "lowest": -20,
    "low": -10,
    "normal": 0,
    "high": 10,
    "highest": 20,
}

# Task ids are urlified file names: lower-case words joined by dashes.
TASK_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")

MAX_LOG_LINES = 200
MAX_ATTEMPTS = 2**31 - 1
# Jobs at once, of a task per worker or of a worker: beyond this, a typo.
MAX_CONCURRENCY = 100_000
MAX_TIMEOUT = 366 * 86400.0
MAX_LOG_LINE_CHARS = 2_000
# A job document must fit in MongoDB's 16 MiB; leave room for the job's own fields.
MAX_VALUE_BYTES = 15 * 1024 * 1024
# MongoDB stores documents nested at most 100 levels deep; a job keeps a few for itself.
MAX_DEPTH = 90


def parse_priority(value: int | str | None) -> int:
    """A priority as a number; names ``lowest``…``highest`` are accepted."""
    if value is None:
        return 0
    if isinstance(value, bool):
        raise InvalidJobError(
            f"priority must be a number or one of {list(PRIORITY_NAMES)}", "priority"
        )
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise InvalidJobError(f"priority {value} does not fit in 64 bits", "priority")
        return value
    text = str(value).strip().lower()
    if text in PRIORITY_NAMES:
        return PRIORITY_NAMES[text]
    try:
        return parse_priority(int(text))
    except ValueError:
        raise InvalidJobError(
            f"priority {value!r} is not a number or one of {', '.join(PRIORITY_NAMES)}",
            "priority",
        ) from None


def check_task_id(task: str) -> str:
    if not isinstance(task, str) or not TASK_ID_RE.fullmatch(task):
        raise InvalidJobError(
            f"task {reprlib.repr(task)} is not a valid task id "
            "(lower-case letters, digits, '-' and '_')",
            "task",
        )
    return task


def check_utf8(text: str, field: str) -> str:
    """``text`` if MongoDB can store it: a lone surrogate (``"\\ud800"``) has no UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidJobError(
            f"{field} must be valid Unicode text: {exc.reason} at character {exc.start}", field
        ) from None
    return text


def check_json(value: Any, what: str, field: str | None = None) -> Any:
    """Reject values that are not plain JSON: nothing else is stored or unpickled."""
    try:
        plain = json.loads(json.dumps(value, allow_nan=False))
        size = len(bson.encode({"value": plain}))  # ints beyond 64 bits are JSON, not BSON
    except RecursionError:
        raise InvalidJobError(_too_deep(what), field) from None
    except (TypeError, ValueError) as exc:
        raise InvalidJobError(f"{what} is not JSON-serialisable: {exc}", field) from None
    except (OverflowError, InvalidDocument) as exc:
        raise InvalidJobError(f"{what} cannot be stored in MongoDB: {exc}", field) from None
    if _depth(plain) > MAX_DEPTH:
        raise InvalidJobError(_too_deep(what), field)
    if size > MAX_VALUE_BYTES:
        raise InvalidJobError(
            f"{what} is too large: {size} bytes (at most {MAX_VALUE_BYTES})", field
        )
    return plain


def _too_deep(what: str) -> str:
    return f"{what} is nested too deeply (at most {MAX_DEPTH} levels)"


def _depth(value: Any) -> int:
    """How many lists and objects deep ``value`` (plain JSON) nests."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


@dataclass(frozen=True)
class Backoff:
    """Delay before retry ``n`` (1-based): ``delay * factor**(n-1)``, capped, with jitter."""

    delay: float = 1.0
    factor: float = 2.0
    max: float = 3600.0
    jitter: bool = True

    def seconds(self, attempt: int) -> float:
        try:
            grown = self.delay * self.factor ** max(0, attempt - 1)
        except OverflowError:  # a large factor, many attempts: capped anyway
            grown = self.max
        base = min(self.max, grown)
        return base * random.uniform(0.8, 1.2) if self.jitter else base


@dataclass(frozen=True)
class Retention:
    """Seconds a finished job is kept (``None``: forever); failed ones longer, for post-mortems.

    An expired job is work that was not done, as a failed one is: it is kept as long.
    """

    finished: float | None = 7 * 86400.0
    failed: float | None = 30 * 86400.0

    def expire_at(self, state: JobState, now: datetime) -> datetime | None:
        keep = self.failed if state in (JobState.FAILED, JobState.EXPIRED) else self.finished
        return None if keep is None else now + timedelta(seconds=keep)


MAX_UNIQUE_KEY_CHARS = 512


def check_unique_key(key: str | None) -> str | None:
    if key is None:
        return None
    if not isinstance(key, str) or not 0 < len(key) <= MAX_UNIQUE_KEY_CHARS:
        raise InvalidJobError(
            f"unique must be a non-empty string of at most {MAX_UNIQUE_KEY_CHARS} characters, "
            f"not {reprlib.repr(key)}",
            "unique",
        )
    return check_utf8(key, "unique")


# How long a unique key is held (``Unique.mode``): while the job is waiting, queued or
# running (the default); while it is queued only; or for a period from its creation.
UNIQUE_MODES = ("active", "queued", "period")
UNIQUE_FIELDS = ("key", "while", "period", "replace")
# What an enqueue may replace in the queued job holding its key (a debounce).
UNIQUE_REPLACEABLE = ("data", "nextRunAt")
MAX_UNIQUE_PERIOD = 366 * 86400.0
# What ``unique=`` takes: a key, or ``{"key", "while", "period", "replace"}``.
UniqueOption = str | dict[str, Any]


@dataclass(frozen=True)
class Unique:
    """``unique=``: ``"KEY"`` or ``{"key", "while", "period", "replace"}``, validated."""

    key: str
    mode: str = "active"
    period: float | None = None  # seconds, with mode "period" only
    replace: tuple[str, ...] = ()  # with modes "active" and "queued" only


def _unique_error(message: str) -> InvalidJobError:
    return InvalidJobError(f"unique: {message}", "unique")


def parse_unique(value: Any) -> Unique:
    """``unique=KEY`` or its dict form as a ``Unique``; raises ``InvalidJobError``.

    ``{"key": K, "while": "active" | "queued" | "period", "period": "10 minutes",
    "replace": ["data", "nextRunAt"]}``: ``period`` with ``while: "period"`` and only
    then; ``replace`` with ``active`` or ``queued``.
    """
    if not isinstance(value, dict):
        if not isinstance(value, str):
            raise InvalidJobError(
                f"unique must be a non-empty string of at most {MAX_UNIQUE_KEY_CHARS} "
                f"characters, or a dict with {', '.join(UNIQUE_FIELDS)}, not "
                f"{reprlib.repr(value)}",
                "unique",
            )
        return Unique(_unique_text(check_unique_key(value) or ""))
    unknown = sorted(str(k) for k in value if k not in UNIQUE_FIELDS)
    if unknown:
        raise _unique_error(
            f"unknown field(s) {', '.join(map(repr, unknown))}: expected {', '.join(UNIQUE_FIELDS)}"
        )
    if "key" not in value:
        raise _unique_error("'key' is missing: the key that makes the job unique")
    key = value["key"]
    if not isinstance(key, str) or not 0 < len(key) <= MAX_UNIQUE_KEY_CHARS:
        raise _unique_error(
            f"'key' must be a non-empty string of at most {MAX_UNIQUE_KEY_CHARS} characters, "
            f"not {reprlib.repr(key)}"
        )
    mode = value.get("while", "active")
    if mode not in UNIQUE_MODES:
        raise _unique_error(
            f"'while' must be one of {', '.join(map(repr, UNIQUE_MODES))}, not {reprlib.repr(mode)}"
        )
    period = _unique_period(value, mode)
    replace = value.get("replace", ())
    if not isinstance(replace, list | tuple) or not all(
        isinstance(item, str) and item in UNIQUE_REPLACEABLE for item in replace
    ):
        raise _unique_error(
            f"'replace' must be a list of {' and '.join(map(repr, UNIQUE_REPLACEABLE))}, "
            f"not {reprlib.repr(replace)}"
        )
    if replace and mode == "period":
        raise _unique_error(
            "'replace' cannot go with while 'period': a throttled enqueue is refused, "
            "it changes no job (use while 'active' or 'queued' to debounce)"
        )
    kept = tuple(item for item in UNIQUE_REPLACEABLE if item in replace)
    return Unique(_unique_text(key), mode, period, kept)


def _unique_period(value: dict[Any, Any], mode: str) -> float | None:
    if mode != "period":
        if "period" in value:
            raise _unique_error(f"'period' goes with while 'period' only, not {mode!r}")
        return None
    if "period" not in value:
        raise _unique_error("while 'period' needs a 'period', such as '10 minutes'")
    period = value["period"]
    try:
        seconds = (
            period.total_seconds() if isinstance(period, timedelta) else parse_duration(period)
        )
    except ValueError as exc:
        raise _unique_error(f"'period': {exc}") from None
    if not 0 < seconds <= MAX_UNIQUE_PERIOD:
        raise _unique_error(
            f"'period' must be more than 0 seconds and at most a year, not {reprlib.repr(period)}"
        )
    return seconds


def _unique_text(key: str) -> str:
    if not key.isascii():
        try:
            key.encode()  # BSON strings are UTF-8: a lone surrogate cannot be stored
        except UnicodeEncodeError:
            raise _unique_error("the key is not valid text") from None
    return key


Expires = str | datetime | timedelta | float | int


def deadline(expires: Expires, run_at: datetime) -> datetime:
    """When a job due at ``run_at`` expires: ``expires`` read as ``when`` is, but
    relative to the job's run time, not to now. A number of seconds, a timedelta or a
    duration (``"10 minutes"``) is a lifetime counted from the run time; a datetime or
    an ISO time is that moment. It must come after the run time."""
    if isinstance(expires, bool) or not isinstance(expires, Expires):
        raise InvalidJobError(
            "expires must be seconds, a duration such as '10 minutes', a datetime or an ISO "
            f"time, not {type(expires).__name__}",
            "expires",
        )
    if isinstance(expires, timedelta):
        expires = expires.total_seconds()
    if isinstance(expires, str | datetime):
        at = parse_when(expires, run_at, "expires")
    else:
        try:
            at = run_at + timedelta(seconds=parse_duration(expires))
        except ValueError as exc:
            raise InvalidJobError(f"expires: {exc}", "expires") from None
        except OverflowError:
            raise InvalidJobError(f"expires={expires!r} is too far ahead", "expires") from None
    if at <= run_at:
        raise InvalidJobError(
            f"expires ({at.isoformat()}) must be after the job's run time ({run_at.isoformat()})",
            "expires",
        )
    return at


def new_job(
    task: str,
    data: Any,
    *,
    now: datetime,
    run_at: datetime,
    priority: int | str | None = None,
    max_attempts: int | None = None,
    timeout: float | None = None,
    description: str | None = None,
    unique: str | None = None,
    expires: Expires | None = None,
) -> dict[str, Any]:
    """A validated job document ready to insert; raises ``InvalidJobError``.

    ``expires`` (see ``deadline``) is stored as ``expiresAt``: a job not started by
    then ends ``expired`` instead of running late.
    """
    check_task_id(task)
    if max_attempts is not None and (
        isinstance(max_attempts, bool)
        or not isinstance(max_attempts, int)
        or not 1 <= max_attempts <= MAX_ATTEMPTS
    ):
        raise InvalidJobError(
            f"max_attempts must be a whole number from 1 to {MAX_ATTEMPTS}, not {max_attempts!r}",
            "max_attempts",
        )
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 < timeout <= MAX_TIMEOUT
    ):
        raise InvalidJobError(
            f"timeout must be a number of seconds > 0 and at most a year, not {timeout!r}",
            "timeout",
        )
    if description is not None and not isinstance(description, str):
        raise InvalidJobError("description must be a string", "description")
    for text, name in ((description, "description"), (unique, "unique")):
        if isinstance(text, str) and not text.isascii():
            try:
                text.encode()  # BSON strings are UTF-8: a lone surrogate cannot be stored
            except UnicodeEncodeError:
                raise InvalidJobError(f"{name} is not valid text", name) from None
    doc: dict[str, Any] = {
        "_id": ObjectId(),
        "name": task,
        "data": check_json(data, "job data", "data"),
        "priority": parse_priority(priority),
        "state": JobState.QUEUED.value,
        "nextRunAt": run_at,
        "createdAt": now,
        "attempts": 0,
        "failCount": 0,
        "logs": [],
    }
    if max_attempts is not None:
        doc["maxAttempts"] = max_attempts
    if timeout is not None:
        doc["timeout"] = float(timeout)
    if description is not None:
        doc["description"] = description
    if check_unique_key(unique) is not None:
        doc["uniqueKey"] = unique
    if expires is not None:
        doc["expiresAt"] = deadline(expires, run_at)
    tracing.stamp(doc)  # the current span's trace context, as traceContext (if any)
    return doc


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _seconds(value: Any) -> bool:
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= MAX_TIMEOUT
    )


_STORED_FIELDS: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("_id", lambda v: isinstance(v, ObjectId), "an ObjectId"),
    ("priority", _whole, "a whole number"),
    ("attempts", _whole, "a whole number"),
    ("failCount", _whole, "a whole number"),
    ("lostCount", _whole, "a whole number"),
    ("maxAttempts", lambda v: _whole(v) and 1 <= v <= MAX_ATTEMPTS, "a whole number from 1"),
    ("timeout", _seconds, "seconds, more than 0 and at most a year"),
    ("nextRunAt", lambda v: isinstance(v, datetime), "a date"),
    ("expiresAt", lambda v: isinstance(v, datetime), "a date"),
    ("description", lambda v: isinstance(v, str), "a string"),
    ("flow", lambda v: isinstance(v, dict), "a workflow's node"),
    ("logs", lambda v: isinstance(v, list), "a list"),
)


def malformed(doc: dict[str, Any]) -> str | None:
    """Why a stored job cannot be run, or None.

    Jobs made by qworker are always well formed; this catches documents
    written into the collection some other way, which must fail visibly
    instead of crashing or blocking a worker.
    """
    for field, valid, expected in _STORED_FIELDS:
        if field in doc and not valid(doc[field]):
            return f"field {field!r}: expected {expected}, not {type(doc[field]).__name__}"
    return None
