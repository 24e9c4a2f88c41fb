"""``qworker-manager watch``: the fleet live from the channel."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from support.logs import wait_accepted, wait_leading
from support.processes import managed

from qworker import Client
from qworker.cli.watch import FleetView


def follow(process: subprocess.Popen[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line.rstrip("\n"))

    threading.Thread(target=read, daemon=True).start()
    return lines


def wait_line(lines: queue.Queue[str], seen: list[str], text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not any(text in line for line in seen):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"{text!r} not in:\n" + "\n".join(seen)
        try:
            seen.append(lines.get(timeout=remaining))
        except queue.Empty:
            continue


def test_watch_shows_workers_joining_and_jobs_moving(
    client: Client, spawn_manager: Any, spawn_worker: Any, mongo_url: str, tmp_path: Path
) -> None:
    manager = spawn_manager("m1")
    wait_leading(manager)
    command = [
        sys.executable,
        "-m",
        "qworker.cli.manager",
        "--mongo",
        mongo_url,
        "watch",
        "--for",
        "120",
    ]
    watcher = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines, seen = follow(watcher), []
    try:
        wait_line(lines, seen, "watching the fleet")
        worker = managed(spawn_worker, mongo_url, "reporter", worker_id="w1")
        wait_accepted(worker)
        wait_line(lines, seen, "worker w1 joined (reporter)")
        go = tmp_path / "go"
        job_id = client.now("reporter", {"go": str(go)})
        wait_line(lines, seen, f"{job_id} reporter started on w1")
        wait_line(lines, seen, f"{job_id} reporter 75% waiting for go")
        go.touch()
        wait_line(lines, seen, f"{job_id} reporter succeeded")
        worker.stop()
        wait_line(lines, seen, "worker w1 left")
    finally:
        watcher.send_signal(signal.SIGINT)
        watcher.wait(30)
    assert watcher.returncode == 0, watcher.stderr.read() if watcher.stderr else ""
    assert f"{job_id} reporter warn: warn line" in seen


def test_the_live_view_renders_progress_outcomes_and_workers() -> None:
    view = FleetView()
    view.apply("worker:initialize", {"workerId": "w1", "tasks": ["report"]})
    job = {"workerId": "w1", "sourceId": "j1", "task": "report"}
    view.apply("worker:notification", {**job, "type": "start"})
    view.apply("worker:notification", {**job, "type": "progress", "percent": 42, "step": "load"})
    view.apply("worker:notification", {**job, "sourceId": "j2", "type": "start"})
    line = view.apply(
        "worker:notification",
        {
            **job,
            "sourceId": "j2",
            "type": "fail",
            "retry": False,
            "error": {"type": "ValueError", "message": "bad row"},
        },
    )
    assert line == "j2 report failed: ValueError: bad row"
    view.apply("worker:dead", {"workerId": "w2"})
    console = Console(record=True, width=120)
    console.print(view.render())
    text = console.export_text()
    assert "running jobs (1)" in text and "j1" in text and "42%" in text and "load" in text
    assert "w1" in text and "joined" in text and "w2" in text and "dead" in text
    assert "j2 report failed: ValueError: bad row" in text
    assert view.apply("job:queued", {"jobs": []}) is None


def test_snoozed_and_expired_jobs_leave_the_running_list() -> None:
    view = FleetView()
    job = {"workerId": "w1", "sourceId": "j1", "task": "report"}
    view.apply("worker:notification", {**job, "type": "start"})
    assert view.apply("worker:notification", {**job, "type": "snooze"}) == "j1 report snoozed"
    assert not view.running
    # The leader expires jobs no worker claimed: no worker joins the view for it.
    expired = {"workerId": None, "managerId": "m1", "sourceId": "j2", "task": "report"}
    assert view.apply("worker:notification", {**expired, "type": "expire"}) == "j2 report expired"
    assert view.workers == {"w1": "joined"}
