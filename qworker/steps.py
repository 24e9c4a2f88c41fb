"""Steps: a task with its data or job options, as chains, groups and workflows take them.

``Step("store", {"table": "pages"}, priority="high")``, a bare ``"task"`` (in a
chain: its data is the previous step's result) or a ``("task", data)`` pair.
"""

from __future__ import annotations

import reprlib
from dataclasses import dataclass
from typing import Any

from qworker.errors import InvalidJobError

STEP_OPTIONS = ("priority", "max_attempts", "timeout", "description", "expires")


@dataclass(frozen=True, init=False)
class Step:
    """A task, and either its data or (in a chain) the previous step's result.

    ``Step("store", {"table": "pages"}, priority="high")``: job options are
    keywords, as ``Client.now`` takes them.
    """

    task: str
    data: Any
    previous_result: bool  # the data is what the step before returned
    options: dict[str, Any]  # priority, max_attempts, timeout, description, expires

    def __init__(
        self, task: str, data: Any = None, *, previous_result: bool = False, **options: Any
    ) -> None:
        unknown = sorted(set(options) - set(STEP_OPTIONS))
        if unknown:
            raise InvalidJobError(
                f"Step({reprlib.repr(task)}): unknown option(s) {', '.join(unknown)} "
                f"(a step takes {', '.join(STEP_OPTIONS)})"
            )
        for name, value in (
            ("task", task),
            ("data", data),
            ("previous_result", previous_result),
            ("options", options),
        ):
            object.__setattr__(self, name, value)


def step(value: Step | str | tuple[str, Any]) -> Step:
    """``Step``, ``"task"`` (in a chain: takes the previous result) or ``("task", data)``."""
    if isinstance(value, Step):
        return value
    if isinstance(value, str):
        return Step(value, previous_result=True)
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        return Step(value[0], value[1])
    raise InvalidJobError(
        f"a step is a task id, a (task, data) pair or a Step, not {reprlib.repr(value)}"
    )
