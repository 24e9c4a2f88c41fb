"""Helpers shared by the end-to-end worker tests (not fixtures: see conftest.py)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

from conftest import ManagerProcess, WorkerProcess, wait_for, worker_ready

EFFECTS = "QWORKER_TEST_EFFECTS_URL"
FINISHED = ["succeeded", "failed", "cancelled"]


def effects_env(mongo_url: str, **more: str) -> dict[str, str]:
    """The environment that lets the test tasks record side effects in this test's database."""
    return {EFFECTS: mongo_url, **more}


def ready(*workers: WorkerProcess, timeout: float = 60) -> None:
    for worker in workers:
        wait_for(lambda w=worker: worker_ready(w), timeout, f"worker {worker.args} to start")


def finished(db: Any, job_id: str) -> dict[str, Any] | None:
    from bson import ObjectId

    doc = db.jobs.find_one({"_id": ObjectId(job_id)})
    return doc if doc is not None and doc["state"] in FINISHED else None


def wait_finished(db: Any, job_id: str, timeout: float = 60) -> dict[str, Any]:
    return wait_for(lambda: finished(db, job_id), timeout, f"job {job_id} to finish")  # type: ignore[no-any-return]


def max_overlap(intervals: Iterable[tuple[float, float]]) -> int:
    """The most intervals open at one instant (one that ends as another starts: no overlap)."""
    spans = list(intervals)
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    # At equal times the -1 (an end) sorts first, so touching intervals do not count.
    open_now = best = 0
    for _, delta in events:
        open_now += delta
        best = max(best, open_now)
    return best


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers signal 0: look at its state where /proc exists.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


# -- reading what the processes did ---------------------------------------


def log_events(output: str) -> list[dict[str, Any]]:
    """The JSON log lines of a process's output (anything else is skipped)."""
    events = []
    for line in output.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and "event" in entry:
            events.append(entry)
    return events


def count_logged(process: WorkerProcess | ManagerProcess, event: str) -> int:
    """How many log lines say ``event`` (their message starts with it)."""
    return sum(1 for e in log_events(process.output()) if str(e["event"]).startswith(event))


def alive(process: WorkerProcess | ManagerProcess) -> None:
    if process.process.poll() is not None:
        raise AssertionError(
            f"process exited with {process.process.returncode}:\n{process.output()}"
        )


def wait_logged(
    process: WorkerProcess | ManagerProcess, event: str, timeout: float, times: int = 1
) -> None:
    def seen() -> bool:
        if count_logged(process, event) >= times:
            return True
        alive(process)
        return False

    try:
        wait_for(seen, timeout, f"{event!r} logged {times} time(s)")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; output:\n{process.output()}") from None


def wait_leading(manager: ManagerProcess, timeout: float = 30) -> None:
    wait_logged(manager, "leading the fleet", timeout)


def wait_accepted(worker: WorkerProcess, timeout: float = 30, times: int = 1) -> None:
    wait_logged(worker, "accepted by the manager", timeout, times)


def messages(db: Any, event: str) -> list[dict[str, Any]]:
    """The bodies of the channel messages of ``event``, oldest first."""
    return [doc["message"] for doc in db.channel.find({"event": event}).sort("_id", 1)]


def managed(
    spawn_worker: Any, mongo_url: str, *tasks: str, worker_id: str,
    extra: list[str] | None = None, paths: list[Any] | None = None,
) -> WorkerProcess:  # fmt: skip
    """A worker that needs a manager (no --standalone), recording side effects."""
    worker: WorkerProcess = spawn_worker(
        *tasks, worker_id=worker_id, standalone=False, env=effects_env(mongo_url),
        extra=["--lease", "2", "--grace", "5", *(extra or [])], paths=paths,
    )  # fmt: skip
    return worker


def one_error_line(stderr: str, prefix: str, *fragments: str) -> str:
    """The single line a CLI error prints: ``<prefix>: error: ...`` with ``fragments`` in it."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"{prefix}: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]
