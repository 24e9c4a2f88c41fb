"""Parsing of ``when`` (a point in time) and durations.

A bad ``when`` is an error at the call, never a job that silently never runs.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta

from qworker.errors import InvalidJobError

_UNITS = {
    "ms": 0.001, "millisecond": 0.001, "milliseconds": 0.001,
    "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
    "w": 604800, "week": 604800, "weeks": 604800,
}  # fmt: skip
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]+)")
_DURATION = re.compile(r"^(?:\d+(?:\.\d+)?\s*[a-z]+\s*(?:,|and)?\s*)+$")


def utcnow() -> datetime:
    return datetime.now(UTC)


def parse_duration(text: str | float | int) -> float:
    """Seconds in ``"20 minutes"``, ``"1h 30m"``, ``"90s"`` or a plain number."""
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a duration")
    if isinstance(text, int | float):
        if not math.isfinite(text):
            raise ValueError(f"a duration must be a finite number, not {text}")
        if text < 0:
            raise ValueError(f"a duration cannot be negative: {text}")
        return float(text)
    cleaned = text.strip().lower()
    try:
        return parse_duration(float(cleaned))
    except ValueError:
        pass
    if not cleaned or not _DURATION.match(cleaned):
        raise ValueError(f"{text!r} is not a duration such as '20 minutes' or '1h 30m'")
    total = 0.0
    for number, unit in _PART.findall(cleaned):
        if unit not in _UNITS:
            raise ValueError(f"unknown time unit {unit!r} in {text!r}")
        total += float(number) * _UNITS[unit]
    return total


def parse_when(when: str | datetime | None, now: datetime | None = None) -> datetime:
    """An aware UTC datetime for ``now``, ``in 20 minutes``, ``20 minutes`` or ISO 8601.

    Naive ISO times and datetimes are taken as UTC.
    """
    now = now or utcnow()
    if when is None:
        return now
    if isinstance(when, datetime):
        try:
            return when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)
        except OverflowError:
            raise InvalidJobError(f"when={when!r} is out of the range of dates") from None
    if not isinstance(when, str):
        raise InvalidJobError(f"when must be a string or a datetime, not {type(when).__name__}")
    text = when.strip().lower()
    if text in ("", "now", "immediately"):
        return now
    relative = text[3:] if text.startswith("in ") else text
    try:
        return now + timedelta(seconds=parse_duration(relative))
    except ValueError:
        pass
    except OverflowError:
        raise InvalidJobError(f"when={when!r} is too far in the future") from None
    try:
        parsed = datetime.fromisoformat(when.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidJobError(
            f"cannot understand when={when!r}: use 'now', 'in 20 minutes', "
            "'20 minutes' or an ISO 8601 time such as 2030-01-31T09:00:00Z"
        ) from None
    return parse_when(parsed, now)
