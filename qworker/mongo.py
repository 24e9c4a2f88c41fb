"""Connections, collection names and indexes.

All collections live in the database named in the URL (default ``qworker``),
with an optional name prefix so several deployments can share a database.
"""

from __future__ import annotations

import re
from datetime import UTC
from typing import Any
from urllib.parse import parse_qs

import pymongo
import structlog
from bson.codec_options import CodecOptions
from pymongo import AsyncMongoClient, MongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.database import Database
from pymongo.errors import (
    ConfigurationError,
    ConnectionFailure,
    OperationFailure,
)
from pymongo.uri_parser import parse_uri

from qworker.errors import ConfigError

log = structlog.get_logger("qworker.mongo")

DEFAULT_DATABASE = "qworker"
CHANNEL_BYTES = 16 * 1024 * 1024
# The channel also holds at most this many messages: on SecantusDB a tail's every
# read goes through all it holds (docs/decisions.md, "The channel's tails").
CHANNEL_DOCS = 1_000
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
        self.workflows = f"{prefix}workflows"
        self.controls = f"{prefix}controls"
        self.limits = f"{prefix}limits"


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


def sync_database(
    target: str | MongoClient[Any] | Database[Any],
) -> tuple[Database[dict[str, Any]], str | None]:
    """The database a blocking client works in, and the URL it opened it from: ``None``
    for the application's own connection, which the client must never close."""
    if isinstance(target, str):
        url = resolve_url(target)
        return sync_client(url)[database_name(url)], url
    if isinstance(target, MongoClient):
        target = target.get_default_database(default=DEFAULT_DATABASE)
    if isinstance(target, Database):
        return target.with_options(codec_options=_codecs(target.codec_options)), None
    raise _not_a_target(target, "MongoClient")


def async_database(
    target: str | AsyncMongoClient[Any] | AsyncDatabase[Any],
) -> tuple[AsyncDatabase[dict[str, Any]], str | None]:
    """``sync_database`` for the asyncio client."""
    if isinstance(target, str):
        url = resolve_url(target)
        return async_client(url)[database_name(url)], url
    if isinstance(target, AsyncMongoClient):
        target = target.get_default_database(default=DEFAULT_DATABASE)
    if isinstance(target, AsyncDatabase):
        return target.with_options(codec_options=_codecs(target.codec_options)), None
    raise _not_a_target(target, "AsyncMongoClient")


def _codecs(given: CodecOptions[Any]) -> CodecOptions[dict[str, Any]]:
    """The application's codecs, with what qworker reads documents as: dicts, aware times."""
    return given.with_options(document_class=dict, tz_aware=True, tzinfo=UTC)


def _not_a_target(target: object, kind: str) -> ConfigError:
    return ConfigError(
        f"a client connects to a MongoDB URL (mongodb://host/db), 'embedded', a pymongo "
        f"{kind} or one of its databases, not {type(target).__name__}"
    )


async def close_async(client: AsyncMongoClient[dict]) -> None:  # type: ignore[type-arg]
    """Close a connection, waiting for the server at most ``CLOSE_WAIT``: closing ends
    the sessions used there, which waits for a server that is gone as for any operation."""
    with pymongo.timeout(CLOSE_WAIT):
        await client.close()


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
