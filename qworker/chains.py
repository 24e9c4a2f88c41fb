"""Chains: jobs that run one after another, each started by its predecessor's success.

Every step is inserted at once: the first ``queued``, the rest ``waiting``.
Each step's document names the next one (``chain.next``), so the worker that
records a step's outcome also moves the chain on, in the same ordered write
(``lifecycle.advance`` and ``stop_chain``): on success the next step becomes
``queued`` (with the result as its data when it takes the previous result); on
a final failure or a cancel the steps still waiting are cancelled with a
reason that says where the chain stopped. The chain's id is its last step's
id, so ``client.wait(chain_id)`` waits for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo import UpdateMany, UpdateOne

from qworker.errors import InvalidJobError
from qworker.model import JobState, new_job

Doc = dict[str, Any]
Write = UpdateOne | UpdateMany


STEP_OPTIONS = ("priority", "max_attempts", "timeout", "description", "expires")


@dataclass(frozen=True, init=False)
class Step:
    """One step of a chain: a task, and either its data or the previous step's result.

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
                f"Step({task!r}): unknown option(s) {', '.join(unknown)} "
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
    """``Step``, ``"task"`` (takes the previous result) or ``("task", data)``."""
    if isinstance(value, Step):
        return value
    if isinstance(value, str):
        return Step(value, previous_result=True)
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        return Step(value[0], value[1])
    raise InvalidJobError(
        f"a chain step is a task id, a (task, data) pair or a Step, not {value!r}"
    )


def chain_jobs(
    steps: Sequence[Step | str | tuple[str, Any]], now: datetime, run_at: datetime
) -> list[Doc]:
    """The documents of a chain, first step first; all validated before any is stored."""
    parsed = [step(s) for s in steps]
    if len(parsed) < 2:
        raise InvalidJobError("a chain needs at least two steps")
    docs = [new_job(s.task, s.data, now=now, run_at=run_at, **s.options) for s in parsed]
    chain_id = docs[-1]["_id"]
    for n, doc in enumerate(docs):
        doc["chain"] = {"id": chain_id, "index": n, "size": len(docs)}
        if n:
            doc["state"] = JobState.WAITING.value
        if n + 1 < len(docs):
            following = docs[n + 1]
            doc["chain"]["next"] = {
                "id": following["_id"],
                "task": following["name"],
                "priority": following["priority"],
                "previousResult": parsed[n + 1].previous_result,
            }
    return docs
