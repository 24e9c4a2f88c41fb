"""The job object a handler receives."""

from __future__ import annotations

import threading
from typing import Any, Protocol

import structlog

from qworker.model import MAX_LOG_LINE_CHARS

log = structlog.get_logger("qworker.job")


class Reporter(Protocol):
    """Where a job's progress and log lines go (the worker, or a parent process)."""

    def progress(self, job: Job, percent: float, step: str | None) -> None: ...

    def log(self, job: Job, level: str, text: str) -> None: ...


def percent(value: float, step: str | None = None) -> float:
    """0-100, or a float fraction in [0, 1] (``0.5`` is 50%, ``1`` is 1%)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"progress must be a number, not {type(value).__name__}")
    if isinstance(value, float) and 0.0 <= value <= 1.0:
        value = value * 100.0
    if not 0 <= value <= 100:
        raise ValueError(f"progress must be within 0-100 or a fraction 0.0-1.0, not {value}")
    if step is not None and not isinstance(step, str):
        raise TypeError("the progress step label must be a string")
    return float(value)


class Job:
    """One run of a task: its data, and ways to report back while it runs."""

    def __init__(self, doc: dict[str, Any], reporter: Reporter) -> None:
        self.doc = doc
        self.id = str(doc["_id"])
        self.task: str = doc["name"]
        self.data: Any = doc.get("data")
        self.attempt: int = int(doc.get("attempts", 1))
        self._reporter = reporter
        self._cancelled = threading.Event()

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.task} attempt {self.attempt}>"

    @property
    def cancelled(self) -> bool:
        """True once the job was cancelled or timed out: a long handler should stop."""
        return self._cancelled.is_set()

    def cancel(self) -> None:
        self._cancelled.set()

    def progress(self, value: float, step: str | None = None) -> None:
        self._reporter.progress(self, percent(value, step), step)

    def _log(self, level: str, msg: object, args: tuple[object, ...]) -> None:
        text = str(msg) % args if args else str(msg)
        text = text[:MAX_LOG_LINE_CHARS]
        getattr(log, "warning" if level == "warn" else level if level != "log" else "info")(
            text, job_id=self.id, task=self.task
        )
        self._reporter.log(self, level, text)

    def log(self, msg: object, *args: object) -> None:
        self._log("log", msg, args)

    def info(self, msg: object, *args: object) -> None:
        self._log("info", msg, args)

    def warn(self, msg: object, *args: object) -> None:
        self._log("warn", msg, args)

    def error(self, msg: object, *args: object) -> None:
        self._log("error", msg, args)
