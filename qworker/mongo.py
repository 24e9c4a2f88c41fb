"""Connections, collection names and indexes.

All collections live in the database named in the URL (default ``qworker``),
with an optional name prefix so several deployments can share a database.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any
from urllib.parse import parse_qs

import pymongo
import structlog
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, MongoClient
from pymongo.database import Database
from pymongo.errors import (
    CollectionInvalid,
    ConfigurationError,
    ConnectionFailure,
    OperationFailure,
    ServerSelectionTimeoutError,
)
from pymongo.uri_parser import parse_uri

from qworker.errors import ConfigError
from qworker.model import ACTIVE_STATES

log = structlog.get_logger("qworker.mongo")

DEFAULT_DATABASE = "qworker"
CHANNEL_BYTES = 16 * 1024 * 1024
CLOSE_WAIT = 1.0  # seconds
AUTHENTICATION_FAILED, UNAUTHORIZED = 18, 13  # MongoDB's error codes
AUTH_CODES = (AUTHENTICATION_FAILED, UNAUTHORIZED)


class Names:
    """Collection names under a prefix."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.jobs = f"{prefix}jobs"
        self.channel = f"{prefix}channel"
        self.workers = f"{prefix}workers"
        self.tasks = f"{prefix}tasks"
        self.leases = f"{prefix}leases"
        self.schedules = f"{prefix}schedules"


_USERINFO = re.compile(r"^(?P<scheme>mongodb(?:\+srv)?://)(?P<user>[^:@/]*):(?P<password>[^/]*)@")


def redact(url: str) -> str:
    """``url`` with its password shown as ``***``: for every place a URL is printed or logged."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", url)


def require_url(url: str | None) -> str:
    """The MongoDB URL a command was given, or a ``ConfigError`` saying how to give one."""
    if not url:
        raise ConfigError("no MongoDB given: use --mongo URL or QWORKER_MONGO (or 'embedded')")
    return url


def resolve_url(url: str) -> str:
    """A ``mongodb://`` URL; ``embedded`` starts or reuses the local embedded server."""
    from qworker import embedded

    if embedded.is_embedded(url):
        return embedded.ensure_server(embedded.data_dir_from_url(url))
    try:
        parse_uri(url)
    except (ConfigurationError, ValueError) as exc:
        reason = str(exc).replace(url, redact(url))
        raise ConfigError(
            f"--mongo {redact(url)!r} is not a MongoDB URL (mongodb://host:port/db) or "
            f"'embedded': {reason}"
        ) from None
    return url


def database_name(url: str) -> str:
    if url.startswith("mongodb"):
        return parse_uri(url).get("database") or DEFAULT_DATABASE
    return DEFAULT_DATABASE


def _options(url: str) -> dict[str, Any]:
    """Our connection defaults; options written in the URL win over them."""
    given = {key.lower() for key in parse_qs(url.partition("?")[2])}
    defaults = {"appname": "qworker", "serverSelectionTimeoutMS": 10_000}
    return {"tz_aware": True, **{k: v for k, v in defaults.items() if k.lower() not in given}}


def sync_client(url: str) -> MongoClient[dict]:  # type: ignore[type-arg]
    return MongoClient(url, **_options(url))


def async_client(url: str) -> AsyncMongoClient[dict]:  # type: ignore[type-arg]
    return AsyncMongoClient(url, **_options(url))


async def close_async(client: AsyncMongoClient[dict]) -> None:  # type: ignore[type-arg]
    """Close a connection, waiting for the server at most ``CLOSE_WAIT``: closing ends
    the sessions used there, which waits for a server that is gone as for any operation."""
    with pymongo.timeout(CLOSE_WAIT):
        await client.close()


def ensure_schema(
    db: Database[dict],  # type: ignore[type-arg]
    names: Names,
    channel_bytes: int = CHANNEL_BYTES,
    required: bool = False,
) -> None:
    """Create the channel and the indexes that the claim path and the views need.

    Idempotent, so every process may call it at start. It is a process's
    first round trip, so an unreachable server is reported here, in one line.
    A user not allowed to create indexes is let be, unless ``required``.
    """
    try:
        _ensure_schema(db, names, channel_bytes)
    except ServerSelectionTimeoutError as exc:
        raise ConfigError(f"{mongo_problem(exc)} (database '{db.name}')") from None
    except OperationFailure as exc:
        if exc.code == UNAUTHORIZED and not required:
            # A user of least privilege (an application, a worker, a viewer) may not
            # make indexes: the manager and `qworker-manager init-db` make them.
            log.debug(
                "not allowed to set up collections and indexes; leaving it to the manager",
                database=db.name,
            )
            return
        if exc.code in AUTH_CODES:  # bad credentials are bad settings, like a bad URL
            raise ConfigError(f"{mongo_problem(exc)} (database '{db.name}')") from None
        raise


def mongo_problem(exc: BaseException) -> str:
    """One line on what went wrong with MongoDB, without pymongo's topology dump."""
    reason = re.split(r" \(configured timeouts|, Timeout: |, full error: ", str(exc))[0].strip()
    if isinstance(exc, ConnectionFailure):
        return f"cannot reach MongoDB: {reason}"
    if isinstance(exc, OperationFailure) and exc.code == AUTHENTICATION_FAILED:
        return f"MongoDB refused the credentials: {reason} (see the user and password in the URL)"
    if isinstance(exc, OperationFailure) and exc.code == UNAUTHORIZED:
        return f"MongoDB refused the operation to this user: {reason} (see docs/deploy.md, roles)"
    return f"MongoDB refused the operation: {reason}"


def _ensure_schema(db: Database[dict], names: Names, channel_bytes: int) -> None:  # type: ignore[type-arg]
    with contextlib.suppress(CollectionInvalid):
        db.create_collection(names.channel, capped=True, size=channel_bytes)
    jobs = db[names.jobs]
    jobs.create_index(
        [
            ("state", ASCENDING),
            ("name", ASCENDING),
            ("priority", DESCENDING),
            ("nextRunAt", ASCENDING),
        ],
        name="claim",
    )
    jobs.create_index([("lockToken", ASCENDING)], name="lock_token", sparse=True)
    jobs.create_index([("state", ASCENDING), ("lockExpiresAt", ASCENDING)], name="leases")
    jobs.create_index([("createdAt", DESCENDING)], name="recent")
    active = [s.value for s in ACTIVE_STATES]
    jobs.create_index(
        [("name", ASCENDING), ("uniqueKey", ASCENDING)],
        name="unique_active",
        unique=True,
        partialFilterExpression={"uniqueKey": {"$exists": True}, "state": {"$in": active}},
    )
    jobs.create_index([("fireKey", ASCENDING)], name="fire_key", unique=True, sparse=True)
    jobs.create_index([("expireAt", ASCENDING)], name="retention", expireAfterSeconds=0)
    jobs.create_index(
        [("scheduleId", ASCENDING), ("scheduledFor", DESCENDING)], name="schedule_runs", sparse=True
    )
    jobs.create_index(
        [("scheduleId", ASCENDING), ("state", ASCENDING), ("scheduledFor", DESCENDING)],
        name="schedule_outcomes",
    )
    db[names.workers].create_index([("state", ASCENDING), ("pingedAt", ASCENDING)], name="pings")
    db[names.workers].create_index([("expireAt", ASCENDING)], name="forget", expireAfterSeconds=0)
    db[names.leases].create_index([("expireAt", ASCENDING)], name="forget", expireAfterSeconds=0)


def prepare(
    url: str, names: Names, channel_bytes: int = CHANNEL_BYTES, required: bool = False
) -> None:
    """``ensure_schema`` over a short-lived connection, for a daemon's start."""
    client = sync_client(url)
    try:
        db = client.get_default_database(default=DEFAULT_DATABASE)
        ensure_schema(db, names, channel_bytes, required)
    finally:
        client.close()
