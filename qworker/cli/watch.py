"""``qworker-manager watch``: the fleet live in a terminal, from the channel.

Running jobs with progress bars and step labels, jobs finishing and failing,
workers joining and leaving: every change arrives as a channel message, so
nothing is polled. Job events come from managed workers' notifications (a
standalone worker tells no one). On a terminal the view redraws in place; in
a pipe each event is one line, for logs and scripts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from qworker import protocol
from qworker.aio import cancel_and_wait
from qworker.channel import Channel
from qworker.manager.events import WATCHED
from qworker.mongo import Names, async_client, close_async, database_name, resolve_url

Doc = dict[str, Any]
RECENT = 12
# How each job notification that ends a run reads ("… succeeded", "… snoozed").
ENDED = {
    "success": "succeeded",
    "fail": "failed",
    "cancel": "cancelled",
    "expire": "expired",
    "snooze": "snoozed",
}


@dataclass
class RunningJob:
    job_id: str
    task: str
    worker: str
    percent: float = 0.0
    step: str = ""


@dataclass
class FleetView:
    """What ``watch`` shows, updated one channel message at a time."""

    running: dict[str, RunningJob] = field(default_factory=dict)
    workers: dict[str, str] = field(default_factory=dict)  # id -> joined | left | dead
    recent: deque[str] = field(default_factory=lambda: deque(maxlen=RECENT))

    def apply(self, event: str, body: Doc) -> str | None:
        """Take one message in; the line that describes it, if it says anything."""
        worker = str(body.get("workerId", "?"))
        if event == protocol.WORKER_NOTIFICATION:
            return self._job_event(worker, body)
        change = {
            protocol.WORKER_INITIALIZE: "joined",
            protocol.WORKER_STOP: "left",
            protocol.WORKER_TERMINATE: "left",
            protocol.WORKER_DEAD: "dead",
        }.get(event)
        if change is not None:
            self.workers[worker] = change
            if change != "joined":
                self.running = {k: j for k, j in self.running.items() if j.worker != worker}
            tasks = f" ({', '.join(body['tasks'])})" if isinstance(body.get("tasks"), list) else ""
            return self._remember(f"worker {worker} {change}{tasks}")
        if event in (protocol.MANAGER_START, protocol.MANAGER_STOP):
            verb = "leads" if event == protocol.MANAGER_START else "stopped"
            return self._remember(f"manager {body.get('managerId', '?')} {verb}")
        return None

    def _job_event(self, worker: str, body: Doc) -> str | None:
        job_id, kind = str(body.get("sourceId", "?")), str(body.get("type", ""))
        task = str(body.get("task", "?"))
        if body.get("workerId") is not None:  # the manager expires jobs of no worker's
            self.workers.setdefault(worker, "joined")
        if kind == "start":
            self.running[job_id] = RunningJob(job_id, task, worker)
            return self._remember(f"{job_id} {task} started on {worker}")
        if kind == "progress":
            job = self.running.setdefault(job_id, RunningJob(job_id, task, worker))
            job.percent, job.step = float(body.get("percent") or 0), str(body.get("step") or "")
            return f"{job_id} {task} {job.percent:.0f}% {job.step}".rstrip()
        if kind in ENDED:
            self.running.pop(job_id, None)
            error = body.get("error") or {}
            detail = f": {error.get('type')}: {error.get('message')}" if error else ""
            retry = " (will retry)" if body.get("retry") else ""
            return self._remember(f"{job_id} {task} {ENDED[kind]}{retry}{detail}")
        if kind.startswith("log"):
            return f"{job_id} {task} {body.get('level', 'log')}: {body.get('message', '')}"
        return None

    def _remember(self, line: str) -> str:
        self.recent.appendleft(f"{datetime.now():%H:%M:%S} {line}")
        return line

    def render(self) -> Group:
        jobs = Table(title=f"running jobs ({len(self.running)})", expand=True)
        for column in ("job", "task", "worker", "progress", "step"):
            jobs.add_column(column)
        for job in self.running.values():
            bar = ProgressBar(total=100, completed=job.percent, width=24)
            jobs.add_row(
                job.job_id, job.task, job.worker, Group(bar, Text(f"{job.percent:.0f}%")), job.step
            )
        workers = Table(title="workers", expand=True)
        workers.add_column("worker")
        workers.add_column("state")
        for worker_id, state in sorted(self.workers.items()):
            workers.add_row(worker_id, state)
        return Group(jobs, workers, Text("\n".join(self.recent) or "waiting for events…"))


async def watch(url: str, prefix: str, seconds: float | None, out: TextIO) -> FleetView:
    """Follow the channel for ``seconds`` (or until cancelled)."""
    resolved = resolve_url(url)
    client = async_client(resolved)
    channel = Channel(client[database_name(resolved)][Names(prefix).channel])
    view = FleetView()
    console = Console(file=out)
    live = Live(view.render(), console=console, auto_refresh=False) if out.isatty() else None

    async def on_message(event: str, body: Doc) -> None:
        line = view.apply(event, body)
        if live is not None:
            live.update(view.render(), refresh=True)
        elif line is not None:
            print(line, file=out, flush=True)

    ready = asyncio.Event()
    follower = asyncio.create_task(channel.subscribe(WATCHED, on_message, ready))
    try:
        with live or contextlib.nullcontext():
            await asyncio.wait_for(ready.wait(), 30)
            if live is None:
                print("watching the fleet (Ctrl-C to stop)", file=out, flush=True)
            await asyncio.sleep(seconds if seconds is not None else float("inf"))
    finally:
        # Bounded: Ctrl-C must end the watch even if the server is slow to let
        # go of the tailing cursor (seen once in CI: the process outlived 30 s).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(cancel_and_wait([follower]), 5)
        await close_async(client)
    return view
