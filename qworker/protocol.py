"""The events workers and managers exchange on the channel, in one place.

Messages addressed to one worker name it by id and carry its instance nonce,
never its pid: pids collide across hosts, and a restarted worker keeps its id.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

# Liveness, in one place. A worker pings every DEFAULT_PING_SECONDS unless its
# manager says otherwise; the leader declares dead (and takes back the jobs of)
# a worker that missed DEAD_AFTER_PINGS intervals, and the fleet's listings show
# as lost a running worker silent for LOST_AFTER_PINGS (a standalone worker, or
# any while no manager leads: none declares them dead).
DEFAULT_PING_SECONDS = 5.0
DEAD_AFTER_PINGS = 2
LOST_AFTER_PINGS = 3
# The id of the leadership lease in `leases`: workers read who holds it.
LEADER_LEASE_ID = "manager"

WORKER_CONNECTED = "worker:connected"
DEFINE_TASKS = "define:tasks"
WORKER_INITIALIZE = "worker:initialize"
WORKER_START = "worker:start"
WORKER_PING = "worker:ping"
WORKER_STOP = "worker:stop"
WORKER_TERMINATE = "worker:terminate"
WORKER_DEAD = "worker:dead"
WORKER_NOTIFICATION = "worker:notification"

MANAGER_START = "manager:start"
MANAGER_STOP = "manager:stop"

JOB_QUEUED = "job:queued"
JOB_CANCEL = "job:cancel"
# A task was paused or resumed (``qworker.controls``): workers read the pauses again.
TASK_CONTROL = "task:control"
# Client to the leader manager: a schedule was added, changed or removed.
SCHEDULES_CHANGED = "schedules:changed"

TO_MANAGER = (
    WORKER_CONNECTED,
    DEFINE_TASKS,
    WORKER_INITIALIZE,
    WORKER_START,
    WORKER_PING,
    WORKER_STOP,
    WORKER_TERMINATE,
)


def start(worker_id: str) -> str:
    """Manager to worker: accepted, with its runtime settings."""
    return f"{worker_id}/start"


def stop(worker_id: str) -> str:
    """Manager to worker: stop gracefully."""
    return f"{worker_id}/stop"


def terminate(worker_id: str) -> str:
    """Manager to worker: rejected or removed, with the reason; exit non-zero."""
    return f"{worker_id}/terminate"


def queued(docs: Iterable[dict[str, Any]], now: datetime | None = None) -> dict[str, Any]:
    """A ``job:queued`` wake-up naming these jobs, so idle workers claim them at once."""
    return {
        "jobs": [
            {
                "id": str(d["_id"]),
                "name": d["name"],
                "priority": d.get("priority", 0),
                "nextRunAt": (now or d["nextRunAt"]).isoformat(),
            }
            for d in docs
        ]
    }
