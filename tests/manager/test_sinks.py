"""The manager relays notifications to its log and to webhooks, filtered and retried."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from support.logs import log_events
from support.processes import ManagerProcess, leading
from support.waits import wait_for

from qworker import Client, ConfigError
from qworker.manager.sinks import read_sinks

SECRET = "shared-hmac-key"


class Hook:
    """A local HTTP endpoint that records POSTs and fails the first one."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.raw: list[tuple[bytes, dict[str, str]]] = []  # what arrived, with its headers
        self.requests = 0
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.requests += 1
                if hook.requests == 1:
                    self.send_response(500)
                else:
                    hook.bodies.append(json.loads(body))
                    hook.raw.append((body, dict(self.headers)))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook?token=in-the-url"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def hook() -> Iterator[Hook]:
    endpoint = Hook()
    yield endpoint
    endpoint.server.shutdown()


@pytest.fixture
def manager(tmp_path: Path, hook: Hook, spawn_manager: Any) -> ManagerProcess:
    sinks = tmp_path / "sinks.yaml"
    sinks.write_text(
        f"log: true\nwebhooks:\n  - url: {hook.url}\n    events: [fail]\n"
        "    tasks: [notify]\n    backoff: 0.2\n"
        f"    headers: {{Authorization: Bearer hook-token, X-Team: ops}}\n    secret: {SECRET}\n"
    )
    return leading(spawn_manager("m1", ["--sinks", str(sinks)]))


def test_a_webhook_receives_failures_of_its_task_after_a_retry(
    client: Client, spawn_worker: Any, manager: ManagerProcess, hook: Hook
) -> None:
    spawn_worker("notify", "noop", standalone=False)
    good = client.now("notify", {"to": "a@b"})
    bad = client.now("notify", {"to": "c@d", "fail": True})
    other = client.now("noop")
    for job_id in (good, bad, other):
        client.wait(job_id, timeout=60)
    wait_for(lambda: hook.bodies, 30, "the webhook to receive the failure")

    assert hook.requests == 2, "the first POST failed with 500 and was retried once"
    [note] = hook.bodies
    [(body, headers)] = hook.raw
    assert headers["Authorization"] == "Bearer hook-token" and headers["X-Team"] == "ops"
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Qworker-Signature-256"], expected)
    # The failed POST was logged with the webhook's host only: URLs carry tokens.
    (retried,) = [e for e in log_events(manager.output()) if e["event"].startswith("webhook")]
    assert retried["webhook"] == hook.url.split("/hook")[0]
    assert "in-the-url" not in manager.output() and SECRET not in manager.output()
    assert note["type"] == "fail" and note["sourceId"] == bad and note["task"] == "notify"
    assert note["error"] == {"type": "ValueError", "message": "asked to fail"}
    assert note["job"]["failReason"] == "ValueError: asked to fail"
    # The structured log got every notification, the successes too.
    logged = [
        json.loads(line) for line in manager.output().splitlines() if '"notification"' in line
    ]
    assert {(n["sourceId"], n["type"]) for n in logged} >= {(good, "success"), (bad, "fail")}
    # Times in the JSON log are ISO 8601, as in the API (not Python reprs).
    for entry in logged:
        assert datetime.fromisoformat(entry["triggeredAt"]).tzinfo is not None, entry


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("webhooks: [{url: 'ftp://x'}]", r"an http\(s\) URL"),
        ("webhooks: [{url: 'http://x', events: fail}]", "'events' must be a list"),
        ("webhooks: [{url: 'http://x', retries: -1}]", "'retries' must be a number"),
        ("webhooks: [{url: 'http://x', colour: red}]", "unknown setting"),
        ("hooks: []", "unknown setting"),
        ("log: maybe", "'log' must be true or false"),
        ("webhooks: [{url: 'http://x', headers: [a]}]", "'headers' must be a mapping"),
        ("webhooks: [{url: 'http://x', headers: {'a b': c}}]", "not an HTTP header name"),
        ("webhooks: [{url: 'http://x', headers: {A: 5}}]", "must be one line of text"),
        ("webhooks: [{url: 'http://x', secret: ''}]", "'secret' must be a non-empty string"),
    ],
)
def test_bad_sinks_files_are_clear_errors(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "sinks.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=problem) as caught:
        read_sinks(path)
    assert str(path) in str(caught.value)
