"""The collections and indexes every qworker process may set up at start.

Written once, as an operation (``qworker.operations``), so that the blocking
client, the asyncio client and the daemons make the same ones. Idempotent: it
is each process's first round trip, so an unreachable server is reported here,
in one line.
"""

from __future__ import annotations

import contextlib
from typing import Any

import structlog
from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.database import Database
from pymongo.errors import CollectionInvalid, OperationFailure, ServerSelectionTimeoutError

from qworker.errors import ConfigError
from qworker.model import ACTIVE_STATES, JobState
from qworker.mongo import (
    AUTH_CODES,
    CHANNEL_BYTES,
    CHANNEL_DOCS,
    DEFAULT_DATABASE,
    UNAUTHORIZED,
    Names,
    mongo_problem,
    sync_client,
)
from qworker.operations import Call, Operation, run, run_async

log = structlog.get_logger("qworker.mongo")
Doc = dict[str, Any]

ASC, DESC = ASCENDING, DESCENDING
DEADLINES_INDEX = "deadlines"  # named in the sweep's query (qworker.manager.deadlines)
# The indexes of each collection: name, keys, options. Few on ``jobs``: every
# one costs each enqueue (on SecantusDB about a tenth of an insert, partial or
# not), so the queries that are not the claim path share ``claim``'s prefix or
# ``_id`` (see docs/decisions.md, "The indexes of jobs").
INDEXES: dict[str, list[tuple[str, list[tuple[str, int]], Doc]]] = {
    "jobs": [
        # also: running jobs by state (leases, recovery), counts by state and task
        ("claim", [("state", ASC), ("name", ASC), ("priority", DESC), ("nextRunAt", ASC)], {}),
        (
            "unique_active",
            [("name", ASC), ("uniqueKey", ASC)],
            {
                "unique": True,
                "partialFilterExpression": {
                    "uniqueKey": {"$exists": True},
                    "state": {"$in": [s.value for s in ACTIVE_STATES]},
                },
            },
        ),
        # also: a schedule's fires, newest first (the key is "<schedule>@<UTC time>")
        ("fire_key", [("fireKey", ASC)], {"unique": True, "sparse": True}),
        (
            DEADLINES_INDEX,  # the manager's sweep of jobs past their expiresAt
            [("expiresAt", ASC)],
            {
                "partialFilterExpression": {
                    "expiresAt": {"$exists": True},
                    "state": {"$in": [JobState.WAITING.value, JobState.QUEUED.value]},
                }
            },
        ),
        ("retention", [("expireAt", ASC)], {"expireAfterSeconds": 0}),
    ],
    "workers": [
        ("pings", [("state", ASC), ("pingedAt", ASC)], {}),
        ("forget", [("expireAt", ASC)], {"expireAfterSeconds": 0}),
    ],
    "leases": [("forget", [("expireAt", ASC)], {"expireAfterSeconds": 0})],
    "workflows": [
        ("check", [("checkAt", ASC)], {}),  # the manager's retention sweep
        ("recent", [("createdAt", DESC)], {}),  # listings, newest first
        (  # a workflow's unique key, freed once it has ended (workflowstore.insert)
            "unique_key",
            [("name", ASC), ("uniqueKey", ASC)],
            {"unique": True, "partialFilterExpression": {"uniqueKey": {"$exists": True}}},
        ),
    ],
}
# Indexes earlier versions made, dropped by the manager's set-up.
RETIRED_INDEXES = {
    "jobs": ["lock_token", "leases", "recent", "schedule_runs", "schedule_outcomes"],
}
INDEX_NOT_FOUND = 27


def schema(names: Names, channel_bytes: int, retire: bool = False) -> Operation[None]:
    """Create the channel and the indexes that the claim path and the views need;
    with ``retire``, drop the indexes of earlier versions."""
    with contextlib.suppress(CollectionInvalid):  # it exists
        capped = {"capped": True, "size": channel_bytes, "max": CHANNEL_DOCS}
        yield Call(None, "create_collection", (names.channel,), capped)
    for collection, indexes in INDEXES.items():
        for name, keys, options in indexes:
            yield Call(collection, "create_index", (keys,), {"name": name, **options})
    for collection, retired in RETIRED_INDEXES.items() if retire else ():
        for name in retired:
            try:
                yield Call(collection, "drop_index", (name,), {})
            except OperationFailure as exc:
                if exc.code != INDEX_NOT_FOUND:
                    raise


def ensure_schema(
    db: Database[Doc], names: Names, channel_bytes: int = CHANNEL_BYTES, required: bool = False
) -> None:
    """``schema`` with the blocking driver. A user not allowed to create indexes is let
    be, unless ``required`` (the manager's set-up, which also drops retired indexes)."""
    try:
        run(schema(names, channel_bytes, retire=required), db, names)
    except (ServerSelectionTimeoutError, OperationFailure) as exc:
        _refused(exc, db.name, required)


async def ensure_schema_async(
    db: AsyncDatabase[Doc], names: Names, channel_bytes: int = CHANNEL_BYTES
) -> None:
    """``schema`` with the asyncio driver (for ``AsyncClient``)."""
    try:
        await run_async(schema(names, channel_bytes), db, names)
    except (ServerSelectionTimeoutError, OperationFailure) as exc:
        _refused(exc, db.name, required=False)


def _refused(
    exc: ServerSelectionTimeoutError | OperationFailure, database: str, required: bool
) -> None:
    """Raise what a failed set-up means, unless it is a least-privilege user's refusal."""
    if isinstance(exc, OperationFailure) and exc.code == UNAUTHORIZED and not required:
        # A user of least privilege (an application, a worker, a viewer) may not
        # make indexes: the manager and `qworker-manager init-db` make them.
        log.debug(
            "not allowed to set up collections and indexes; leaving it to the manager",
            database=database,
        )
        return
    if isinstance(exc, ServerSelectionTimeoutError) or exc.code in AUTH_CODES:
        # bad credentials are bad settings, like a bad URL
        raise ConfigError(f"{mongo_problem(exc)} (database '{database}')") from None
    raise exc


def prepare(
    url: str, names: Names, channel_bytes: int = CHANNEL_BYTES, required: bool = False
) -> None:
    """``ensure_schema`` over a short-lived connection, for a daemon's start."""
    client = sync_client(url)
    try:
        ensure_schema(
            client.get_default_database(default=DEFAULT_DATABASE), names, channel_bytes, required
        )
    finally:
        client.close()
