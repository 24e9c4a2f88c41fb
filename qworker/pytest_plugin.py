"""The pytest plugin: a fresh database per test for an application's tests of its jobs.

Installed with qworker, it loads in every pytest run, so loading it does
nothing but declare a command-line option and the fixtures: it imports no
worker code, and no server starts until a test asks for ``qworker_client`` or
``qworker_url``. The server is the embedded one (started if none runs, and
left running as ``Client("embedded")`` leaves it), or the one that
``--qworker-mongo URL`` or ``QWORKER_TEST_MONGO_URL`` names.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import pytest
from pymongo.errors import PyMongoError

from qworker.client import Client
from qworker.mongo import resolve_url, sync_client

ENV = "QWORKER_TEST_MONGO_URL"
OPTION = "--qworker-mongo"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("qworker").addoption(
        OPTION,
        metavar="URL",
        help=f"MongoDB server for the qworker_client fixture (default: ${ENV}, or 'embedded')",
    )


@pytest.fixture(scope="session")
def qworker_mongo(pytestconfig: pytest.Config) -> str:
    """The ``mongodb://`` URL of the server the tests' databases are made on."""
    given = pytestconfig.getoption(OPTION) or os.environ.get(ENV) or "embedded"
    return resolve_url(given)


@pytest.fixture
def qworker_url(qworker_mongo: str) -> Iterator[str]:
    """A URL whose database is this test's own, dropped after the test."""
    name = f"qworker_test_{uuid.uuid4().hex[:12]}"
    yield with_database(qworker_mongo, name)
    # A server gone meanwhile has nothing left to drop, or no way to.
    with sync_client(qworker_mongo) as mongo, contextlib.suppress(PyMongoError):
        mongo.drop_database(name)


@pytest.fixture
def qworker_client(qworker_url: str) -> Iterator[Client]:
    """A ``qworker.Client`` on this test's own database."""
    with Client(qworker_url) as client:
        yield client


def with_database(url: str, name: str) -> str:
    """``url`` naming the database ``name``. Credentials go on authenticating against the
    database they did: the one ``url`` named (or ``admin``), unless it says ``authSource``."""
    parts = urlsplit(url)
    query = parts.query
    options = {key.lower() for key, _ in parse_qsl(query)}
    if "@" in parts.netloc and "authsource" not in options:
        source = f"authSource={parts.path.strip('/') or 'admin'}"
        query = f"{query}&{source}" if query else source
    return urlunsplit(parts._replace(path=f"/{name}", query=query))
