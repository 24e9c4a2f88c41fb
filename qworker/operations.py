"""An operation on qworker's collections, written once and run by either client.

``Client`` talks to MongoDB with pymongo's blocking API and ``AsyncClient``
with its asyncio API. So that the two cannot drift apart, what an operation
does (which commands, in what order, what it makes of their answers) is a
generator that yields each ``Call`` and receives its result; ``run`` and
``run_async`` send the calls, with the caller's session if it gave one. An
error a call raises is thrown into the generator, so an operation handles a
``DuplicateKeyError`` as it would inline.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.client_session import ClientSession
from pymongo.database import Database
from pymongo.errors import OperationFailure, PyMongoError

from qworker.errors import TransactionsUnsupported
from qworker.mongo import Names

T = TypeVar("T")
Doc = dict[str, Any]

# Methods whose cursor is read whole: the operation receives a list.
CURSORS = ("find", "aggregate")
# MongoDB's answer to a transaction on a standalone server (IllegalOperation).
ILLEGAL_OPERATION = 20


@dataclass(frozen=True)
class Call:
    """One command: a method of one of qworker's collections (a ``Names`` attribute)."""

    collection: str | None  # None: a method of the database itself
    method: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)


Operation = Generator[Call, Any, T]


def run(
    op: Operation[T], db: Database[Doc], names: Names, session: ClientSession | None = None
) -> T:
    """Run ``op`` with the blocking driver."""
    steps = _Steps(op, session)
    while (call := steps.next()) is not None:
        target = db if call.collection is None else db[getattr(names, call.collection)]
        try:
            result = getattr(target, call.method)(*call.args, session=session, **call.kwargs)
            steps.answer(list(result) if call.method in CURSORS else result)
        except PyMongoError as exc:
            steps.fail(exc)
    return steps.value


async def run_async(
    op: Operation[T],
    db: AsyncDatabase[Doc],
    names: Names,
    session: AsyncClientSession | None = None,
) -> T:
    """Run ``op`` with the asyncio driver."""
    steps = _Steps(op, session)
    while (call := steps.next()) is not None:
        target = db if call.collection is None else db[getattr(names, call.collection)]
        try:
            result = getattr(target, call.method)(*call.args, session=session, **call.kwargs)
            if call.method == "aggregate":
                result = await result  # the asyncio driver's aggregate opens its cursor
            steps.answer(await (result.to_list() if call.method in CURSORS else result))
        except PyMongoError as exc:
            steps.fail(exc)
    return steps.value


class _Steps(Generic[T]):
    """Walks an operation: each call's answer, or its error, goes back into it."""

    def __init__(self, op: Operation[T], session: ClientSession | AsyncClientSession | None):
        self._op, self._session = op, session
        self._answer: Any = None
        self._error: BaseException | None = None
        self.value: T

    def next(self) -> Call | None:
        try:
            if self._error is not None:
                return self._op.throw(self._error)
            return self._op.send(self._answer)
        except StopIteration as done:
            self.value = done.value
            return None

    def answer(self, result: Any) -> None:
        self._answer, self._error = result, None

    def fail(self, exc: PyMongoError) -> None:
        refused = isinstance(exc, OperationFailure) and unsupported(exc, self._session)
        self._answer, self._error = None, refused or exc


def unsupported(
    exc: OperationFailure, session: ClientSession | AsyncClientSession | None
) -> TransactionsUnsupported | None:
    """The clear error for a transaction the server cannot run (a standalone mongod)."""
    if exc.code != ILLEGAL_OPERATION or session is None or not session.in_transaction:
        return None
    return no_transactions(exc)


def no_transactions(exc: OperationFailure) -> TransactionsUnsupported:
    """The clear error for MongoDB's refusal of a transaction."""
    said = (exc.details or {}).get("errmsg", str(exc))
    return TransactionsUnsupported(
        "this MongoDB server cannot run transactions: they need a replica set or a sharded "
        "cluster (a single-node replica set will do). Enqueue without session=, or start "
        f"mongod with --replSet. The server said: {said}"
    )
