"""OpenTelemetry traces that cross the queue, with the optional extra ``qworker[otel]``.

Why a module of its own: everything qworker does with OpenTelemetry is here, so that
qworker needs no OpenTelemetry at all. The package is never imported by qworker
itself: it is used only once the application (or its task code) imported
``opentelemetry.trace``, since before that nothing can have started a span nor set an
SDK. Without the package, or without an SDK, each hook below costs a dictionary
look-up or a no-op span.

- ``stamp(doc)``, from ``model.new_job`` (every job document is made there): the
  trace context of the current span, as the global propagator writes it (W3C
  ``traceparent``/``tracestate`` by default), is stored on the job as
  ``traceContext``, when there is a valid current span. Baggage is not stored.
- ``run(job, worker_id)``, around each run (``Runs._run``): a ``process <task>``
  span of kind CONSUMER after the messaging semantic conventions, parented to the
  stored context and linked to it, current while the run's code runs (``bind`` makes
  it current in the thread of a blocking handler or observer).
- ``write(...)``, behind ``qworker --trace-writes``: a span for each claim
  (``Claims.claim``) and each batch write of the outbox (``OutboxWriter.flush``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.metadata
import importlib.util
import inspect
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

try:  # whether opentelemetry-api is installed, found without importing it
    available = importlib.util.find_spec("opentelemetry.trace") is not None
except (ImportError, ValueError):
    available = False

FIELD = "traceContext"
SYSTEM = "qworker"
INSTRUMENTATION = "qworker"
MAX_CONTEXT_CHARS = 4096  # a stored context beyond this is not one a propagator wrote
_NOT_STORED = frozenset({"baggage"})  # application data: not kept in job documents

F = TypeVar("F", bound=Callable[..., Any])


class Run(Protocol):
    """What a run's span reads of its job (a ``qworker.job.Job``)."""

    @property
    def id(self) -> str: ...
    @property
    def task(self) -> str: ...
    @property
    def attempt(self) -> int: ...
    @property
    def doc(self) -> dict[str, Any]: ...


def _loaded() -> bool:
    """True once the application imported ``opentelemetry.trace`` (and it is there)."""
    return sys.modules.get("opentelemetry.trace") is not None


@functools.cache
def _tracer() -> Tracer:
    """qworker's tracer. Got before the application sets its provider, it is a proxy
    that uses the provider once set: it can be kept."""
    from opentelemetry import trace

    try:
        version = importlib.metadata.version("qworker")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout, not installed
        version = None
    return trace.get_tracer(INSTRUMENTATION, version)


# -- enqueue ------------------------------------------------------------------


def stamp(doc: dict[str, Any]) -> None:
    """Store the current span's trace context on a new job document, if there is one."""
    if not _loaded():
        return
    carrier = current_context()
    if carrier:
        doc[FIELD] = carrier


def current_context() -> dict[str, str] | None:
    """The current span's context as the global propagator writes it, or None when there
    is no valid current span."""
    if not _loaded():
        return None
    try:
        from opentelemetry import propagate, trace
    except ImportError:
        return None
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    kept = {k: v for k, v in carrier.items() if k not in _NOT_STORED}
    return kept or None


def _stored(doc: Mapping[str, Any]) -> dict[str, str]:
    """A job's stored context, of text keys and values only: the document may have been
    written by anyone."""
    value = doc.get(FIELD)
    if not isinstance(value, dict):
        return {}
    kept = {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}
    if sum(len(k) + len(v) for k, v in kept.items()) > MAX_CONTEXT_CHARS:
        return {}
    return kept


# -- runs ---------------------------------------------------------------------


class RunSpan:
    """What a run tells its span; this one, for runs not traced, does nothing."""

    def failed(self, exc: BaseException) -> None:
        """The run's code raised ``exc``."""

    def ended(self, state: str, retry: bool = False, reason: str | None = None) -> None:
        """The run's outcome: a ``JobState`` value (``queued`` is a snooze)."""


NOT_TRACED = RunSpan()

# A run's outcome on its span (``qworker.job.outcome``), by job state.
OUTCOMES = {"queued": "snoozed"}


class _Traced(RunSpan):
    def __init__(self, span: Span) -> None:
        self.span = span
        self.outcome: str | None = None
        self.error: str | None = None

    def failed(self, exc: BaseException) -> None:
        kind = getattr(exc, "kind", None)
        if isinstance(kind, str):  # a child process's failure (``runner.HandlerError``)
            self.error = kind
            self.span.record_exception(
                exc,
                attributes={
                    "exception.type": kind,
                    "exception.message": str(getattr(exc, "message", "")),
                    "exception.stacktrace": str(getattr(exc, "trace", "")),
                },
            )
        else:
            self.error = type(exc).__qualname__
            self.span.record_exception(exc)

    def ended(self, state: str, retry: bool = False, reason: str | None = None) -> None:
        from opentelemetry.trace import Status, StatusCode

        self.outcome = "retry" if retry and state == "failed" else OUTCOMES.get(state, state)
        self.span.set_attribute("qworker.job.outcome", self.outcome)
        if reason:
            self.span.set_attribute("qworker.job.reason", reason[:1000])
        if state == "failed":
            self.span.set_attribute("error.type", self.error or "_OTHER")
            self.span.set_status(Status(StatusCode.ERROR, reason))


@contextlib.contextmanager
def run(job: Run, worker_id: str) -> Iterator[RunSpan]:
    """The span of one run of ``job``, current within the block.

    Its parent is the context stored at enqueue, and it links to it too: the
    conventions correlate a consumer with its message by a link, and allow the
    parent as well for a message processed on its own, as every qworker run is.
    """
    if not _loaded():
        yield NOT_TRACED
        return
    from opentelemetry import context, propagate, trace

    stored = _stored(job.doc)
    parent = propagate.extract(stored, context=context.Context())  # never the worker's own
    created = trace.get_current_span(parent).get_span_context()
    links = [trace.Link(created)] if created.is_valid else []
    span = _tracer().start_span(
        f"process {job.task}",
        context=parent,
        kind=trace.SpanKind.CONSUMER,
        attributes={
            "messaging.system": SYSTEM,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": job.task,
            "messaging.message.id": job.id,
            "messaging.client.id": worker_id,
            "qworker.job.attempt": job.attempt,
            "qworker.worker.id": worker_id,
        },
        links=links,
    )
    traced = _Traced(span)
    token = context.attach(trace.set_span_in_context(span))
    try:
        yield traced
    finally:
        context.detach(token)
        if traced.outcome is None:  # handed back to the queue: a shutdown, worker.fail()
            span.set_attribute("qworker.job.outcome", "released")
        span.end()


def bind(fn: F) -> F:
    """``fn``, to be run where the current trace context is not (a worker thread does
    not inherit the loop's): a blocking function that runs with it current. An
    ``async def`` function runs in the caller's task, which has it: returned as is."""
    if not _loaded() or inspect.iscoroutinefunction(fn):
        return fn
    from opentelemetry import context, trace

    current = context.get_current()
    if not trace.get_current_span(current).get_span_context().is_valid:
        return fn

    def bound(*args: Any, **kwargs: Any) -> Any:
        token = context.attach(current)
        try:
            return fn(*args, **kwargs)
        finally:
            context.detach(token)

    return bound  # type: ignore[return-value]


# -- claims and writes (--trace-writes) -----------------------------------------


class WriteSpan:
    """A claim's or a batch write's span; this one, when not traced, does nothing."""

    def set(self, key: str, value: str | int | bool) -> None:
        pass


NO_WRITE = WriteSpan()


class _TracedWrite(WriteSpan):
    def __init__(self, span: Span) -> None:
        self.span = span

    def set(self, key: str, value: str | int | bool) -> None:
        self.span.set_attribute(key, value)


@contextlib.contextmanager
def write(
    enabled: bool, operation: str, kind: str, attributes: Mapping[str, str | int | bool]
) -> Iterator[WriteSpan]:
    """A span named ``operation`` around one of the worker's own round trips to MongoDB,
    when ``enabled`` (``--trace-writes``); current within the block, so a MongoDB
    driver's instrumentation nests under it. ``kind``: the messaging operation type
    (``receive`` for a claim, ``settle`` for the outbox's writes of outcomes). An
    exception that leaves the block is recorded, and the span's status is ERROR."""
    if not enabled or not _loaded():
        yield NO_WRITE
        return
    from opentelemetry import context, trace
    from opentelemetry.trace import Status, StatusCode

    span = _tracer().start_span(
        operation,
        # A claim takes messages from the queue (receive: CONSUMER); a write is a call.
        kind=trace.SpanKind.CONSUMER if kind == "receive" else trace.SpanKind.CLIENT,
        attributes={
            "messaging.system": SYSTEM,
            "messaging.operation.type": kind,
            "messaging.operation.name": operation,
            **attributes,
        },
    )
    token = context.attach(trace.set_span_in_context(span))
    try:
        yield _TracedWrite(span)
    except asyncio.CancelledError:
        span.set_attribute("qworker.cancelled", True)
        raise
    except BaseException as exc:
        span.record_exception(exc)
        span.set_attribute("error.type", type(exc).__qualname__)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:1000]))
        raise
    finally:
        context.detach(token)
        span.end()
