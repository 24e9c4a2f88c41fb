"""Workflows: jobs that wait for others (chains, groups, chords, DAGs), all their state in MongoDB.

A workflow is built whole in memory (``Workflow``, ``group``), checked, and
inserted at once: one document in ``workflows`` and one job per node. A node
with dependencies is ``waiting``, with the number of its dependencies still
pending and one bit per dependency (``fanin``): each dependency, when it
finishes, clears its bit and counts down in one conditional update, so an
outcome written twice cannot count twice, and the write that reaches zero
queues the node, in the same ordered batch as the finishing job's outcome.

A workflow's node ids share its first nine bytes (its creation second, then
five random bytes; the last three number the nodes), so its jobs are one
range of ``_id``: read through the ``_id`` index, with no index of their own
for every enqueue to pay for. A chain is a workflow in which each step
depends on the one before; its later steps are the range after a step, so a
failure cancels them all in one write (``flow.rest``).
"""

from __future__ import annotations

import os
import re
import reprlib
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from bson import ObjectId

from qworker.errors import InvalidJobError
from qworker.fanin import bit_words
from qworker.model import JobState, check_task_id, new_job
from qworker.steps import Step, step

Doc = dict[str, Any]
T = TypeVar("T")

# Nodes per workflow: a group of 10,000 and its callbacks fit many times over.
MAX_NODES = 100_000
NODE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,99}")
WORKFLOW_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@/-]{0,199}")
# A finished workflow's documents are looked at again this long after its creation
# (then when its longest-kept node's retention ends): the manager's sweep.
FIRST_CHECK = timedelta(days=1)
_LAST_NODE = 0xFFFFFF


@dataclass(frozen=True)
class Node:
    """A node of a workflow being built: what ``Workflow.add`` returns, to name in ``deps``."""

    name: str


@dataclass(frozen=True)
class Dep:
    """A dependency and what its failure does: ``Dep(a, ignore_failure=True)`` runs the
    dependent all the same (it sees the failure in ``job.upstream``)."""

    node: Node | str
    ignore_failure: bool = False


@dataclass
class _Spec:
    name: str
    step: Step
    deps: list[tuple[str, bool]] = field(default_factory=list)  # (node, ignore_failure)


@dataclass
class Built:
    """The documents of a workflow: its own, and its jobs (dependencies first)."""

    workflow: Doc
    jobs: list[Doc]

    @property
    def id(self) -> str:
        return str(self.workflow["_id"])

    @property
    def insert_order(self) -> list[Doc]:
        """The jobs as they are stored: the waiting ones first, so that a node that runs
        and ends while the rest are still being inserted finds the nodes it counts down
        in (a server may show an ordered insert's first documents before its last)."""
        return sorted(self.jobs, key=lambda doc: doc["state"] != JobState.WAITING.value)


class Workflow(Generic[T]):
    """A DAG of jobs, built node by node and enqueued whole.

    ``deps`` name nodes added before, so a cycle cannot be built: naming a
    node not added yet is the error. ``client.workflow(name)`` makes one whose
    ``enqueue`` stores it.
    """

    def __init__(self, name: str, submit: Callable[[Workflow[T], Any], T] | None = None) -> None:
        if not isinstance(name, str) or not WORKFLOW_NAME_RE.fullmatch(name):
            raise InvalidJobError(
                f"workflow name {reprlib.repr(name)}: use 1-200 letters, digits and '_.:@/-', "
                "starting with a letter or digit",
                "name",
            )
        self.name = name
        self._submit = submit
        self._nodes: dict[str, _Spec] = {}

    def add(
        self,
        task: str,
        data: Any = None,
        *,
        name: str | None = None,
        deps: Iterable[Node | Dep | str] = (),
        ignore_failure: bool = False,
        **options: Any,
    ) -> Node:
        """A node running ``task``; ``name`` defaults to the task id (then ``task-2``, …)."""
        node = name if name is not None else self._free_name(check_task_id(task))
        if not isinstance(node, str) or not NODE_NAME_RE.fullmatch(node):
            raise InvalidJobError(
                f"workflow {self.name!r}: node name {reprlib.repr(node)}: use 1-100 letters, "
                "digits and '_.:@-', starting with a letter or digit",
                "name",
            )
        if node in self._nodes:
            raise InvalidJobError(f"workflow {self.name!r}: there is a node {node!r} already")
        if not isinstance(ignore_failure, bool):
            raise InvalidJobError("ignore_failure must be true or false", "ignore_failure")
        if "previous_result" in options:
            raise InvalidJobError(
                f"workflow {self.name!r}: node {node!r}: a node reads its dependencies' "
                "results in job.upstream (previous_result is a chain's)",
                "previous_result",
            )
        return self._add(node, Step(task, data, **options), deps, ignore_failure)

    def _add(
        self, node: str, spec_step: Step, deps: Iterable[Node | Dep | str] | None, ignore: bool
    ) -> Node:
        if len(self._nodes) >= MAX_NODES:
            raise InvalidJobError(f"workflow {self.name!r}: at most {MAX_NODES:,} nodes")
        if isinstance(deps, str | Dep) or (deps is not None and not isinstance(deps, Iterable)):
            raise InvalidJobError(
                f"workflow {self.name!r}: node {node!r}: deps is a list of nodes", "deps"
            )
        spec = _Spec(node, spec_step)
        for dep in deps or ():
            spec.deps.append(self._dep(node, dep, ignore))
        if len({name for name, _ in spec.deps}) != len(spec.deps):
            raise InvalidJobError(f"workflow {self.name!r}: node {node!r} names a dependency twice")
        self._nodes[node] = spec
        return Node(node)

    def _free_name(self, task: str) -> str:
        if task not in self._nodes:
            return task
        n = 2
        while f"{task}-{n}" in self._nodes:
            n += 1
        return f"{task}-{n}"

    def _dep(self, node: str, dep: Node | Dep | str, ignore: bool) -> tuple[str, bool]:
        if isinstance(dep, Dep):
            target, ignore = dep.node, dep.ignore_failure
            if not isinstance(ignore, bool):
                raise InvalidJobError("Dep's ignore_failure must be true or false", "deps")
        else:
            target = dep
        name = target.name if isinstance(target, Node) else target
        if not isinstance(name, str) or name not in self._nodes:
            raise InvalidJobError(
                f"workflow {self.name!r}: node {node!r} depends on {reprlib.repr(name)}, which "
                "is not a node added before it (dependencies come first, so a workflow has no "
                "cycle)",
                "deps",
            )
        return name, ignore

    def enqueue(self, *, session: Any = None) -> T:
        """Store the workflow (in the application's transaction with ``session=``); its id
        (from an ``AsyncClient``'s workflow, a coroutine to await)."""
        if self._submit is None:
            raise InvalidJobError("this workflow was not made by a client: use client.workflow()")
        return self._submit(self, session)

    def build(self, now: datetime, run_at: datetime, kind: str = "workflow") -> Built:
        """The documents, every node validated before any is stored."""
        if not self._nodes:
            raise InvalidJobError(f"workflow {self.name!r} has no node")
        ids = node_ids(len(self._nodes))
        by_name = dict(zip(self._nodes, ids[1:], strict=True))
        workflow = _workflow_doc(ids[0], self.name, kind, len(self._nodes), now)
        jobs = []
        for spec in self._nodes.values():
            doc = new_job(
                spec.step.task, spec.step.data, now=now, run_at=run_at, **spec.step.options
            )
            doc["_id"] = by_name[spec.name]
            flow: Doc = {"id": ids[0], "name": self.name, "node": spec.name}
            if spec.deps:
                flow["deps"] = [
                    {"node": dep, "id": by_name[dep], "ignoreFailure": ignore}
                    for dep, ignore in spec.deps
                ]
                flow["input"] = "previous" if spec.step.previous_result else "upstream"
                _wait(doc, flow, len(spec.deps))
            doc["flow"] = flow
            jobs.append(doc)
        by_id = {doc["_id"]: doc for doc in jobs}
        for doc in jobs:
            for bit, dep in enumerate(doc["flow"].get("deps", [])):
                edge = {"id": doc["_id"], "bit": bit, "ignoreFailure": dep["ignoreFailure"]}
                by_id[dep["id"]]["flow"].setdefault("next", []).append(edge)
        return Built(workflow, jobs)


def chain(
    steps: Sequence[Step | str | tuple[str, Any]],
    now: datetime,
    run_at: datetime,
    name: str = "chain",
) -> Built:
    """Steps that run one after another, each depending on the one before (a step given
    as a bare task takes the previous step's result as its data). A step that fails
    for good cancels every step after it at once, naming itself (``flow.rest``)."""
    parsed = [step(s) for s in _listed(steps)]
    if len(parsed) < 2:
        raise InvalidJobError("a chain needs at least two steps")
    wf: Workflow[None] = Workflow(name)
    before: list[Node] = []
    for each in parsed:
        before = [wf._add(wf._free_name(check_task_id(each.task)), each, before, False)]
    built = wf.build(now, run_at, kind="chain")
    last = built.jobs[-1]["_id"]
    for n, doc in enumerate(built.jobs[:-1]):
        doc["flow"]["rest"] = {"to": last, "step": n + 1, "size": len(built.jobs)}
    return built


def group(
    steps: Sequence[Step | str | tuple[str, Any]],
    now: datetime,
    run_at: datetime,
    on_success: Step | str | tuple[str, Any] | None = None,
    on_complete: Step | str | tuple[str, Any] | None = None,
    name: str = "group",
) -> Built:
    """Children that run side by side, and the callbacks that wait for all of them:
    ``on_success`` (a chord: its data is the children's results, in order) once
    every child succeeded, ``on_complete`` (its data a summary) once every child
    finished, however."""
    Workflow(name)  # the name's check
    children = [step(s) for s in _listed(steps)]
    if not children:
        raise InvalidJobError("a group needs at least one job")
    callbacks = [
        (node, _callback_step(node, s))
        for node, s in (("on_success", on_success), ("on_complete", on_complete))
        if s is not None
    ]
    if len(children) + len(callbacks) > MAX_NODES:
        raise InvalidJobError(f"a group has at most {MAX_NODES:,} jobs, its callbacks counted")
    ids = node_ids(len(children) + len(callbacks))
    jobs = []
    for n, child in enumerate(children):
        doc = new_job(child.task, child.data, now=now, run_at=run_at, **child.options)
        doc.update(_id=ids[n + 1], flow={"id": ids[0], "name": name, "node": str(n)})
        jobs.append(doc)
    over = {"from": ids[1], "to": ids[len(children)], "count": len(children)}
    for offset, (node, callback) in enumerate(callbacks):
        doc = new_job(callback.task, None, now=now, run_at=run_at, **callback.options)
        doc["_id"] = ids[len(children) + 1 + offset]
        doc["flow"] = {"id": ids[0], "name": name, "node": node, "over": over}
        doc["flow"]["input"] = "results" if node == "on_success" else "summary"
        _wait(doc, doc["flow"], len(children))
        for bit, child_doc in enumerate(jobs[: len(children)]):
            edge = {"id": doc["_id"], "bit": bit, "ignoreFailure": node == "on_complete"}
            child_doc["flow"].setdefault("next", []).append(edge)
        jobs.append(doc)
    return Built(_workflow_doc(ids[0], name, "group", len(jobs), now), jobs)


def _listed(steps: Any) -> Sequence[Any]:
    """The steps of a chain or group: a list, never one task's name read letter by letter."""
    if isinstance(steps, str | bytes | Step) or not isinstance(steps, Sequence):
        raise InvalidJobError("steps must be a list of steps (tasks, (task, data), Step)", "steps")
    return steps


def _callback_step(node: str, value: Step | str | tuple[str, Any]) -> Step:
    """A group's callback: a task and its options; its data is what the group gives it."""
    callback = step(value)
    if callback.data is not None:
        raise InvalidJobError(
            f"{node} is given the group's {'results' if node == 'on_success' else 'summary'} "
            f"as its data: give it a task and options, not data ({reprlib.repr(callback.data)})",
            node,
        )
    return callback


def _wait(doc: Doc, flow: Doc, deps: int) -> None:
    """A node with ``deps`` dependencies waits for each, one bit apiece."""
    doc["state"] = JobState.WAITING.value
    flow["pending"] = deps
    flow["bits"] = bit_words(deps)


def _workflow_doc(wf_id: ObjectId, name: str, kind: str, size: int, now: datetime) -> Doc:
    return {
        "_id": wf_id,
        "name": name,
        "kind": kind,
        "size": size,
        "createdAt": now,
        "checkAt": now + FIRST_CHECK,
    }


def node_ids(count: int) -> list[ObjectId]:
    """The workflow's id, then ``count`` node ids: one prefix, numbered from 1."""
    if count > _LAST_NODE:
        raise InvalidJobError(f"a workflow has at most {MAX_NODES:,} nodes")
    prefix = struct.pack(">I", int(time.time())) + os.urandom(5)
    return [ObjectId(prefix + n.to_bytes(3, "big")) for n in range(count + 1)]


def node_range(workflow_id: ObjectId) -> Doc:
    """The ``_id`` range that holds a workflow's nodes, and nothing else's."""
    prefix = workflow_id.binary[:9]
    return {"$gt": workflow_id, "$lte": ObjectId(prefix + _LAST_NODE.to_bytes(3, "big"))}
