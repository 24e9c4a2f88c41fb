"""The side-effect log that test tasks write to, in QWORKER_TEST_EFFECTS_URL.

Test workers get this folder on PYTHONPATH, so a task module says
``from effects import effects`` and counts its runs there.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from pymongo import MongoClient
from pymongo.collection import Collection


@functools.cache
def effects() -> Collection[dict[str, Any]]:
    client: MongoClient[dict[str, Any]] = MongoClient(
        os.environ["QWORKER_TEST_EFFECTS_URL"], tz_aware=True
    )
    return client.get_default_database().effects
