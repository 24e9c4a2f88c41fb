"""OpenTelemetry across the queue (``qworker.tracing``), across real processes.

This test process enqueues under a span of an SDK TracerProvider of its own; a real
worker runs the ``traced`` task, whose ``setup`` installs the worker's SDK with an
in-memory exporter (as an application's task code would) and whose finalizer writes
the finished spans to the side-effect log (tests/support/tasks/traced.py). The
run's span is a child of the enqueuing span, and links to it; it carries the
messaging conventions' attributes and qworker's own; a failed run's span has
status ERROR and an exception event. ``--trace-writes`` adds the claim and write
spans, and only it does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId
from support.effects import effects_env
from support.jobs import wait_finished
from support.processes import TASKS, worker_ready
from support.waits import wait_for

from qworker import Client

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind, format_span_id, format_trace_id

# Where the handler runs: task metadata, and the worker's environment (traced.py).
FLAVOURS: dict[str, tuple[dict[str, Any], dict[str, str]]] = {
    "thread": ({}, {}),
    "loop": ({}, {"QWORKER_TEST_TRACED_ASYNC": "1"}),
    "process": ({"isolation": "process"}, {}),
}


def traced_tasks(folder: Path, **metadata: Any) -> Path:
    """The ``traced`` task in a folder of its own, with ``metadata`` added."""
    folder.mkdir()
    shutil.copy(TASKS / "traced.py", folder / "traced.py")
    base = json.loads((TASKS / "traced.json").read_text())
    (folder / "traced.json").write_text(json.dumps({**base, **metadata}))
    return folder


def spans_of(db: Any, name: str | None = None) -> list[dict[str, Any]]:
    query: dict[str, Any] = {"span": {"$exists": True}} if name is None else {"span": name}
    return list(db.effects.find(query, {"_id": 0}))


def run_span(spans: list[dict[str, Any]], job_id: str) -> dict[str, Any]:
    found = [
        s
        for s in spans
        if s["span"] == "process traced" and s["attributes"]["messaging.message.id"] == job_id
    ]
    assert len(found) == 1, (job_id, spans)
    return found[0]


def stop(worker: Any) -> None:
    """Stop the worker: its finalizer writes the spans."""
    worker.stop()
    assert worker.process.returncode == 0, worker.output()


@pytest.mark.parametrize("flavour", list(FLAVOURS))
def test_a_run_is_traced_as_a_child_of_its_enqueue(
    client: Client, db: Any, mongo_url: str, spawn_worker: Any, tmp_path: Path, flavour: str
) -> None:
    provider = TracerProvider()  # this process's own, not the global one
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("checkout") as enqueuing:
        ok = client.now("traced", {"child": flavour != "process"})
        failing = client.now("traced", {"fail": True}, max_attempts=1)
        snoozing = client.now("traced", {"snooze": 3600})
    plain = client.now("traced", {})  # no current span: no trace context
    garbled = client.now("traced", {})
    db.jobs.update_one(
        {"_id": ObjectId(garbled)},
        {"$set": {"traceContext": {"traceparent": "00-zz", "tracestate": 5}}},
    )

    trace_id = format_trace_id(enqueuing.get_span_context().trace_id)
    parent_id = format_span_id(enqueuing.get_span_context().span_id)
    stored = db.jobs.find_one({"_id": ObjectId(ok)})["traceContext"]
    assert stored["traceparent"].startswith(f"00-{trace_id}-{parent_id}-")
    assert "traceContext" not in db.jobs.find_one({"_id": ObjectId(plain)})

    metadata, env = FLAVOURS[flavour]
    folder = traced_tasks(tmp_path / "tasks", **metadata)
    worker = spawn_worker("traced", paths=[folder], env=effects_env(mongo_url, **env))
    wait_for(lambda: worker_ready(worker), 30, "the worker to start")
    done = {job: wait_finished(db, job) for job in (ok, failing, plain, garbled)}
    wait_for(
        lambda: db.jobs.find_one({"_id": ObjectId(snoozing), "lastFinishedAt": {"$exists": 1}}),
        30,
        "the snooze to be written",
    )
    child = done[ok]["result"].get("child")
    if child is not None:
        wait_finished(db, child)
    stop(worker)
    assert done[ok]["state"] == "succeeded" and done[failing]["state"] == "failed"

    spans = spans_of(db)
    span = run_span(spans, ok)
    assert span["kind"] == SpanKind.CONSUMER.name
    assert span["trace_id"] == trace_id
    assert span["parent"] == parent_id
    assert span["links"] == [{"trace_id": trace_id, "span_id": parent_id}]
    assert span["attributes"] == {
        "messaging.system": "qworker",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": "traced",
        "messaging.message.id": ok,
        "messaging.client.id": worker.worker_id,
        "qworker.job.attempt": 1,
        "qworker.worker.id": worker.worker_id,
        "qworker.job.outcome": "succeeded",
    }
    assert span["status"] == "UNSET" and span["events"] == []

    failed = run_span(spans, failing)
    assert failed["trace_id"] == trace_id and failed["parent"] == parent_id
    assert failed["status"] == "ERROR"
    assert "the traced job failed" in failed["description"]
    assert failed["attributes"]["error.type"] == "ValueError"
    assert failed["attributes"]["qworker.job.outcome"] == "failed"
    (event,) = failed["events"]
    assert event["name"] == "exception"
    assert event["attributes"]["exception.type"] == "ValueError"
    assert event["attributes"]["exception.message"] == "the traced job failed"
    assert "ValueError" in event["attributes"]["exception.stacktrace"]

    snoozed = run_span(spans, snoozing)
    assert snoozed["trace_id"] == trace_id and snoozed["status"] == "UNSET"
    assert snoozed["attributes"]["qworker.job.outcome"] == "snoozed"
    assert snoozed["events"] == []

    for job in (plain, garbled):  # no context, or one no propagator reads: a trace of its own
        own = run_span(spans, job)
        assert own["parent"] is None and own["links"] == [] and own["trace_id"] != trace_id

    # Without --trace-writes: no claim or write spans.
    assert spans_of(db, "claim") == [] and spans_of(db, "write") == []

    handlers = spans_of(db, "handler")
    if flavour == "process":
        # The child process's spans stay in the child: the run's span is the parent's.
        assert handlers == []
        return
    # The run's span is current where the handler runs (a thread, or the loop), so the
    # handler's spans, and the sub-task it queued, are in the same trace.
    mine = [h for h in handlers if h["parent"] == span["span_id"]]
    assert len(mine) == 1 and mine[0]["trace_id"] == trace_id
    assert {h["parent"] for h in handlers} >= {span["span_id"], failed["span_id"]}
    sub = run_span(spans, child)
    assert sub["trace_id"] == trace_id and sub["parent"] == mine[0]["span_id"]


def test_trace_writes_gives_the_claims_and_the_writes_spans(
    client: Client, db: Any, mongo_url: str, spawn_worker: Any
) -> None:
    job = client.now("traced", {})
    worker = spawn_worker("traced", env=effects_env(mongo_url), extra=["--trace-writes"])
    wait_for(lambda: worker_ready(worker), 30, "the worker to start")
    wait_finished(db, job)
    stop(worker)

    claims = spans_of(db, "claim")
    assert claims, spans_of(db)
    claimed = [c for c in claims if c["attributes"]["messaging.batch.message_count"] == 1]
    assert len(claimed) == 1
    claim = claimed[0]
    assert claim["kind"] == SpanKind.CONSUMER.name and claim["status"] == "UNSET"
    assert claim["attributes"] == {
        "messaging.system": "qworker",
        "messaging.operation.type": "receive",
        "messaging.operation.name": "claim",
        "qworker.worker.id": worker.worker_id,
        "qworker.claim.requested": 1,
        "messaging.batch.message_count": 1,
    }

    writes = spans_of(db, "write")
    assert writes
    for write in writes:
        assert write["kind"] == SpanKind.CLIENT.name and write["status"] == "UNSET"
        assert write["attributes"]["messaging.operation.type"] == "settle"
        assert write["attributes"]["messaging.operation.name"] == "write"
        assert write["attributes"]["qworker.worker.id"] == worker.worker_id
        assert write["attributes"]["qworker.write.count"] >= 1
    # The run's own span is not among them: a claim and a write are traces of their own.
    run = run_span(spans_of(db), job)
    assert run["trace_id"] not in {s["trace_id"] for s in claims + writes}


def test_without_opentelemetry_nothing_is_imported_and_nothing_stored(tmp_path: Path) -> None:
    """A client that never imported OpenTelemetry pays nothing for it: qworker imports
    none of it, and stores no context; with the package hidden, the hooks are no-ops."""
    script = """
import sys
hidden = sys.argv[1] == "hidden"
if hidden:
    sys.modules["opentelemetry"] = None  # an import of it raises ImportError
    sys.modules["opentelemetry.trace"] = None
from datetime import datetime, timezone
from qworker import tracing
from qworker.job import Job
from qworker.model import new_job
import qworker.worker.daemon, qworker.client

now = datetime.now(timezone.utc)
doc = new_job("task", {"x": 1}, now=now, run_at=now)
assert "traceContext" not in doc
assert tracing.available is (not hidden)
with tracing.run(Job({**doc, "attempts": 1}, None), "w") as span:
    span.failed(ValueError("x"))
    span.ended("failed")
assert tracing.bind(len) is len
with tracing.write(True, "claim", "receive", {}) as write:
    write.set("k", 1)
loaded = [m for m in sys.modules if m.startswith("opentelemetry.") and sys.modules[m]]
assert loaded == [], loaded
print("ok")
"""
    for mode in ("absent", "hidden"):
        done = subprocess.run(
            [sys.executable, "-c", script, mode],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(tmp_path)},
        )
        assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
