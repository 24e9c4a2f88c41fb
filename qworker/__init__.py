"""qworker: a distributed task worker for Python backed by MongoDB."""

from qworker.client import Client
from qworker.errors import (
    ConfigError,
    InvalidJobError,
    JobNotFound,
    JobStateError,
    QworkerError,
    TaskDefinitionError,
)
from qworker.job import Job
from qworker.model import JobState

__version__ = "0.1.0"

__all__ = [
    "Client",
    "ConfigError",
    "InvalidJobError",
    "Job",
    "JobNotFound",
    "JobState",
    "JobStateError",
    "QworkerError",
    "TaskDefinitionError",
    "__version__",
]
