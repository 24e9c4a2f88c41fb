"""Exceptions that qworker raises to its users.

Every error a person can cause (a bad file, a bad option, bad job input) is a
``QworkerError`` whose message is meant to be shown as is, on one line.
"""

from __future__ import annotations


class QworkerError(Exception):
    """Base class: the message is a complete, user-facing sentence."""


class ConfigError(QworkerError):
    """A setting (flag, environment variable or config file) is invalid."""


class TaskDefinitionError(QworkerError):
    """A task's metadata or code on disk is invalid."""


class InvalidJobError(QworkerError):
    """A job could not be enqueued because its input is invalid; ``field`` names which."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class JobNotFound(QworkerError):
    """No job has the given id."""


class JobStateError(QworkerError):
    """The job is not in a state that allows the operation."""


class WorkerNotFound(QworkerError):
    """No worker is listed under the given id."""


class WorkerStateError(QworkerError):
    """The worker is not in a state that allows the operation (it stopped, or died)."""


class EmbeddedUnavailable(QworkerError):
    """The embedded server was asked for but cannot be started."""


class InvalidScheduleError(QworkerError):
    """A schedule's trigger, time zone or job options are invalid."""


class ScheduleNotFound(QworkerError):
    """No schedule has the given name."""


class ScheduleExists(QworkerError):
    """A schedule with that name exists and replacing it was not asked for."""


class ScheduleBusy(QworkerError):
    """A "run now" that the schedule's overlap policy skipped (its last fire's job runs)."""


class ScheduleOwnedByTask(QworkerError):
    """The schedule comes from a task's metadata: removed, it would be installed again."""


class TransactionsUnsupported(QworkerError):
    """The server cannot run a transaction (a standalone mongod): enqueue without one."""


# -- raised by the helpers that task code calls ------------------------------


class JobFailed(Exception):
    """``job.fail(msg)``: the run failed with ``msg`` as its reason, and no traceback."""


class WorkerFailed(Exception):
    """``worker.fail(msg)``: task code stopped the worker; the job it ran is handed back."""


class TaskRejected(Exception):
    """``task.fail(msg)`` in ``setup``: the task's definition is invalid."""


# A year, as a run's timeout: a longer snooze is a mistake, not a plan.
MAX_SNOOZE_SECONDS = 366 * 86400.0


class Snooze(Exception):
    """``raise Snooze(seconds)`` in a handler: run the job again ``seconds`` from now.

    The job goes back to ``queued`` without using an attempt; its deadline
    (``expiresAt``) still holds. ``seconds`` is a number above 0 and at most a
    year; anything else is a ``TypeError`` or ``ValueError`` where it is raised,
    which fails the run as any error does.
    """

    def __init__(self, seconds: float) -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise TypeError(f"Snooze takes a number of seconds, not {type(seconds).__name__}")
        if not 0 < seconds <= MAX_SNOOZE_SECONDS:  # NaN fails this too
            raise ValueError(
                f"Snooze takes seconds above 0 and at most {MAX_SNOOZE_SECONDS:g}, not {seconds}"
            )
        super().__init__(f"snoozed for {seconds:g} s")
        self.seconds = float(seconds)
