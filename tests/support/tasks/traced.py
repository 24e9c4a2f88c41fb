"""Task code that traces with OpenTelemetry's SDK, as an application configures it.

``setup`` installs a TracerProvider whose spans go to an in-memory exporter; the
worker's finalizer writes every finished span (name, kind, ids, parent, links,
attributes, status, events) to the side-effect log (``support.effects``), with
``span`` set, for the test to read once the worker stopped. The handler opens a
span of its own, ``handler``: a child of the run's span when that span is current
where the handler runs.

Data: ``{"fail": true}`` raises ValueError; ``{"snooze": seconds}`` snoozes;
``{"child": true}`` queues a sub-task of this task (its id is the result).
``QWORKER_TEST_TRACED_ASYNC=1`` in the worker's environment makes the handler an
``async def``; with ``"isolation": "process"`` it runs in a child process (whose
spans stay there).
"""

import os

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import format_span_id, format_trace_id
from support.effects import effects

from qworker import Snooze

EXPORTER = InMemorySpanExporter()


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def _record(span, worker_id):
    context = span.get_span_context()
    return {
        "span": span.name,
        "worker": worker_id,
        "kind": span.kind.name,
        "trace_id": format_trace_id(context.trace_id),
        "span_id": format_span_id(context.span_id),
        "parent": format_span_id(span.parent.span_id) if span.parent else None,
        "links": [
            {
                "trace_id": format_trace_id(link.context.trace_id),
                "span_id": format_span_id(link.context.span_id),
            }
            for link in span.links
        ],
        "attributes": {k: _plain(v) for k, v in (span.attributes or {}).items()},
        "status": span.status.status_code.name,
        "description": span.status.description,
        "events": [
            {"name": e.name, "attributes": {k: _plain(v) for k, v in (e.attributes or {}).items()}}
            for e in span.events
        ],
    }


def setup(worker, task):
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(provider)
    tracer = trace.get_tracer("traced-task")

    @worker.finalizer
    def write_spans():
        spans = [_record(span, worker.id) for span in EXPORTER.get_finished_spans()]
        if spans:
            effects().insert_many(spans)

    def work(job):
        with tracer.start_as_current_span("handler"):
            data = job.data or {}
            if data.get("fail"):
                raise ValueError("the traced job failed")
            if data.get("snooze"):
                raise Snooze(data["snooze"])
            if data.get("child"):
                return {"child": worker.schedule_task("now", task.id, {})}
            return {"ok": True}

    if os.environ.get("QWORKER_TEST_TRACED_ASYNC"):

        async def run_async(job):
            return work(job)

        worker.task(task.id, run_async)
    else:
        worker.task(task.id, work)
