"""Task definitions on disk: ``<task>.json``/``.yaml`` metadata beside ``<task>.py``.

Everything here runs before the worker touches MongoDB, so a bad file stops
the worker with its path and the offending field, never a traceback.
"""

from __future__ import annotations

import importlib.util
import re
import reprlib
import sys
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import bson

from qworker.errors import InvalidJobError, TaskDefinitionError
from qworker.files import read_mapping
from qworker.limits import MAX_GLOBAL, RATE_EXPECTED, Limits, check_path, parse_rate
from qworker.model import (
    MAX_ATTEMPTS,
    MAX_CONCURRENCY,
    MAX_TIMEOUT,
    PRIORITY_NAMES,
    Backoff,
    Retention,
    parse_priority,
)
from qworker.when import parse_duration

if TYPE_CHECKING:
    from qworker.schedules import Schedule

METADATA_SUFFIXES = (".json", ".yaml", ".yml")
KEEP_EXPECTED = "a duration such as '7 days' (at most 100 years), or 'forever'"
# Durations become times (expiry, retries): past this they overflow a datetime.
MAX_DURATION = 100 * 366 * 86400.0
ISOLATIONS = ("thread", "process")
DEFAULT_JOB_ATTRIBUTES = ("data", "lastRunAt", "nextRunAt", "lastFinishedAt")
ATTRIBUTE_FIELDS = (
    "jobAttributes",
    "jobStartAttributes",
    "jobProgressAttributes",
    "jobSuccessAttributes",
    "jobFailAttributes",
)


@dataclass(frozen=True)
class TaskMeta:
    """A task's validated metadata and where it came from."""

    id: str
    name: str
    metadata_path: Path
    code_path: Path
    description: str = ""
    concurrency: int | None = None
    priority: int = 0
    timeout: float | None = None
    max_attempts: int = 1
    backoff: Backoff = field(default_factory=Backoff)
    isolation: str = "thread"
    retention: Retention = field(default_factory=Retention)
    schedule: Schedule | None = None  # installed by the manager when a worker defines the task
    limits: Limits = field(default_factory=Limits)  # fleet-wide: ``qworker.limits``
    attributes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    def attributes_for(self, event: str) -> tuple[str, ...]:
        """Job attributes a notification of ``event`` (start, progress, …) carries."""
        specific = self.attributes.get(f"job{event.capitalize()}Attributes")
        if specific is not None:
            return specific
        return self.attributes.get("jobAttributes", DEFAULT_JOB_ATTRIBUTES)


def urlify(name: str) -> str:
    return re.sub(r"[^a-z0-9_]+", "-", name.lower()).strip("-")


def default_name(task_id: str) -> str:
    return re.sub(r"[-_]+", " ", task_id).capitalize()


class _Fields:
    """Collects the problems of one metadata file, field by field."""

    def __init__(self, path: Path, raw: dict[str, Any]) -> None:
        self.path, self.raw, self.problems = path, raw, list[str]()

    def bad(self, name: str, expected: str) -> None:
        try:
            got = repr(self.raw[name])
        except RecursionError:  # nested deeper than repr goes
            got = reprlib.repr(self.raw[name])
        self.problems.append(f"{self.path}: field '{name}': expected {expected}, got {got}")

    def get(self, name: str, check: Callable[[Any], Any], expected: str, default: Any) -> Any:
        if name not in self.raw:
            return default
        try:
            return check(self.raw[name])
        except (TypeError, ValueError, OverflowError):
            self.bad(name, expected)
            return default


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError
    return value


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError
    return value


def _positive_int(value: Any, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise ValueError
    return value


def _concurrency(value: Any) -> int:
    return _positive_int(value, MAX_CONCURRENCY)


def _global(value: Any) -> int:
    return _positive_int(value, MAX_GLOBAL)


def _max_attempts(value: Any) -> int:
    return _positive_int(value, MAX_ATTEMPTS)  # the bound of a job's own max_attempts


def _seconds(value: Any, limit: float = MAX_DURATION) -> float:
    seconds = parse_duration(value)
    if not 0 < seconds <= limit:
        raise ValueError
    return seconds


def _timeout(value: Any) -> float:
    return _seconds(value, MAX_TIMEOUT)  # as a job's own timeout: the event loop's bound


def _priority(value: Any) -> int:
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise TypeError
    try:
        return parse_priority(value)  # as a job's: a name, or a 64-bit number
    except InvalidJobError:
        raise ValueError from None


def _attributes(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise TypeError
    return tuple(value)


def _isolation(value: Any) -> str:
    if value not in ISOLATIONS:
        raise ValueError
    return str(value)


def _backoff(value: Any) -> Backoff:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return Backoff(delay=_seconds(value))
    if not isinstance(value, dict) or set(value) - {"delay", "factor", "max", "jitter"}:
        raise TypeError
    defaults = Backoff()
    factor = value.get("factor", defaults.factor)
    if isinstance(factor, bool) or not isinstance(factor, int | float) or factor < 1:
        raise ValueError
    return Backoff(
        delay=_seconds(value.get("delay", defaults.delay)),
        factor=float(factor),
        max=_seconds(value.get("max", defaults.max)),
        jitter=_boolean(value.get("jitter", defaults.jitter)),
    )


def _keep(value: Any) -> float | None:
    """A retention: a duration, or ``"forever"``."""
    if isinstance(value, str) and value.strip().lower() == "forever":
        return None
    return _seconds(value)


KNOWN_FIELDS = {
    "id",
    "name",
    "description",
    "disabled",
    "concurrency",
    "priority",
    "timeout",
    "maxAttempts",
    "backoff",
    "isolation",
    "retention",
    "failedRetention",
    "globalConcurrency",
    "rateLimit",
    "partitionBy",
    "schedule",
    "every",
    *ATTRIBUTE_FIELDS,
}


SCHEDULE_KEYS = {
    "cron": "cron",
    "every": "every",
    "timezone": "timezone",
    "startAt": "start_at",
    "misfire": "misfire",
    "grace": "grace",
    "unique": "unique",
    "overlap": "overlap",
    "pauseOnFailure": "pause_on_failure",
    "priority": "priority",
    "maxAttempts": "max_attempts",
    "timeout": "timeout",
    "description": "description",
}


def _task_schedule(fields: _Fields, task_id: str) -> Schedule | None:
    """``"schedule": "*/15 * * * *"``, ``"every": "30 minutes"``, or ``"schedule": {...}``."""
    raw = fields.raw
    if "schedule" not in raw and "every" not in raw:
        return None
    from qworker.errors import InvalidScheduleError
    from qworker.schedules import make_schedule  # APScheduler: only for tasks that need it

    name = "every" if "every" in raw else "schedule"
    value = raw[name]
    if "schedule" in raw and "every" in raw:
        fields.problems.append(f"{fields.path}: give 'schedule' or 'every', not both")
        return None
    if name == "every" or isinstance(value, str):
        spec = {name if name == "every" else "cron": value}
    elif isinstance(value, dict) and set(value) <= {*SCHEDULE_KEYS, "data"}:
        spec = value
    else:
        keys = sorted({*SCHEDULE_KEYS, "data"})
        fields.bad(name, f"a cron expression, or a mapping of {keys}")
        return None
    options = {SCHEDULE_KEYS[k]: v for k, v in spec.items() if k in SCHEDULE_KEYS}
    try:
        return make_schedule(
            f"task:{task_id}", task_id, spec.get("data"), origin="metadata", **options
        )
    except (InvalidScheduleError, TypeError) as exc:
        fields.problems.append(f"{fields.path}: field '{name}': {exc}")
        return None
    except RecursionError:  # a value nested too deeply to be shown in a message
        fields.problems.append(f"{fields.path}: field '{name}': a value is nested too deeply")
        return None


def read_metadata(path: Path) -> dict[str, Any]:
    """The parsed metadata mapping of one file; errors name the file and line."""
    return read_mapping(path, str(path), "fields", TaskDefinitionError)


def parse_task(path: Path) -> TaskMeta | None:
    """Validate one metadata file; ``None`` when it is ``disabled``."""
    return check_metadata(read_metadata(path), path, code=True)


def check_metadata(raw: dict[str, Any], path: Path, code: bool) -> TaskMeta | None:
    """Validate a metadata mapping said to come from ``path``; ``code``: its .py must exist.

    The manager checks what workers announce with ``code=False``.
    """
    fields = _Fields(path, raw)
    for unknown in sorted(set(raw) - KNOWN_FIELDS, key=str):
        fields.problems.append(
            f"{path}: unknown field {str(unknown)!r} (known: {', '.join(sorted(KNOWN_FIELDS))})"
        )
    task_id = fields.get("id", _string, "a string", urlify(path.stem))
    if task_id != urlify(task_id) or not task_id:
        fields.problems.append(
            f"{path}: field 'id': {task_id!r} is not url-safe (try {urlify(task_id)!r})"
        )
    disabled = fields.get("disabled", _boolean, "true or false", False)
    attributes = {
        name: fields.get(name, _attributes, "a list of attribute paths", None)
        for name in ATTRIBUTE_FIELDS
        if name in raw
    }
    meta = TaskMeta(
        id=task_id,
        name=fields.get("name", _string, "a string", default_name(task_id)),
        metadata_path=path,
        code_path=path.with_suffix(".py"),
        description=fields.get("description", _string, "a string", ""),
        concurrency=fields.get(
            "concurrency", _concurrency, f"a whole number from 1 to {MAX_CONCURRENCY}", None
        ),
        priority=fields.get(
            "priority", _priority, f"a 64-bit number or one of {list(PRIORITY_NAMES)}", 0
        ),
        timeout=fields.get(
            "timeout", _timeout, "seconds > 0 or a duration like '5 minutes', at most a year", None
        ),
        max_attempts=fields.get(
            "maxAttempts", _max_attempts, f"a whole number from 1 to {MAX_ATTEMPTS}", 1
        ),
        backoff=fields.get(
            "backoff", _backoff, "seconds, or {delay, factor >= 1, max, jitter}", Backoff()
        ),
        isolation=fields.get("isolation", _isolation, f"one of {list(ISOLATIONS)}", "thread"),
        retention=Retention(
            finished=fields.get("retention", _keep, KEEP_EXPECTED, Retention.finished),
            failed=fields.get("failedRetention", _keep, KEEP_EXPECTED, Retention.failed),
        ),
        schedule=_task_schedule(fields, task_id),
        limits=Limits(
            concurrency=fields.get(
                "globalConcurrency", _global, f"a whole number from 1 to {MAX_GLOBAL}", None
            ),
            rate=fields.get("rateLimit", parse_rate, RATE_EXPECTED, None),
            partition_by=fields.get("partitionBy", check_path, "a path such as 'data.x'", None),
        ),
        attributes={k: v for k, v in attributes.items() if v is not None},
        raw=raw,
    )
    if code and not meta.code_path.is_file() and not disabled:
        fields.problems.append(f"{path}: missing code file {meta.code_path.name} beside it")
    for name in sorted(raw) if not fields.problems else ():
        try:  # workers announce their metadata to the manager in a channel message
            bson.encode({name: raw[name]})
        except (bson.errors.InvalidDocument, OverflowError, ValueError) as exc:
            fields.problems.append(f"{path}: field '{name}': cannot be stored in MongoDB: {exc}")
    if fields.problems:
        raise TaskDefinitionError("\n".join(fields.problems))
    return None if disabled else meta


@dataclass
class Discovery:
    """What a scan of the task paths found: usable tasks and broken files."""

    tasks: dict[str, TaskMeta] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # task id -> message
    disabled: dict[str, Path] = field(default_factory=dict)  # task id -> metadata file


def discover(paths: Iterable[Path]) -> Discovery:
    found = Discovery()
    for folder in paths:
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.suffix not in METADATA_SUFFIXES or not path.is_file():
                continue
            try:
                meta = parse_task(path)
            except TaskDefinitionError as exc:
                found.errors.setdefault(urlify(path.stem), str(exc))
                continue
            if meta is None:
                found.disabled.setdefault(urlify(path.stem), path)
            elif meta.id in found.tasks:
                first = found.tasks[meta.id].metadata_path
                found.errors[meta.id] = f"{path}: task id '{meta.id}' is already defined by {first}"
            else:
                found.tasks[meta.id] = meta
    return found


def select(paths: Sequence[Path], wanted: Sequence[str]) -> list[TaskMeta]:
    """The metadata of the named tasks; one error lists everything wrong or missing."""
    if not wanted:
        raise TaskDefinitionError(
            "no tasks named: give task ids as arguments or with --tasks "
            f"(looked in {', '.join(str(p) for p in paths)})"
        )
    missing_dirs = [str(p) for p in paths if not p.is_dir()]
    found = discover(paths)
    problems, selected = [], []
    for task_id in dict.fromkeys(wanted):
        if task_id in found.errors:
            problems.append(found.errors[task_id])
        elif task_id in found.tasks:
            selected.append(found.tasks[task_id])
        elif task_id in found.disabled:
            path = found.disabled[task_id]
            problems.append(f"{path}: task '{task_id}' is disabled (field 'disabled' is true)")
        else:
            folders = ", ".join(str(p) for p in paths)
            note = f" (missing folder: {', '.join(missing_dirs)})" if missing_dirs else ""
            problems.append(
                f"task '{task_id}' not found: no {task_id}.json/.yaml in {folders}{note}"
            )
    if problems:
        raise TaskDefinitionError("\n".join(problems))
    return selected


def import_code(meta: TaskMeta) -> ModuleType:
    """Import a task's code file; an error names the file and line that raised."""
    module_name = f"qworker_tasks.{meta.id.replace('-', '_')}"
    spec = importlib.util.spec_from_file_location(module_name, meta.code_path)
    if spec is None or spec.loader is None:
        raise TaskDefinitionError(f"{meta.code_path}: cannot be imported as Python code")
    module = importlib.util.module_from_spec(spec)
    try:
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise TaskDefinitionError(f"{where(exc, meta.code_path)}: {describe(exc)}") from None
    if not callable(getattr(module, "setup", None)):
        raise TaskDefinitionError(
            f"{meta.code_path}: defines no setup(worker, task) function to register the handler"
        )
    return module


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def where(exc: BaseException, path: Path) -> str:
    """``path:line`` of the deepest frame of ``exc`` in ``path``."""
    line = getattr(exc, "lineno", None) if isinstance(exc, SyntaxError) else None
    for frame in traceback.extract_tb(exc.__traceback__):
        if Path(frame.filename).resolve() == path.resolve():
            line = frame.lineno
    return f"{path}:{line}" if line else str(path)
