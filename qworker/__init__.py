"""qworker: a distributed task worker for Python backed by MongoDB."""

from qworker.asyncclient import AsyncClient
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
    Snooze,
    TaskDefinitionError,
    TransactionsUnsupported,
)
from qworker.fanin import UpstreamFailure
from qworker.job import Job
from qworker.model import JobState
from qworker.steps import Step
from qworker.workflows import Dep, Workflow

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "Client",
    "ConfigError",
    "Dep",
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
    "Snooze",
    "Step",
    "TaskDefinitionError",
    "TransactionsUnsupported",
    "UpstreamFailure",
    "Workflow",
    "__version__",
]
