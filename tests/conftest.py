"""Fixtures: a real MongoDB-protocol server over TCP, and real qworker processes.

The server is SecantusDB started as a separate process, unless
QWORKER_TEST_MONGO_URL names another server (a real mongod), which the suite
must pass against too. Each test gets a database of its own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.errors import PyMongoError
from support.effects import EFFECTS
from support.inprocess import run_burst
from support.processes import (
    TASKS,
    ManagerProcess,
    WorkerProcess,
    manager_command,
    process_env,
    qworker_command,
)
from support.server import Server, serving

from qworker import Client
from qworker.worker.daemon import Worker


@pytest.fixture(scope="session", autouse=True)
def state_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The user's state folder of every process the tests start (the manager keeps its
    API token there): one of the session's own, not the home of whoever runs the tests."""
    folder = tmp_path_factory.mktemp("state")
    os.environ["XDG_STATE_HOME"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    override = os.environ.get("QWORKER_TEST_MONGO_URL")
    if override:
        yield Server(url=override.rstrip("/"))
        return
    yield from serving(tmp_path_factory.mktemp("mongo"))


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[Server]:
    """A server of this test's own, to stop and start (outage tests) without
    disturbing the others; SecantusDB even when QWORKER_TEST_MONGO_URL is set."""
    yield from serving(tmp_path / "own-mongo")


@pytest.fixture
def mongo_url(mongo_server: Server) -> Iterator[str]:
    """A URL whose database is this test's own; dropped afterwards."""
    name = f"qwt_{uuid.uuid4().hex[:12]}"
    base = mongo_server.url.split("?")[0]
    yield f"{base}/{name}"
    client: MongoClient[dict[str, Any]] = MongoClient(
        mongo_server.url, serverSelectionTimeoutMS=2000
    )
    try:
        client.drop_database(name)
    except PyMongoError:
        pass
    finally:
        client.close()


@pytest.fixture
def client(mongo_url: str) -> Iterator[Client]:
    with Client(mongo_url) as c:
        yield c


@pytest.fixture
def db(mongo_url: str) -> Iterator[Any]:
    """Direct access to the test database, for asserting on documents."""
    mongo: MongoClient[dict[str, Any]] = MongoClient(mongo_url, tz_aware=True)
    yield mongo.get_default_database()
    mongo.close()


@pytest.fixture
def burst(mongo_url: str, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Worker]:
    """Run a worker in this process until its queue is empty (see support.inprocess);
    the test tasks record their side effects in this test's database."""
    monkeypatch.setenv(EFFECTS, mongo_url)

    def run(*tasks: str, **options: Any) -> Worker:
        return run_burst(mongo_url, *tasks, **options)

    return run


@pytest.fixture
def spawn_worker(mongo_url: str, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start ``qworker --standalone`` for tasks in tests/support/tasks; stopped at the end."""
    started: list[WorkerProcess] = []

    def spawn(
        *tasks: str,
        worker_id: str | None = None,
        extra: list[str] | None = None,
        paths: list[Path] | None = None,
        env: dict[str, str] | None = None,
        standalone: bool = True,
        mongo: str | None = None,
    ) -> WorkerProcess:
        n = len(started)
        worker_id = worker_id or f"w{n}"
        args = [
            "--mongo",
            mongo or mongo_url,
            "--id",
            worker_id,
            "--log-format",
            "json",
            "--poll-interval",
            "0.2",
        ]
        if standalone:
            args.append("--standalone")
        for path in paths or [TASKS]:
            args += ["--paths", str(path)]
        args += [*(extra or []), *tasks]
        out, err = tmp_path / f"{worker_id}-{n}.out", tmp_path / f"{worker_id}-{n}.err"
        full_env = process_env(**(env or {}))
        with open(out, "wb") as o, open(err, "wb") as e:
            process = subprocess.Popen(
                qworker_command(*args), stdout=o, stderr=e, cwd=tmp_path, env=full_env
            )
        worker = WorkerProcess(process, out, err, args)
        started.append(worker)
        return worker

    yield spawn
    for worker in started:
        worker.stop()


@pytest.fixture
def spawn_manager(mongo_url: str, tmp_path: Path) -> Iterator[Callable[..., ManagerProcess]]:
    """Start ``qworker-manager serve`` on this test's database; all stopped at the end."""
    started: list[ManagerProcess] = []

    def spawn(manager_id: str = "m1", extra: list[str] | None = None) -> ManagerProcess:
        n = len(started)
        stem = tmp_path / f"manager-{manager_id}-{n}"
        out, err = stem.with_suffix(".out"), stem.with_suffix(".err")
        with open(out, "wb") as o, open(err, "wb") as e:
            process = subprocess.Popen(
                manager_command(mongo_url, manager_id, *(extra or [])),
                stdout=o,
                stderr=e,
                cwd=tmp_path,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        manager = ManagerProcess(process, manager_id, out, err)
        started.append(manager)
        return manager

    yield spawn
    for manager in started:
        if manager.process.poll() is None:
            manager.process.send_signal(signal.SIGTERM)
    for manager in started:
        try:
            manager.process.wait(30)
        except subprocess.TimeoutExpired:
            manager.process.kill()
            manager.process.wait()
