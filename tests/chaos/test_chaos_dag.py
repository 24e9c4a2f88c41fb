"""Fault injection: DAG workflows run by three workers SIGKILLed at random.

``test_chaos_chord`` covers a group and its callback; this covers the other shape
of ``client.workflow``: a graph whose nodes depend on several others, over several
layers, where a node is released by the count-down of its dependencies' bits
(docs/decisions.md, "Workflows"). Each of four workflows is a ``root``, six nodes
after it, three that each depend on two of those, and a ``final`` node that
depends on every other node. Every node is a run of ``support.stamped``, which
records the ``job.upstream`` it was given.

What must hold, while workers are killed and restarted through the run:

* every node ends ``succeeded`` by one recorded run, its last, with no two runs at
  once; a node's work completes again only where a kill fell between its work and
  its outcome (``support.chaos.audit``: at least once, README "Guarantees");
* no run of a node started before its dependencies' recorded runs had ended, and
  no dependency ran again after a dependent started;
* every run of every node was given exactly its dependencies' stored results, so
  ``final`` saw all eleven upstream results;
* each workflow is ``succeeded`` with every node counted.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId
from support.chaos import Killings, audit, effects_by_job
from support.effects import effects_env
from support.jobs import FINISHED
from support.stamped import task_folder

from qworker import Client
from qworker.workflows import node_range

pytestmark = pytest.mark.timeout(150)

WORKFLOWS = 4
WORKERS = 3
SEED = 20261209
LEASE = 5  # as test_chaos_kills
SLEEP = 1.0  # each node's work: long enough that kills fall inside runs
KILL_EVERY = (0.7, 1.5)
MAX_KILLS = 6
FINISH_WITHIN = 120.0

# Node -> its dependencies, each named before it.
GRAPH: dict[str, list[str]] = {"root": []}
GRAPH.update({f"a{n}": ["root"] for n in range(6)})
GRAPH.update({f"b{n}": [f"a{2 * n}", f"a{2 * n + 1}"] for n in range(3)})
GRAPH["final"] = [node for node in GRAPH if node != "final"]


def enqueue(client: Client, n: int) -> str:
    wf = client.workflow(f"chaos-dag-{n}")
    nodes: dict[str, Any] = {}
    for name, deps in GRAPH.items():
        nodes[name] = wf.add("node", {"sleep": SLEEP}, name=name, deps=[nodes[d] for d in deps])
    return str(wf.enqueue())


def check_order_and_inputs(jobs: dict[str, dict[str, Any]], runs: dict[str, list[Any]]) -> None:
    """Each node's runs began after its dependencies' recorded runs and saw their results."""
    recorded = {
        name: next(r for r in runs[str(doc["_id"])] if str(r["_id"]) == doc["result"]["run"])
        for name, doc in jobs.items()
    }
    for name, deps in GRAPH.items():
        mine = runs[str(jobs[name]["_id"])]
        first = min(run["start"] for run in mine)
        for dep in deps:
            dep_runs = runs[str(jobs[dep]["_id"])]
            assert first >= recorded[dep]["end"], (name, dep, mine, recorded[dep])
            assert all(run["start"] < first for run in dep_runs), (name, dep, mine, dep_runs)
        expected = {dep: jobs[dep]["result"] for dep in deps}
        for run in mine:
            assert run["upstream"] == expected, (name, run, expected)


def test_dag_workflows_run_every_node_after_its_deps_while_workers_are_killed(
    client: Client, db: Any, spawn_worker: Any, mongo_url: str, tmp_path: Path
) -> None:
    folder = task_folder(tmp_path / "tasks", {"node": {"concurrency": 2}})

    def spawn(_: str, worker_id: str, env: dict[str, str], extra: list[str]) -> Any:
        return spawn_worker("node", worker_id=worker_id, env=env, extra=extra, paths=[folder])

    extra = ["--lease", str(LEASE), "--concurrency", "2", "--grace", "1"]
    fleet = Killings(spawn, effects_env(mongo_url), extra, [f"d{n}" for n in range(WORKERS)])
    flows = [enqueue(client, n) for n in range(WORKFLOWS)]
    ranges = [{"_id": node_range(ObjectId(flow))} for flow in flows]
    ids = [str(doc["_id"]) for r in ranges for doc in db.jobs.find(r, {"_id": 1})]
    assert len(ids) == WORKFLOWS * len(GRAPH)
    began = time.monotonic()

    def unfinished() -> int:
        return len(ids) - db.jobs.count_documents(
            {"_id": {"$in": [ObjectId(i) for i in ids]}, "state": {"$in": FINISHED}}
        )

    def busy(worker_id: str) -> bool:
        return db.jobs.count_documents({"state": "running", "lockedBy": worker_id}) > 0

    busy_kills = fleet.kill_while(
        unfinished, random.Random(SEED), KILL_EVERY, MAX_KILLS, began + FINISH_WITHIN, busy
    )
    took = time.monotonic() - began

    report = audit(db, ids, fleet.deaths, fleet.spawned)
    runs = effects_by_job(db)
    for flow, found in zip(flows, ranges, strict=True):
        jobs = {doc["flow"]["node"]: doc for doc in db.jobs.find(found)}
        assert sorted(jobs) == sorted(GRAPH)
        check_order_and_inputs(jobs, runs)
        done = client.wait_workflow(flow, timeout=10)
        assert done["state"] == "succeeded", done
        assert done["progress"] == {"finished": len(GRAPH), "total": len(GRAPH)}, done
    print(
        f"\n{WORKFLOWS} workflows of {len(GRAPH)} nodes in {took:.0f}s, {len(fleet.deaths)} "
        f"kills ({busy_kills} of a busy worker), {report.runs} runs, {report.interrupted} "
        f"cut short, {len(report.completed_twice)} nodes completed twice around a kill"
    )
    # The faults really were injected into running nodes.
    assert len(fleet.deaths) >= 4 and busy_kills >= 2, (len(fleet.deaths), busy_kills)
    assert report.interrupted >= 1
    assert report.lost_for_good == []
