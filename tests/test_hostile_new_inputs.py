"""Hostile input for what qworker took in lately: workflows, fleet-wide limits, unique modes.

tests/test_hostile_input.py checks task metadata, config files, ``when`` strings, job
data and options, and schedules. This file checks, the same way, the inputs added
since: workflow specs (``client.workflow``'s builder, ``group``, ``chain``), the
fleet-wide limit fields of task metadata (``globalConcurrency``, ``rateLimit``,
``partitionBy``), the dict form of ``unique=`` (``while``, ``period``, ``replace``),
and the HTTP bodies that carry filters and unique keys with what the schemathesis
fuzz (tests/manager/test_api_fuzz.py) never sends: lone surrogates as JSON escapes,
``NaN`` and ``Infinity``.

Each property: accepted, then stored (or parsed) exactly as given and documented; or
refused with qworker's own error naming the field, and then nothing was stored. Any
other exception (``TypeError``, a bson error, ``RecursionError``) is reported with
what had been stored by then. Each bug found is pinned as an ``@example``.
"""

from __future__ import annotations

import json
import math
import re
import reprlib
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import bson
import pytest
from bson import ObjectId
from fastapi.testclient import TestClient
from hypothesis import event, example, given, note, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from test_hostile_input import (
    ANYTHING,
    DATA,
    DURATIONS,
    EXPIRES,
    FAST,
    GOOD_DURATIONS,
    HASHABLE,
    HOSTILE,
    NUMBERS,
    OPTION_VALUES,
    PLAIN_JSON,
    SCALARS,
    STORED,
    STRINGS,
    TASK_IDS,
    WHEN_TEXT,
    json_plain,
    mostly,
    nest,
)

from qworker import Client, Dep, Step, limits, workflows
from qworker.errors import InvalidJobError, TaskDefinitionError
from qworker.manager.api import create_app
from qworker.model import MAX_UNIQUE_KEY_CHARS, MAX_UNIQUE_PERIOD, TASK_ID_RE, new_job
from qworker.steps import STEP_OPTIONS, step
from qworker.store import throttle_key
from qworker.tasks import check_metadata
from qworker.when import parse_duration, utcnow
from qworker.workflows import MAX_NODES, Node, node_range

T = TypeVar("T")
Doc = dict[str, Any]

PURE = settings(FAST, max_examples=150)  # no server: cheap examples
HTTP = settings(STORED, max_examples=30)

# What a refusal may name as its field (``InvalidJobError.field``).
JOB_FIELDS = {"task", "data", "priority", "max_attempts", "timeout", "description", "expires"}
WORKFLOW_FIELDS = {
    *JOB_FIELDS,
    "name",
    "unique",
    "when",
    "ignore_failure",
    "deps",
    "steps",
    "previous_result",
    "on_success",
    "on_complete",
}

# -- outcomes --------------------------------------------------------------------


_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxstring, _SHOWN.maxother = 8, 120, 120
_SHOWN.maxlist = _SHOWN.maxtuple = _SHOWN.maxdict = 10


def show(**inputs: Any) -> None:
    """Note the inputs, bounded (a value 20,000 lists deep has no repr), for the report."""
    for name, value in inputs.items():
        note(f"{name} = {_SHOWN.repr(value)}")


def count_as(kind: str) -> None:
    """How often each outcome came, for ``--hypothesis-show-statistics``."""
    if currently_in_test_context():
        event(kind)


def counts(client: Client) -> tuple[int, int]:
    """(jobs, workflows) stored."""
    return client.db.jobs.count_documents({}), client.db.workflows.count_documents({})


def fresh(client: Client) -> None:
    """Each example starts from an empty queue (the fixture's database is reused)."""
    client.db.jobs.delete_many({})
    client.db.workflows.delete_many({})


def outcome(
    call: Callable[[], T], fields: Collection[str], client: Client | None = None
) -> T | InvalidJobError:
    """``call()``'s result, or its ``InvalidJobError`` once checked: one line, naming one
    of ``fields`` if a field at all, and (with ``client``) nothing stored. Any other
    exception fails, saying what had been stored by then."""
    before = counts(client) if client is not None else None
    try:
        result = call()
    except InvalidJobError as exc:
        message = str(exc)
        assert message and "\n" not in message, repr(message)
        assert exc.field is None or exc.field in fields, (exc.field, message)
        if client is not None:
            after = counts(client)
            assert after == before, f"refused ({message}), yet stored: {before} -> {after}"
            count_as(f"refused, field {exc.field}")
        return exc
    except Exception as exc:
        stored = "" if client is None else f"; (jobs, workflows) {before} -> {counts(client)}"
        name = f"{type(exc).__module__}.{type(exc).__name__}"
        raise AssertionError(f"{name} escaped: {str(exc)[:300]}{stored}") from exc
    if client is not None:
        count_as("stored")
    return result


def valid_key(key: Any) -> bool:
    """A unique key as documented: 1-512 characters, storable as UTF-8."""
    if not isinstance(key, str) or not 0 < len(key) <= MAX_UNIQUE_KEY_CHARS:
        return False
    try:
        key.encode()
    except UnicodeEncodeError:
        return False
    return True


def job_problem(task: Any, data: Any, options: dict[str, Any]) -> str | None:
    """Why a job of these would be refused (``new_job`` is checked on its own elsewhere)."""
    try:
        new_job(task, data, now=utcnow(), run_at=utcnow(), **options)
    except InvalidJobError as exc:
        return str(exc)
    return None


def assert_options_stored(doc: Doc, task: str, data: Any, options: dict[str, Any]) -> None:
    """A node's job options are stored as a plain job's would be."""
    expected = new_job(task, data, now=utcnow(), run_at=utcnow(), **options)
    assert doc["name"] == task and doc["data"] == json_plain(data)
    for key in ("priority", "maxAttempts", "timeout", "description"):
        assert doc.get(key) == expected.get(key), (key, doc.get(key), expected.get(key))
    assert ("expiresAt" in doc) == ("expiresAt" in expected)


def in_one_range(client: Client, workflow_id: ObjectId, size: int) -> list[Doc]:
    """The workflow's nodes, read as its ``_id`` range: all of the queue's jobs."""
    nodes = list(client.db.jobs.find({"_id": node_range(workflow_id)}).sort("_id", 1))
    assert len(nodes) == size == client.db.jobs.count_documents({})
    return nodes


# -- strategies: workflow specs ----------------------------------------------------
#
# Two tiers, as ``mostly`` mixes them: a plausible spec (valid values, with the mistakes
# a person makes in building a graph: a name taken, a dependency not added yet, a
# dependency named twice), or a hostile one (any value anywhere). Values nested
# 20,000 deep are in the examples only: where one makes a test fail, Hypothesis cannot
# print it (its printer recurses), and the failure is reported as its own RecursionError.

NODE_NAMES = ["a", "b", "c", "noop", "noop-2", "x.y:1@z", "B_9"]
TASKS = st.sampled_from(["noop", "other", "a-b_c"])
HOSTILE_NAMES = st.one_of(
    st.sampled_from(["", "-a", "a b", "a\n", "a" * 100, "a" * 101, "é", "a/b"]), STRINGS, ANYTHING
)
PLAIN_WORKFLOW_NAMES = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:@/-]{0,20}", fullmatch=True)
WORKFLOW_NAMES = mostly(
    PLAIN_WORKFLOW_NAMES,
    st.one_of(st.sampled_from(["", "a b", "-a", "a" * 200, "a" * 201, "a\n"]), STRINGS, ANYTHING),
)
PLAIN_UNIQUE_KEYS = st.one_of(st.none(), st.text(min_size=1, max_size=20))
UNIQUE_KEYS = mostly(
    PLAIN_UNIQUE_KEYS,
    st.one_of(st.sampled_from(["", "a" * 512, "a" * 513, "\ud800", "a\x00b"]), STRINGS, ANYTHING),
)
FLAGS = mostly(st.booleans(), st.one_of(SCALARS, ANYTHING))
# How a node names a dependency: ("node", i) the handle add() returned for the i-th
# node accepted (a handle of no node of this workflow when there is none), ("name", s)
# a name, ("dep", ref, flag) a Dep of either with ignore_failure=flag, ("raw", v) any value.
HANDLE_REFS = st.tuples(st.just("node"), st.integers(0, 6))
NAME_REFS = st.tuples(st.just("name"), st.sampled_from(NODE_NAMES))
PLAIN_DEP_REFS = st.one_of(
    HANDLE_REFS,
    HANDLE_REFS,
    NAME_REFS,
    st.tuples(st.just("dep"), st.one_of(HANDLE_REFS, NAME_REFS), st.booleans()),
)
DEP_REFS = mostly(
    PLAIN_DEP_REFS,
    st.one_of(
        st.tuples(st.just("name"), STRINGS),
        st.tuples(st.just("dep"), st.one_of(HANDLE_REFS, NAME_REFS), FLAGS),
        st.tuples(st.just("raw"), ANYTHING),
    ),
)
NOT_ITERABLE = st.one_of(st.none(), st.integers(), st.floats(), st.booleans(), st.just(object()))
STEP_OPTION_VALUES: dict[str, st.SearchStrategy[Any]] = {
    **{
        name: OPTION_VALUES[name] for name in ("priority", "max_attempts", "timeout", "description")
    },
    "expires": EXPIRES,
}
PLAIN_OPTION_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "priority": st.sampled_from(["high", "LOWEST", -5, 3, "7"]),
    "max_attempts": st.integers(1, 5),
    "timeout": st.floats(0.5, 3600),
    "description": st.text(max_size=20),
    "expires": st.sampled_from([3600, "2 hours", timedelta(days=1)]),
}


def options_of(values: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    names = st.lists(st.sampled_from(sorted(values)), unique=True, max_size=3)
    return names.flatmap(lambda chosen: st.fixed_dictionaries({n: values[n] for n in chosen}))


PLAIN_OPTIONS = options_of(PLAIN_OPTION_VALUES)
# Keywords a step does not take (add's own are name, deps and ignore_failure).
ODD_OPTIONS = st.dictionaries(
    st.sampled_from(["previous_result", "unique", "colour", "when", "session", "check_tasks"]),
    SCALARS,
    min_size=1,
    max_size=2,
)
NODE_OPTIONS = st.one_of(
    options_of(STEP_OPTION_VALUES),
    st.builds(lambda a, b: {**a, **b}, PLAIN_OPTIONS, ODD_OPTIONS),
)
PLAIN_NODES = st.fixed_dictionaries(
    {
        "task": TASKS,
        "data": PLAIN_JSON,
        "name": st.one_of(st.none(), st.sampled_from(NODE_NAMES)),
        "deps": st.lists(PLAIN_DEP_REFS, max_size=3),
        "ignore_failure": st.booleans(),
        "options": PLAIN_OPTIONS,
    }
)
HOSTILE_NODES = st.fixed_dictionaries(
    {
        "task": TASK_IDS,
        "data": DATA,
        "name": mostly(st.one_of(st.none(), st.sampled_from(NODE_NAMES)), HOSTILE_NAMES),
        "deps": mostly(st.lists(DEP_REFS, max_size=3), NOT_ITERABLE),
        "ignore_failure": FLAGS,
        "options": mostly(PLAIN_OPTIONS, NODE_OPTIONS),
    }
)
# A plausible workflow, or one whose every node may be hostile.
DAGS = mostly(
    st.tuples(PLAIN_WORKFLOW_NAMES, PLAIN_UNIQUE_KEYS, st.lists(PLAIN_NODES, max_size=6)),
    st.tuples(
        WORKFLOW_NAMES, UNIQUE_KEYS, st.lists(mostly(PLAIN_NODES, HOSTILE_NODES), max_size=6)
    ),
)


def node(name: Any, deps: Any = (), task: Any = "noop") -> Doc:
    """A node spec, for the examples: ``deps`` as DEP_REFS makes them (or not a list)."""
    deps = list(deps) if isinstance(deps, tuple) else deps
    spec = {"task": task, "data": None, "name": name, "ignore_failure": False, "options": {}}
    return {**spec, "deps": deps}


# -- workflows: the DAG builder ---------------------------------------------------

NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,99}")  # as its error message says


@dataclass
class Planned:
    """A node the builder should accept, and what it should store."""

    task: Any
    data: Any
    options: dict[str, Any]
    deps: list[tuple[str, Any]]  # (node, ignore_failure)


def resolve(ref: tuple[Any, ...], handles: list[Node]) -> Any:
    kind = ref[0]
    if kind == "node":
        return handles[ref[1] % len(handles)] if handles else Node("not-in-this-workflow")
    if kind == "dep":
        return Dep(resolve(ref[1], handles), ignore_failure=ref[2])
    return ref[1]


def resolve_deps(deps: Any, handles: list[Node]) -> Any:
    return [resolve(ref, handles) for ref in deps] if isinstance(deps, list) else deps


def free_name(task: Any, taken: Collection[str]) -> Any:
    """The name a node added without one gets: its task id, then ``task-2``, ..."""
    if task not in taken:
        return task
    n = 2
    while f"{task}-{n}" in taken:
        n += 1
    return f"{task}-{n}"


def edges_of(deps: list[Any], ignore: Any) -> list[tuple[Any, Any]]:
    """(node, ignore_failure) per dependency: a Dep's own flag, else the node's."""
    edges = []
    for dep in deps:
        target, flag = (dep.node, dep.ignore_failure) if isinstance(dep, Dep) else (dep, ignore)
        edges.append((target.name if isinstance(target, Node) else target, flag))
    return edges


def expected_node(planned: dict[str, Planned], spec: Doc, deps: Any) -> tuple[str, Planned] | None:
    """The node ``add`` should make of ``spec``, by the documented rules; None: refused."""
    name = spec["name"]
    if name is None:  # named after its task, which must then be a task id
        if not isinstance(spec["task"], str) or not TASK_ID_RE.fullmatch(spec["task"]):
            return None
        name = free_name(spec["task"], planned)
    bad_name = not isinstance(name, str) or not NODE_NAME.fullmatch(name) or name in planned
    odd = set(spec["options"]) - set(STEP_OPTIONS)
    if bad_name or odd or not isinstance(spec["ignore_failure"], bool):
        return None
    if deps is None:  # no dependencies, as with deps=()
        deps = []
    if not isinstance(deps, list):
        return None
    edges = edges_of(deps, spec["ignore_failure"])
    for target, flag in edges:
        if not isinstance(target, str) or target not in planned or not isinstance(flag, bool):
            return None
    if len({target for target, _ in edges}) != len(edges):
        return None
    return name, Planned(spec["task"], spec["data"], spec["options"], edges)


def add_node(wf: workflows.Workflow[str], spec: Doc, deps: Any) -> Node:
    return wf.add(
        spec["task"],
        spec["data"],
        name=spec["name"],
        deps=deps,
        ignore_failure=spec["ignore_failure"],
        **spec["options"],
    )


def build(wf: workflows.Workflow[str], specs: list[Doc]) -> tuple[dict[str, Planned], list[Doc]]:
    """Add each node; what was accepted, and what was but should not have been (kept, to
    see what it stores). A refused node must be one that should be: nothing else."""
    planned: dict[str, Planned] = {}
    handles: list[Node] = []
    wrongly_accepted = []
    for spec in specs:
        deps = resolve_deps(spec["deps"], handles)
        expected = expected_node(planned, spec, deps)
        added = outcome(partial(add_node, wf, spec, deps), WORKFLOW_FIELDS)
        if isinstance(added, InvalidJobError):
            assert expected is None, f"refused a node that is fine ({added}): {spec}"
            continue
        if expected is None:
            wrongly_accepted.append(spec)
            edges = edges_of(deps, spec["ignore_failure"]) if isinstance(deps, list) else []
            expected = added.name, Planned(spec["task"], spec["data"], spec["options"], edges)
        assert added.name == expected[0] and added.name not in planned, (added, expected)
        handles.append(added)
        planned[added.name] = expected[1]
    return planned, wrongly_accepted


def dag_problem(planned: dict[str, Planned], unique: Any) -> str | None:
    """Why ``enqueue`` should refuse these nodes; None: it should store them."""
    if not planned:
        return "no node"
    if unique is not None and not valid_key(unique):
        return f"unique {unique!r:.50}"
    for name, plan in planned.items():
        problem = job_problem(plan.task, plan.data, plan.options)
        if problem is not None:
            return f"node {name}: {problem}"
    return None


def assert_dag_stored(
    client: Client, workflow_id: str, name: str, unique: Any, planned: dict[str, Planned]
) -> None:
    """One workflow document, one job per node, each with its dependencies, their
    count and bits, and the edges back from each dependency; nothing else."""
    wf = client.db.workflows.find_one({"_id": ObjectId(workflow_id)})
    assert wf is not None and client.db.workflows.count_documents({}) == 1
    assert (wf["name"], wf["kind"], wf["size"]) == (name, "workflow", len(planned))
    assert wf.get("uniqueKey") == unique
    docs = {doc["flow"]["node"]: doc for doc in in_one_range(client, wf["_id"], len(planned))}
    assert list(docs) == list(planned)  # in the order added
    ids = {n: doc["_id"] for n, doc in docs.items()}
    for n, plan in planned.items():
        doc, flow = docs[n], docs[n]["flow"]
        assert (flow["id"], flow["name"]) == (wf["_id"], name)
        assert_options_stored(doc, plan.task, plan.data, plan.options)
        deps = flow.get("deps", [])
        assert [(d["node"], d["ignoreFailure"]) for d in deps] == plan.deps
        assert all(d["id"] == ids[d["node"]] for d in deps)
        if plan.deps:
            assert doc["state"] == "waiting" and flow["pending"] == len(plan.deps)
            assert flow["input"] == "upstream"
        else:
            assert doc["state"] == "queued" and "pending" not in flow
        wanted = sorted(
            (ids[other], bit, ignore)
            for other, p in planned.items()
            for bit, (dep, ignore) in enumerate(p.deps)
            if dep == n
        )
        got = sorted((e["id"], e["bit"], e["ignoreFailure"]) for e in flow.get("next", []))
        assert got == wanted, (n, got, wanted)
    info = client.workflow_info(workflow_id)
    assert [v["node"] for v in info["nodes"]] == list(planned)
    assert info["progress"] == {"finished": 0, "total": len(planned)}


@STORED
@given(dag=DAGS)
# A Dep's ignore_failure is not checked (add's own is): object() reaches the insert,
# after the workflow's document: bson's InvalidDocument, and the workflow half-stored.
@example(dag=("wf", None, [node("a"), node("b", [("dep", ("name", "a"), object())])]))
# ... and "yes" is stored as the dependency's ignoreFailure.
@example(dag=("wf", None, [node("a"), node("b", [("dep", ("name", "a"), "yes")])]))
# A unique key that is no UTF-8 text: UnicodeEncodeError from pymongo, not InvalidJobError.
@example(dag=("wf", "\ud800", [node("a")]))
# A node named after its task, when the task is no string: TypeError (unhashable).
@example(dag=("wf", None, [node(None, task=["noop"])]))
# deps=None: no dependencies (it raised TypeError).
@example(dag=("wf", None, [node("a", None)]))
# A value nested too deeply to be shown in the message: RecursionError.
@example(dag=("wf", None, [node("a", [("raw", nest(20_000, "list"))])]))
@example(dag=(nest(20_000, "list"), None, [node("a")]))
def test_a_dag_is_stored_exactly_as_built_or_refused_with_nothing_stored(
    client: Client, dag: tuple[Any, Any, list[Doc]]
) -> None:
    name, unique, specs = dag
    show(name=name, unique=unique, specs=specs)
    fresh(client)
    wf = outcome(partial(client.workflow, name, unique=unique), WORKFLOW_FIELDS)
    if isinstance(wf, InvalidJobError):
        assert wf.field == "name", wf
        return
    planned, wrongly_accepted = build(wf, specs)
    workflow_id = outcome(wf.enqueue, WORKFLOW_FIELDS, client)
    problem = dag_problem(planned, unique)
    if isinstance(workflow_id, InvalidJobError):
        assert problem is not None, f"refused a valid workflow: {workflow_id}"
        return
    assert problem is None, f"stored although {problem}"
    assert_dag_stored(client, workflow_id, name, unique, planned)
    assert not wrongly_accepted, f"add() accepted what it should refuse: {wrongly_accepted}"
    if unique is not None:  # while it runs, the same name and key store nothing more
        assert outcome(wf.enqueue, WORKFLOW_FIELDS, client) == workflow_id


# -- workflows: groups and chains ---------------------------------------------------

# A step as chain and group take it: ("bare", task) a task id, ("pair", task, data),
# ("step", task, data, options) a Step, ("raw", value) anything at all.
PLAIN_STEPS = st.one_of(
    st.tuples(st.just("bare"), TASKS),
    st.tuples(st.just("pair"), TASKS, PLAIN_JSON),
    st.tuples(st.just("step"), TASKS, PLAIN_JSON, PLAIN_OPTIONS),
)
STEP_SPECS = mostly(
    PLAIN_STEPS,
    st.one_of(
        st.tuples(st.just("bare"), TASK_IDS),
        st.tuples(st.just("pair"), TASK_IDS, DATA),
        st.tuples(st.just("step"), TASK_IDS, DATA, NODE_OPTIONS),
        st.tuples(st.just("raw"), ANYTHING),
    ),
)
PLAIN_CALLBACKS = st.one_of(
    st.none(),
    st.tuples(st.just("bare"), TASKS),
    st.tuples(st.just("step"), TASKS, st.none(), PLAIN_OPTIONS),
)
CALLBACKS = mostly(PLAIN_CALLBACKS, STEP_SPECS)  # with data: refused, it is given theirs
PLAIN_WHEN = st.sampled_from([None, "now", "in 1 hour", "2031-01-01T00:00:00Z"])
WHEN = mostly(PLAIN_WHEN, st.one_of(WHEN_TEXT, ANYTHING))


def make_step(spec: tuple[Any, ...]) -> Any:
    """The step value a spec stands for (a Step may refuse its options here)."""
    kind = spec[0]
    if kind in ("bare", "raw"):
        return spec[1]
    if kind == "pair":
        return spec[1], spec[2]
    return Step(spec[1], spec[2], **spec[3])


@dataclass
class GroupSpec:
    steps: list[tuple[Any, ...]]
    on_success: tuple[Any, ...] | None
    on_complete: tuple[Any, ...] | None
    name: Any
    when: Any
    unique: Any

    def callbacks(self) -> dict[str, Any]:
        given = {"on_success": self.on_success, "on_complete": self.on_complete}
        return {node: make_step(spec) for node, spec in given.items() if spec is not None}

    def enqueue(self, client: Client) -> str:
        steps = [make_step(spec) for spec in self.steps]
        return client.group(
            steps, name=self.name, when=self.when, unique=self.unique, **self.callbacks()
        )


GROUPS = mostly(
    st.builds(
        GroupSpec,
        steps=st.lists(PLAIN_STEPS, min_size=1, max_size=5),
        on_success=PLAIN_CALLBACKS,
        on_complete=PLAIN_CALLBACKS,
        name=st.one_of(st.just("group"), PLAIN_WORKFLOW_NAMES),
        when=PLAIN_WHEN,
        unique=PLAIN_UNIQUE_KEYS,
    ),
    st.builds(
        GroupSpec,
        steps=st.lists(STEP_SPECS, max_size=5),
        on_success=CALLBACKS,
        on_complete=CALLBACKS,
        name=WORKFLOW_NAMES,
        when=WHEN,
        unique=UNIQUE_KEYS,
    ),
)


def assert_group_stored(client: Client, group_id: str, spec: GroupSpec) -> None:
    """The children side by side, queued; each callback waiting for all of them, each
    child's edge to it numbered by the child's place; nothing else."""
    children = [step(make_step(s)) for s in spec.steps]
    callbacks = {node: step(value) for node, value in spec.callbacks().items()}
    n = len(children)
    wf = client.db.workflows.find_one({"_id": ObjectId(group_id)})
    assert wf is not None and client.db.workflows.count_documents({}) == 1
    assert (wf["name"], wf["kind"], wf["size"]) == (spec.name, "group", n + len(callbacks))
    assert wf.get("uniqueKey") == spec.unique
    docs = in_one_range(client, wf["_id"], n + len(callbacks))
    kids, backs = docs[:n], docs[n:]
    assert [d["flow"]["node"] for d in docs] == [*map(str, range(n)), *callbacks]
    for bit, (doc, child) in enumerate(zip(kids, children, strict=True)):
        assert_options_stored(doc, child.task, child.data, child.options)
        assert doc["state"] == "queued" and "deps" not in doc["flow"]
        edges = sorted((e["id"], e["bit"], e["ignoreFailure"]) for e in doc["flow"].get("next", []))
        assert edges == sorted((b["_id"], bit, b["flow"]["node"] == "on_complete") for b in backs)
    over = {"from": kids[0]["_id"], "to": kids[-1]["_id"], "count": n}
    for doc, (node, callback) in zip(backs, callbacks.items(), strict=True):
        assert_options_stored(doc, callback.task, None, callback.options)
        flow = doc["flow"]
        assert doc["state"] == "waiting" and (flow["pending"], flow["over"]) == (n, over)
        assert flow["input"] == ("results" if node == "on_success" else "summary")
    assert len({doc["nextRunAt"] for doc in docs}) == 1
    info = client.group_info(group_id)
    assert info["progress"] == {"finished": 0, "total": n} and info["results"] == [None] * n


ONE_CHILD = [("bare", "noop")]


@STORED
@given(spec=GROUPS)
# A unique key that is no UTF-8 text: UnicodeEncodeError from pymongo.
@example(spec=GroupSpec(ONE_CHILD, None, None, "group", None, "\ud800"))
# Values nested too deeply for the message that refuses them: RecursionError.
@example(spec=GroupSpec(ONE_CHILD, ("pair", "noop", nest(20_000, "list")), None, "g", None, None))
@example(spec=GroupSpec([("bare", nest(20_000, "list"))], None, None, "group", None, None))
def test_a_group_is_stored_exactly_as_given_or_refused_with_nothing_stored(
    client: Client, spec: GroupSpec
) -> None:
    show(**vars(spec))
    fresh(client)
    group_id = outcome(partial(spec.enqueue, client), WORKFLOW_FIELDS, client)
    if isinstance(group_id, InvalidJobError):
        return
    assert spec.steps, "a group of no job was stored"
    assert_group_stored(client, group_id, spec)
    if spec.unique is not None:  # while it runs, the same name and key store nothing more
        assert outcome(partial(spec.enqueue, client), WORKFLOW_FIELDS, client) == group_id


def enqueue_chain(client: Client, specs: list[tuple[Any, ...]], when: Any) -> str:
    return client.chain([make_step(spec) for spec in specs], when)


def assert_chain_stored(client: Client, chain_id: str, specs: list[tuple[Any, ...]]) -> None:
    """Each step after the one before, named after its task; the id is the last's."""
    steps = [step(make_step(s)) for s in specs]
    [wf] = client.db.workflows.find()
    assert (wf["name"], wf["kind"], wf["size"]) == ("chain", "chain", len(steps))
    docs = in_one_range(client, wf["_id"], len(steps))
    assert str(docs[-1]["_id"]) == chain_id
    names: list[str] = []
    for each in steps:
        names.append(free_name(each.task, names))
    for i, (doc, each) in enumerate(zip(docs, steps, strict=True)):
        flow = doc["flow"]
        assert_options_stored(doc, each.task, each.data, each.options)
        assert flow["node"] == names[i]
        if i == 0:
            assert doc["state"] == "queued" and "deps" not in flow
        else:
            assert doc["state"] == "waiting" and flow["pending"] == 1
            assert flow["deps"] == [
                {"node": names[i - 1], "id": docs[i - 1]["_id"], "ignoreFailure": False}
            ]
            assert flow["input"] == ("previous" if each.previous_result else "upstream")
        if i < len(steps) - 1:
            assert flow["next"] == [{"id": docs[i + 1]["_id"], "bit": 0, "ignoreFailure": False}]
            assert flow["rest"] == {"to": docs[-1]["_id"], "step": i + 1, "size": len(steps)}
        else:
            assert "next" not in flow and "rest" not in flow


@STORED
@given(specs=mostly(st.lists(PLAIN_STEPS, max_size=5), st.lists(STEP_SPECS, max_size=5)), when=WHEN)
# A step whose task is no string: TypeError (its node is named after the task).
@example(specs=[("step", ["noop"], None, {}), ("bare", "noop")], when=None)
def test_a_chain_is_stored_step_after_step_or_refused_with_nothing_stored(
    client: Client, specs: list[tuple[Any, ...]], when: Any
) -> None:
    show(specs=specs, when=when)
    fresh(client)
    chain_id = outcome(partial(enqueue_chain, client, specs, when), WORKFLOW_FIELDS, client)
    if isinstance(chain_id, InvalidJobError):
        return
    assert len(specs) >= 2, "a chain of fewer than two steps was stored"
    assert_chain_stored(client, chain_id, specs)


def test_past_the_node_limit_a_workflow_or_a_group_is_refused_at_the_call(client: Client) -> None:
    """At the real limit (each refused before a job document is built)."""
    wf = client.workflow("big")
    for n in range(MAX_NODES):
        wf.add("noop", name=f"n{n}")
    refused = outcome(partial(wf.add, "noop", name="one-more"), WORKFLOW_FIELDS)
    assert isinstance(refused, InvalidJobError) and f"{MAX_NODES:,} nodes" in str(refused)
    both: dict[str, Any] = {"on_success": "noop", "on_complete": "noop"}
    for steps, callbacks in ((MAX_NODES + 1, {}), (MAX_NODES - 1, both)):
        group = partial(client.group, ["noop"] * steps, **callbacks)
        assert isinstance(outcome(group, WORKFLOW_FIELDS, client), InvalidJobError)
    assert counts(client) == (0, 0)


def test_a_chain_keeps_to_the_node_limit(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """A chain is a workflow: past the limit, refused. (Lowered, as test_workflows does:
    past the real one a chain that is not refused is 100,001 jobs to store.)"""
    monkeypatch.setattr(workflows, "MAX_NODES", 4)
    assert isinstance(outcome(partial(client.chain, ["noop"] * 4), WORKFLOW_FIELDS, client), str)
    fresh(client)
    refused = outcome(partial(client.chain, ["noop"] * 5), WORKFLOW_FIELDS, client)
    assert isinstance(refused, InvalidJobError), f"a chain of 5 stored: {counts(client)}"


def test_a_group_refused_for_its_size_states_the_size_it_takes(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bound a refusal states is not below the size the group is stored at (jobs,
    or jobs and callbacks: it may count either)."""
    monkeypatch.setattr(workflows, "MAX_NODES", 4)
    callbacks: dict[str, Any] = {}
    for node in ("", "on_success", "on_complete"):
        if node:
            callbacks[node] = "noop"
        fits = 4 - len(callbacks)
        fresh(client)
        stored = outcome(partial(client.group, ["noop"] * fits, **callbacks), WORKFLOW_FIELDS)
        assert isinstance(stored, str), stored
        too_many = partial(client.group, ["noop"] * (fits + 1), **callbacks)
        refused = outcome(too_many, WORKFLOW_FIELDS, client)
        assert isinstance(refused, InvalidJobError), "a group past the limit was stored"
        stated = re.search(r"at most ([\d,]+)", str(refused))
        assert stated is not None, str(refused)
        assert fits <= int(stated[1].replace(",", "")) <= 4, (
            f"{refused!s}, yet a group of {fits} jobs with {list(callbacks)} is stored"
        )


# -- fleet-wide limits in task metadata ---------------------------------------------

META_PATH = Path("/srv/tasks/limited.json")
# A dotted path, strictly: no trailing newline (which ``$`` would let through).
STRICT_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")
RATE_UNITS = ["second", "seconds", "minute", "minutes", "hour", "hours", "day", "days"]
ODD_UNITS = ["Second", "MINUTE", "week", "ms", "sec", "min", "", "second\n", "daily"]
RATE_TEXT = st.builds(
    lambda n, before, after, unit: f"{n}{before}/{after}{unit}",
    mostly(
        st.integers(1, 10_000),
        st.one_of(
            st.integers(-1, 0),
            st.integers(10_001, 10**30),
            st.sampled_from(["\u0663", "\uff11", "1e3", "-1", "1.5", "9" * 5_000, "", " "]),
        ),
    ),
    st.sampled_from(["", " "]),
    st.sampled_from(["", " ", "\t"]),
    mostly(st.sampled_from(RATE_UNITS), st.sampled_from(ODD_UNITS)),
)
RATE_DICTS = st.fixed_dictionaries(
    {
        "limit": mostly(
            st.integers(1, 10_000),
            st.one_of(st.sampled_from([0, -1, 10_001, True, 1.0, "5"]), NUMBERS, SCALARS),
        ),
        "period": mostly(GOOD_DURATIONS, DURATIONS),
    }
)
RATES = mostly(
    st.one_of(RATE_TEXT, RATE_DICTS),
    st.one_of(
        st.dictionaries(st.sampled_from(["limit", "period", "burst"]), SCALARS, max_size=3),
        HOSTILE,
    ),
)
GLOBALS = mostly(
    st.integers(1, 10_000),
    st.one_of(st.sampled_from([0, -1, 10_001, 2**63, True, 1.0, "5"]), NUMBERS, HOSTILE),
)
PATH_EXAMPLES = ["data.customer", "data", "_id", "data..x", ".x", "x.", "data.$x", "data.x\n"]
PLAIN_PATHS = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}(\.[A-Za-z0-9_]{1,8}){0,3}", fullmatch=True)
PATHS = mostly(
    PLAIN_PATHS,
    st.one_of(
        st.sampled_from([*PATH_EXAMPLES, "a" * 300, "日本", "data.é"]),
        PLAIN_PATHS.map(lambda path: f"{path}\n"),  # as a YAML block scalar ends
        STRINGS,
        HOSTILE,
    ),
)
LIMIT_METADATA = st.fixed_dictionaries(
    {"id": st.just("limited")},
    optional={"globalConcurrency": GLOBALS, "rateLimit": RATES, "partitionBy": PATHS},
)


def assert_limits_usable(found: limits.Limits) -> None:
    """What a worker does with accepted limits: store them, take slots under them,
    find a job's partition, and work out when the window next lets a job start."""
    now = utcnow()
    pipeline = limits.acquire_pipeline("limited", "p", found, [{"j": ObjectId(), "t": now}], now)
    bson.encode({"limits": found.stored(), "pipeline": pipeline})
    following = limits.next_start({"starts": [{"t": now}]}, found.rate, now)
    assert following is None or following >= now
    job = {"data": {"customer": "acme", "n": [1, 2]}, "_id": ObjectId()}
    partition = limits.partition_of(job, found.partition_by)
    assert isinstance(partition, str) and len(partition) <= limits.MAX_PARTITION_CHARS
    if found.partition_by is not None:
        limits.fields([found.partition_by], ["data", "name"])


@PURE
@given(raw=LIMIT_METADATA)
# A YAML block scalar ("partitionBy: |") ends in a newline; `$` lets it through, and
# the task's jobs all fall in one partition, keyed "" (no field is named so).
@example(raw={"id": "limited", "partitionBy": "data.customer\n"})
def test_limit_metadata_is_accepted_within_bounds_or_refused_naming_the_field(
    raw: dict[str, Any],
) -> None:
    show(raw=raw)
    try:
        meta = check_metadata(raw, META_PATH, code=False)
    except TaskDefinitionError as exc:
        count_as("refused")
        lines = str(exc).splitlines()
        assert lines, "an empty message"
        for line in lines:
            named = re.match(rf"{re.escape(str(META_PATH))}: field '(\w+)': ", line)
            assert named is not None and named[1] in raw, line
        return
    assert meta is not None
    count_as(f"accepted, {sorted(set(raw) - {'id'})}")
    found = meta.limits
    assert (found.concurrency is None) == ("globalConcurrency" not in raw)
    if found.concurrency is not None:
        assert type(found.concurrency) is int and 1 <= found.concurrency <= limits.MAX_GLOBAL
        assert found.concurrency == raw["globalConcurrency"]
    assert (found.rate is None) == ("rateLimit" not in raw)
    if found.rate is not None:
        assert type(found.rate.limit) is int and 1 <= found.rate.limit <= limits.MAX_RATE
        assert math.isfinite(found.rate.period) and 0 < found.rate.period <= limits.MAX_PERIOD
        assert found.rate.describe()
    assert (found.partition_by is None) == ("partitionBy" not in raw)
    if found.partition_by is not None:
        assert STRICT_PATH.fullmatch(found.partition_by), repr(found.partition_by)
    assert_limits_usable(found)
    # The manager reads them back from the metadata a worker announces: the same limits.
    assert limits.declared(raw) == found


# -- unique modes -----------------------------------------------------------------

KEYS = mostly(
    st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=20),
    st.one_of(st.sampled_from(["", "a" * 512, "a" * 513, "\ud800", "a\x00b"]), STRINGS, ANYTHING),
)
MODES = mostly(
    st.sampled_from(["active", "queued"]),
    st.one_of(st.sampled_from(["period", "ACTIVE", "queued ", ""]), SCALARS),
)
REPLACES = mostly(
    st.lists(st.sampled_from(["data", "nextRunAt"]), max_size=2),
    st.one_of(st.lists(STRINGS, max_size=2), st.just("data"), st.just(("data",)), SCALARS),
)
PERIODS = mostly(
    st.sampled_from(["10 minutes", "1h 30m", 3600, 90.5, "1 day", timedelta(hours=2), "366 days"]),
    st.one_of(
        st.sampled_from(["367 days", 0, -1, timedelta(0), timedelta.max, "1 fortnight"]),
        DURATIONS,
        st.timedeltas(),
        ANYTHING,
    ),
)
KEEPING = st.fixed_dictionaries({"key": KEYS}, optional={"while": MODES, "replace": REPLACES})
THROTTLES = st.fixed_dictionaries({"key": KEYS, "while": st.just("period"), "period": PERIODS})
ODD_UNIQUE = st.one_of(
    st.fixed_dictionaries(
        {"key": KEYS}, optional={"while": MODES, "period": PERIODS, "replace": REPLACES}
    ),
    st.dictionaries(
        st.one_of(st.sampled_from(["key", "while", "period", "replace", "Key"]), HASHABLE),
        ANYTHING,
        max_size=4,
    ),
    ANYTHING,
)
# None is no key at all: a plain job (tests/test_hostile_input.py).
UNIQUES = mostly(st.one_of(KEEPING, THROTTLES, KEYS), ODD_UNIQUE).filter(lambda u: u is not None)


@dataclass(frozen=True)
class Holding:
    """How ``unique=`` should hold its key, read from the README."""

    key: str
    mode: str
    period: float | None
    replace: frozenset[str]


def expected_holding(value: Any) -> Holding | None:
    """The documented reading of ``unique=``; None: it must be refused."""
    if isinstance(value, str):
        return Holding(value, "active", None, frozenset()) if valid_key(value) else None
    fields = {"key", "while", "period", "replace"}
    if not isinstance(value, dict) or not set(value) <= fields or not valid_key(value.get("key")):
        return None
    mode = value.get("while", "active")
    replace = value.get("replace", [])
    if mode not in ("active", "queued", "period") or ("period" in value) != (mode == "period"):
        return None
    if not isinstance(replace, list | tuple) or not all(
        isinstance(r, str) and r in ("data", "nextRunAt") for r in replace
    ):
        return None
    if replace and mode == "period":
        return None
    period = None
    if mode == "period":
        period = seconds_of(value["period"])
        if period is None or not 0 < period <= MAX_UNIQUE_PERIOD:
            return None
    return Holding(value["key"], mode, period, frozenset(replace))


def seconds_of(period: Any) -> float | None:
    if isinstance(period, timedelta):
        return period.total_seconds()
    try:
        return parse_duration(period)
    except ValueError:
        return None


def assert_holds(doc: Doc, held: Holding) -> None:
    """The fields the mode is documented (and described in enqueue.unique) to store."""
    if held.mode == "period":
        assert doc["fireKey"] == throttle_key("noop", held.key) and "uniqueKey" not in doc
        assert doc["uniqueWhile"] == "period"
    else:
        assert doc["uniqueKey"] == held.key and "fireKey" not in doc
        assert doc.get("uniqueWhile") == (None if held.mode == "active" else held.mode)


def job(client: Client, job_id: str) -> Doc:
    found = client.db.jobs.find_one({"_id": ObjectId(job_id)})
    assert found is not None, job_id
    return found


@STORED
@given(unique=UNIQUES)
def test_a_unique_job_is_held_as_its_mode_says_or_refused_naming_unique(
    client: Client, unique: Any
) -> None:
    show(unique=unique)
    fresh(client)
    held = expected_holding(unique)
    first = outcome(
        partial(client.schedule, "in 1 hour", "noop", {"n": 1}, unique=unique), {"unique"}, client
    )
    if isinstance(first, InvalidJobError):
        assert held is None, f"refused ({first}) what the README allows"
        assert first.field == "unique" and "unique" in str(first)
        return
    assert held is not None, "accepted what the README refuses"
    before = job(client, first)
    assert before["data"] == {"n": 1} and before["state"] == "queued"
    assert_holds(before, held)
    # The same key again: its holder (queued), changed only as ``replace`` says.
    again = outcome(
        partial(client.schedule, "in 2 hours", "noop", {"n": 2}, unique=unique), {"unique"}, client
    )
    if held.period is not None and held.period < 60 and again != first:
        # A period over between the two: the holder let go of its key, kept as freed.
        assert job(client, first)["throttleKeyFreed"] == throttle_key("noop", held.key)
        assert counts(client) == (2, 0)
        return
    assert again == first and counts(client) == (1, 0)
    after = job(client, first)
    assert after["data"] == ({"n": 2} if "data" in held.replace else {"n": 1})
    if "nextRunAt" in held.replace:
        assert after["nextRunAt"] - before["nextRunAt"] > timedelta(minutes=59)
    else:
        assert after["nextRunAt"] == before["nextRunAt"]
    assert after.get("uniqueReplaced") == (1 if held.replace else None)
    assert_holds(after, held)


# -- the HTTP API: what schemathesis does not send ------------------------------------
#
# test_api_fuzz.py generates bodies from the OpenAPI schema: valid Unicode and finite
# numbers. JSON also carries lone surrogates (as \ud800 escapes) and, as Python reads
# it, NaN, Infinity and 1e400: json.dumps writes all of them.

BASE = "http://127.0.0.1:8765"
SCRIPT = {"X-Qworker-Request": "1", "Content-Type": "application/json"}
FILTER_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "state": st.sampled_from(["queued", "failed", "QUEUED", ""]),
    "task": st.sampled_from(["noop", "other"]),
    "worker": st.sampled_from(["w1", ""]),
    "text": st.sampled_from(["job", "JOB", "("]),
    "since": st.sampled_from(["1 hour", "2030-01-31T09:00:00Z"]),
    "until": st.sampled_from(["1 hour", "2030-01-31T09:00:00Z"]),
    "finished_since": st.just("1 day"),
    "finished_until": st.just("1 day"),
    "data_field": st.sampled_from(["customer", "n", "a.b"]),
    "data_value": st.sampled_from(["acme", "7", "true"]),
    "error": st.sampled_from(["boom", ""]),
}
HOSTILE_FILTER_VALUES = st.one_of(
    st.sampled_from(["\ud800", "x\udfff", "\x00", "$where", "a" * 201]), STRINGS, SCALARS
)
FILTERS = st.lists(st.sampled_from(sorted(FILTER_VALUES)), unique=True, max_size=4).flatmap(
    lambda names: st.fixed_dictionaries(
        {n: mostly(FILTER_VALUES[n], HOSTILE_FILTER_VALUES) for n in names}
    )
)
BULK_BODIES = st.fixed_dictionaries(
    {
        "action": st.sampled_from(["retry", "cancel", "delete"]),
        "filter": FILTERS,
        "dry_run": mostly(st.just(True), st.booleans()),
    }
)
UNIQUE_BODIES = st.fixed_dictionaries(
    {"task": st.just("noop"), "data": st.just({"n": 1}), "unique": UNIQUES}
).filter(lambda body: jsonable(body["unique"]))


def jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        return False
    return True


def over_http(unique: Any) -> Any:
    """The API's model of ``unique`` takes null for a field not given (period, replace)."""
    if not isinstance(unique, dict):
        return unique
    return {k: v for k, v in unique.items() if v is not None or k not in ("period", "replace")}


@pytest.fixture
def api(client: Client) -> Iterator[TestClient]:
    app = create_app(client)
    with TestClient(app, base_url=BASE, headers=SCRIPT, raise_server_exceptions=False) as http:
        yield http


def queue_states(client: Client) -> dict[str, str]:
    return {str(doc["_id"]): doc["state"] for doc in client.db.jobs.find({}, {"state": 1})}


def seed(client: Client) -> dict[str, str]:
    fresh(client)
    client.now("noop", {"customer": "acme", "n": 7}, description="a job")
    client.now("noop", {"customer": "bolt"})
    client.schedule("in 1 hour", "other", {"n": "7"})
    return queue_states(client)


def assert_refused_by_field(answer: Any) -> None:
    assert 400 <= answer.status_code < 500, (answer.status_code, answer.text)
    body = answer.json()
    assert body["error"] and body["field"].startswith("body"), body


@HTTP
@given(body=BULK_BODIES)
# A lone surrogate in a filter reaches pymongo, which cannot encode it: 500.
@example(body={"action": "delete", "filter": {"text": "\ud800"}, "dry_run": True})
@example(
    body={
        "action": "cancel",
        "filter": {"data_field": "n", "data_value": "\udfff"},
        "dry_run": True,
    }
)
def test_a_bulk_filter_acts_on_what_it_matches_or_is_refused_naming_the_field(
    client: Client, api: TestClient, body: Doc
) -> None:
    show(body=body)
    before = seed(client)
    answer = api.post("/api/jobs/bulk", content=json.dumps(body))
    count_as(f"status {answer.status_code}")
    assert answer.status_code < 500, (answer.status_code, answer.text)
    after = queue_states(client)
    if answer.status_code != 200:
        assert_refused_by_field(answer)
        assert after == before, "a refused bulk action changed jobs"
        return
    done = answer.json()
    assert done["action"] == body["action"]
    if body["dry_run"]:
        assert done["matched"] >= done["eligible"] >= 0 and after == before
    else:
        changed = [i for i, state in before.items() if after.get(i) != state]
        assert done["matched"] >= done["changed"] == len(changed), (done, before, after)


@HTTP
@given(body=UNIQUE_BODIES)
def test_a_unique_job_over_http_is_stored_as_its_mode_says_or_refused_naming_unique(
    client: Client, api: TestClient, body: Doc
) -> None:
    show(body=body)
    fresh(client)
    answer = api.post("/api/jobs", content=json.dumps(body))
    count_as(f"status {answer.status_code}")
    assert answer.status_code < 500, (answer.status_code, answer.text)
    held = expected_holding(over_http(body["unique"]))
    if answer.status_code != 201:
        assert_refused_by_field(answer)
        assert answer.json()["field"].startswith("body.unique"), answer.json()
        assert counts(client) == (0, 0), "a refused job was stored"
        assert held is None, f"refused ({answer.text}) what the README allows"
        return
    assert held is not None, "accepted what the README refuses"
    assert counts(client) == (1, 0)
    assert_holds(job(client, answer.json()["id"]), held)
