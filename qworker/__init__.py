"""qworker: a distributed task worker for Python backed by MongoDB."""

from qworker.chains import Step
from qworker.client import Client
from qworker.errors import (
    ConfigError,
    InvalidJobError,
    InvalidScheduleError,
    JobNotFound,
    JobStateError,
    QworkerError,
    ScheduleExists,
    ScheduleNotFound,
    ScheduleOwnedByTask,
    TaskDefinitionError,
)
from qworker.job import Job
from qworker.model import JobState

__version__ = "0.1.0"

__all__ = [
    "Client",
    "ConfigError",
    "InvalidJobError",
    "InvalidScheduleError",
    "Job",
    "JobNotFound",
    "JobState",
    "JobStateError",
    "QworkerError",
    "ScheduleExists",
    "ScheduleNotFound",
    "ScheduleOwnedByTask",
    "Step",
    "TaskDefinitionError",
    "__version__",
]
