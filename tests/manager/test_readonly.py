"""Read-only access: a viewer token (``serve --viewer-token``) sees everything and changes
nothing. Every route of the app is enumerated from FastAPI, so a route added later is
checked too: each GET answers 200, each change 403, and the store stays as it was.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from support.logs import wait_leading

from qworker import Client
from qworker.manager.api import create_app
from qworker.manager.httpguard import CHANGES, READ_ONLY
from qworker.when import utcnow

BASE = "http://127.0.0.1:8765"
TOKEN = "the-operators-token-0123456789"
VIEWER = "the-viewers-token-9876543210"
AS_VIEWER = {"Authorization": f"Bearer {VIEWER}"}
AS_OPERATOR = {"Authorization": f"Bearer {TOKEN}"}
# What each path parameter is filled with; a route with another one fails the test
# until it is named here (so no route is left out).
PATH_PARAMS = ("job_id", "workflow_id", "name", "task_id", "worker_id")


@pytest.fixture
def store(client: Client, db: Any) -> dict[str, str]:
    """One of everything a route can name: a failed job, a workflow, a schedule, a worker."""
    job_id = client.now("noop", {"customer": "acme"})
    db.jobs.update_one({"name": "noop"}, {"$set": {"state": "failed", "lastFinishedAt": utcnow()}})
    wf = client.workflow("viewed", check_tasks=False)
    wf.add("noop", name="only")
    workflow_id = wf.enqueue()
    client.every("1 hour", "noop", name="hourly")
    now = utcnow()
    db.workers.insert_one(
        {
            "_id": "w1",
            "nonce": "n1",
            "state": "running",
            "standalone": True,
            "pingedAt": now,
            "pingInterval": 5.0,
            "tasks": ["noop"],
            "expireAt": now,
        }
    )
    return {
        "job_id": job_id,
        "workflow_id": workflow_id,
        "name": "hourly",
        "task_id": "noop",
        "worker_id": "w1",
    }


@pytest.fixture
def app_client(client: Client) -> Iterator[TestClient]:
    app = create_app(client, token=TOKEN, viewer_token=VIEWER)
    with TestClient(app, base_url=BASE) as test_client:
        yield test_client


def routes(app: Any) -> list[tuple[str, str]]:
    """(method, path) of every route of the app (HEAD aside: a GET's)."""
    found = [
        (method, route.path)
        for route in app.routes
        if isinstance(route, APIRoute)
        for method in sorted(route.methods - {"HEAD"})
    ]
    assert len(found) > 20, found
    return found


def filled(path: str, values: dict[str, str]) -> str:
    names = re.findall(r"\{(\w+)(?::\w+)?\}", path)
    unknown = [name for name in names if name not in PATH_PARAMS]
    assert not unknown, f"{path}: name what {unknown} is filled with in PATH_PARAMS"
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: values[m[1]], path)


def snapshot(db: Any) -> dict[str, list[dict[str, Any]]]:
    """Every document of the collections a change could touch."""
    names = ("jobs", "schedules", "workers", "workflows", "controls", "tasks")
    return {name: list(db[name].find().sort("_id", 1)) for name in names}


def test_a_viewer_gets_200_on_every_view_and_403_on_every_change(
    app_client: TestClient, store: dict[str, str], db: Any
) -> None:
    before = snapshot(db)
    checked = []
    for method, template in routes(app_client.app):
        path = filled(template, store)
        if path == "/api/events":
            with app_client.stream("GET", path, headers=AS_VIEWER) as stream:
                assert stream.status_code == 200
                assert next(stream.iter_lines()) == ": connected"
        elif method == "GET":
            answer = app_client.get(path, headers=AS_VIEWER)
            assert answer.status_code == 200, (path, answer.text)
        elif path == "/api/login":
            assert app_client.post(path, headers=AS_VIEWER).status_code == 204
        else:
            assert method in CHANGES, (method, path)
            for body in ({"json": {}}, {"headers": {"X-Qworker-Request": "1"}}):
                headers = {**AS_VIEWER, **body.pop("headers", {})}
                answer = app_client.request(method, path, headers=headers, **body)
                assert answer.status_code == 403, (method, path, answer.text)
                assert answer.json() == {"error": READ_ONLY}
        checked.append((method, template))
    assert ("POST", "/api/jobs/bulk") in checked and ("GET", "/api/jobs") in checked
    assert snapshot(db) == before
    # The same changes with the operator's token do change things.
    retried = app_client.post(f"/api/jobs/{store['job_id']}/retry", headers=AS_OPERATOR)
    assert retried.status_code == 200 and retried.json()["state"] == "queued"


def test_a_viewer_sees_what_it_may_do_and_gets_its_own_cookie(
    app_client: TestClient, store: dict[str, str]
) -> None:
    assert app_client.get("/api/access", headers=AS_VIEWER).json() == {
        "role": "viewer",
        "readOnly": True,
    }
    assert app_client.get("/api/access", headers=AS_OPERATOR).json() == {
        "role": "operator",
        "readOnly": False,
    }
    assert app_client.get("/api/access").status_code == 401
    login = app_client.post("/api/login", headers=AS_VIEWER)
    viewer_cookie = login.cookies["qworker_events"]
    operator_cookie = app_client.post("/api/login", headers=AS_OPERATOR).cookies["qworker_events"]
    assert viewer_cookie != operator_cookie and VIEWER not in login.headers["set-cookie"]
    app_client.cookies.set("qworker_events", viewer_cookie, path="/api/events")
    with app_client.stream("GET", "/api/events") as stream:
        assert stream.status_code == 200
    # The cookie opens the stream only: not a view, and no change.
    cookie = {"Cookie": f"qworker_events={viewer_cookie}"}
    assert app_client.get("/api/jobs", headers=cookie).status_code == 401
    job = f"/api/jobs/{store['job_id']}/retry"
    assert app_client.post(job, headers={**cookie, "X-Qworker-Request": "1"}).status_code == 401


def test_without_a_viewer_token_the_viewers_bearer_is_no_token(client: Client) -> None:
    with TestClient(create_app(client, token=TOKEN), base_url=BASE) as only_operator:
        assert only_operator.get("/api/jobs", headers=AS_VIEWER).status_code == 401
    with TestClient(create_app(client, viewer_token=VIEWER), base_url=BASE) as open_api:
        # No API token: everything is open, a viewer token alone guards nothing (and the
        # manager refuses to start so: see below).
        assert open_api.get("/api/access").json()["role"] == "operator"


# -- the real manager -----------------------------------------------------------------------


def test_a_manager_serves_a_viewer_from_a_token_file_or_the_environment(
    spawn_manager: Any, client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api_file, viewer_file = tmp_path / "api-token", tmp_path / "viewer-token"
    api_file.write_text(TOKEN + "\n")
    viewer_file.write_text(VIEWER + "\n")
    job_id = client.now("noop")
    manager = spawn_manager(
        "m1", extra=["--api-token-file", str(api_file), "--viewer-token-file", str(viewer_file)]
    )
    wait_leading(manager)
    base = manager.api_url()
    assert httpx.get(f"{base}/api/jobs", headers=AS_VIEWER, timeout=10).json()["total"] == 1
    refused = httpx.post(f"{base}/api/jobs/{job_id}/cancel", headers=AS_VIEWER, timeout=10)
    assert refused.status_code == 403 and "read-only" in refused.json()["error"]
    assert client.get(job_id)["state"] == "queued"
    assert httpx.get(f"{base}/metrics", headers=AS_VIEWER, timeout=10).status_code == 200
    manager.stop()
    monkeypatch.setenv("QWORKER_VIEWER_TOKEN", VIEWER)
    by_env = spawn_manager("m2", extra=["--api-token-file", str(api_file)]).api_url()
    assert httpx.get(f"{by_env}/api/access", headers=AS_VIEWER, timeout=10).json() == {
        "role": "viewer",
        "readOnly": True,
    }


def _serve(mongo_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "qworker.cli.manager", "--mongo", mongo_url, "serve", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--api-token", "none", "--viewer-token", VIEWER], "needs an API token"),
        (["--api-token", TOKEN, "--viewer-token", TOKEN], "must differ from the API token"),
        (
            ["--http", "0.0.0.0:0", "--api-token", TOKEN, "--viewer-token", "short"],
            "the viewer token has 5 characters",
        ),
        (["--viewer-token", VIEWER, "--viewer-token-file", __file__], "not both"),
    ],
    ids=["no-api-token", "same", "short", "both"],
)
def test_serve_refuses_a_viewer_token_that_guards_nothing(
    mongo_url: str, args: list[str], said: str
) -> None:
    result = _serve(mongo_url, "--http", "127.0.0.1:0", *args)
    assert result.returncode == 2, result.stderr
    assert said in result.stderr and "Traceback" not in result.stderr
