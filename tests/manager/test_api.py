"""The HTTP API: every route, auth and bad input, in process against the real server.

The event stream and the ``--http`` options are checked against a real
``qworker-manager serve`` process.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from support.jobs import wait_finished
from support.logs import log_events, wait_accepted, wait_leading, wait_logged
from support.processes import managed
from support.server import Server
from support.waits import wait_for

from qworker import Client
from qworker.manager.api import create_app
from qworker.manager.events import EventHub
from qworker.schedules import make_schedule

TOKEN = "s3cret-token"


# As a script calls the API: on loopback, saying it is no form (see httpguard).
BASE = "http://127.0.0.1:8765"
SCRIPT = {"X-Qworker-Request": "1"}


@pytest.fixture
def api(client: Client) -> Iterator[TestClient]:
    with TestClient(create_app(client), base_url=BASE, headers=SCRIPT) as test_client:
        yield test_client


@pytest.fixture
def guarded(client: Client) -> Iterator[TestClient]:
    with TestClient(create_app(client, token=TOKEN), base_url=BASE) as test_client:
        yield test_client


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None


# -- jobs --------------------------------------------------------------------


def test_enqueue_show_cancel_retry_delete(api: TestClient, db: Any) -> None:
    created = ok(
        api.post(
            "/api/jobs",
            json={
                "task": "noop",
                "data": {"n": 1},
                "priority": "high",
                "when": "in 1 hour",
                "description": "from the API",
                "max_attempts": 2,
            },
        ),
        201,
    )
    job_id = created["id"]
    job = ok(api.get(f"/api/jobs/{job_id}"))
    assert job["_id"] == job_id and job["state"] == "queued" and job["priority"] == 10
    assert job["data"] == {"n": 1} and job["maxAttempts"] == 2
    assert job["nextRunAt"].endswith("+00:00")

    assert ok(api.post(f"/api/jobs/{job_id}/cancel"))["state"] == "cancelled"
    assert ok(api.post(f"/api/jobs/{job_id}/retry"))["state"] == "queued"
    ok(api.delete(f"/api/jobs/{job_id}"), 204)
    assert db.jobs.count_documents({}) == 0
    assert api.get(f"/api/jobs/{job_id}").status_code == 404


def test_workflows_list_show_retry_cancel(api: TestClient, client: Client, burst: Any) -> None:
    wf = client.workflow("api")
    first = wf.add("double", {"x": 1}, name="first")
    wf.add("shortlived", {"fail": True}, name="second", deps=[first])
    workflow_id = wf.enqueue()
    burst("double", "shortlived")
    listed = api.get("/api/workflows").json()
    assert [(w["_id"], w["state"], w["progress"]) for w in listed] == [
        (workflow_id, "failed", {"finished": 2, "total": 2})
    ]
    shown = api.get(f"/api/workflows/{workflow_id}").json()
    assert [(n["node"], n["state"], n["deps"]) for n in shown["nodes"]] == [
        ("first", "succeeded", []),
        ("second", "failed", ["first"]),
    ]
    queued = api.post(f"/api/workflows/{workflow_id}/retry").json()["queued"]
    assert [doc["flow"]["node"] for doc in queued] == ["second"]
    assert api.post(f"/api/workflows/{workflow_id}/retry").status_code == 409
    cancelled = api.post(f"/api/workflows/{workflow_id}/cancel").json()
    assert cancelled["counts"]["cancelled"] == 1 and cancelled["state"] == "cancelled"
    missing = api.get(f"/api/workflows/{'0' * 24}")
    assert missing.status_code == 404 and missing.json() == {"error": f"no workflow {'0' * 24}"}


def test_unique_enqueue_returns_the_holder(api: TestClient) -> None:
    first = ok(api.post("/api/jobs", json={"task": "noop", "unique": "k"}), 201)
    again = ok(api.post("/api/jobs", json={"task": "noop", "unique": "k"}), 201)
    assert first == again


def test_jobs_list_filters_and_pages(api: TestClient, client: Client) -> None:
    ids = client.enqueue_many("noop", [{"n": n} for n in range(5)], description="batch one")
    client.now("record", description="other")
    page = ok(api.get("/api/jobs", params={"task": "noop", "limit": 2, "skip": 1}))
    assert page["total"] == 5 and page["limit"] == 2 and page["skip"] == 1
    assert len(page["jobs"]) == 2
    assert {job["_id"] for job in page["jobs"]} <= set(ids)
    assert ok(api.get("/api/jobs", params={"text": "batch"}))["total"] == 5
    assert ok(api.get("/api/jobs", params={"state": "failed"}))["total"] == 0
    listed = ok(api.get("/api/jobs"))["jobs"]
    assert "logs" not in listed[0]


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"data": 1}, 422, "body.task"),
        ({"task": "noop", "max_attempts": 0}, 422, "body.max_attempts"),
        ({"task": "noop", "timeout": -1}, 422, "body.timeout"),
        ({"task": "noop", "colour": "red"}, 422, "body.colour"),
        ({"task": "Not A Task"}, 422, "body.task"),
        ({"task": "noop", "priority": "urgent"}, 422, "body.priority"),
        ({"task": "noop", "when": "next blursday"}, 422, "body.when"),
        ({"task": "noop", "unique": ""}, 422, "body.unique"),
    ],
)
def test_bad_jobs_get_a_4xx_naming_the_problem(
    api: TestClient, db: Any, body: dict[str, Any], status: int, field: str
) -> None:
    response = api.post("/api/jobs", json=body)
    assert response.status_code == status, response.text
    error = response.json()
    assert isinstance(error["error"], str) and error["error"]
    assert error["field"] == field
    assert db.jobs.count_documents({}) == 0


def test_unknown_jobs_and_wrong_states(api: TestClient, client: Client) -> None:
    assert api.get("/api/jobs/0123456789abcdef01234567").status_code == 404
    assert api.get("/api/jobs/not-an-id").status_code == 404
    job_id = client.now("noop")
    response = api.post(f"/api/jobs/{job_id}/retry")
    assert response.status_code == 409 and "only finished jobs" in response.json()["error"]
    assert api.get("/api/jobs", params={"limit": 0}).status_code == 422
    assert api.get("/api/jobs", params={"state": "sleeping"}).status_code == 422


# -- schedules ----------------------------------------------------------------


@pytest.mark.parametrize("path", ["team/daily", "team%2Fdaily"], ids=["slash", "encoded"])
def test_a_schedule_whose_name_has_a_slash_is_reachable(api: TestClient, path: str) -> None:
    ok(api.post("/api/schedules", json={"name": "team/daily", "task": "noop", "every": "1h"}), 201)
    assert ok(api.get(f"/api/schedules/{path}"))["name"] == "team/daily"
    assert ok(api.post(f"/api/schedules/{path}/pause"))["paused"] is True
    assert ok(api.post(f"/api/schedules/{path}/resume"))["paused"] is False
    ok(api.delete(f"/api/schedules/{path}"), 204)
    assert api.get(f"/api/schedules/{path}").status_code == 404


def test_a_schedule_from_task_metadata_cannot_be_removed(api: TestClient, client: Client) -> None:
    client.add_schedule(make_schedule("task:tick", "tick", every="1 hour", origin="metadata"))
    refused = api.delete("/api/schedules/task:tick")
    assert refused.status_code == 409 and "pause it instead" in refused.json()["error"]
    assert ok(api.get("/api/schedules/task:tick"))["name"] == "task:tick"


def test_schedules_add_list_pause_resume_remove(api: TestClient) -> None:
    added = ok(
        api.post(
            "/api/schedules",
            json={
                "name": "nightly",
                "task": "noop",
                "cron": "0 3 * * *",
                "timezone": "Europe/Paris",
                "data": {"full": True},
            },
        ),
        201,
    )
    assert added["trigger"] == "cron 0 3 * * * (Europe/Paris)" and added["paused"] is False
    assert [s["name"] for s in ok(api.get("/api/schedules"))] == ["nightly"]
    assert ok(api.post("/api/schedules/nightly/pause"))["paused"] is True
    assert ok(api.post("/api/schedules/nightly/resume"))["nextRunAt"]
    assert ok(api.get("/api/schedules/nightly"))["data"] == {"full": True}
    conflict = api.post(
        "/api/schedules", json={"name": "nightly", "task": "noop", "every": 60, "replace": False}
    )
    assert conflict.status_code == 409
    ok(api.delete("/api/schedules/nightly"), 204)
    assert api.get("/api/schedules/nightly").status_code == 404
    bad = api.post("/api/schedules", json={"name": "x", "task": "noop", "cron": "* * *"})
    assert bad.status_code == 422 and "5 fields" in bad.json()["error"]


# -- fleet views --------------------------------------------------------------


def test_workers_tasks_and_overview(
    api: TestClient, client: Client, db: Any, spawn_worker: Any
) -> None:
    worker = spawn_worker("noop", worker_id="solo")
    done = wait_finished(db, client.now("noop"))
    assert done["state"] == "succeeded"
    client.enqueue_many("record", [None] * 3)
    wait_for(lambda: any(w["_id"] == "solo" for w in ok(api.get("/api/workers"))), 20, "solo")
    overview = ok(api.get("/api/overview"))
    assert overview["tasks"]["record"] == {"queued": 3}
    assert overview["jobs"]["succeeded"] >= 1
    assert overview["workers"]["live"] >= 1
    assert isinstance(ok(api.get("/api/tasks")), list)
    worker.stop()


def test_metrics_match_the_store(api: TestClient, client: Client, db: Any) -> None:
    client.enqueue_many("noop", [None] * 4)
    client.cancel(client.now("record"))
    text = api.get("/metrics").text
    assert 'qworker_jobs{state="queued",task="noop"} 4.0' in text
    assert 'qworker_jobs{state="cancelled",task="record"} 1.0' in text
    assert 'qworker_jobs{state="running",task="noop"} 0.0' in text
    assert "qworker_workers_live" in text
    assert "# TYPE qworker_job_duration_seconds histogram" in text


# -- auth ---------------------------------------------------------------------


def test_with_a_token_every_api_request_needs_it(guarded: TestClient, client: Client) -> None:
    job_id = client.now("noop")
    for method, path in [
        ("get", "/api/jobs"),
        ("get", f"/api/jobs/{job_id}"),
        ("post", "/api/jobs"),
        ("get", "/api/schedules"),
        ("get", "/metrics"),
        ("get", "/api/events"),
        ("delete", f"/api/jobs/{job_id}"),
    ]:
        response = getattr(guarded, method)(path)
        assert response.status_code == 401, (path, response.text)
        assert "API token" in response.json()["error"]  # the shape of every error
    wrong = guarded.get("/api/jobs", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    bearer = guarded.get("/api/jobs", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok(bearer)["total"] == 1
    # The dashboard's files are public (they hold no data) and the health check too.
    assert guarded.get("/api/health").status_code == 200
    assert guarded.get("/").status_code == 200


def test_the_login_cookie_opens_the_event_stream_and_nothing_else(
    guarded: TestClient, client: Client
) -> None:
    """A cookie is sent by the browser whatever page asks: it must open no change.
    It is HttpOnly (no script reads it), and is not the token itself."""
    assert guarded.post("/api/login", headers=SCRIPT).status_code == 401
    login = guarded.post("/api/login", headers={"Authorization": f"Bearer {TOKEN}"})
    assert login.status_code == 204
    cookie = login.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/api/events" in cookie
    assert TOKEN not in cookie
    job_id = client.now("noop")
    assert guarded.get(f"/api/jobs/{job_id}").status_code == 401  # the cookie is no token
    assert guarded.post(f"/api/jobs/{job_id}/cancel", headers=SCRIPT).status_code == 401
    guarded.cookies.set("qworker_events", login.cookies["qworker_events"], path="/api/events")
    with guarded.stream("GET", "/api/events") as stream:
        assert stream.status_code == 200
        assert next(stream.iter_lines()) == ": connected"


def test_requests_for_another_host_name_are_refused(api: TestClient) -> None:
    """A page that rebinds its DNS name to 127.0.0.1 calls under that name."""
    refused = api.get("/api/jobs", headers={"Host": "evil.example:8765"})
    assert refused.status_code == 421 and "evil.example" in refused.json()["error"]
    for host in ("127.0.0.1:8765", "localhost:8765", "[::1]:8765", "10.1.2.3", "app.localhost"):
        assert api.get("/api/jobs", headers={"Host": host}).status_code == 200, host


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site", "Origin": "http://127.0.0.1:19000"},
    ],
    ids=["origin", "null-origin", "fetch-site", "another-port"],
)
def test_a_change_from_another_site_is_refused(
    api: TestClient, client: Client, headers: dict[str, str]
) -> None:
    job_id = client.now("noop")
    refused = api.post(f"/api/jobs/{job_id}/cancel", headers=headers)
    assert refused.status_code == 403 and "another site" in refused.json()["error"]
    refused = api.post("/api/jobs", json={"task": "noop"}, headers=headers)
    assert refused.status_code == 403
    assert client.get(job_id)["state"] == "queued" and client.count_jobs() == 1


def test_a_change_a_plain_form_could_send_is_refused(client: Client) -> None:
    """No JSON, no Authorization, no X-Qworker-Request: a form, or a no-cors fetch."""
    job_id = client.now("noop")
    with TestClient(create_app(client), base_url=BASE) as bare:
        for body in (
            {},
            {"content": b"task=noop", "headers": {"Content-Type": "text/plain"}},
            {"data": {"task": "noop"}},
        ):
            assert bare.post(f"/api/jobs/{job_id}/cancel", **body).status_code == 403
            assert bare.post("/api/jobs", **body).status_code == 403
        assert bare.delete(f"/api/jobs/{job_id}").status_code == 403
        same = bare.post(
            f"/api/jobs/{job_id}/cancel",
            headers={**SCRIPT, "Origin": BASE, "Sec-Fetch-Site": "same-origin"},
        )
        assert same.status_code == 200  # the dashboard's own request
    assert client.get(job_id)["state"] == "cancelled"


def test_every_answer_carries_the_security_headers(api: TestClient) -> None:
    for path in ("/", "/api/jobs", "/api/nothing", "/api/docs"):
        headers = api.get(path).headers
        assert "frame-ancestors 'none'" in headers["content-security-policy"], path
        assert headers["x-content-type-options"] == "nosniff"


def test_a_body_over_16_mib_is_refused_before_the_token_is_even_needed(
    guarded: TestClient, client: Client
) -> None:
    big = b"x" * (16 * 1024 * 1024 + 1)
    declared = guarded.post("/api/jobs", content=big, headers={"Content-Type": "application/json"})
    assert declared.status_code == 401  # the token is checked before any body is read
    signed = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    assert guarded.post("/api/jobs", content=big, headers=signed).status_code == 413

    def chunks() -> Iterator[bytes]:
        for _ in range(17):
            yield b"x" * (1024 * 1024)

    streamed = guarded.post("/api/jobs", content=chunks(), headers=signed)
    assert streamed.status_code == 413 and "at most" in streamed.json()["error"]
    assert client.count_jobs() == 0


def test_unknown_routes_and_methods_answer_in_the_error_shape(api: TestClient) -> None:
    assert api.get("/api/nothing-here").json() == {"error": "Not Found"}
    wrong = api.put("/api/jobs")
    assert wrong.status_code == 405 and wrong.json() == {"error": "Method Not Allowed"}


def test_with_mongodb_down_health_overview_and_metrics_answer_503_naming_the_cause(
    own_server: Server,
) -> None:
    client = Client(f"{own_server.url}/down?serverSelectionTimeoutMS=2000")
    with client, TestClient(create_app(client), base_url=BASE) as api:
        assert ok(api.get("/api/health")) == {"ok": True}
        own_server.stop()
        for path in ("/api/health", "/api/overview", "/metrics", "/api/jobs"):
            response = api.get(path)
            assert response.status_code == 503, (path, response.text)
            error = response.json()["error"]
            assert error.startswith("cannot reach MongoDB: "), (path, error)
            assert "Topology" not in error  # one line, not pymongo's dump
        own_server.start()
        assert ok(api.get("/api/health")) == {"ok": True}


def test_the_api_docs_page_loads_only_its_own_assets(api: TestClient) -> None:
    page = api.get("/api/docs")
    assert page.status_code == 200
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources and not [s for s in sources if not s.startswith("/api/docs/assets/")], sources
    assert "https://" not in page.text
    for source in sources:
        asset = api.get(source)
        assert asset.status_code == 200 and len(asset.content) > 1000, source
    assert "SwaggerUIBundle" in api.get("/api/docs/assets/swagger-ui-bundle.js").text


def test_openapi_describes_every_route(api: TestClient) -> None:
    spec = ok(api.get("/api/openapi.json"))
    paths = set(spec["paths"])
    assert {
        "/api/jobs",
        "/api/jobs/{job_id}",
        "/api/jobs/{job_id}/retry",
        "/api/jobs/{job_id}/cancel",
        "/api/schedules",
        "/api/schedules/{name}",
        "/api/schedules/{name}/pause",
        "/api/schedules/{name}/resume",
        "/api/workers",
        "/api/tasks",
        "/api/overview",
        "/api/events",
        "/metrics",
    } <= paths
    assert "delete" in spec["paths"]["/api/jobs/{job_id}"]


# -- the real server ------------------------------------------------------------


def test_the_managers_event_stream_carries_notifications(
    client: Client, db: Any, spawn_manager: Any, spawn_worker: Any, mongo_url: str
) -> None:
    manager = spawn_manager("m1")
    wait_leading(manager)
    base = manager.api_url()
    events: list[tuple[str, dict[str, Any]]] = []
    connected = threading.Event()

    def read() -> None:
        with httpx.stream("GET", f"{base}/api/events", timeout=60) as stream:
            event = ""
            for line in stream.iter_lines():
                if line.startswith(": connected"):
                    connected.set()
                elif line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    events.append((event, json.loads(line[6:])))
                    if event == "worker:notification" and events[-1][1]["type"] == "success":
                        return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert connected.wait(30), manager.output()
    worker = managed(spawn_worker, mongo_url, "noop", worker_id="w1")
    wait_accepted(worker)
    job_id = client.now("noop")
    reader.join(60)
    kinds = [(e, b.get("type")) for e, b in events]
    assert ("worker:initialize", None) in kinds
    assert ("worker:notification", "start") in kinds and ("worker:notification", "success") in kinds
    success = next(b for e, b in events if b.get("type") == "success")
    assert success["sourceId"] == job_id and success["workerId"] == "w1"


def _serve(mongo_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "qworker.cli.manager", "--mongo", mongo_url, "serve", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--api-token", "none"], "needs an API token"),
        (["--api-token", "short-token"], "has 11 characters"),
        (["--api-token", "x", "--api-token-file", __file__], "not both"),
    ],
    ids=["none", "short", "both"],
)
def test_serve_refuses_a_public_address_without_a_good_token(
    mongo_url: str, args: list[str], said: str
) -> None:
    result = _serve(mongo_url, "--http", "0.0.0.0:0", *args)
    assert result.returncode == 2, result.stderr
    assert said in result.stderr and "Traceback" not in result.stderr


def test_a_manager_on_loopback_makes_a_token_of_its_own_and_keeps_it(
    spawn_manager: Any, client: Client, state_home: Path
) -> None:
    """Loopback is every local user's: without a token given, the manager makes one,
    in a file only its user reads, the same at every start."""
    token_file = state_home / "qworker" / "api-token"
    token_file.unlink(missing_ok=True)
    made = ["--api-token="]  # none given (and not "none"): the manager makes its own
    manager = spawn_manager("m1", extra=made)
    base = manager.api_url()
    token = token_file.read_text().strip()
    assert len(token) >= 40 and token_file.stat().st_mode & 0o777 == 0o600
    assert httpx.get(f"{base}/api/jobs", timeout=10).status_code == 401
    bearer = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{base}/api/jobs", headers=bearer, timeout=10).status_code == 200
    (said,) = [e for e in log_events(manager.output()) if e["event"] == "dashboard"]
    assert said["api_token"] == f"generated in {token_file}" and token not in manager.output()
    manager.stop()
    again = spawn_manager("m1", extra=made).api_url()
    assert httpx.get(f"{again}/api/jobs", headers=bearer, timeout=10).status_code == 200


def test_a_token_file_keeps_the_token_off_the_command_line(
    spawn_manager: Any, tmp_path: Path
) -> None:
    secret = tmp_path / "token"
    secret.write_text("a-token-of-enough-characters\n")
    by_file = spawn_manager("m1", extra=["--api-token-file", str(secret)])
    bearer = {"Authorization": "Bearer a-token-of-enough-characters"}
    assert httpx.get(f"{by_file.api_url()}/api/jobs", headers=bearer, timeout=10).status_code == 200
    assert not [e for e in log_events(by_file.output()) if "command line" in e["event"]]
    by_flag = spawn_manager("m2", extra=["--api-token", "a-token-of-enough-characters"])
    wait_logged(by_flag, "--api-token is on the command line", 30)


def test_a_planted_job_with_a_path_for_an_id_is_not_listed(
    spawn_manager: Any, client: Client, db: Any
) -> None:
    """Its Retry button in the dashboard once POSTed to schedules/nightly/pause."""
    client.every("1 day", "noop", name="nightly")
    db.jobs.insert_one(
        {
            "_id": "../schedules/nightly/pause?",
            "name": "noop",
            "state": "failed",
            "createdAt": datetime.now(UTC),
        }
    )
    real = client.now("noop")
    base = spawn_manager("m1").api_url()
    listed = httpx.get(f"{base}/api/jobs", timeout=30).json()
    assert [job["_id"] for job in listed["jobs"]] == [real] and listed["total"] == 1
    assert httpx.get(f"{base}/api/jobs?state=failed", timeout=30).json()["total"] == 0
    assert client.schedule_info("nightly")["paused"] is False


def test_the_dashboard_encodes_every_id_it_puts_in_a_path() -> None:
    web = Path(create_app.__code__.co_filename).parent / "web"
    script = "\n".join(module.read_text() for module in sorted(web.glob("*.js")))
    parts = [
        part
        for path in re.findall(r"api\(`([^`]*)`", script)
        for part in re.findall(r"\$\{([^}]*)\}", path)
    ]
    literal = re.compile(r'\w+ \? "\w+" : "\w+"')  # a choice of words, not data
    assert parts and all(
        part.startswith("encodeURIComponent(") or literal.fullmatch(part) for part in parts
    ), parts


def test_manager_started_is_said_once_its_api_answers(spawn_manager: Any) -> None:
    manager = spawn_manager("m1")
    wait_logged(manager, "manager started", 60)
    (started,) = [e for e in log_events(manager.output()) if e["event"] == "manager started"]
    assert httpx.get(f"{started['http']}/api/health", timeout=10).status_code == 200
    assert manager.output().index('"serving the API') < manager.output().index('"manager started')


def test_serve_reports_a_port_in_use(mongo_url: str, spawn_manager: Any) -> None:
    first = spawn_manager("m1")
    port = first.api_url().rsplit(":", 1)[1]
    result = _serve(mongo_url, "--http", f"127.0.0.1:{port}", "--id", "m2")
    assert result.returncode == 2, result.stderr
    assert "cannot listen there" in result.stderr


def test_hub_drops_the_oldest_events_of_a_slow_listener() -> None:
    import asyncio

    async def scenario() -> list[int]:
        hub = EventHub()
        async with hub.listen() as queue:
            for n in range(1_500):
                hub.publish("worker:notification", {"n": n})
            hub.publish("job:queued", {"n": -1})  # not watched: never delivered
            return [queue.get_nowait()[1]["n"] for _ in range(queue.qsize())]

    got = asyncio.run(scenario())
    assert got == list(range(500, 1_500))


def test_an_open_event_stream_does_not_hold_a_stopping_manager(spawn_manager: Any) -> None:
    manager = spawn_manager("m1")
    wait_leading(manager)
    connected, ended = threading.Event(), threading.Event()

    def read() -> None:
        with httpx.stream("GET", f"{manager.api_url()}/api/events", timeout=60) as stream:
            for line in stream.iter_lines():
                if line.startswith(": connected"):
                    connected.set()
        ended.set()

    threading.Thread(target=read, daemon=True).start()
    assert connected.wait(30)
    started = time.monotonic()
    assert manager.stop(timeout=20) == 0
    assert time.monotonic() - started < 10
    assert ended.wait(10), "the stream was not closed"


def test_paging_beyond_what_mongodb_takes_is_refused(api: TestClient) -> None:
    """Found by the fuzzer: a skip beyond 64 bits was a 500."""
    response = api.get("/api/jobs", params={"skip": 2**63})
    assert response.status_code == 422 and response.json()["field"] == "query.skip"
