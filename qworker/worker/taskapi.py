"""What a task's code is given: the ``worker`` and ``task`` of ``setup(worker, task)``.

Task code runs in three places: in the worker's threads, on its event loop
(``async def``) and, with ``isolation: process``, in a child process. It must
see the same API in all of them, so the API is these two objects, and what
they need from the process they run in (writing a sub-task, stopping the
worker) is an ``Engine``: the worker daemon is one, a child process's pipe to
its parent is another.

The helpers ``log``, ``info``, ``warn``, ``error`` and ``fail`` are defined on
the worker, the task and the job alike, as the seed's task API has them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from types import ModuleType
from typing import Any, Protocol

import structlog

from qworker import workflows
from qworker.errors import InvalidJobError, TaskDefinitionError, TaskRejected, WorkerFailed
from qworker.logs import message
from qworker.model import new_job
from qworker.steps import Step
from qworker.tasks import TaskMeta, describe, where
from qworker.when import parse_when, utcnow
from qworker.worker.registry import Registry
from qworker.workflows import Built, Workflow

Doc = dict[str, Any]


class Engine(Protocol):
    """What task code needs from the process that runs it."""

    @property
    def worker_id(self) -> str: ...

    def add_subtask(self, doc: Doc) -> None:
        """Write this job with the next batch of writes, before the caller's outcome."""

    def add_workflow(self, built: Built) -> None:
        """Store this workflow: its jobs with the next batch, before the caller's outcome."""

    def fail_worker(self, reason: str) -> None:
        """Stop the worker: its running jobs are handed back, and it exits non-zero."""


class Helpers:
    """``log``/``info``/``warn``/``error`` through structlog, with some context bound."""

    def __init__(self, logger: Any) -> None:
        self._logger = logger

    def log(self, msg: object, *args: object) -> None:
        self._logger.info(message(msg, args))

    def info(self, msg: object, *args: object) -> None:
        self._logger.info(message(msg, args))

    def warn(self, msg: object, *args: object) -> None:
        self._logger.warning(message(msg, args))

    def error(self, msg: object, *args: object) -> None:
        self._logger.error(message(msg, args))


class TaskSetup(Registry, Helpers):
    """The ``worker`` that ``setup(worker, task)`` receives.

    ``task()``, ``compose()`` and the hooks register code (see ``Registry``);
    ``schedule_task`` queues a sub-task, ``schedule_group`` and
    ``schedule_workflow`` a group or a DAG; ``log``…``error`` log with the worker
    id; ``fail`` stops the worker.
    """

    def __init__(self, engine: Engine) -> None:
        Registry.__init__(self)
        logger = structlog.get_logger("qworker.task").bind(worker_id=engine.worker_id)
        Helpers.__init__(self, logger)
        self._engine = engine

    @property
    def id(self) -> str:
        """This worker's id (``--id``)."""
        return self._engine.worker_id

    def schedule_task(
        self, when: str | datetime | None, task: str, data: Any = None, **opts: Any
    ) -> str:
        """Queue a job of ``task`` for ``when`` from task code; returns its id at once.

        It is written with the worker's next batch of writes, before the
        outcome of the job that asked for it: once that job's result can be
        read, the sub-task exists. ``opts`` are those of ``Client.schedule``
        except ``unique``.
        """
        if "unique" in opts:
            raise InvalidJobError("a sub-task cannot be unique: enqueue it with a qworker.Client")
        now = utcnow()
        doc = new_job(task, data, now=now, run_at=parse_when(when, now), **opts)
        self._engine.add_subtask(doc)
        return str(doc["_id"])

    def schedule_group(
        self,
        steps: Sequence[Step | str | tuple[str, Any]],
        *,
        on_success: Step | str | tuple[str, Any] | None = None,
        on_complete: Step | str | tuple[str, Any] | None = None,
        name: str = "group",
    ) -> str:
        """Fan out from task code: a group, with callbacks that collect it (see
        ``Client.group``); written as ``schedule_task`` writes. Returns its id."""
        now = utcnow()
        built = workflows.group(steps, now, now, on_success, on_complete, name)
        self._engine.add_workflow(built)
        return built.id

    def schedule_workflow(self, workflow: Workflow[Any]) -> str:
        """Store a DAG built with ``qworker.Workflow(name)`` from task code; its id."""
        now = utcnow()
        built = workflow.build(now, now)
        self._engine.add_workflow(built)
        return built.id

    def fail(self, msg: object, *args: object) -> None:
        """Stop this worker with ``msg`` as the reason: it exits non-zero (1).

        Called from a handler, that job is handed back to the queue (it is
        not the job's fault); every other running job finishes within the grace.
        """
        reason = message(msg, args)
        self._engine.fail_worker(reason)
        raise WorkerFailed(reason)


class TaskHandle(Helpers):
    """The ``task`` that ``setup(worker, task)`` receives: its metadata, and the helpers."""

    def __init__(self, meta: TaskMeta, worker_id: str) -> None:
        super().__init__(
            structlog.get_logger("qworker.task").bind(worker_id=worker_id, task=meta.id)
        )
        self.meta = meta
        self.id, self.name, self.description = meta.id, meta.name, meta.description

    @property
    def metadata(self) -> dict[str, Any]:
        """The metadata file's fields, as written."""
        return dict(self.meta.raw)

    def fail(self, msg: object, *args: object) -> None:
        """In ``setup``: reject this task as an invalid definition (the worker exits 2)."""
        raise TaskRejected(message(msg, args))


def run_setup(module: ModuleType, worker: TaskSetup, task: TaskHandle) -> None:
    """Call the module's ``setup``; failures are reported like import failures.

    ``task.fail`` names the file and the reason; ``worker.fail`` stops the
    worker as it would from a handler.
    """
    path = task.meta.code_path
    try:
        module.setup(worker, task)
    except WorkerFailed:
        raise
    except TaskRejected as exc:
        raise TaskDefinitionError(f"{where(exc, path)}: task '{task.id}' rejected: {exc}") from None
    except Exception as exc:
        raise TaskDefinitionError(f"{where(exc, path)}: setup() raised {describe(exc)}") from None
