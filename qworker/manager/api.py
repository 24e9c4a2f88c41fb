"""The HTTP API and dashboard that ``qworker-manager serve`` offers operators.

Every route is a thin layer over ``qworker.Client`` (and ``stats`` for the
figures): no job logic lives here. JSON in and out, an OpenAPI description
at ``/api/openapi.json``, server-sent events at ``/api/events``, Prometheus
metrics at ``/metrics`` and the dashboard at ``/``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from bson import ObjectId
from fastapi import FastAPI, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict, Field
from pymongo.errors import PyMongoError
from starlette.exceptions import HTTPException as StarletteHTTPException

from qworker import stats
from qworker.bulk import MAX_IDS
from qworker.client import Client
from qworker.errors import (
    ConfigError,
    InvalidJobError,
    InvalidScheduleError,
    JobNotFound,
    JobStateError,
    QworkerError,
    ScheduleBusy,
    ScheduleExists,
    ScheduleNotFound,
    ScheduleOwnedByTask,
    WorkerNotFound,
    WorkerStateError,
)
from qworker.health import Health
from qworker.manager.events import CLOSED, EventHub
from qworker.manager.httpguard import (
    EVENTS_COOKIE,
    OPERATOR,
    ROLE,
    SECURE_EVENTS_COOKIE,
    VIEWER,
    Guard,
    Rules,
    events_pass,
)
from qworker.manager.metrics import Metrics
from qworker.model import JobState
from qworker.mongo import mongo_problem
from qworker.schedules import make_schedule
from qworker.store import MAX_SKIP

Doc = dict[str, Any]
WEB = Path(__file__).parent / "web"
API_THREADS = 8  # requests the API works on at once; the rest wait their turn
# A comment line this often keeps proxies from closing an idle event stream.
KEEPALIVE_SECONDS = 15.0

_STATUS: list[tuple[type[QworkerError], int]] = [
    (JobNotFound, 404),
    (ScheduleNotFound, 404),
    (WorkerNotFound, 404),
    (JobStateError, 409),
    (WorkerStateError, 409),
    (ScheduleExists, 409),
    (ScheduleBusy, 409),
    (ScheduleOwnedByTask, 409),
    (InvalidJobError, 422),
    (InvalidScheduleError, 422),
    (ConfigError, 422),
]


def plain(value: Any) -> Any:
    """Documents as JSON: ids as strings, times as ISO 8601."""
    return jsonable_encoder(value, custom_encoder={ObjectId: str, datetime: _iso})


def _iso(value: datetime) -> str:
    return value.isoformat()


class UniqueIn(BaseModel):
    """``unique`` as a dict: how long the key is held, and what a debounce replaces."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)
    key: str = Field(description="The key: one job of the task per key.")
    while_: Literal["active", "queued", "period"] = Field(
        "active",
        alias="while",
        description="active: while a job is queued or running; queued: while one is "
        "queued (a running one does not count); period: one per period (a throttle).",
    )
    period: str | float | None = Field(
        None, description="With while=period only: '10 minutes', or seconds."
    )
    replace: list[Literal["data", "nextRunAt"]] | None = Field(
        None,
        description="Debounce (not with a period): a queued holder takes this job's data "
        "and/or run time; its id is returned.",
    )


class Enqueue(BaseModel):
    """A job to queue, as ``Client.schedule`` takes it."""

    model_config = ConfigDict(extra="forbid")
    task: str = Field(description="Task id.")
    data: Any = Field(None, description="JSON data for the handler.")
    when: str | None = Field(None, description="'now', 'in 20 minutes', an ISO time, a phrase.")
    priority: int | str | None = Field(None, description="A number or lowest…highest.")
    max_attempts: int | None = Field(None, ge=1)
    timeout: float | None = Field(None, gt=0, description="Seconds.")
    description: str | None = None
    unique: str | UniqueIn | None = Field(
        None,
        description="A key: at most one active job of the task per key (the holder's id "
        "is returned); or a dict for the other modes.",
    )
    expires: str | float | None = Field(
        None,
        description="Not started by then, it ends expired: seconds or a duration from "
        "its run time, or an ISO time.",
    )


class JobFilterIn(BaseModel):
    """Which jobs, as ``Client.jobs`` and ``JobFilter`` take them: all given must match."""

    model_config = ConfigDict(extra="forbid")
    state: JobState | None = None
    task: str | None = None
    worker: str | None = Field(None, description="The worker running it or last to run it.")
    text: str | None = Field(None, description="Text in the description.")
    since: str | None = Field(None, description="Created after: an ISO time, or '1 hour' (ago).")
    until: str | None = Field(None, description="Created before: an ISO time, or '1 hour'.")
    finished_since: str | None = Field(
        None, description="Finished (in a finished state) after: an ISO time, or '1 hour'."
    )
    finished_until: str | None = Field(None, description="Finished before: ISO, or '1 hour'.")
    data_field: str | None = Field(
        None, description="A dotted path inside the data: 'customer', 'address.city'."
    )
    data_value: str | None = Field(
        None,
        description="What data_field holds ('42' finds the number too); without it, the "
        "field exists.",
    )
    error: str | None = Field(None, description="Text in the failure reason or error message.")

    def given(self) -> dict[str, Any]:
        fields = self.model_dump(exclude_none=True)
        if self.state is not None:
            fields["state"] = self.state.value
        return fields


class JobFilterQuery(JobFilterIn):
    """The same filters, as the query parameters of ``GET /api/jobs`` (which has others)."""

    model_config = ConfigDict(extra="ignore")


class BulkIn(BaseModel):
    """A bulk action, as ``Client.bulk`` takes it: over ``ids`` or ``filter``, not both."""

    model_config = ConfigDict(extra="forbid")
    action: Literal["retry", "cancel", "delete"] = Field(
        description="retry finished jobs, cancel waiting, queued and running ones (those "
        "are asked to stop), delete any but running ones."
    )
    ids: list[str] | None = Field(None, max_length=MAX_IDS, description="The jobs' ids.")
    filter: JobFilterIn | None = Field(
        None, description="Every job that matches, as GET /api/jobs filters; {} is every job."
    )
    dry_run: bool = Field(False, description="Change nothing: count matched and eligible.")


class ScheduleIn(BaseModel):
    """A recurring schedule, as ``make_schedule`` takes it."""

    model_config = ConfigDict(extra="forbid")
    name: str
    task: str
    data: Any = None
    every: str | float | None = Field(None, description="'30 minutes', '1h', or seconds.")
    cron: str | None = Field(None, description="5 fields, 6 with seconds first, or @daily.")
    timezone: str | None = Field(None, description="IANA zone of the cron fields; UTC.")
    start_at: str | None = None
    misfire: Literal["coalesce", "skip"] = "coalesce"
    grace: str | float = 60.0
    unique: bool = Field(False, description="The same as overlap 'skip'.")
    overlap: Literal["allow", "skip", "buffer-one"] | None = Field(
        None,
        description="A fire while the last fire's job is queued or running: starts "
        "(allow, the default), is dropped (skip), or is kept, one only, to start once that "
        "job has ended (buffer-one).",
    )
    pause_on_failure: bool = Field(
        False,
        description="Pause the schedule once a fire's job fails for good; the reason is "
        "shown as pauseReason until it is resumed.",
    )
    priority: int | str | None = None
    max_attempts: int | None = Field(None, ge=1)
    timeout: float | None = Field(None, gt=0)
    description: str | None = None
    replace: bool = Field(True, description="Replace a schedule of the same name, or 409.")


def _probe(status: int, body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers={"Cache-Control": "no-store"})


def create_app(
    client: Client,
    hub: EventHub | None = None,
    token: str | None = None,
    metrics: Metrics | None = None,
    hosts: Iterable[str] = (),
    probes: Health | None = None,
    viewer_token: str | None = None,
) -> FastAPI:
    """The ASGI app; ``token``, when given, is required on every API request (see
    ``httpguard``), ``hosts`` are the names it answers for besides loopback's, and
    ``probes`` what ``/healthz`` and ``/readyz`` say (``qworker.health``).
    ``viewer_token`` (beside ``token`` only) opens every view and no change."""
    hub = hub or EventHub()
    metrics = metrics or Metrics(client)
    app = FastAPIOffline(  # Swagger UI's assets come from that package: no CDN
        title="qworker",
        version="1",
        docs_url="/api/docs",
        redoc_url=None,
        openapi_url="/api/openapi.json",
        static_url="/api/docs/assets",
        description="Jobs, workflows, workers, tasks and schedules of a qworker fleet.",
    )
    app.add_exception_handler(QworkerError, _qworker_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(PyMongoError, _mongo_error)
    app.add_middleware(Guard, rules=Rules.make(token, None, hosts, viewer_token))
    run = _runner()

    @app.get("/api/health", tags=["fleet"], responses={503: {"description": "MongoDB is down"}})
    async def health() -> Any:
        """200 while MongoDB answers (within a few seconds), else 503 naming the cause."""
        await run(client.ping)
        return {"ok": True}

    probe_of = probes or Health()

    @app.get("/healthz", tags=["fleet"], responses={503: {"description": "the loop was blocked"}})
    async def healthz() -> Any:
        """200 while this manager's event loop turns; answered from memory."""
        return _probe(*probe_of.answer("/healthz"))

    @app.get("/readyz", tags=["fleet"], responses={503: {"description": "not ready, and why"}})
    async def readyz() -> Any:
        """200 while MongoDB answered this manager within its last lease; from memory."""
        return _probe(*probe_of.answer("/readyz"))

    @app.get("/api/overview", tags=["fleet"])
    async def overview(window: Annotated[float, Query(gt=0, le=86_400)] = 60.0) -> Any:
        """Queue depth by task and state, recent throughput and failures, live workers."""
        workers = await run(client.workers)
        return plain(await run(stats.overview, client.jobs_collection, workers, window))

    @app.get("/api/charts", tags=["fleet"])
    async def charts(
        window: Annotated[float, Query(gt=0, le=stats.MAX_CHART_WINDOW)] = 3600.0,
        buckets: Annotated[int, Query(ge=1, le=stats.MAX_CHART_BUCKETS)] = 60,
        task: str | None = None,
    ) -> Any:
        """Per task, per bucket of the window (oldest first): jobs succeeded and failed, and
        the p50/p95 of their enqueue-to-start wait, in seconds."""
        return plain(await run(lambda: client.task_charts(window, buckets, task=task)))

    @app.get("/api/workers", tags=["fleet"])
    async def workers() -> Any:
        return [_without_nonce(worker) for worker in plain(await run(client.workers))]

    @app.post("/api/workers/{worker_id}/stop", tags=["fleet"])
    async def stop_worker(worker_id: str) -> Any:
        """Ask a running worker to stop gracefully, as on SIGTERM: it finishes its running
        jobs (within its grace) and exits. Asked once per instance (``alreadyAsked``)."""
        return plain(await run(client.stop_worker, worker_id))

    @app.get("/api/tasks", tags=["fleet"])
    async def tasks() -> Any:
        return plain(await run(client.tasks))

    @app.post("/api/tasks/{task_id}/pause", tags=["fleet"])
    async def pause_task(task_id: str) -> Any:
        """Claim no job of the task on any worker until it is resumed."""
        return plain(await run(client.pause_task, task_id))

    @app.post("/api/tasks/{task_id}/resume", tags=["fleet"])
    async def resume_task(task_id: str) -> Any:
        return plain(await run(client.resume_task, task_id))

    @app.get("/api/jobs", tags=["jobs"])
    async def jobs(
        filters: Annotated[JobFilterQuery, Query()],
        sort: Annotated[
            Literal["created", "finished", "duration"],
            Query(description="created (default), finished, or duration of the last run."),
        ] = "created",
        order: Annotated[Literal["desc", "asc"], Query(description="desc (default) or asc.")] = (
            "desc"
        ),
        limit: Annotated[int, Query(ge=1, le=1_000)] = 50,
        skip: Annotated[int, Query(ge=0, le=MAX_SKIP)] = 0,
    ) -> Any:
        """Jobs, newest first (or by ``sort`` and ``order``), with the total that match
        (for paging). Every filter is a query parameter, so a link carries it."""
        given = filters.given()
        found = await run(
            lambda: client.jobs(**given, limit=limit, skip=skip, sort=sort, order=order)
        )
        total = await run(lambda: client.count_jobs(**given))
        return {"jobs": plain(found), "total": total, "limit": limit, "skip": skip}

    @app.post("/api/jobs", tags=["jobs"], status_code=201)
    async def enqueue(job: Enqueue) -> Any:
        fields = job.model_dump(exclude_none=True)
        task, when = fields.pop("task"), fields.pop("when", None)
        data = fields.pop("data", None)
        job_id = await run(lambda: client.schedule(when, task, data, **fields))
        return {"id": job_id}

    @app.post("/api/jobs/bulk", tags=["jobs"])
    async def bulk(body: BulkIn) -> Any:
        """Retry, cancel or delete the given jobs, or all that match a filter:
        ``{action, matched, changed}``; with ``dry_run``, ``matched`` and ``eligible``."""
        filters = None if body.filter is None else body.filter.given()
        return plain(
            await run(lambda: client.bulk(body.action, body.ids, filters, dry_run=body.dry_run))
        )

    @app.get("/api/jobs/{job_id}", tags=["jobs"])
    async def job(job_id: str) -> Any:
        """One job, with its progress and log lines."""
        return plain(await run(client.get, job_id))

    @app.post("/api/jobs/{job_id}/retry", tags=["jobs"])
    async def retry(job_id: str) -> Any:
        return plain(await run(client.retry, job_id))

    @app.post("/api/jobs/{job_id}/cancel", tags=["jobs"])
    async def cancel(job_id: str) -> Any:
        return plain(await run(client.cancel, job_id))

    @app.delete("/api/jobs/{job_id}", tags=["jobs"], status_code=204)
    async def delete(job_id: str) -> Response:
        await run(client.delete, job_id)
        return Response(status_code=204)

    @app.get("/api/workflows", tags=["workflows"])
    async def workflows(
        limit: Annotated[int, Query(ge=1, le=1_000)] = 50,
        skip: Annotated[int, Query(ge=0, le=MAX_SKIP)] = 0,
    ) -> Any:
        """Workflows and groups, newest first, with their state and progress."""
        return plain(await run(lambda: client.workflows(limit=limit, skip=skip)))

    @app.get("/api/workflows/{workflow_id}", tags=["workflows"])
    async def workflow(workflow_id: str) -> Any:
        """One workflow: its state, counts, progress and every node with its dependencies."""
        return plain(await run(client.workflow_info, workflow_id))

    @app.post("/api/workflows/{workflow_id}/cancel", tags=["workflows"])
    async def cancel_workflow(workflow_id: str) -> Any:
        return plain(await run(client.cancel_workflow, workflow_id))

    @app.post("/api/workflows/{workflow_id}/retry", tags=["workflows"])
    async def retry_workflow(workflow_id: str) -> Any:
        """Run the failed and cancelled nodes again; the nodes queued now."""
        return {"queued": plain(await run(client.retry_workflow, workflow_id))}

    @app.get("/api/schedules", tags=["schedules"])
    async def schedules() -> Any:
        return plain(await run(client.schedule_list))

    @app.post("/api/schedules", tags=["schedules"], status_code=201)
    async def add_schedule(body: ScheduleIn) -> Any:
        fields = body.model_dump(exclude_none=True)
        replace = fields.pop("replace")
        name, task, data = fields.pop("name"), fields.pop("task"), fields.pop("data", None)
        schedule = make_schedule(name, task, data, **fields)
        return plain(await run(client.add_schedule, schedule, replace))

    @app.get("/api/schedules/{name:path}", tags=["schedules"])
    async def schedule(name: str) -> Any:
        return plain(await run(client.schedule_info, name))

    @app.post("/api/schedules/{name:path}/run", tags=["schedules"])
    async def run_now(name: str) -> Any:
        """Fire the schedule once, now, as its trigger would (its overlap policy too):
        ``{schedule, outcome: queued|buffered, jobId, fireKey}``; 409 if it skipped it."""
        return plain(await run(client.run_schedule_now, name))

    @app.post("/api/schedules/{name:path}/pause", tags=["schedules"])
    async def pause(name: str) -> Any:
        return plain(await run(client.pause_schedule, name))

    @app.post("/api/schedules/{name:path}/resume", tags=["schedules"])
    async def resume(name: str) -> Any:
        return plain(await run(client.resume_schedule, name))

    @app.delete("/api/schedules/{name:path}", tags=["schedules"], status_code=204)
    async def remove(name: str) -> Response:
        await run(client.remove_schedule, name)
        return Response(status_code=204)

    @app.post("/api/login", tags=["fleet"], status_code=204)
    async def login(request: Request) -> Response:
        """With a valid Bearer token: the cookie that opens the event stream in a browser
        (``HttpOnly``: no script can read it; it opens nothing else)."""
        answer = Response(status_code=204)
        secret = viewer_token if request.scope.get(ROLE) == VIEWER else token
        if secret is not None:
            secure = request.url.scheme == "https"
            answer.set_cookie(
                SECURE_EVENTS_COOKIE if secure else EVENTS_COOKIE,
                events_pass(secret),
                path="/" if secure else "/api/events",
                httponly=True,
                samesite="strict",
                secure=secure,
            )
        return answer

    @app.get("/api/access", tags=["fleet"])
    async def access(request: Request) -> Any:
        """What the caller's token may do: ``operator`` (everything) or ``viewer`` (every
        view, no change), so that a page can leave out what it may not do."""
        role = request.scope.get(ROLE, OPERATOR)
        return {"role": role, "readOnly": role == VIEWER}

    @app.get("/api/events", tags=["fleet"])
    async def events(request: Request) -> StreamingResponse:
        """Server-sent events: job notifications, workers joining and leaving."""
        return StreamingResponse(
            _stream(hub, request),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store"},
        )

    @app.get("/metrics", tags=["fleet"])
    async def prometheus() -> Response:
        body, content_type = await run(metrics.render)
        return Response(body, media_type=content_type)

    app.mount("/", StaticFiles(directory=WEB, html=True), name="dashboard")
    return app


def _runner() -> Callable[..., Any]:
    """Runs the client's blocking calls off the event loop, in threads of the API's own:
    a burst of slow requests waits for these, and takes none from the manager."""
    threads = ThreadPoolExecutor(API_THREADS, thread_name_prefix="qworker-api")

    async def run(fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(threads, fn, *args)

    return run


def _without_nonce(doc: Doc) -> Doc:
    """A worker's instance nonce addresses orders to it on the channel: not for pages
    (nor the stop request, which holds it)."""
    return {key: value for key, value in doc.items() if key not in ("nonce", "stopRequested")}


async def _stream(hub: EventHub, request: Request) -> AsyncIterator[str]:
    async with hub.listen() as queue:
        yield ": connected\n\n"
        while not await request.is_disconnected():
            try:
                event, body = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            if (event, body) == CLOSED:
                return
            yield f"event: {event}\ndata: {json.dumps(plain(_without_nonce(body)))}\n\n"


async def _qworker_error(request: Request, exc: Exception) -> JSONResponse:
    status = next((code for kind, code in _STATUS if isinstance(exc, kind)), 400)
    body = {"error": str(exc)}
    if isinstance(exc, InvalidJobError) and exc.field:
        where = "query" if request.method == "GET" else "body"
        body["field"] = f"{where}.{exc.field}"
    return JSONResponse(body, status_code=status)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """401, 404 and 405 in the shape of every other error: ``{"error": ...}``."""
    assert isinstance(exc, StarletteHTTPException)
    return JSONResponse(
        {"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
    )


async def _mongo_error(request: Request, exc: Exception) -> JSONResponse:
    """MongoDB unreachable or failing: 503, so a probe or a proxy can tell it apart."""
    return JSONResponse({"error": mongo_problem(exc)}, status_code=503)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 with one message per bad field, named by where it is (``body.priority``)."""
    assert isinstance(exc, RequestValidationError)
    problems = [
        {"field": ".".join(str(part) for part in error["loc"]), "error": error["msg"]}
        for error in exc.errors()
    ]
    first = problems[0] if problems else {"field": "", "error": "invalid request"}
    return JSONResponse(
        {
            "error": f"{first['field']}: {first['error']}",
            "field": first["field"],
            "problems": problems,
        },
        status_code=422,
    )
