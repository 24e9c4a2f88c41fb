"""Hostile input, in process: every bad value is a clear qworker error, never a crash.

Property-based (hypothesis) checks of what people and other processes hand
qworker: task metadata, config and metadata files, ``when`` strings and
durations, job data and options, schedules. Each property says which errors
are allowed (``TaskDefinitionError``, ``ConfigError``, ``InvalidJobError`` …)
and what an accepted value must be fit for: a job document that MongoDB
stores and gives back unchanged, metadata that a worker can announce and use
for retries and retention, a schedule whose trigger fires.

The last part checks that nothing but APScheduler's own job store is ever
unpickled, and that what it holds references only ``qworker.scheduler:fire``.
"""

from __future__ import annotations

import ast
import io
import json
import math
import os
import pickle
import string
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import bson
import click
import pytest
import yaml
from bson import ObjectId
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import qworker
from qworker import Client
from qworker.channel import Channel
from qworker.cli.common import json_data
from qworker.config import read_config_file
from qworker.errors import (
    ConfigError,
    InvalidJobError,
    InvalidScheduleError,
    TaskDefinitionError,
)
from qworker.model import MAX_TIMEOUT, TASK_ID_RE, JobState, check_json, new_job
from qworker.schedules import (
    FIRE,
    MAX_INTERVAL,
    MIN_INTERVAL,
    NAME_RE,
    Schedule,
    cron_trigger,
    make_schedule,
)
from qworker.tasks import ATTRIBUTE_FIELDS, KNOWN_FIELDS, TaskMeta, check_metadata, parse_task
from qworker.when import parse_duration, parse_when, utcnow

# Bounded: the whole file runs in well under a minute. No example database:
# nothing is written into the source tree.
FAST = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# Examples that write a file.
FILES = settings(FAST, max_examples=120)
# Examples that touch the server (function-scoped fixtures are reused on purpose).
STORED = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)

# -- strategies --------------------------------------------------------------

# Every code point, lone surrogates included (they cannot be stored as UTF-8).
ANY_CHAR = st.characters(exclude_categories=())
TRICKY_STRINGS = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\ud800",
    "\udfff",
    "\ufeff",
    "\u202e",
    "é",
    "日本",
    "🙂",
    "\n",
    "noop\n",
    "$where",
    "a.b",
    "$",
    "..",
    "null",
    "NaN",
    "Infinity",
    "-0",
    "1e400",
    "forever",
    "FOREVER",
    "5 minutes",
    "1h 30m",
    "90",
    "0",
    "-5",
    "0.0001",
    "1e-400",
    "9" * 400 + " days",
    "99999999999 days",
    "1 fortnight",
    "7 days",
    "2 weeks and 3 days",
    "lowest",
    "HIGHEST",
    "normal ",
    "thread",
    "process",
    "*/5 * * * *",
    "@daily",
    "@reboot",
    "UTC",
    "Europe/Paris",
    "America",
    "Not/AZone",
    "../../etc/passwd",
    "a" * 300,
    "2030-01-31T09:00:00Z",
    "2030-01-31T09:00:00",
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-01:00",
    "tomorrow at 9am",
    "next monday 10:00",
    "midnight",
    "now",
]
LONG_STRINGS = st.builds(lambda c, n: c * n, st.sampled_from("x9 é\ud800"), st.integers(1, 20_000))
STRINGS = st.one_of(
    st.text(ANY_CHAR, max_size=30),
    st.text(string.printable, max_size=30),
    st.sampled_from(TRICKY_STRINGS),
    LONG_STRINGS,
)
NUMBERS = st.one_of(
    st.integers(-1000, 10**6),
    st.integers(),
    st.integers(-(2**80), 2**80),
    st.sampled_from([2**31 - 1, 2**31, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 10**400]),
    st.floats(),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308, 5e-324, -0.0, 0.5, 1e15]),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, STRINGS)
# What JSON and BSON documents can hold (keys are strings).
JSON_LIKE = st.recursive(
    SCALARS,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(STRINGS, kids, max_size=4),
    max_leaves=20,
)
# JSON that MongoDB stores as is: the data of most real jobs.
PLAIN_TEXT = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=20
)
PLAIN_JSON = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        PLAIN_TEXT,
    ),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(PLAIN_TEXT, kids, max_size=4),
    max_leaves=20,
)
ODD = st.one_of(
    st.binary(max_size=20),
    st.datetimes(),
    st.datetimes(timezones=st.timezones()),
    st.dates(),
    st.times(),
    st.decimals(),
    st.complex_numbers(),
    st.just(object()),
    st.just(ObjectId()),
    st.just(Path("x")),
    st.just(int),
    st.frozensets(st.integers(), max_size=3),
    st.sets(st.integers(), max_size=3),
)
HASHABLE = st.one_of(STRINGS, st.integers(), st.none(), st.booleans(), st.floats(), st.tuples())
# Anything a Python caller can pass: JSON-ish values, objects, tuples, non-string keys.
ANYTHING = st.recursive(
    st.one_of(SCALARS, ODD),
    lambda kids: (
        st.lists(kids, max_size=4)
        | st.tuples(kids, kids)
        | st.dictionaries(HASHABLE, kids, max_size=4)
    ),
    max_leaves=20,
)


def nest(depth: int, kind: str) -> Any:
    """A list or dict nested ``depth`` deep (built without recursion)."""
    value: Any = 1
    for _ in range(depth):
        value = [value] if kind == "list" else {"a": value}
    return value


# Deeper than MongoDB stores (100), than json and repr go (~1000), than anything sane.
DEPTHS = [50, 89, 90, 91, 99, 100, 101, 150, 500, 990, 1_000, 3_000, 20_000]
DEEP = st.builds(nest, st.sampled_from(DEPTHS), st.sampled_from(["list", "dict"]))
HOSTILE = st.one_of(ANYTHING, DEEP)


def mostly(plausible: st.SearchStrategy[Any], hostile: st.SearchStrategy[Any]) -> Any:
    """Plausible values three times in four: accepted values must be checked too.

    (``one_of`` would flatten the hostile alternatives and weigh each as much.)
    """
    return st.sampled_from([plausible, plausible, plausible, hostile]).flatmap(lambda s: s)


# Plausible values per metadata field, so that valid metadata is generated
# often and the checks of each field are reached, mixed with anything at all.
UNITS = [
    "s",
    "sec",
    "seconds",
    "m",
    "minutes",
    "h",
    "hours",
    "d",
    "days",
    "w",
    "weeks",
    "ms",
    "fortnight",
    "years",
    "x",
]
DURATION_TEXT = st.builds(
    lambda n, unit, sep: f"{n}{sep}{unit}",
    st.one_of(st.integers(0, 10**6), st.sampled_from(["1.5", "0.001", "9" * 30, "-1", "1e3"])),
    st.sampled_from(UNITS),
    st.sampled_from(["", " ", "  "]),
)
JOINED_DURATIONS = st.builds(
    lambda a, b, j: f"{a}{j}{b}", DURATION_TEXT, DURATION_TEXT, st.sampled_from([" ", ", ", "and"])
)
DURATIONS = st.one_of(
    DURATION_TEXT,
    JOINED_DURATIONS,
    st.integers(-5, 10**7),
    st.floats(-1, 1e7),
    NUMBERS,
    st.sampled_from(TRICKY_STRINGS),
)
CRON_TOKENS = [
    "*",
    "*/5",
    "*/0",
    "0",
    "1",
    "7",
    "59",
    "60",
    "99",
    "1-5",
    "5-1",
    "1,2,3",
    "mon",
    "MON-FRI",
    "sun",
    "0-7",
    "*/2,3",
    "L",
    "last",
    "?",
    "1#2",
    "",
    "-",
    "٣",
    "²",
    "9" * 50,
    "1-",
    "/5",
    "a-b",
    "jan",
    "feb",
    "31",
    "30",
    "29",
    "2",
]
CRON_FIELD = st.one_of(
    st.sampled_from(CRON_TOKENS), st.text("0123456789*/,-#LW?abcdefjmnorstuvy", max_size=8)
)
CRON_EXAMPLES = [
    "@daily",
    "@hourly",
    "@weekly",
    "@monthly",
    "@yearly",
    "@annually",
    "@midnight",
    "@reboot",
    "@",
    "0 0 30 2 *",
    "0 0 31 4 *",
    "0 0 29 2 *",
    "*/15 * * * *",
    "0 9 * * 1-5",
    "*/10 * * * * *",
    "* * * * *",
]
# Fields that read well: minute hour day month weekday (six fields: seconds first).
GOOD_FIELD = st.sampled_from(["*", "*/5", "*/15", "0", "1", "5", "1-5", "1,3", "*/2", "2-4/2"])
GOOD_WEEKDAY = st.sampled_from(["*", "0", "7", "1-5", "mon-fri", "sun,sat", "*/2", "0-7/3"])
GOOD_CRONS = st.builds(
    lambda fields, weekday: " ".join([*fields, weekday]),
    st.lists(GOOD_FIELD, min_size=4, max_size=5),
    GOOD_WEEKDAY,
)
CRONS = st.one_of(
    GOOD_CRONS,
    st.lists(CRON_FIELD, min_size=4, max_size=7).map(" ".join),
    st.sampled_from(CRON_EXAMPLES),
    STRINGS,
)
ZONE_NAMES = [
    "UTC",
    "Europe/Paris",
    "America/New_York",
    "Asia/Kolkata",
    "America",
    "Europe",
    "posixrules",
    "zone.tab",
    "tzdata.zi",
    "__pycache__",
    "__init__.py",
    "",
    ".",
    "..",
    "/etc/localtime",
    "UTC\x00",
    "a" * 300,
    "Etc/GMT+14",
]
ZONES = st.one_of(st.sampled_from(ZONE_NAMES), STRINGS, ANYTHING)
WHEN_WORDS = [
    "in",
    "at",
    "tomorrow",
    "today",
    "yesterday",
    "next",
    "last",
    "monday",
    "friday",
    "week",
    "weeks",
    "month",
    "months",
    "year",
    "years",
    "day",
    "days",
    "hour",
    "hours",
    "minute",
    "minutes",
    "ago",
    "midnight",
    "noon",
    "am",
    "pm",
    "9am",
    "25:00",
    "10:00",
    "12:30:45",
    "a",
    "an",
    "twelve",
    "three",
    "and",
    "of",
    "the",
    "june",
    "dec",
    "5",
    "31",
    "2030",
    "-",
    "+",
    "/",
    ":",
    ".",
    ",",
    "now",
    "immediately",
    "Z",
    "T",
    "utc",
    "9" * 12,
    "0",
    "1.5",
    "fortnight",
    "decade",
    "century",
    "sec",
    "ms",
]
ISO_TIMES = st.datetimes(
    min_value=datetime(1, 1, 2),
    max_value=datetime(9999, 12, 30),
    timezones=st.one_of(st.none(), st.timezones()),
).map(lambda d: d.isoformat())
WHEN_TEXT = st.one_of(
    st.lists(st.sampled_from(WHEN_WORDS), min_size=1, max_size=6).map(" ".join),
    st.lists(st.sampled_from(WHEN_WORDS), min_size=1, max_size=6).map("".join),
    DURATIONS.map(lambda d: f"in {d}"),
    ISO_TIMES,
    STRINGS,
)
NOW = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 12, 31), timezones=st.just(UTC)
)


# Values that are fine, for the accepted side of each property.
GOOD_DURATIONS = st.one_of(
    st.integers(1, 10**6),
    st.floats(0.001, 1e6),
    st.sampled_from(["5 minutes", "1h 30m", "90", "2 days", "1 week", "0.5s"]),
)
EVERY = st.one_of(st.integers(1, 10**6), st.sampled_from(["1 minute", "1h 30m", "2 days"]))


def field_values(name: str, hostile: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Values for metadata field ``name``: good ones, doubtful ones, or ``hostile`` ones."""
    seconds = mostly(GOOD_DURATIONS, DURATIONS)
    backoff = st.fixed_dictionaries(
        {},
        optional={
            "delay": seconds,
            "max": seconds,
            "jitter": mostly(st.booleans(), SCALARS),
            "factor": mostly(st.floats(1, 10), st.one_of(st.floats(0, 1), NUMBERS)),
            "x": SCALARS,
        },
    )
    schedule = st.fixed_dictionaries(
        {"cron": mostly(GOOD_CRONS, CRONS)},
        optional={
            "timezone": mostly(st.sampled_from(["UTC", "Europe/Paris"]), ZONES),
            "misfire": st.sampled_from(["coalesce", "skip", "later", 1]),
            "grace": mostly(GOOD_DURATIONS, DURATIONS),
            "unique": mostly(st.booleans(), SCALARS),
            "maxAttempts": mostly(st.integers(1, 5), NUMBERS),
            "timeout": NUMBERS,
            "priority": mostly(st.sampled_from(["high", "low"]), NUMBERS),
            "every": DURATIONS,
            "description": STRINGS,
            "data": mostly(PLAIN_JSON, JSON_LIKE),
            "bogus": SCALARS,
            "startAt": WHEN_TEXT,
        },
    )
    priorities = st.sampled_from(["lowest", "low", "normal", "high", "highest", "HIGH"])
    plausible: dict[str, st.SearchStrategy[Any]] = {
        "id": st.from_regex(r"[a-z0-9][a-z0-9_-]{0,10}", fullmatch=True),
        "name": mostly(st.text(max_size=20), STRINGS),
        "description": mostly(st.text(max_size=20), STRINGS),
        "disabled": st.booleans(),
        "concurrency": mostly(st.integers(1, 100), st.one_of(st.integers(-2, 0), NUMBERS)),
        "priority": mostly(st.one_of(priorities, st.integers(-50, 50)), NUMBERS),
        "timeout": mostly(GOOD_DURATIONS, DURATIONS),
        "maxAttempts": mostly(st.integers(1, 10), st.one_of(st.integers(-2, 0), NUMBERS)),
        "backoff": mostly(st.one_of(GOOD_DURATIONS, backoff), DURATIONS),
        "isolation": mostly(st.sampled_from(["thread", "process"]), SCALARS),
        "retention": mostly(st.one_of(GOOD_DURATIONS, st.just("forever")), DURATIONS),
        "failedRetention": mostly(st.one_of(GOOD_DURATIONS, st.just("Forever")), DURATIONS),
        "schedule": mostly(st.one_of(GOOD_CRONS, schedule), CRONS),
        "every": mostly(EVERY, DURATIONS),
        **{
            f: mostly(
                st.lists(st.text(min_size=1, max_size=10), max_size=4),
                st.one_of(st.lists(STRINGS, max_size=4), SCALARS),
            )
            for f in ATTRIBUTE_FIELDS
        },
    }
    return mostly(plausible[name], hostile) if name in plausible else hostile


def metadata(hostile: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[Any, Any]]:
    """Metadata mappings: mostly known fields, each plausible or hostile; or unknown keys."""

    def fields(names: list[str]) -> st.SearchStrategy[dict[Any, Any]]:
        return st.fixed_dictionaries({n: field_values(n, hostile) for n in names})

    known = st.lists(st.sampled_from(sorted(KNOWN_FIELDS)), max_size=6, unique=True)
    return mostly(known.flatmap(fields), st.dictionaries(HASHABLE, ANYTHING, max_size=4))


METADATA = metadata(HOSTILE)
# What a JSON file can hold (no deep nesting: json.dumps's own limit would decide).
JSON_METADATA = metadata(JSON_LIKE).filter(lambda raw: all(isinstance(k, str) for k in raw))

# -- task metadata -----------------------------------------------------------

META_PATH = Path("/srv/tasks/hostile-meta.json")


def assert_usable(meta: TaskMeta) -> None:
    """What a worker and the manager do with accepted metadata must not fail."""
    assert TASK_ID_RE.fullmatch(meta.id), meta.id
    assert isinstance(meta.name, str) and isinstance(meta.description, str)
    assert meta.concurrency is None or (isinstance(meta.concurrency, int) and meta.concurrency >= 1)
    assert isinstance(meta.max_attempts, int) and meta.max_attempts >= 1
    assert meta.timeout is None or 0 < meta.timeout <= MAX_TIMEOUT, meta.timeout
    assert meta.isolation in ("thread", "process")
    now = utcnow()
    # Retention: the worker writes expireAt when a job finishes.
    for state in JobState:
        meta.retention.expire_at(state, now)
    # Backoff: the worker computes the next run of a failed job.
    for attempt in (1, 2, 3, 10, 100, 10_000):
        seconds = meta.backoff.seconds(attempt)
        assert math.isfinite(seconds) and seconds >= 0, (attempt, seconds)
        now + timedelta(seconds=seconds)
    for event in ("start", "progress", "success", "fail", "cancel", "expire", "snooze", "log"):
        assert all(isinstance(p, str) and p for p in meta.attributes_for(event))
    # The worker announces its metadata on the channel (define:tasks): it must be BSON.
    announced = {**meta.raw, "id": meta.id, "name": meta.name, "description": meta.description}
    bson.decode(bson.encode({"tasks": [announced]}))
    if meta.schedule is not None:
        assert meta.schedule.trigger().get_next_fire_time(None, now) is not None
        bson.encode(meta.schedule.job(now))


@FAST
@given(raw=METADATA)
@example(raw={"backoff": {"factor": 10**400}})
@example(raw={"backoff": {"factor": 1e300}, "maxAttempts": 5})
@example(raw={"backoff": {"max": 1e300}, "maxAttempts": 5})
@example(raw={"retention": 1e15})
@example(raw={"failedRetention": "99999999999 days"})
@example(raw={"timeout": "9" * 400 + " days"})
@example(raw={"timeout": 10**400})
@example(raw={"timeout": nest(5_000, "list")})
@example(raw={"priority": 10**30})
@example(raw={"concurrency": 2**64})
@example(raw={"schedule": {"cron": "* * * * *", "timezone": "America"}})
@example(raw={"schedule": {"cron": "* * * * *", "data": {"1": 2}, "grace": 10**400}})
@example(raw={"id": "noop\n"})
def test_check_metadata_accepts_or_names_the_file(raw: dict[Any, Any]) -> None:
    try:
        meta = check_metadata(raw, META_PATH, code=False)
    except TaskDefinitionError as exc:
        lines = str(exc).splitlines()
        assert lines, "an empty message"
        for line in lines:
            assert line.startswith(f"{META_PATH}: "), line
        return
    if meta is None:
        assert raw.get("disabled") is True
    else:
        assert raw.get("disabled") is not True
        assert_usable(meta)


# -- config and metadata files -----------------------------------------------

HOSTILE_FILES = [
    "",
    "\x00",
    "\ufeff{}",
    "null",
    "[]",
    "1",
    '"text"',
    "NaN",
    "{",
    "}",
    "[" * 600,
    '{"a": ' * 5_000 + "1" + "}" * 5_000,
    "- " * 5_000 + "x",
    '{"a": ' + "1" * 5_000 + "}",
    "a: " + "1" * 5_000,
    "a: 2001-02-30",
    "a: 2001-13-14",
    "a: 2001-12-14 25:61:00",
    "a: !!timestamp nope",
    "a: !!int",
    "a: !!int 0x",
    "a: !!int '-'",
    "a: !!float abc",
    "a: !!binary xx",
    "a: !!bool maybe",
    "a: !!python/object/apply:os.system [echo]",
    "a: !!python/name:os.system",
    "? [a]\n: b",
    "? {a: 1}\n: b",
    "a: &x [*x]",
    "a: *nope",
    "<<: *x",
    "a: &x\n  b: *x",
    "%YAML 9.9\n---\na: 1",
    "--- !!set\n? a",
    "!!omap [a: 1]",
    "a: 1\n\ta: 2",
    "a: 1\na: 2",
    '{"a": 1, "a": 2}',
    '{"a": NaN, "b": -Infinity}',
    "a: .inf\nb: .nan",
    "a: 0b2",
    "a: 0x_",
    "a: 12:30:45",
    "a: 1e999",
    "[a, b",
    "'unterminated",
    "a: \x85",
    "\x1b[31m: x",
    "laughs: &a [x, x, x]\nmore: &b [*a, *a, *a]\nall: [*b, *b, *b]",
    "concurrency: 4\npoll_interval: 0.5\nlease: 30",
    "poll-interval: 1\nmongo: embedded",
    '{"concurrency": 4, "poll_interval": 0.5}',
    "concurrency: 4\n\x00",
]
SETTING_NAMES = [
    "mongo",
    "id",
    "standalone",
    "paths",
    "tasks",
    "concurrency",
    "grace",
    "lease",
    "poll_interval",
    "prefix",
    "burst",
    "metrics",
    "verbose",
    "log_format",
    "channel_size",
]


def _json_text(value: Any) -> str | None:
    try:
        return json.dumps(value)
    except (ValueError, TypeError):
        return None


def _yaml_text(value: Any) -> str | None:
    try:
        return yaml.safe_dump(value, allow_unicode=True)
    except (yaml.YAMLError, UnicodeEncodeError):
        return None


SETTING_KEYS = st.sampled_from(SETTING_NAMES + [n.replace("_", "-") for n in SETTING_NAMES])
MAPPINGS = st.dictionaries(st.one_of(SETTING_KEYS, STRINGS), JSON_LIKE, max_size=6)
FILE_TEXTS = st.one_of(
    st.sampled_from(HOSTILE_FILES),
    st.lists(st.sampled_from(HOSTILE_FILES), min_size=2, max_size=4).map("\n".join),
    st.one_of(MAPPINGS, JSON_METADATA).map(_json_text).filter(bool),
    st.one_of(MAPPINGS, JSON_METADATA).map(_yaml_text).filter(bool),
    st.text(ANY_CHAR, max_size=200),
    st.text(":-[]{}&*!|>'\"%@`#,? \n\tabc123", max_size=200),
)
FILE_CONTENTS = st.one_of(FILE_TEXTS, st.binary(max_size=200))
SUFFIXES = st.sampled_from([".json", ".yaml", ".yml"])


def _write(folder: Path, name: str, content: str | bytes) -> Path:
    path = folder / name
    if isinstance(content, str):  # lone surrogates: the bytes Python would write for them
        content = content.encode("utf-8", "surrogatepass")
    path.write_bytes(content)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile-files")


@FILES
@given(content=FILE_CONTENTS, suffix=SUFFIXES)
def test_read_config_file_gives_settings_or_a_config_error(
    files: Path, content: str | bytes, suffix: str
) -> None:
    path = _write(files, f"config{suffix}", content)
    try:
        found = read_config_file(path, SETTING_NAMES)
    except ConfigError as exc:
        [line] = str(exc).splitlines()  # one line, naming the file
        assert line.startswith(f"config file {path}: "), line
        return
    assert isinstance(found, dict)
    assert set(found) <= set(SETTING_NAMES)


@FILES
@given(content=FILE_CONTENTS, suffix=SUFFIXES, with_code=st.booleans())
def test_a_metadata_file_gives_a_task_or_an_error_naming_it(
    files: Path, content: str | bytes, suffix: str, with_code: bool
) -> None:
    folder = files / ("with-code" if with_code else "without-code")
    folder.mkdir(exist_ok=True)
    path = _write(folder, f"hostile-task{suffix}", content)
    if with_code:
        path.with_suffix(".py").write_text("def setup(worker, task):\n    pass\n")
    try:
        meta = parse_task(path)
    except TaskDefinitionError as exc:
        for line in str(exc).splitlines():
            assert line.startswith(f"{path}: "), line
        return
    if meta is not None:
        assert with_code, "accepted without its code file"
        assert_usable(meta)


# -- when and durations --------------------------------------------------------


@FAST
@given(value=st.one_of(DURATIONS, WHEN_TEXT, HOSTILE))
@example(value=10**400)
@example(value="9" * 400 + " days")
@example(value="99999999999 weeks")
def test_parse_duration_gives_finite_seconds_or_a_value_error(value: Any) -> None:
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        assert str(exc)
        return
    assert isinstance(seconds, float)
    assert math.isfinite(seconds) and seconds >= 0, seconds


def _is_duration(value: Any) -> bool:
    try:
        parse_duration(str(value).strip().lower().removeprefix("in "))
    except (ValueError, OverflowError):
        return False
    return True


def _is_iso(value: Any) -> bool:
    if isinstance(value, datetime):
        return True
    try:
        datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


@FAST
@given(when=mostly(WHEN_TEXT, HOSTILE), now=NOW)
@example(when="in " + "9" * 400 + " days", now=datetime(2030, 1, 31, tzinfo=UTC))
@example(when="midnight", now=datetime(2030, 12, 31, 23, 59, tzinfo=UTC))
@example(when="tomorrow at 25:00", now=datetime(2030, 2, 28, 12, tzinfo=UTC))
@example(when=datetime.max, now=datetime(2030, 1, 1, tzinfo=UTC))
@example(when="0001-01-01T00:00:00+01:00", now=datetime(2030, 1, 1, tzinfo=UTC))
@example(when="x" * 50_000, now=datetime(2030, 1, 1, tzinfo=UTC))
def test_parse_when_gives_an_aware_utc_time_or_an_invalid_job_error(
    when: Any, now: datetime
) -> None:
    try:
        found = parse_when(when, now)
    except InvalidJobError as exc:
        assert exc.field == "when" and str(exc)
        return
    assert isinstance(found, datetime)
    assert found.tzinfo is not None and found.utcoffset() == timedelta(0), found
    if not _is_iso(when) and _is_duration(when):
        # A duration is never in the past (a time may be: it is then due at once).
        assert found >= now, (when, now, found)


# -- job data and options ------------------------------------------------------

TASK_IDS = mostly(
    st.sampled_from(["noop", "hostile_echo", "a", "0", "a-b_c"]),
    st.one_of(st.sampled_from(["Noop", "no op", "noop\n", "-x", "", "日本"]), STRINGS, ANYTHING),
)
OPTION_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "priority": mostly(
        st.one_of(st.sampled_from(["high", "LOWEST", " normal ", "7", "-3"]), st.integers(-50, 50)),
        st.one_of(st.sampled_from(["1e3", "x", str(2**63)]), NUMBERS, ANYTHING),
    ),
    "max_attempts": mostly(st.integers(1, 10), st.one_of(st.integers(-1, 0), NUMBERS, ANYTHING)),
    "timeout": mostly(st.floats(0.001, 1e6), st.one_of(st.floats(-1, 1e8), NUMBERS, ANYTHING)),
    "description": mostly(st.text(max_size=50), st.one_of(STRINGS, ANYTHING)),
    "unique": mostly(st.text(min_size=1, max_size=50), st.one_of(STRINGS, ANYTHING)),
}
OPTIONS = st.lists(st.sampled_from(sorted(OPTION_VALUES)), unique=True, max_size=5).flatmap(
    lambda names: st.fixed_dictionaries({n: OPTION_VALUES[n] for n in names})
)
DATA = mostly(PLAIN_JSON, st.one_of(JSON_LIKE, HOSTILE))
STAMP = datetime(2030, 1, 31, 9, 30, 15, 123000, tzinfo=UTC)  # milliseconds: what BSON keeps


def roundtrip(doc: dict[str, Any]) -> dict[str, Any]:
    options = bson.CodecOptions(tz_aware=True, tzinfo=UTC)
    return bson.decode(bson.encode(doc), codec_options=options)


def json_plain(value: Any) -> Any:
    return json.loads(json.dumps(value, allow_nan=False))


@FAST
@given(task=TASK_IDS, data=DATA, opts=OPTIONS)
@example(task="noop\n", data=None, opts={})
@example(task="noop", data=nest(3_000, "list"), opts={})
@example(task="noop", data=nest(150, "dict"), opts={})
@example(task="noop", data={"a": "\ud800"}, opts={})
@example(task="noop", data=None, opts={"description": "\ud800"})
@example(task="noop", data=None, opts={"unique": "\udfff"})
@example(task="noop", data={"a\x00b": 1}, opts={})
@example(task="noop", data=2**63, opts={})
@example(task="noop", data=[math.nan], opts={})
def test_new_job_gives_a_storable_document_or_an_invalid_job_error(
    task: Any, data: Any, opts: dict[str, Any]
) -> None:
    try:
        doc = new_job(task, data, now=STAMP, run_at=STAMP, **opts)
    except InvalidJobError as exc:
        assert str(exc)
        return
    assert TASK_ID_RE.fullmatch(doc["name"]), doc["name"]
    assert doc["data"] == json_plain(data)
    assert roundtrip(doc) == doc
    assert len(bson.encode(doc)) <= 16 * 1024 * 1024


@FAST
@given(value=HOSTILE)
@example(value=nest(3_000, "dict"))
def test_check_json_gives_plain_json_or_an_invalid_job_error(value: Any) -> None:
    try:
        plain = check_json(value, "hostile value", "data")
    except InvalidJobError as exc:
        assert exc.field == "data" and str(exc)
        return
    assert plain == json_plain(plain)
    assert roundtrip({"v": plain}) == {"v": plain}


EXPIRES = mostly(
    st.one_of(
        st.floats(0.001, 1e9),
        st.integers(1, 10**9),
        st.timedeltas(min_value=timedelta(milliseconds=1)),
        st.datetimes(timezones=st.just(UTC)),
        WHEN_TEXT,
    ),
    st.one_of(NUMBERS, STRINGS, ANYTHING),
)


@FAST
@given(expires=EXPIRES)
@example(expires=timedelta.max)
@example(expires=2**1100)
@example(expires="in 10000000000 days")
def test_a_deadline_is_after_the_run_time_or_an_invalid_job_naming_expires(expires: Any) -> None:
    try:
        doc = new_job("noop", None, now=STAMP, run_at=STAMP, expires=expires)
    except InvalidJobError as exc:
        assert exc.field == "expires" and "expires" in str(exc)
        return
    if expires is None:  # no deadline
        assert "expiresAt" not in doc
        return
    assert isinstance(doc["expiresAt"], datetime) and doc["expiresAt"] > STAMP
    bson.encode(doc)  # a date MongoDB stores


def test_data_at_the_size_limit_is_refused_clearly() -> None:
    with pytest.raises(InvalidJobError, match="too large"):
        new_job("noop", "x" * (16 * 1024 * 1024), now=STAMP, run_at=STAMP)
    doc = new_job("noop", "x" * (15 * 1024 * 1024 - 64), now=STAMP, run_at=STAMP)
    assert roundtrip(doc) == doc


@STORED
@given(
    task=st.sampled_from(["noop", "hostile_echo"]),
    data=DATA,
    opts=OPTIONS,
    when=st.one_of(st.none(), st.sampled_from(["now", "in 1 hour"]), WHEN_TEXT),
)
def test_what_the_client_accepts_is_stored_and_read_back_unchanged(
    client: Client, task: str, data: Any, opts: dict[str, Any], when: Any
) -> None:
    before = client.db.jobs.count_documents({})
    try:
        job_id = client.schedule(when, task, data, **opts)
    except InvalidJobError as exc:
        assert str(exc)
        assert client.db.jobs.count_documents({}) == before, "a refused job was stored"
        return
    stored = client.get(job_id)
    assert stored["name"] == task and stored["state"] == "queued"
    if client.db.jobs.count_documents({}) == before:
        # A unique key held by an earlier example's job: its id is returned (as documented).
        assert stored["uniqueKey"] == opts["unique"], stored
        return
    assert stored["data"] == json_plain(data)
    raw = client.db.jobs.find_one({"_id": ObjectId(job_id)})
    assert raw is not None and raw["data"] == json_plain(data)
    assert raw.get("uniqueKey") == opts.get("unique")


@STORED
@given(items=st.lists(DATA, min_size=1, max_size=5), opts=OPTIONS)
def test_enqueue_many_stores_all_or_nothing(
    client: Client, items: list[Any], opts: dict[str, Any]
) -> None:
    before = client.db.jobs.count_documents({})
    opts.pop("unique", None)
    try:
        ids = client.enqueue_many("noop", items, **opts)
    except InvalidJobError:
        assert client.db.jobs.count_documents({}) == before, "part of a refused batch was stored"
        return
    got = {
        str(d["_id"]): d["data"]
        for d in client.db.jobs.find({"_id": {"$in": [ObjectId(i) for i in ids]}})
    }
    assert [got[i] for i in ids] == [json_plain(item) for item in items]


@FAST
@given(text=st.one_of(FILE_TEXTS, mostly(PLAIN_JSON, JSON_LIKE).map(_json_text).filter(bool)))
@example(text='{"n": ' + "1" * 5_000 + "}")
@example(text="[" * 10_000 + "]" * 10_000)
def test_cli_data_is_json_or_a_usage_error(text: str) -> None:
    """``qworker-manager enqueue --data``: JSON, or a usage error (exit 2), never a traceback."""
    try:
        value = json_data(None, None, text)  # type: ignore[arg-type]
    except click.BadParameter as exc:
        [line] = exc.message.splitlines()
        assert line.startswith("not valid JSON: "), line
        return
    json.dumps(value)


# -- schedules -----------------------------------------------------------------

SCHEDULE_OPTIONS: dict[str, st.SearchStrategy[Any]] = {
    "timezone": mostly(st.sampled_from(["UTC", "Europe/Paris", "Asia/Kolkata"]), ZONES),
    "start_at": mostly(
        st.sampled_from(["now", "in 1 hour", "midnight", "2031-01-01T00:00:00Z"]),
        st.one_of(WHEN_TEXT, ANYTHING),
    ),
    "misfire": mostly(st.sampled_from(["coalesce", "skip"]), st.one_of(st.just("later"), ANYTHING)),
    "grace": mostly(st.sampled_from([0, 1, 60, "5 minutes", 0.5]), DURATIONS),
    "unique": mostly(st.booleans(), ANYTHING),
    "priority": OPTION_VALUES["priority"],
    "max_attempts": OPTION_VALUES["max_attempts"],
    "timeout": OPTION_VALUES["timeout"],
    "description": OPTION_VALUES["description"],
}
SCHEDULE_KWARGS = st.lists(
    st.sampled_from(sorted(SCHEDULE_OPTIONS)), unique=True, max_size=5
).flatmap(lambda names: st.fixed_dictionaries({n: SCHEDULE_OPTIONS[n] for n in names}))
TRIGGERS = mostly(
    st.one_of(st.fixed_dictionaries({"every": EVERY}), st.fixed_dictionaries({"cron": GOOD_CRONS})),
    st.one_of(
        st.fixed_dictionaries({"every": DURATIONS}),
        st.fixed_dictionaries({"cron": CRONS}),
        st.fixed_dictionaries({"every": DURATIONS, "cron": CRONS}),
        st.fixed_dictionaries({}),
        st.fixed_dictionaries({"cron": ANYTHING}),
        st.fixed_dictionaries({"every": ANYTHING}),
    ),
)
SCHEDULE_NAMES = mostly(
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:@/-]{0,30}", fullmatch=True),
    st.one_of(st.sampled_from(["a\n", "-a", "a" * 200, "a" * 201, "x y"]), STRINGS, ANYTHING),
)


def assert_fires(schedule: Schedule) -> None:
    now = utcnow()
    assert NAME_RE.fullmatch(schedule.name), schedule.name
    assert (schedule.every is None) != (schedule.cron is None)
    if schedule.every is not None:
        assert MIN_INTERVAL <= schedule.every <= MAX_INTERVAL
    assert math.isfinite(schedule.grace) and schedule.grace >= 0
    first = schedule.trigger().get_next_fire_time(None, now)
    assert isinstance(first, datetime), schedule
    bson.encode(schedule.job(now))
    # The job store pickles the schedule's fields: they must pickle, and be plain.
    kwargs = schedule.stored()
    assert pickle.loads(pickle.dumps(kwargs)) == kwargs
    plain_fields(kwargs)


def plain_fields(kwargs: dict[str, Any]) -> None:
    """A stored schedule is JSON, but for ``start_at`` (a datetime, or None)."""
    start_at = kwargs.get("start_at")
    assert start_at is None or (isinstance(start_at, datetime) and start_at.tzinfo is not None)
    rest = {k: v for k, v in kwargs.items() if k != "start_at"}
    assert json.loads(json.dumps(rest, allow_nan=False)) == rest


@FAST
@given(name=SCHEDULE_NAMES, task=TASK_IDS, data=DATA, trigger=TRIGGERS, opts=SCHEDULE_KWARGS)
@example(name="a\n", task="noop", data=None, trigger={"every": 60}, opts={})
@example(name="n", task="noop", data=None, trigger={"every": 10**400}, opts={})
@example(name="n", task="noop", data=None, trigger={"every": 60}, opts={"grace": 10**400})
@example(
    name="n", task="noop", data=None, trigger={"cron": "* * * * *"}, opts={"timezone": "America"}
)
@example(
    name="n", task="noop", data=None, trigger={"cron": "* * * * *"}, opts={"timezone": "a" * 300}
)
@example(
    name="n",
    task="noop",
    data=None,
    trigger={"every": 60},
    opts={"start_at": "9999-12-31T23:00:00Z"},
)
@example(name="n", task="noop", data=None, trigger={"every": 1}, opts={"timezone": 1})
@example(name="n", task="noop", data=None, trigger={"every": 1}, opts={"timezone": (None, False)})
def test_make_schedule_gives_a_schedule_that_fires_or_an_invalid_schedule_error(
    name: Any, task: Any, data: Any, trigger: dict[str, Any], opts: dict[str, Any]
) -> None:
    try:
        schedule = make_schedule(name, task, data, **trigger, **opts)
    except InvalidScheduleError as exc:
        assert str(exc)
        return
    assert_fires(schedule)


@FAST
@given(
    expr=mostly(GOOD_CRONS, CRONS), zone=st.sampled_from(["UTC", "Europe/Paris", "Asia/Kolkata"])
)
@example(expr="0 0 * * " + "9" * 5_000, zone="UTC")
@example(expr="0 0 * * */" + "9" * 5_000, zone="UTC")
@example(expr="0 0 * * ²", zone="UTC")
def test_cron_trigger_gives_a_trigger_or_an_invalid_schedule_error(expr: str, zone: str) -> None:
    try:
        trigger = cron_trigger(expr, ZoneInfo(zone))
    except InvalidScheduleError as exc:
        assert str(exc).startswith("cron "), str(exc)
        return
    # A cron that never fires (30 February) is a trigger here; make_schedule refuses it.
    nxt = trigger.get_next_fire_time(None, utcnow())
    assert nxt is None or nxt.tzinfo is not None


@STORED
@given(
    name=st.from_regex(r"[a-z][a-z0-9:_-]{0,20}", fullmatch=True),
    data=mostly(PLAIN_JSON, JSON_LIKE),
    trigger=st.one_of(
        st.fixed_dictionaries({"every": DURATIONS}), st.fixed_dictionaries({"cron": CRONS})
    ),
    opts=SCHEDULE_KWARGS,
)
def test_a_schedule_the_client_accepts_is_stored_and_read_back_unchanged(
    client: Client, name: str, data: Any, trigger: dict[str, Any], opts: dict[str, Any]
) -> None:
    try:
        schedule = make_schedule(name, "noop", data, **trigger, **opts)
    except InvalidScheduleError:
        return
    client.add_schedule(schedule)
    assert client.schedules.get(name) == schedule
    assert client.schedule_info(name)["nextRunAt"] is not None


# -- nothing is unpickled but APScheduler's job store ---------------------------

PACKAGE = Path(qworker.__file__).parent
# Modules whose use deserialises code or objects, and the calls that do it.
UNSAFE_MODULES = {
    "pickle",
    "cPickle",
    "_pickle",
    "marshal",
    "shelve",
    "dill",
    "cloudpickle",
    "jsonpickle",
    "joblib",
}
# yaml.load and friends construct arbitrary objects; only yaml.safe_load is safe.
UNSAFE_YAML = {
    "load",
    "load_all",
    "unsafe_load",
    "unsafe_load_all",
    "full_load",
    "full_load_all",
    "Loader",
    "UnsafeLoader",
    "FullLoader",
    "add_constructor",
}


def _unsafe_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [
                f"import {a.name}" for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES
            ]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in UNSAFE_MODULES:
                found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id in UNSAFE_MODULES or (
                node.value.id == "yaml" and node.attr in UNSAFE_YAML
            ):
                found.append(f"{node.value.id}.{node.attr}")
        elif isinstance(node, ast.Name) and node.id in ("eval", "exec"):
            found.append(node.id)
    return [f"{path.relative_to(PACKAGE.parent)}:{use}" for use in found]


def test_qworker_never_unpickles_anything_itself() -> None:
    sources = sorted(PACKAGE.rglob("*.py"))
    assert len(sources) > 30, sources
    store = PACKAGE / "schedulestore.py"
    uses = [use for path in sources if path != store for use in _unsafe_uses(path)]
    assert uses == [], f"deserialisation outside the schedule store: {uses}"
    # The only pickles are APScheduler's, through its MongoDB job store, read by the
    # restricted unpickler of schedulestore.py: pickle's Unpickler, never pickle.loads.
    assert sorted(_unsafe_uses(store)) == [
        "qworker/schedulestore.py:import pickle",
        "qworker/schedulestore.py:pickle.Unpickler",
        "qworker/schedulestore.py:pickle.UnpicklingError",
    ]
    texts = {p.name: p.read_text(encoding="utf-8") for p in sources}
    assert [n for n, t in texts.items() if "MongoDBJobStore" in t] == ["schedulestore.py"]


# What an APScheduler job's state may reference when unpickled: its trigger
# classes, time zones and datetimes. Anything else would be code run on
# unpickling, or an object of ours.
SAFE_GLOBALS = {
    ("apscheduler.triggers.interval", "IntervalTrigger"),
    ("apscheduler.triggers.cron", "CronTrigger"),
    *(
        ("apscheduler.triggers.cron.fields", name)
        for name in ("BaseField", "WeekField", "DayOfMonthField", "DayOfWeekField", "MonthField")
    ),
    *(
        ("apscheduler.triggers.cron.expressions", name)
        for name in (
            "AllExpression",
            "RangeExpression",
            "WeekdayRangeExpression",
            "MonthRangeExpression",
            "WeekdayPositionExpression",
            "LastDayOfMonthExpression",
        )
    ),
    ("zoneinfo", "ZoneInfo"),
    ("datetime", "datetime"),
    ("datetime", "timedelta"),
    ("datetime", "timezone"),
    ("builtins", "getattr"),  # ZoneInfo pickles as getattr(ZoneInfo, "_unpickle"): checked
}


def _zoneinfo_getattr(owner: Any, name: str) -> Any:
    """The one ``getattr`` a schedule's pickle may make."""
    if owner is not ZoneInfo or name != "_unpickle":
        raise pickle.UnpicklingError(f"unexpected getattr({owner!r}, {name!r})")
    return getattr(owner, name)


class _Guarded(pickle.Unpickler):
    """Unpickles only the globals above."""

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self.seen: set[tuple[str, str]] = set()

    def find_class(self, module: str, name: str) -> Any:
        self.seen.add((module, name))
        if (module, name) not in SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"unexpected global {module}.{name}")
        if (module, name) == ("builtins", "getattr"):
            return _zoneinfo_getattr
        return super().find_class(module, name)


def test_stored_schedules_reference_only_fire_with_plain_arguments(client: Client) -> None:
    client.every(
        "30 minutes",
        "noop",
        {"team": "ops", "n": [1, 2.5, None]},
        name="every-30m",
        priority="high",
        max_attempts=3,
        timeout=60,
        description="hostile",
    )
    client.every(
        "1 hour",
        "noop",
        name="from-midnight",
        start_at="midnight",
        misfire="skip",
        grace="5 minutes",
        unique=True,
    )
    client.cron("0 9 * * 1-5", "noop", name="weekdays", tz="Europe/Paris")
    client.cron("*/10 1,2 last jan-mar *", "noop", [1, "two"], name="last-days")
    client.cron("*/10 * * * * *", "noop", name="seconds", tz="Asia/Kolkata")
    docs = list(client.db.schedules.find())
    names = ["every-30m", "from-midnight", "last-days", "seconds", "weekdays"]
    assert sorted(d["_id"] for d in docs) == names
    for doc in docs:
        assert set(doc) == {"_id", "next_run_time", "job_state"}, doc.keys()
        unpickler = _Guarded(bytes(doc["job_state"]))
        state = unpickler.load()
        # The function is a reference by name, resolved by APScheduler on load: ours only.
        assert state["func"] == FIRE == "qworker.scheduler:fire", state["func"]
        assert state["args"] == ()
        assert state["executor"] == "qworker"
        assert set(state["kwargs"]) == {"schedule"}
        stored = state["kwargs"]["schedule"]
        plain_fields(stored)
        assert Schedule.from_stored(stored) == client.schedules.get(doc["_id"])
        assert ("zoneinfo", "ZoneInfo") in unpickler.seen
    # And the guard works: a pickle that calls a function is refused.
    with pytest.raises(pickle.UnpicklingError):
        _Guarded(pickle.dumps(print)).load()
    evil = pickle.dumps(_Evil())
    with pytest.raises(pickle.UnpicklingError):
        _Guarded(evil).load()


class _Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo unpickled",))


# -- the channel decodes what another process might write ------------------------


def test_the_channel_reads_values_pymongo_would_refuse_to_decode() -> None:
    """An out-of-range date or invalid UTF-8 in one message must not blind a subscriber.

    SecantusDB refuses such documents on insert; MongoDB stores them. The
    channel reads with codec options under which they decode.
    """
    good = bytearray(bson.encode({"event": "job:queued", "message": {"s": "ab"}}))
    good[good.find(b"ab")] = 0xFF  # invalid UTF-8
    dates = bson.encode({"event": "job:queued", "message": {"t": bson.DatetimeMS(2**62)}})

    class FakeCollection:
        codec_options = bson.CodecOptions(tz_aware=True, tzinfo=UTC)

        def with_options(self, codec_options: bson.CodecOptions[Any]) -> Any:
            fake = FakeCollection()
            fake.codec_options = codec_options
            return fake

    channel = Channel(FakeCollection())  # type: ignore[arg-type]
    options = channel.collection.codec_options
    for raw in (bytes(good), dates):
        with pytest.raises(bson.errors.InvalidBSON):
            bson.decode(raw, codec_options=FakeCollection.codec_options)
        doc = bson.decode(raw, codec_options=options)
        assert doc["event"] == "job:queued"
    assert options.tz_aware and options.tzinfo is UTC
