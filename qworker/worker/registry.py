"""What a task module's ``setup(worker, task)`` registers: handlers and hooks."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, overload

from qworker.worker.compose import composed

if TYPE_CHECKING:
    pass

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
        """Register, as the handler of ``task_id``, ``steps`` run in series in one job
        (see ``compose``)."""
        return self.task(task_id, composed(task_id, steps, taken=task_id in self.handlers))

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
