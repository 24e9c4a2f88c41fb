"""Fault injection: the leader manager is SIGKILLed while it runs recurring schedules.

Three schedules fire every second (``start_at="now"``) on the leader ``m1``,
with a standby ``m2`` up. ``m1`` is killed; ``m2`` takes the lease once it has
expired and runs the schedules from the shared store.

What "no fire doubled, no fire missed" means, given coalescing (README
"Recurring schedules", "Misfires"): while no manager runs the schedules their
fire times pass unfired; the next leader fires the *latest* of them once
(``coalesce``, the default) and then every second again. So, per schedule:

* each fire time is enqueued at most once (a unique ``fireKey`` guarantees it;
  checked on the jobs themselves);
* every fire time is on the schedule's 1 s grid (start + n s);
* before the kill and after the takeover, consecutive fires are exactly 1 s
  apart; the only longer gap is the one across the takeover, and there is at
  most one;
* the fire right after that gap is the coalesced one: ``m2`` enqueued it (after
  it began to lead) for the latest fire time that had passed when it did, so no
  fire time that a running scheduler could have fired is missing;
* the fire times skipped in the gap, and the coalesced one's own, all fell due
  while no scheduler ran: after ``m1`` was killed (it fired everything due
  before) and no later than ``m2`` began to lead.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import pytest
from support.chaos import dead_now
from support.logs import log_events, wait_leading, wait_logged
from support.processes import LEASE
from support.waits import wait_for

from qworker import Client

pytestmark = pytest.mark.timeout(180)

SECOND = timedelta(seconds=1)
SCHEDULES = ["tick-a", "tick-b", "tick-c"]
# BSON dates keep milliseconds; the insert follows the decision to fire by a little.
SLACK = timedelta(milliseconds=500)


def fires(db: Any, name: str) -> list[dict[str, Any]]:
    """A schedule's jobs by fire time; fails if a fire time was enqueued twice."""
    jobs = list(db.jobs.find({"scheduleId": name}).sort("scheduledFor", 1))
    times = [job["scheduledFor"] for job in jobs]
    assert len(set(times)) == len(times), f"{name}: a fire enqueued twice: {times}"
    assert len({job["fireKey"] for job in jobs}) == len(jobs)
    return jobs


def logged_at(process: Any, event: str) -> datetime:
    entry = next(e for e in log_events(process.output()) if e["event"] == event)
    return datetime.fromisoformat(entry["timestamp"])


def test_a_killed_leader_hands_its_schedules_over_without_doubling_or_losing_a_fire(
    client: Client, db: Any, spawn_manager: Any
) -> None:
    leader = spawn_manager("m1")
    wait_leading(leader)
    standby = spawn_manager("m2")
    wait_logged(standby, "manager started", 30)
    starts = {
        name: client.every(1, "noop", name=name, start_at="now")["nextRunAt"] for name in SCHEDULES
    }
    for name in SCHEDULES:
        wait_for(lambda n=name: len(fires(db, n)) >= 4, 30, f"{name} to fire on m1")

    killed = datetime.fromtimestamp(dead_now(leader), UTC)
    wait_leading(standby, timeout=LEASE + 20)
    # Logged just after m2 started its scheduler: an upper bound of when it took over.
    took_over = logged_at(standby, "leading the fleet")
    # Five more seconds of fires on m2.
    for name in SCHEDULES:
        wait_for(
            lambda n=name: any(j["scheduledFor"] >= took_over + 5 * SECOND for j in fires(db, n)),
            30,
            f"{name} to fire on m2",
        )

    for name in SCHEDULES:
        jobs = fires(db, name)
        times = [job["scheduledFor"] for job in jobs]
        shown = [t.strftime("%S.%f")[:-3] for t in times]
        start = starts[name].replace(microsecond=starts[name].microsecond // 1000 * 1000)  # BSON
        assert times[0] == start, (name, start, shown)
        assert all((t - start) % SECOND == timedelta(0) for t in times), (name, shown)
        by_m1 = [job for job in jobs if job["createdAt"] <= killed]
        by_m2 = [job for job in jobs if job["createdAt"] > killed]
        assert len(by_m1) >= 4 and len(by_m2) >= 5, (name, shown)
        # No gap but the one across the takeover.
        assert [b - a for a, b in pairwise(j["scheduledFor"] for j in by_m1)] == [SECOND] * (
            len(by_m1) - 1
        ), (name, shown)
        assert [b - a for a, b in pairwise(j["scheduledFor"] for j in by_m2)] == [SECOND] * (
            len(by_m2) - 1
        ), (name, shown)
        last_m1, coalesced = by_m1[-1]["scheduledFor"], by_m2[0]
        # Every fire time after m1's last fire up to the coalesced one (itself included)
        # fell due while no scheduler ran: m1 fired everything due before its death ...
        assert last_m1 + SECOND > killed - SLACK, (name, shown)
        # ... and the coalesced fire is for a time already past when m2 took over,
        assert coalesced["scheduledFor"] <= took_over + SLACK, (name, shown)
        # and the latest such time when m2 enqueued it (no later one had passed yet).
        assert coalesced["createdAt"] - coalesced["scheduledFor"] < SECOND + SLACK, (name, shown)
        skipped = (coalesced["scheduledFor"] - last_m1) // SECOND - 1
        print(
            f"\n{name}: m1 fired {len(by_m1)} times up to {last_m1:%S.%f}, killed at "
            f"{killed:%S.%f}, m2 leading by {took_over:%S.%f}; the {skipped + 1} fire time(s) "
            f"due in between became one fire, for {coalesced['scheduledFor']:%S.%f}, "
            f"then {len(by_m2) - 1} more, 1 s apart"
        )
