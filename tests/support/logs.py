"""Reading what the processes did from their JSON logs, and waiting for a line."""

from __future__ import annotations

import json
from typing import Any

from support.processes import ManagerProcess, WorkerProcess, worker_ready
from support.waits import wait_for


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


def ready(*workers: WorkerProcess, timeout: float = 60) -> None:
    for worker in workers:
        wait_for(lambda w=worker: worker_ready(w), timeout, f"worker {worker.args} to start")


def one_error_line(stderr: str, prefix: str, *fragments: str) -> str:
    """The single line a CLI error prints: ``<prefix>: error: ...`` with ``fragments`` in it."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"{prefix}: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]
