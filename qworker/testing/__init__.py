"""Helpers for an application's own tests: run its jobs in the test, and assert on what
it enqueued, against a real MongoDB server (the pytest fixtures: ``qworker.pytest_plugin``).

``run_jobs`` runs the due jobs with the real task code and store; ``enqueued``,
``assert_enqueued`` and ``refute_enqueued`` look at the queued and waiting jobs.
"""

from qworker.testing.asserts import assert_enqueued, enqueued, refute_enqueued
from qworker.testing.running import JobOutcome, WorkerExitError, run_jobs

__all__ = [
    "JobOutcome",
    "WorkerExitError",
    "assert_enqueued",
    "enqueued",
    "refute_enqueued",
    "run_jobs",
]
