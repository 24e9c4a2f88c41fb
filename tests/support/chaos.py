"""What the fault-injection tests check about the runs the ``chaos_record`` task recorded.

Every run of ``chaos_record`` inserts an ``effects`` document before its work
(``start``) and sets ``end``, the time its work was done, after it; the job's
result names the run whose outcome was recorded (``result.run``). A run whose
process was killed before it recorded its end has none; the test that killed
the process knows a time by which it was certainly dead (after ``wait()``
returned), so that run's work all happened within ``[start, death]``. That
bound is what makes the overlap check rigorous for interrupted runs:
``[start, end]`` for a finished run and ``[start, death]`` for a killed one
each contain all of the run's work, so if no two of these intervals of one job
overlap, no two runs of that job ever did their work at once.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from bson import ObjectId

from qworker.lifecycle import MAX_LOST
from support.jobs import max_overlap
from support.logs import log_events, ready

LOST_REASON = f"lost with its worker {MAX_LOST} times"


@dataclass
class Audit:
    """What the runs of a set of jobs show, beyond the assertions ``audit`` makes."""

    jobs: int = 0
    runs: int = 0
    interrupted: int = 0  # runs cut short by a kill (a start without an end)
    # Jobs run to completion twice: the first run's worker was killed after the
    # run's work and before its outcome reached MongoDB (at-least-once; see audit).
    completed_twice: list[str] = field(default_factory=list)
    # For each such run: seconds from the end of its work to its worker's death.
    unrecorded_for: list[float] = field(default_factory=list)
    # Jobs failed by design after being lost with their worker MAX_LOST times.
    lost_for_good: list[str] = field(default_factory=list)


def effects_by_job(db: Any) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in db.effects.find():
        runs[run["job"]].append(run)
    return runs


def audit(
    db: Any,
    job_ids: Iterable[str],
    deaths: dict[int, float],
    processes: Iterable[Any] = (),
) -> Audit:
    """Assert that each job ended once, by one recorded run, and never ran twice at once.

    ``deaths`` maps the pid of every process the test killed to a time by which it
    was dead. Asserted for every job:

    * it ended ``succeeded``, or ``failed`` as lost ``MAX_LOST`` times (by design);
    * a run without an end belongs to a killed process;
    * no two runs overlapped (``[start, end or death]``, see the module doc);
    * the stored result names a completed run of this job, and it is the job's
      last run: no run started after the one whose outcome counts;
    * every *other* completed run belongs to a process that was killed after that
      run's work ended: the only way a job's work completes twice is a worker that
      dies between finishing a run and recording it (qworker records outcomes
      right after the run, in a batch; the run then counts as lost, and the job
      runs again). A completed run on a live worker that did not count would be a
      lease lost by a live worker, which these tests must never see;
    * the job was claimed at least as many times as it ran.

    Every violation is collected, and the assertion names how many of each kind,
    with the first job of each and what the ``processes`` (WorkerProcess objects)
    logged about it.
    """
    ids = list(job_ids)
    docs = {str(d["_id"]): d for d in db.jobs.find({"_id": {"$in": [ObjectId(i) for i in ids]}})}
    runs_of = effects_by_job(db)
    report = Audit(jobs=len(ids))
    problems: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for job_id in ids:
        doc = docs.get(job_id)
        if doc is None:
            problems["job gone"].append((job_id, "gone"))
            continue
        runs = sorted(runs_of.get(job_id, []), key=lambda r: r["start"])
        report.runs += len(runs)
        where = f"job {job_id} ({doc['state']}, attempts {doc['attempts']}, runs {runs})"
        if any("end" not in r and r["pid"] not in deaths for r in runs):
            problems["a run without an end on a live process"].append((job_id, where))
            continue
        report.interrupted += sum("end" not in r for r in runs)
        spans = [(r["start"], r["end"] if "end" in r else deaths[r["pid"]]) for r in runs]
        if max_overlap(spans) > 1:
            problems["two runs at once"].append((job_id, where))
        if len(runs) > doc["attempts"]:
            problems["more runs than claims"].append((job_id, where))

        if doc["state"] == "failed" and doc.get("failReason") == LOST_REASON:
            if doc["lostCount"] != MAX_LOST or any(r["pid"] not in deaths for r in runs):
                problems["failed as lost without being lost"].append((job_id, where))
            report.lost_for_good.append(job_id)
            continue
        if doc["state"] != "succeeded":
            problems[f"ended {doc['state']}"].append((job_id, where))
            continue
        recorded = next((r for r in runs if str(r["_id"]) == doc["result"]["run"]), None)
        if recorded is None or "end" not in recorded:
            problems["the result names no completed run"].append((job_id, where))
            continue
        if recorded is not runs[-1]:
            problems["a run started after the one that counts"].append((job_id, where))
        extra = [r for r in runs if "end" in r and r is not recorded]
        for run in extra:
            if run["pid"] in deaths and run["end"] <= deaths[run["pid"]]:
                report.unrecorded_for.append(deaths[run["pid"]] - run["end"])
            else:
                problems["completed twice, no kill to explain it"].append((job_id, where))
        if extra:
            report.completed_twice.append(job_id)
    summary = {kind: len(jobs) for kind, jobs in problems.items()}
    processes = list(processes)
    examples = "\n".join(
        f"{kind}: {jobs[0][1]}{logged_about(processes, jobs[0][0])}"
        for kind, jobs in problems.items()
    )
    assert not problems, f"{summary} of {len(ids)} jobs; first of each:\n{examples}"
    return report


def logged_about(processes: list[Any], job_id: str) -> str:
    """The log lines of these processes that name ``job_id``, oldest first, one a line."""
    lines = []
    for process in processes:
        for event in log_events(process.output()):
            named = event.get("job_id") == job_id or job_id in (event.get("jobs") or [])
            if named:
                lines.append((event.get("timestamp", ""), f"pid {process.pid}: {event}"))
    return "".join(f"\n    {line}" for _, line in sorted(lines))


def dead_now(process: Any) -> float:
    """SIGKILL a WorkerProcess or ManagerProcess; the time by which it was certainly dead."""
    process.process.kill()
    process.process.wait()
    return time.time()


class Killings:
    """Standalone ``chaos_record`` workers that a test kills with SIGKILL at seeded random
    moments, each started again at once under the same id."""

    def __init__(self, spawn_worker: Any, env: dict[str, str], extra: list[str], ids: list[str]):
        self._spawn, self._env, self._extra = spawn_worker, env, extra
        self.spawned: list[Any] = []  # every process started, for the audit's logs
        self.workers = {worker_id: self._start(worker_id) for worker_id in ids}
        self.deaths: dict[int, float] = {}  # pid -> a time by which it was dead
        ready(*self.workers.values())

    def _start(self, worker_id: str) -> Any:
        worker = self._spawn("chaos_record", worker_id=worker_id, env=self._env, extra=self._extra)
        self.spawned.append(worker)
        return worker

    def kill_while(
        self,
        unfinished: Callable[[], int],
        rng: random.Random,
        every: tuple[float, float],
        most: int,
        deadline: float,
        busy: Callable[[str], bool] = lambda worker_id: False,
    ) -> int:
        """Kill a random worker every ``every`` seconds while jobs are left, ``most``
        times; how many kills found the worker ``busy``. ``deadline`` is monotonic."""
        busy_kills = 0
        while unfinished() and len(self.deaths) < most:
            time.sleep(rng.uniform(*every))
            worker_id = rng.choice(sorted(self.workers))
            victim = self.workers[worker_id]
            busy_kills += busy(worker_id)
            self.deaths[victim.pid] = dead_now(victim)
            self.workers[worker_id] = self._start(worker_id)
            assert time.monotonic() < deadline, f"{unfinished()} jobs left"
        while unfinished():
            assert time.monotonic() < deadline, f"{unfinished()} jobs never finished"
            time.sleep(0.5)
        return busy_kills
