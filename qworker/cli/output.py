"""Printing for people (tables) and scripts (JSON)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import click
from bson import ObjectId

from qworker.model import JobState


def _plain(value: Any) -> Any:
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, default=_plain, indent=2, sort_keys=True))


def when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if isinstance(value, datetime) else ""


def ago(value: Any, now: datetime) -> str:
    """``3s ago``, ``5m ago``, ``2h ago``, ``4d ago``; empty for no time."""
    if not isinstance(value, datetime):
        return ""
    seconds = max(0, int((now - value).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(c) for c in headers], *[["" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            click.echo("  ".join("-" * w for w in widths))


def labelled(fields: Sequence[tuple[str, Any]]) -> None:
    """``name:  value`` lines, leaving out the empty ones."""
    for name, value in fields:
        if value not in (None, "", "null"):
            click.echo(f"{name + ':':<14}{value}")


def job_rows(jobs: Sequence[dict[str, Any]]) -> None:
    table(
        [
            "ID",
            "TASK",
            "STATE",
            "PRI",
            "PROGRESS",
            "ATTEMPTS",
            "WORKER",
            "CREATED",
            "NEXT RUN",
            "REASON",
        ],
        [
            [
                str(j["_id"]),
                j["name"],
                j["state"],
                j.get("priority", 0),
                f"{(j.get('progress') or {}).get('percent', 0):.0f}%",
                j.get("attempts", 0),
                j.get("lockedBy") or j.get("lastWorker") or "",
                when(j.get("createdAt")),
                when(j.get("nextRunAt")),
                j.get("failReason") or "",
            ]
            for j in jobs
        ],
    )


def page_footer(skip: int, shown: int, total: int) -> None:
    """``showing 51-100 of 1234``, on stderr: a pipe of the table gets its rows only."""
    if shown:
        line = f"showing {skip + 1}-{skip + shown} of {total}"
    else:
        line = f"showing none of {total}" + (f" (skipped {skip})" if skip else "")
    click.echo(line, err=True)


def worker_rows(workers: Sequence[dict[str, Any]], now: datetime) -> None:
    table(
        ["ID", "HOST", "PID", "STATE", "KIND", "TASKS", "RUNNING", "STARTED", "LAST PING"],
        [
            [
                w["_id"],
                w.get("host"),
                w.get("pid"),
                w["status"],
                "standalone" if w.get("standalone") else "managed",
                ",".join(w.get("tasks") or []),
                w.get("runningJobs", 0),
                when(w.get("startedAt")),
                ago(w.get("pingedAt"), now),
            ]
            for w in workers
        ],
    )


def task_rows(tasks: Sequence[dict[str, Any]]) -> None:
    states = [s.value for s in JobState]
    valid = {True: "yes", False: "no", None: "-"}
    table(
        ["ID", "NAME", "VALID", "PAUSED", "LIMITS", "WORKERS", *(s.upper() for s in states)],
        [
            [
                t["_id"],
                t.get("name"),
                valid.get(t.get("valid"), "-"),
                "paused" if t.get("paused") else "-",
                limits_text(t.get("limits")),
                len(t["liveWorkers"]),
                *(t["jobs"].get(s, 0) for s in states),
            ]
            for t in tasks
        ],
    )


def limits_text(limits: dict[str, Any] | None) -> str:
    """A task's fleet-wide limits and their use: '2/3 running, 14 of 20/second, per
    data.customer (3)'."""
    if not limits:
        return "-"
    parts = []
    if limits.get("concurrency") is not None:
        parts.append(f"{limits['running']}/{limits['concurrency']} running")
    if limits.get("rate") is not None:
        parts.append(f"{limits['recentStarts']} of {limits['rate']}")
    if limits.get("partitionBy"):
        parts.append(f"per {limits['partitionBy']} ({limits['partitions']})")
    return ", ".join(parts) or "-"


def job_detail(job: dict[str, Any]) -> None:
    progress, flow = job.get("progress") or {}, job.get("flow") or {}
    fields = [
        ("id", job["_id"]),
        ("task", job["name"]),
        ("state", job["state"]),
        ("priority", job.get("priority")),
        ("description", job.get("description")),
        ("data", json.dumps(job.get("data"))),
        ("attempts", job.get("attempts")),
        ("failures", job.get("failCount")),
        ("max attempts", job.get("maxAttempts")),
        ("progress", f"{progress.get('percent', 0):.0f}% {progress.get('step') or ''}".strip()),
        ("created", when(job.get("createdAt"))),
        ("next run", when(job.get("nextRunAt"))),
        ("deadline", when(job.get("expiresAt"))),
        ("last run", when(job.get("lastRunAt"))),
        ("finished", when(job.get("lastFinishedAt"))),
        ("locked by", job.get("lockedBy")),
        ("last worker", None if job.get("lockedBy") else job.get("lastWorker")),
        ("result", json.dumps(job.get("result"))),
        ("fail reason", job.get("failReason")),
        ("unique key", job.get("uniqueKey")),
        (
            "schedule",
            job.get("scheduleId")
            and f"{job['scheduleId']} (fire of {when(job.get('scheduledFor'))})",
        ),
        ("workflow", flow and f"node {flow.get('node')!r} of {flow.get('name')} {flow.get('id')}"),
        ("kept until", when(job.get("expireAt"))),
    ]
    labelled(fields)
    error = job.get("error")
    if error and error.get("traceback"):
        click.echo("traceback:")
        click.echo("  " + error["traceback"].rstrip().replace("\n", "\n  "))
    logs = job.get("logs") or []
    if logs:
        click.echo("log:")
        for entry in logs:
            click.echo(
                f"  {when(entry.get('ts'))}  {entry.get('level', ''):<5}  {entry.get('msg')}"
            )


def _run(job: dict[str, Any] | None, at: str = "scheduledFor") -> str:
    if not job:
        return ""
    return f"{when(job.get(at))} {job.get('state', '')}".strip()


def _next_run(s: dict[str, Any]) -> str:
    """When a schedule fires next: or paused, and for a failure if one paused it."""
    if not s["paused"]:
        return when(s["nextRunAt"])
    return "paused (a run failed)" if s.get("pauseReason") else "paused"


def _overlap(s: dict[str, Any]) -> str | None:
    """The overlap policy, when it is not the default; with the fire it holds back."""
    policy = s.get("overlap") or ("skip" if s.get("unique") else "allow")
    if policy == "allow":
        return None
    buffered = s.get("bufferedFire")
    return f"{policy} (holding the fire of {when(buffered)})" if buffered else policy


def schedule_rows(schedules: Sequence[dict[str, Any]]) -> None:
    table(
        ["NAME", "TASK", "TRIGGER", "NEXT RUN", "LAST JOB", "LAST SUCCESS", "LAST FAILURE"],
        [
            [
                s["name"],
                s["task"],
                s["trigger"],
                _next_run(s),
                _run(s["lastJob"]),
                when((s["lastSuccess"] or {}).get("lastFinishedAt")),
                when((s["lastFailure"] or {}).get("lastFinishedAt")),
            ]
            for s in schedules
        ],
    )


def schedule_detail(s: dict[str, Any]) -> None:
    failure = s["lastFailure"] or {}
    fields = [
        ("name", s["name"]),
        ("task", s["task"]),
        ("trigger", s["trigger"]),
        ("next run", "paused" if s["paused"] else when(s["nextRunAt"])),
        ("paused for", s.get("pauseReason")),
        ("data", json.dumps(s["data"])),
        ("misfire", f"{s['misfire']} (grace {s['grace']:g}s)"),
        ("unique", "yes" if s["unique"] else None),
        ("overlap", _overlap(s)),
        ("on failure", "pause the schedule" if s.get("pause_on_failure") else None),
        ("priority", s["priority"]),
        ("description", s["description"]),
        ("origin", s["origin"]),
        ("last job", f"{s['lastJob']['_id']} {_run(s['lastJob'])}" if s["lastJob"] else None),
        ("last success", when((s["lastSuccess"] or {}).get("lastFinishedAt"))),
        (
            "last failure",
            f"{when(failure.get('lastFinishedAt'))} {failure.get('failReason', '')}".strip(),
        ),
    ]
    labelled(fields)


def workflow_rows(found: Sequence[dict[str, Any]]) -> None:
    table(
        ["ID", "NAME", "KIND", "STATE", "FINISHED", "FAILED", "CREATED"],
        [
            [
                str(w["_id"]),
                w["name"],
                w["kind"],
                w["state"],
                f"{w['progress']['finished']}/{w['progress']['total']}",
                w["counts"]["failed"] + w["counts"]["expired"],
                when(w.get("createdAt")),
            ]
            for w in found
        ],
    )


# A group's jobs shown by ``workflows show`` unless --all: the failed ones come first.
SHOWN_CHILDREN = 20


def workflow_tree(info: dict[str, Any], every_node: bool) -> None:
    """The workflow and its nodes, each indented by its depth, with its state."""
    progress = info["progress"]
    click.echo(
        f"{info['kind']} {info['_id']} {info['name']!r}: {info['state']}, "
        f"{progress['finished']} of {progress['total']} finished"
    )
    counts = ", ".join(f"{n} {state}" for state, n in info["counts"].items() if n)
    click.echo(f"  {counts}")
    if info.get("uniqueKey"):
        click.echo(f"  unique key: {info['uniqueKey']}")
    nodes = info["nodes"]
    if info["kind"] == "group" and not every_node and len(nodes) > SHOWN_CHILDREN:
        nodes = _some_children(nodes)
        click.echo(f"  (showing {len(nodes)} of {len(info['nodes'])} nodes: --all for every one)")
    depth: dict[str, int] = {}  # roots 0; a node one more than its deepest dependency
    for node in info["nodes"]:
        deepest = max((depth[d] for d in node["deps"]), default=0 if node["waitsForGroup"] else -1)
        depth[node["node"]] = 1 + deepest
    for node in nodes:
        indent = "  " * (1 + depth[node["node"]])
        after = f"  after {', '.join(node['deps'])}" if node["deps"] else ""
        if node["waitsForGroup"]:
            after = "  after the group"
        reason = f"  ({node['reason']})" if node.get("reason") else ""
        click.echo(
            f"{indent}{node['node']}  {node['state']}  {node['task']}  {node['id']}{after}{reason}"
        )


def _some_children(nodes: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first ``SHOWN_CHILDREN`` of a group's jobs, those that did not succeed first,
    and its callbacks."""
    children = [n for n in nodes if not n["waitsForGroup"]]
    failed = [n for n in children if n["state"] in ("failed", "cancelled", "expired")]
    shown = {n["id"] for n in (failed + children)[:SHOWN_CHILDREN]}
    return [n for n in nodes if n["id"] in shown or n["waitsForGroup"]]
