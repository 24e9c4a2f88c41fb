"""What an operator's job listing filters on, and what a bulk action acts on.

``JobFilter`` holds the filters as a person gives them (times as durations ago
or ISO times, a field of the data and the value it holds, text in an error) and
turns them into the query of ``store.job_query``. ``Client.jobs``,
``count_jobs`` and ``bulk``, the API and the CLI all build one, so a filter
means the same everywhere, and a bulk over a filter acts on what the listing
of that filter shows. ``FilterKeywords`` types the fields that ``jobs`` and
``count_jobs`` take by keyword only.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypedDict, Unpack

from qworker import fleet, limits, store
from qworker.errors import InvalidJobError
from qworker.model import JobState, check_utf8
from qworker.when import utcnow

Doc = dict[str, Any]
MAX_FIELD_CHARS = 200
_INTEGER = re.compile(r"^[+-]?\d{1,18}$")  # fits in 64 bits
_DECIMAL = re.compile(r"^[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?$")
STATES = [s.value for s in JobState]


class FilterKeywords(TypedDict, total=False):
    """``JobFilter``'s fields after state, task and text: the keyword-only filters of
    ``Client.jobs`` and ``count_jobs`` (``JobFilter`` says what each means)."""

    worker: str | None
    since: str | datetime | None
    until: str | datetime | None
    finished_since: str | datetime | None
    finished_until: str | datetime | None
    data_field: str | None
    data_value: Any
    error: str | None


@dataclass(frozen=True)
class JobFilter:
    """Which jobs: every field given must match (None: any).

    ``state`` is a job state (``queued``, ``failed``, ...), ``task`` the task's name,
    ``text`` text in the description, in any case; ``worker`` the worker that runs
    the job or ran it last. ``since``/``until`` bound the creation time,
    ``finished_since``/``finished_until`` the time a finished job ended
    (``lastFinishedAt``): a datetime, an ISO 8601 time, or a duration meaning that
    long ago (``"2 hours"``). ``data_field`` is a dotted path inside the job's data
    (``"customer"``, ``"address.city"``); ``data_value`` is what it must hold: a
    string also matches the number or true/false it spells (``"42"`` finds ``42``
    and ``"42"``), a number also its text; without ``data_value`` the field must
    exist. ``error`` is text (not a pattern) in the failure reason or the error's
    message, in any case.
    """

    state: str | None = None
    task: str | None = None
    text: str | None = None
    worker: str | None = None
    since: str | datetime | None = None
    until: str | datetime | None = None
    finished_since: str | datetime | None = None
    finished_until: str | datetime | None = None
    data_field: str | None = None
    data_value: Any = None
    error: str | None = None

    @classmethod
    def of(cls, value: JobFilter | Mapping[str, Any] | None) -> JobFilter:
        """A filter from a mapping of these fields' names (an API body, a caller's dict)."""
        if value is None:
            return cls()
        if isinstance(value, JobFilter):
            return value
        if not isinstance(value, Mapping):
            raise InvalidJobError(
                f"a filter is a mapping of {', '.join(FILTER_FIELDS)}, not {type(value).__name__}",
                "filter",
            )
        unknown = sorted(str(key) for key in value if key not in FILTER_FIELDS)
        if unknown:
            raise InvalidJobError(
                f"unknown filter {unknown[0]!r}: filters are {', '.join(FILTER_FIELDS)}",
                f"filter.{unknown[0]}",
            )
        return cls(**{key: v for key, v in value.items() if v is not None})

    @classmethod
    def from_call(
        cls,
        filter: JobFilter | Mapping[str, Any] | None,
        state: str | None,
        task: str | None,
        text: str | None,
        /,
        **fields: Unpack[FilterKeywords],
    ) -> JobFilter:
        """The filter of a call of ``Client.jobs`` or ``count_jobs``: ``filter`` (as ``of``
        takes it) or the fields given one by one, not both (a ``TypeError``)."""
        given = cls(state=state, task=task, text=text, **fields)
        if filter is None:
            return given
        if given.given():
            named = ", ".join(given.given())
            raise TypeError(f"give the filters as filter or one by one, not both ({named})")
        return cls.of(filter)

    def given(self) -> Doc:
        """The filters given, by name (for a summary, or a URL)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def query(self, now: datetime | None = None) -> Doc:
        """The MongoDB filter; raises ``InvalidJobError`` naming the bad field."""
        now = now or utcnow()
        for name in ("state", "task", "text", "worker", "data_field", "error"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise InvalidJobError(f"{name} must be a string, not {type(value).__name__}", name)
            if value is not None:
                check_utf8(value, name)
        if self.data_value is not None and not self.data_field:
            raise InvalidJobError(
                "data_value needs data_field: the field of the data that holds it", "data_value"
            )
        if self.state and self.state not in STATES:
            raise InvalidJobError(
                f"state must be one of {', '.join(STATES)}, not {self.state!r}", "state"
            )
        return store.job_query(
            self.state,
            self.task,
            self.text,
            self.worker,
            _moment(self.since, "since", now),
            _moment(self.until, "until", now),
            finished_since=_moment(self.finished_since, "finished_since", now),
            finished_until=_moment(self.finished_until, "finished_until", now),
            data_path=data_path(self.data_field) if self.data_field else None,
            data_values=data_values(self.data_value),
            error=self.error or None,
        )


FILTER_FIELDS = tuple(f.name for f in dataclasses.fields(JobFilter))


def _moment(value: Any, what: str, now: datetime) -> datetime | None:
    if value is not None and not isinstance(value, str | datetime):
        raise InvalidJobError(
            f"{what} must be a time or a duration ago, not {type(value).__name__}", what
        )
    return fleet.moment(value, what, now)


def data_path(field: str) -> str:
    """``data.<field>``, for a dotted path inside the data such as ``customer``."""
    if len(field) > MAX_FIELD_CHARS:
        raise InvalidJobError(
            f"data_field is {len(field)} characters long: at most {MAX_FIELD_CHARS}", "data_field"
        )
    try:
        return limits.check_path(f"data.{field}")
    except ValueError:
        raise InvalidJobError(
            f"data_field {field!r} is not a dotted path inside the data, such as 'customer' "
            "or 'address.city' (letters, digits and '_', parts joined by '.')",
            "data_field",
        ) from None


def data_values(value: Any) -> list[Any] | None:
    """What a data field may hold to match ``value``: the value, and what it spells."""
    if value is None:
        return None
    if isinstance(value, bool):
        return [value]
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidJobError("data_value must be a finite number", "data_value")
        if isinstance(value, int) and not -(2**63) <= value < 2**63:
            raise InvalidJobError("data_value does not fit in 64 bits", "data_value")
        return [value, str(value)]
    if not isinstance(value, str):
        raise InvalidJobError(
            f"data_value must be a string, a number or true/false, not {type(value).__name__}",
            "data_value",
        )
    if len(value) > MAX_FIELD_CHARS:
        raise InvalidJobError(
            f"data_value is {len(value)} characters long: at most {MAX_FIELD_CHARS}",
            "data_value",
        )
    values: list[Any] = [check_utf8(value, "data_value")]
    text = value.strip()
    if _INTEGER.match(text):
        values.append(int(text))
    elif _DECIMAL.match(text) and math.isfinite(float(text)):
        values.append(float(text))
    elif text in ("true", "false"):
        values.append(text == "true")
    return values
