"""The side-effect log that test tasks write to, in QWORKER_TEST_EFFECTS_URL.

Test workers get ``tests/`` on their PYTHONPATH, so a task module says
``from support.effects import effects`` and counts its runs there; a worker run
in the test's own process reads the same variable (one collection per URL).
"""

from __future__ import annotations

import functools
import os
from typing import Any

from pymongo import MongoClient
from pymongo.collection import Collection

EFFECTS = "QWORKER_TEST_EFFECTS_URL"


def effects() -> Collection[dict[str, Any]]:
    return _collection(os.environ[EFFECTS])


@functools.cache
def _collection(url: str) -> Collection[dict[str, Any]]:
    client: MongoClient[dict[str, Any]] = MongoClient(url, tz_aware=True)
    return client.get_default_database().effects


def effects_env(mongo_url: str, **more: str) -> dict[str, str]:
    """The environment that lets the test tasks record side effects in this test's database."""
    return {EFFECTS: mongo_url, **more}
