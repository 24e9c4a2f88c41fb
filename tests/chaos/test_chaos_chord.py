"""Fault injection: a chord of 2,000 jobs over four workers SIGKILLed at random.

The group's children and its ``on_success`` callback are ``chaos_record`` jobs
(the callback records how many results it received). Workers are killed and
restarted as in ``test_chaos_kills``, through the children and the callback.
What must hold: every child and the callback end ``succeeded`` with the outcome
of their last run and no overlapping runs (``support.chaos.audit``); the
callback was released once, after every child's outcome was written, and each
of its runs received all 2,000 results; its work completed once, or more only
where a kill fell between its work and its outcome (at least once, counted).
"""

from __future__ import annotations

import random
import time
from typing import Any

import pytest
from bson import ObjectId
from support.chaos import Killings, audit
from support.effects import effects_env
from support.jobs import FINISHED

from qworker import Client, Step
from qworker.workflows import node_range

pytestmark = pytest.mark.timeout(300)

CHILDREN = 2_000
WORKERS = 4
SEED = 20261201
LEASE = 5  # as test_chaos_kills, for the same reasons
KILL_EVERY = (0.5, 2.0)
MAX_KILLS = 25
FINISH_WITHIN = 240.0


def test_a_chord_s_callback_runs_once_with_every_result_while_workers_are_killed(
    client: Client, db: Any, spawn_worker: Any, mongo_url: str
) -> None:
    extra = ["--lease", str(LEASE), "--concurrency", "4", "--grace", "1"]
    fleet = Killings(spawn_worker, effects_env(mongo_url), extra, [f"c{n}" for n in range(WORKERS)])
    steps = [("chaos_record", {"n": n, "sleeps": [0.05]}) for n in range(CHILDREN)]
    group_id = client.group(steps, on_success=Step("chaos_record"))
    nodes = {"_id": node_range(ObjectId(group_id))}
    ids = [str(doc["_id"]) for doc in db.jobs.find(nodes, {"_id": 1}).sort("_id")]
    callback_id = ids[-1]

    def unfinished() -> int:
        return len(ids) - db.jobs.count_documents({**nodes, "state": {"$in": FINISHED}})

    deadline = time.monotonic() + FINISH_WITHIN
    fleet.kill_while(unfinished, random.Random(SEED), KILL_EVERY, MAX_KILLS, deadline)
    deaths = fleet.deaths

    report = audit(db, ids, deaths, fleet.spawned)
    assert len(deaths) >= 10 and report.interrupted >= 1
    callback = db.jobs.find_one({"_id": ObjectId(callback_id)})
    runs = list(db.effects.find({"job": callback_id}))
    completed = [run for run in runs if "end" in run]
    print(
        f"\n{CHILDREN} children, {len(deaths)} kills, {report.runs} runs, callback runs "
        f"{len(runs)} ({len(completed)} completed), {len(report.completed_twice)} jobs "
        "completed twice around a kill"
    )
    assert callback["state"] == "succeeded" and callback["flow"]["pending"] == 0
    assert all(run["received"] == CHILDREN and run["missing"] == 0 for run in runs), runs
    # Released once: every claim of the callback but the first came from a lost run.
    assert callback["attempts"] == 1 + callback.get("lostCount", 0), callback
    children = db.jobs.find({**nodes, "flow.over": None})
    last_child = max(doc["lastFinishedAt"] for doc in children)
    first_run = min(run["start"] for run in runs)
    assert first_run >= last_child.timestamp() - 0.001, (first_run, last_child)
    assert len(completed) == 1 or callback_id in report.completed_twice
