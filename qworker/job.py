"""The job object a handler receives."""

from __future__ import annotations

import threading
from typing import Any, NoReturn, Protocol

import structlog

from qworker.errors import JobFailed
from qworker.logs import message
from qworker.model import MAX_LOG_LINE_CHARS

log = structlog.get_logger("qworker.job")


class Reporter(Protocol):
    """Where a job's progress and log lines go (the worker, or a parent process)."""

    def progress(self, job: Job, percent: float, step: str | None) -> None: ...

    def log(self, job: Job, level: str, text: str) -> None: ...


def percent(current: float, total: float | None = None) -> float:
    """0-100: ``current`` percent, or ``current`` out of ``total``.

    No number is guessed at: ``0.5`` alone is half a percent, never half.
    """
    for name, value in (("progress", current), ("total", total)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if total is None:
        if not 0 <= current <= 100:
            raise ValueError(f"progress must be a percentage from 0 to 100, not {current}")
        return float(current)
    if not total > 0 or not 0 <= current <= total:
        raise ValueError(f"progress must be from 0 to total > 0, not {current} of {total}")
    return 100.0 * current / total


class Job:
    """One run of a task: its data, and ways to report back while it runs."""

    def __init__(self, doc: dict[str, Any], reporter: Reporter) -> None:
        self.doc = doc
        self.id = str(doc["_id"])
        self.task: str = doc["name"]
        self.data: Any = doc.get("data")
        self.attempt: int = int(doc.get("attempts", 1))
        # A workflow node's dependencies: node name -> result (or ``UpstreamFailure``).
        self.upstream: dict[str, Any] = {}
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

    def progress(
        self, current: float, total: float | str | None = None, step: str | None = None
    ) -> None:
        """How far the run is: ``progress(40)`` is 40%, ``progress(3, total=12)`` is 25%.

        ``step`` labels what runs now. A string second argument is the step, as
        in ``progress(50, "loading")``.
        """
        if isinstance(total, str):
            total, step = None, total
        if step is not None and not isinstance(step, str):
            raise TypeError("the progress step label must be a string")
        self._reporter.progress(self, percent(current, total), step)

    def fail(self, msg: object, *args: object) -> NoReturn:
        """End this run as a failure, with ``msg % args`` as its reason and no traceback.

        The task's retry rules apply as to any failure.
        """
        raise JobFailed(message(msg, args)[:MAX_LOG_LINE_CHARS])

    def _log(self, level: str, msg: object, args: tuple[object, ...]) -> None:
        text = message(msg, args)[:MAX_LOG_LINE_CHARS]
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
