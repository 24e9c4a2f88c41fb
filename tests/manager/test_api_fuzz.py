"""The OpenAPI description, fuzzed with schemathesis: no input gives a 5xx.

Every operation is called with generated input against the real server
(SecantusDB), checked with schemathesis's `not_a_server_error`.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from qworker import Client
from qworker.manager.api import create_app

# An endless stream: tested against the real manager in test_api.py.
SKIPPED = {"/api/events"}


def test_no_generated_input_gives_a_server_error(client: Client) -> None:
    client.now("noop", {"seed": True})
    client.every("1 hour", "noop", name="hourly")
    # As a script on the manager's host calls it (see httpguard): a Host it answers
    # for, and a header no plain form sends.
    schema = schemathesis.openapi.from_asgi("/api/openapi.json", create_app(client, hosts=["*"]))
    tested = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path in SKIPPED:
            continue

        @given(case=operation.as_strategy())
        @settings(
            max_examples=30, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def call(case: Any) -> None:
            answer = case.call(headers={"X-Qworker-Request": "1"})
            case.validate_response(answer, checks=[not_a_server_error])

        call()
        tested.append(f"{operation.method.upper()} {operation.path}")
    assert len(tested) >= 15, tested
