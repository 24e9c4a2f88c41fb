"""Fault injection: fleet-wide limits held by three workers SIGKILLed at random.

Three standalone workers run two limited tasks at once, ``capped``
(``globalConcurrency: 2``) and ``metered`` (``rateLimit``: 4 a second), while the
test kills one of them with SIGKILL at seeded random moments and starts it again
under its id. The victim is, by turns, a worker running a job of ``capped`` and one
running a job of ``metered``: a kill of a worker holding no slot and no recent start
tests nothing of the limits. A killed worker leaves its slots behind; the next
worker refused a slot takes them back once they are older than a lease and their
jobs no longer run under their claim (docs/decisions.md, "Fleet-wide limits").

What must hold: nothing is lost (``support.chaos.audit``: every job ``succeeded``,
by its last run, no two runs of a job at once); ``capped`` never ran more than 2
handlers at once, a killed run counting until its process was dead (a handler runs
inside its slot: taken before the claim, given back after the handler returned);
and no window of a second held more than 4 claims of ``metered`` (a claim's time is
the start the limit counts: ``support.stamped``). The docs name one way to exceed a
limit, a live worker cut off from MongoDB for longer than a lease; nothing for a
killed one (its starts stay counted, its slots stay held until taken back), so both
limits are asserted exactly.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.chaos import Killings, audit, dead_now, effects_by_job
from support.effects import effects_env
from support.jobs import FINISHED, max_overlap
from support.logs import count_logged
from support.stamped import task_folder

from qworker import Client
from qworker.lifecycle import MAX_LOST

pytestmark = pytest.mark.timeout(150)

WORKERS = 3
SEED = 20261207
LEASE = 5  # as test_chaos_kills: room for a loaded 2-core machine
CONCURRENCY = 2
RATE = 4  # claims in any window of RATE_PERIOD seconds
RATE_PERIOD = 1.0
CAPPED_JOBS, CAPPED_SLEEP = 16, 1.0
METERED_JOBS, METERED_SLEEP = 40, 0.5
KILL_EVERY = (1.0, 2.0)
MAX_KILLS = 7
FINISH_WITHIN = 120.0
LIMITED = ("capped", "metered")


def busiest_window(starts: list[int], period: int) -> int:
    """The most ``starts`` in one window ``[t, t + period)`` (whole milliseconds, as
    BSON keeps them and the limit counts them: no rounding at a window's edge)."""
    ordered = sorted(starts)
    return max(
        (sum(1 for t in ordered[i:] if t < s + period) for i, s in enumerate(ordered)), default=0
    )


def running(db: Any, task: str) -> set[str]:
    """The workers that run a job of ``task`` (or hold its finished run's outcome)."""
    return {doc["lockedBy"] for doc in db.jobs.find({"name": task, "state": "running"})}


def kill_limited_runs(
    fleet: Killings,
    restart: Callable[[str], Any],
    db: Any,
    unfinished: Callable[[], int],
    deadline: float,
) -> list[str]:
    """Kill a worker every ``KILL_EVERY`` seconds (seeded), ``MAX_KILLS`` times while
    jobs are left, and start it again under its id: by turns one that runs a job of
    ``capped`` and one that runs a job of ``metered`` (any worker if none does), since
    a kill elsewhere tests nothing of the limits. The task each kill cut ("" if none)."""
    rng = random.Random(SEED)
    cut: list[str] = []
    while unfinished() and len(fleet.deaths) < MAX_KILLS:
        time.sleep(rng.uniform(*KILL_EVERY))
        task = LIMITED[len(fleet.deaths) % len(LIMITED)]
        busy = running(db, task) & set(fleet.workers)
        worker_id = rng.choice(sorted(busy or fleet.workers))
        victim = fleet.workers[worker_id]
        fleet.deaths[victim.pid] = dead_now(victim)
        cut.append(task if worker_id in busy else "")
        fleet.workers[worker_id] = restart(worker_id)
        fleet.spawned.append(fleet.workers[worker_id])
        assert time.monotonic() < deadline, f"{unfinished()} jobs left"
    while unfinished():
        assert time.monotonic() < deadline, f"{unfinished()} jobs never finished"
        time.sleep(0.5)
    return cut


def test_global_concurrency_and_rate_limits_hold_while_workers_are_killed(
    client: Client, db: Any, spawn_worker: Any, mongo_url: str, tmp_path: Path
) -> None:
    folder = task_folder(
        tmp_path / "tasks",
        {
            "capped": {"concurrency": 4, "globalConcurrency": CONCURRENCY},
            "metered": {"concurrency": 4, "rateLimit": {"limit": RATE, "period": RATE_PERIOD}},
        },
    )
    env = effects_env(mongo_url)
    extra = ["--lease", str(LEASE), "--concurrency", "4", "--grace", "1"]

    def spawn(_: str, worker_id: str, env: dict[str, str], extra: list[str]) -> Any:
        return spawn_worker(*LIMITED, worker_id=worker_id, env=env, extra=extra, paths=[folder])

    fleet = Killings(spawn, env, extra, [f"l{n}" for n in range(WORKERS)])
    capped = client.enqueue_many("capped", [{"sleep": CAPPED_SLEEP}] * CAPPED_JOBS)
    metered = client.enqueue_many("metered", [{"sleep": METERED_SLEEP}] * METERED_JOBS)
    began = time.monotonic()

    def unfinished() -> int:
        return len(capped) + len(metered) - db.jobs.count_documents({"state": {"$in": FINISHED}})

    cut = kill_limited_runs(
        fleet, lambda w: spawn("", w, env, extra), db, unfinished, began + FINISH_WITHIN
    )
    took = time.monotonic() - began
    deaths = fleet.deaths

    report = audit(db, capped + metered, deaths, fleet.spawned)
    runs = effects_by_job(db)
    spans = [
        (run["start"], run["end"] if "end" in run else deaths[run["pid"]])
        for job_id in capped
        for run in runs[job_id]
    ]
    claims = [round(run["claimed"] * 1000) for job_id in metered for run in runs[job_id]]
    at_once, in_a_window = max_overlap(spans), busiest_window(claims, round(RATE_PERIOD * 1000))
    taken_back = sum(count_logged(w, "taking back slots") for w in fleet.spawned)
    print(
        f"\n{len(capped) + len(metered)} jobs in {took:.0f}s, {len(deaths)} kills (cutting "
        f"{cut}), {report.runs} runs, {report.interrupted} cut short, "
        f"{len(report.completed_twice)} completed twice, stale slots taken back {taken_back} "
        f"times; at most {at_once} of 'capped' at once (limit {CONCURRENCY}), {in_a_window} "
        f"claims of 'metered' in a {RATE_PERIOD:g}s window (limit {RATE})"
    )
    # The faults really were injected into limited work.
    assert cut.count("capped") >= 2 and cut.count("metered") >= 1, cut
    assert report.interrupted >= 1
    assert report.lost_for_good == [], f"lost {MAX_LOST} times: see test_chaos_kills"
    assert db.jobs.count_documents({"state": "succeeded"}) == len(capped) + len(metered)
    assert len(claims) >= len(metered)
    assert at_once <= CONCURRENCY, sorted(spans)
    assert in_a_window <= RATE, sorted(claims)
    # ... and they bound what ran: a limit never reached would prove nothing.
    assert (at_once, in_a_window) == (CONCURRENCY, RATE)
