"""``worker.compose(id, steps)``: one handler made of several, run in series in one job.

Why: a pipeline of small functions stays one job (one claim, one lease, one
result, one retry unit) on one worker, its intermediate values never stored or
serialised, and each step stays testable on its own.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from qworker.errors import Snooze
from qworker.worker.threads import call

if TYPE_CHECKING:
    from qworker.job import Job

Handler = Callable[..., Any]


def composed(task_id: str, steps: list[Handler] | tuple[Handler, ...], taken: bool) -> Handler:
    """The handler of ``task_id`` that runs ``steps`` in series (``taken``: the task
    has a handler already, which is an error).

    Step 1 gets the job; each later step gets it with ``job.data`` set to
    the previous step's return value; the last step's value is the result.
    Before each step the job's progress names it. A cancelled (or timed
    out) job stops before its next step. A failing step fails the job with
    its own exception, after a log line naming it; a retry runs every step
    again, and so does the run after a step's ``Snooze``. If any step is
    ``async def`` so is the handler, and the plain steps run in threads,
    off the loop.
    """
    if not isinstance(steps, list | tuple):
        raise TypeError(
            f"the steps of task '{task_id}' must be a list of callables, not {type(steps).__name__}"
        )
    if not steps:
        raise ValueError(f"task '{task_id}' is composed of no steps: give at least one")
    for n, step in enumerate(steps, 1):
        if not callable(step):
            raise TypeError(
                f"step {n} of task '{task_id}' must be callable, not {type(step).__name__}"
            )
    if taken:
        raise ValueError(f"task '{task_id}' already has a handler")
    chain = tuple(steps)  # later changes to the caller's list change nothing
    names = [_step_name(step) for step in chain]
    handler: Handler
    if any(inspect.iscoroutinefunction(step) for step in chain):

        async def run_steps_async(job: Job) -> Any:
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

        handler = run_steps_async
    else:

        def run_steps(job: Job) -> Any:
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

        handler = run_steps
    handler.__name__ = handler.__qualname__ = f"compose[{task_id}]"
    return handler


def _step_name(step: Handler) -> str:
    """The progress label of a step: its function's name."""
    name = getattr(step, "__name__", None) or getattr(getattr(step, "func", None), "__name__", None)
    return str(name or type(step).__name__)


def _stop_before(job: Job, n: int, names: list[str]) -> bool:
    """Whether to stop before step ``n`` (cancelled); if not, report it as the one running."""
    if job.cancelled:
        job.warn(
            "stopped before step %d/%d (%s): the job was cancelled or timed out",
            n + 1,
            len(names),
            names[n],
        )
        return True
    job.progress(100 * n // len(names), step=names[n])
    return False


def _failed(job: Job, n: int, names: list[str], exc: Exception) -> None:
    if isinstance(exc, Snooze):
        return  # no failure: the run says it snoozed
    job.error(
        "step %d/%d (%s) failed: %s: %s", n + 1, len(names), names[n], type(exc).__name__, exc
    )
