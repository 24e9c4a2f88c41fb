"""structlog set-up: console lines on a terminal, JSON lines otherwise.

A process-isolated job's child process logs as its worker does: the worker
hands it the ``LogSettings`` it was configured with.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import structlog
from bson import ObjectId


@dataclass(frozen=True)
class LogSettings:
    verbosity: int = 0  # 0 is INFO, 1 DEBUG for qworker, 2 DEBUG for the libraries too
    fmt: str = "json"  # or "console"


_current = LogSettings()


def log_settings() -> LogSettings:
    """What this process's logs were configured with."""
    return _current


def configure(verbosity: int | LogSettings = 0, fmt: str | None = None) -> None:
    """Log at ``verbosity`` in ``fmt`` (default: console on a terminal, else JSON)."""
    global _current
    if isinstance(verbosity, LogSettings):
        settings = verbosity
    else:
        settings = LogSettings(verbosity, fmt or ("console" if sys.stderr.isatty() else "json"))
    _current = settings
    level = logging.DEBUG if settings.verbosity > 0 else logging.INFO
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if settings.fmt == "console"
        else structlog.processors.JSONRenderer(default=_plain)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=logging.DEBUG if settings.verbosity > 1 else logging.WARNING)


def _plain(value: Any) -> Any:
    """Times as ISO 8601 and ids as strings, as the API shows them; anything else as text."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, ObjectId):
        return str(value)
    return repr(value)


class Throttle:
    """Warnings of one kind at most every ``every`` seconds; the rest counted, and the
    count said with the next one, so a flood of bad messages floods no log."""

    def __init__(self, logger: Any, every: float = 10.0) -> None:
        self._logger, self._every = logger, every
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warning(self, event: str, count: int = 1, **fields: Any) -> None:
        now = time.monotonic()
        held = self._held.get(event, 0) + count
        if now - self._last.get(event, -self._every) < self._every:
            self._held[event] = held
            return
        self._last[event], self._held[event] = now, 0
        self._logger.warning(event, count=held, **fields)


def message(msg: object, args: tuple[object, ...]) -> str:
    """``msg % args``, as the logging module formats a call such as ``info("%s done", n)``."""
    return str(msg) % args if args else str(msg)
