"""The application's transactions, and the hints that must wait for their commit.

A job written with ``session=`` commits or aborts with the application's
other writes. What is not a document cannot join the transaction: a capped
collection cannot be written inside one, so a ``job:queued`` or
``job:cancel`` hint goes out after the commit, and never after an abort. A
transaction begun through the client (``transaction()``,
``run_in_transaction``) runs them once it has committed; one the application
began itself has no commit hook, so its hints are left out, and the workers
find its jobs by their change stream or their next read of the queue.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import structlog
from pymongo import AsyncMongoClient, MongoClient
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.client_session import ClientSession
from pymongo.errors import OperationFailure, PyMongoError

from qworker.operations import ILLEGAL_OPERATION, no_transactions

log = structlog.get_logger("qworker.client")

T = TypeVar("T")
Action = Callable[[], None]
# As pymongo's with_transaction: a commit whose outcome is unknown is retried this long.
COMMIT_RETRY_SECONDS = 120.0
UNKNOWN_COMMIT = "UnknownTransactionCommitResult"


class _Pending:
    """Actions held back until the commit of the transactions begun here."""

    def __init__(self) -> None:
        self._held: dict[int, list[Action]] = {}

    def after_commit(self, session: ClientSession | AsyncClientSession | None, act: Action) -> None:
        """Now, outside a transaction; after the commit of one begun here; else never."""
        if session is None or not session.in_transaction:
            _quietly(act)
        elif id(session) in self._held:
            self._held[id(session)].append(act)

    @contextlib.contextmanager
    def _holding(self, session: ClientSession | AsyncClientSession) -> Iterator[list[Action]]:
        held = self._held[id(session)] = []
        try:
            yield held
        finally:
            del self._held[id(session)]


class Transactions(_Pending):
    """The blocking client's transactions."""

    def __init__(self, mongo: MongoClient[Any]) -> None:
        super().__init__()
        self._mongo = mongo

    @contextlib.contextmanager
    def block(self) -> Iterator[ClientSession]:
        """A transaction around a ``with`` block: committed at its end, aborted on an error."""
        with self._mongo.start_session() as session, self._holding(session) as held:
            session.start_transaction()
            try:
                yield session
            except BaseException as exc:
                if session.in_transaction:
                    session.abort_transaction()
                _unless_refused(exc)
                raise
            _commit(session.commit_transaction)
        for act in held:
            _quietly(act)

    def run(self, body: Callable[[ClientSession], T]) -> T:
        """``body(session)`` in a transaction, run again on a transient error."""
        with self._mongo.start_session() as session, self._holding(session) as held:

            def attempt(s: ClientSession) -> T:
                held.clear()  # a retried body announces again
                return body(s)

            try:
                result = session.with_transaction(attempt)
            except OperationFailure as exc:
                _unless_refused(exc)
                raise
        for act in held:
            _quietly(act)
        return result


class AsyncTransactions(_Pending):
    """The asyncio client's transactions."""

    def __init__(self, mongo: AsyncMongoClient[Any]) -> None:
        super().__init__()
        self._mongo = mongo

    @contextlib.asynccontextmanager
    async def block(self) -> AsyncIterator[AsyncClientSession]:
        async with self._mongo.start_session() as session:
            with self._holding(session) as held:
                await session.start_transaction()
                try:
                    yield session
                except BaseException as exc:
                    if session.in_transaction:
                        await session.abort_transaction()
                    _unless_refused(exc)
                    raise
                await _commit_async(session.commit_transaction)
        for act in held:
            _quietly(act)

    async def run(self, body: Callable[[AsyncClientSession], Awaitable[T]]) -> T:
        async with self._mongo.start_session() as session:
            with self._holding(session) as held:

                async def attempt(s: AsyncClientSession) -> T:
                    held.clear()
                    return await body(s)

                try:
                    result = await session.with_transaction(attempt)
                except OperationFailure as exc:
                    _unless_refused(exc)
                    raise
        for act in held:
            _quietly(act)
        return result


def _unless_refused(exc: BaseException) -> None:
    """Raise a standalone server's refusal as ``TransactionsUnsupported``."""
    if isinstance(exc, OperationFailure) and exc.code == ILLEGAL_OPERATION:
        raise no_transactions(exc) from None


def _commit(commit: Callable[[], None]) -> None:
    deadline = time.monotonic() + COMMIT_RETRY_SECONDS
    while True:
        try:
            commit()
            return
        except PyMongoError as exc:
            if not (exc.has_error_label(UNKNOWN_COMMIT) and time.monotonic() < deadline):
                raise


async def _commit_async(commit: Callable[[], Awaitable[None]]) -> None:
    deadline = time.monotonic() + COMMIT_RETRY_SECONDS
    while True:
        try:
            await commit()
            return
        except PyMongoError as exc:
            if not (exc.has_error_label(UNKNOWN_COMMIT) and time.monotonic() < deadline):
                raise


def _quietly(act: Action) -> None:
    """A hint that fails after the commit is only latency: the job is stored."""
    try:
        act()
    except PyMongoError as exc:
        log.warning("could not send a hint to workers; they will find the job", error=str(exc))
