"""What a task module's ``setup(worker, task)`` registers: handlers and hooks."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, overload

from qworker.worker.threads import call

if TYPE_CHECKING:
    from qworker.job import Job

F = TypeVar("F", bound=Callable[..., Any])
Handler = Callable[..., Any]


class Registry:
    """Handlers by task id, and the lifecycle hooks around them.

    * ``initializer`` / ``finalizer``: run once when the worker starts / stops.
    * ``task_initializer(id)`` / ``task_finalizer(id)``: the same, per task.
    * ``before_job`` / ``after_job``: observers around every job; one that
      raises fails the job. ``after_job(job, result, error)`` sees the outcome.
    * ``compose(id, steps)``: one handler made of several, run in series.
    """

    def __init__(self) -> None:
        self.handlers: dict[str, Handler] = {}
        self.initializers: list[Callable[[], Any]] = []
        self.finalizers: list[Callable[[], Any]] = []
        self.task_initializers: dict[str, list[Callable[[], Any]]] = {}
        self.task_finalizers: dict[str, list[Callable[[], Any]]] = {}
        self.before: list[Callable[..., Any]] = []
        self.after: list[Callable[..., Any]] = []

    @overload
    def task(self, task_id: str) -> Callable[[F], F]: ...

    @overload
    def task(self, task_id: str, handler: F) -> F: ...

    def task(self, task_id: str, handler: F | None = None) -> F | Callable[[F], F]:
        """Register the handler of ``task_id``: ``@worker.task(id)`` or ``worker.task(id, fn)``."""

        def register(fn: F) -> F:
            if not callable(fn):
                raise TypeError(f"the handler of task '{task_id}' must be callable")
            if task_id in self.handlers:
                raise ValueError(f"task '{task_id}' already has a handler")
            self.handlers[task_id] = fn
            return fn

        return register(handler) if handler is not None else register

    def compose(self, task_id: str, steps: list[Handler] | tuple[Handler, ...]) -> Handler:
        """Register, as the handler of ``task_id``, ``steps`` run in series in one job.

        Why: a pipeline of small functions stays one job (one claim, one lease,
        one result, one retry unit) on one worker, its intermediate values never
        stored or serialised, and each step stays testable on its own.

        Step 1 gets the job; each later step gets it with ``job.data`` set to
        the previous step's return value; the last step's value is the result.
        Before each step the job's progress names it. A cancelled (or timed
        out) job stops before its next step. A failing step fails the job with
        its own exception, after a log line naming it; a retry runs every step
        again. If any step is ``async def`` so is the handler, and the plain
        steps run in threads, off the loop.
        """
        if not isinstance(steps, list | tuple):
            raise TypeError(
                f"the steps of task '{task_id}' must be a list of callables, "
                f"not {type(steps).__name__}"
            )
        if not steps:
            raise ValueError(f"task '{task_id}' is composed of no steps: give at least one")
        for n, step in enumerate(steps, 1):
            if not callable(step):
                raise TypeError(
                    f"step {n} of task '{task_id}' must be callable, not {type(step).__name__}"
                )
        if task_id in self.handlers:
            raise ValueError(f"task '{task_id}' already has a handler")
        chain = tuple(steps)  # later changes to the caller's list change nothing
        names = [_step_name(step) for step in chain]
        handler: Handler
        if any(inspect.iscoroutinefunction(step) for step in chain):
            async def composed_async(job: Job) -> Any:
                given = value = job.data
                try:
                    for n, step in enumerate(chain):
                        if _stop_before(job, n, names):
                            return None
                        job.data = value
                        try:
                            value = await call(step, job)
                        except Exception as exc:
                            _failed(job, n, names, exc)
                            raise
                    return value
                finally:
                    job.data = given  # after_job observers see the job's own data

            handler = composed_async
        else:

            def composed(job: Job) -> Any:
                given = value = job.data
                try:
                    for n, step in enumerate(chain):
                        if _stop_before(job, n, names):
                            return None
                        job.data = value
                        try:
                            value = step(job)
                        except Exception as exc:
                            _failed(job, n, names, exc)
                            raise
                    return value
                finally:
                    job.data = given  # after_job observers see the job's own data

            handler = composed
        handler.__name__ = handler.__qualname__ = f"compose[{task_id}]"
        return self.task(task_id, handler)

    def initializer(self, fn: F) -> F:
        self.initializers.append(fn)
        return fn

    def finalizer(self, fn: F) -> F:
        self.finalizers.append(fn)
        return fn

    def task_initializer(self, task_id: str) -> Callable[[F], F]:
        def register(fn: F) -> F:
            self.task_initializers.setdefault(task_id, []).append(fn)
            return fn

        return register

    def task_finalizer(self, task_id: str) -> Callable[[F], F]:
        def register(fn: F) -> F:
            self.task_finalizers.setdefault(task_id, []).append(fn)
            return fn

        return register

    def before_job(self, fn: F) -> F:
        self.before.append(fn)
        return fn

    def after_job(self, fn: F) -> F:
        self.after.append(fn)
        return fn


def _step_name(step: Handler) -> str:
    """The progress label of a step: its function's name."""
    name = getattr(step, "__name__", None) or getattr(getattr(step, "func", None), "__name__", None)
    return str(name or type(step).__name__)


def _stop_before(job: Job, n: int, names: list[str]) -> bool:
    """Whether to stop before step ``n`` (cancelled); if not, report it as the one running."""
    if job.cancelled:
        job.warn(
            "stopped before step %d/%d (%s): the job was cancelled or timed out",
            n + 1, len(names), names[n],
        )  # fmt: skip
        return True
    job.progress(100 * n // len(names), step=names[n])
    return False


def _failed(job: Job, n: int, names: list[str], exc: Exception) -> None:
    job.error(
        "step %d/%d (%s) failed: %s: %s", n + 1, len(names), names[n], type(exc).__name__, exc
    )
