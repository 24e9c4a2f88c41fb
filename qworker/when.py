"""Parsing of ``when`` (a point in time) and durations.

A bad ``when`` is an error at the call, never a job that silently never runs.
"""

from __future__ import annotations

import math
import re
import reprlib
from datetime import UTC, datetime, timedelta

from qworker.errors import InvalidJobError

MAX_WHEN_CHARS = 200

_UNITS = {
    "ms": 0.001,
    "millisecond": 0.001,
    "milliseconds": 0.001,
    "s": 1,
    "sec": 1,
    "secs": 1,
    "second": 1,
    "seconds": 1,
    "m": 60,
    "min": 60,
    "mins": 60,
    "minute": 60,
    "minutes": 60,
    "h": 3600,
    "hr": 3600,
    "hrs": 3600,
    "hour": 3600,
    "hours": 3600,
    "d": 86400,
    "day": 86400,
    "days": 86400,
    "w": 604800,
    "week": 604800,
    "weeks": 604800,
}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]+)")
_DURATION = re.compile(r"^(?:\d+(?:\.\d+)?\s*[a-z]+\s*(?:,|and)?\s*)+$")


def utcnow() -> datetime:
    return datetime.now(UTC)


def parse_duration(text: str | float | int) -> float:
    """Seconds in ``"20 minutes"``, ``"1h 30m"``, ``"90s"`` or a plain number."""
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        raise ValueError(f"{reprlib.repr(text)} is not a duration")  # reprlib: any depth
    if isinstance(text, int | float):
        try:
            seconds = float(text)
        except OverflowError:  # an int beyond any float
            seconds = math.inf
        if not math.isfinite(seconds):
            raise ValueError(f"a duration must be a finite number, not {reprlib.repr(text)}")
        if seconds < 0:
            raise ValueError(f"a duration cannot be negative: {text}")
        return seconds
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
    if not math.isfinite(total):
        raise ValueError(f"{text!r} is too long a duration")
    return total


def format_duration(seconds: float) -> str:
    """``5400`` as ``1h30m``: the short form ``parse_duration`` reads back."""
    parts, rest = [], seconds
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if rest >= size:
            count, rest = divmod(rest, size)
            parts.append(f"{count:g}{unit}")
    if rest or not parts:
        parts.append(f"{rest:g}s")
    return "".join(parts)


def parse_when(
    when: str | datetime | None, now: datetime | None = None, field: str = "when"
) -> datetime:
    """An aware UTC datetime for ``when``.

    ``now``, ``in 20 minutes``, ``20 minutes``, ISO 8601, or else an English
    phrase such as ``tomorrow at 9am`` or ``next monday 10:00``, read by
    dateparser relative to ``now``. Naive ISO times and datetimes are taken as UTC.
    A time in the past, in any of these forms, is due at once (as Celery's and
    Sidekiq's are); only a negative duration is refused. Errors name ``field``
    (a job's ``expires`` is read the same way).
    """
    now = now or utcnow()
    if when is None:
        return now
    if isinstance(when, datetime):
        try:
            return when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)
        except OverflowError:
            raise InvalidJobError(f"{field}={when!r} is out of the range of dates", field) from None
    if not isinstance(when, str):
        raise InvalidJobError(
            f"{field} must be a string or a datetime, not {type(when).__name__}", field
        )
    if len(when) > MAX_WHEN_CHARS:  # a phrase parser's time grows with its input
        raise InvalidJobError(
            f"{field} is {len(when)} characters long: at most {MAX_WHEN_CHARS}", field
        )
    text = when.strip().lower()
    if text in ("", "now", "immediately"):
        return now
    relative = text[3:] if text.startswith("in ") else text
    try:
        return now + timedelta(seconds=parse_duration(relative))
    except ValueError:
        pass
    except OverflowError:
        raise InvalidJobError(f"{field}={when!r} is too far in the future", field) from None
    try:
        parsed = datetime.fromisoformat(when.strip().replace("Z", "+00:00"))
    except ValueError:
        pass
    else:
        return parse_when(parsed, now, field)
    now = parse_when(now)  # aware UTC: what phrases are read relative to
    found = _parse_phrase(text, now)
    if found is None:
        raise InvalidJobError(
            f"cannot understand {field}={when!r}: use 'now', 'in 20 minutes', '20 minutes', "
            "an ISO 8601 time such as 2030-01-31T09:00:00Z or a phrase such as "
            "'tomorrow at 9am' or 'next monday 10:00'",
            field,
        )
    return found


# A phrase needs a word, or is a clock time ("21:15"): dateparser reads bare
# numbers and symbols as dates ("-5" and "*/5 * * * *" as May). Numeric dates
# must be ISO 8601: "01/02/2030" is January or February depending on the writer.
_WORD = re.compile(r"[a-z]")
_CLOCK = re.compile(r"\b\d{1,2}(?::\d{2}){1,2}\b|\b\d{1,2}(?::\d{2})?\s*[ap]\.?m\b\.?")
_NUMERIC_DATE = re.compile(r"\d\s*[/-]\s*\d|\d+\.\d+\.\d+")
_SIGNED = re.compile(r"[+-]\s*\d")  # "-5 minutes" is a negative duration, not 5 minutes ago
# dateparser's English number words ("a week", "twelve noon").
_NUMBER_WORDS = {
    "a": "1",
    "an": "1",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
    "eleven": "11",
    "twelve": "12",
}
_NUMBER_WORD = re.compile(rf"(?<![\w.])(?:{'|'.join(_NUMBER_WORDS)})(?![\w.])")
# "3 days" in "in 3 days at 9am": numbers that are not part of a time.
_QUANTITY = re.compile(
    r"\d+(?:[.,]\d+)?\s*(?:centur(?:y|ies)|decades?|fortnights?|years?|yrs?|months?|weeks?"
    r"|wks?|days?|hours?|hrs?|minutes?|mins?|seconds?|secs?)\b"
)
_MONTH = re.compile(
    r"\b(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
    r"|sept?(?:ember)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\b"
)


def _digits(text: str) -> str:
    return _NUMBER_WORD.sub(lambda match: _NUMBER_WORDS[match[0]], text)


def _parse_phrase(text: str, now: datetime) -> datetime | None:
    """``text`` read as an English phrase relative to ``now`` (aware UTC), or None.

    dateparser is imported here, so that only a process that reads a phrase
    pays for it. Its relative parser ("tomorrow at 9am", "in 2 weeks") and its
    absolute one ("next monday 10:00", "midnight", "june 5") are tried one
    after the other, as each has its own flaws, checked for below.
    """
    if _NUMERIC_DATE.search(text) or _SIGNED.match(text.removeprefix("in ").strip()):
        return None
    if not (_WORD.search(text) or _CLOCK.fullmatch(text)):
        return None
    from dateparser.date import DateDataParser

    def parse(parser: str, base: datetime) -> tuple[datetime | None, str | None]:
        settings = {
            "RELATIVE_BASE": base.replace(tzinfo=None),
            "TIMEZONE": "UTC",
            "TO_TIMEZONE": "UTC",
            "RETURN_AS_TIMEZONE_AWARE": True,
            "PREFER_DATES_FROM": "future",
            "PARSERS": [parser],
        }
        try:
            data = DateDataParser(languages=["en"], settings=settings).get_date_data(text)
        except (ValueError, OverflowError):
            return None, None
        found = data.date_obj
        if not isinstance(found, datetime):
            return None, None
        period: str | None = data.period
        return found.astimezone(UTC), period

    found, _ = parse("relative-time", now)
    if found is not None:
        if re.search(r"\d", _QUANTITY.sub("", _digits(text))):
            # A time that the relative parser cannot read ("tomorrow at 25:00",
            # "tomorrow 5") is dropped silently: it must be the same an hour later.
            later, _ = parse("relative-time", now + timedelta(hours=1))
            if later is None or later.time() != found.time():
                return None
        return found
    untimed = _CLOCK.sub("", text)
    if re.search(r"\d", _digits(untimed)) and not _MONTH.search(text):
        # Numbers other than times are days and years, beside a month's name:
        # alone they are read as months or days ("twelve noon" is December 31).
        return None
    if untimed == text and not re.search(r"[a-z]{3}", text):
        return None  # "we" and "th" are weekdays to dateparser
    found, period = parse("absolute-time", now)
    if found is None or period != "day":
        # "march", "2031": a month or a year, not a point in time.
        return None
    tomorrow = now + timedelta(days=1)
    if tomorrow.month != now.month:
        # On the last day of a month a bare time that has passed today
        # ("midnight", "8am") is moved to tomorrow and then back to this month:
        # the 1st of it (of December next year on the 31st of December).
        earlier, _ = parse("absolute-time", now - timedelta(days=1))
        if earlier is not None:
            fixed = earlier + timedelta(days=1)
            if fixed.date() == tomorrow.date() and found == fixed.replace(month=now.month):
                return fixed
    return found
