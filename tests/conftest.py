"""Fixtures: a real MongoDB-protocol server over TCP, and real qworker processes.

The server is SecantusDB started as a separate process, unless
QWORKER_TEST_MONGO_URL names another server (a real mongod), which the suite
must pass against too. Each test gets a database of its own.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from qworker import Client

TESTS = Path(__file__).parent
TASKS = TESTS / "tasks"
REPO = TESTS.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(url: str) -> bool:
    client: MongoClient[dict[str, Any]] = MongoClient(url, serverSelectionTimeoutMS=500)
    try:
        client.admin.command("ping")
        return True
    except PyMongoError:
        return False
    finally:
        client.close()


@dataclass
class Server:
    """The test server; ``stop``/``start`` keep its data (for outage tests)."""

    url: str
    storage: Path | None = None
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def managed(self) -> bool:
        return self.storage is not None

    def start(self, *flags: str, answering: str | None = None) -> None:
        """Start it, with SecantusDB's ``flags`` (``--auth``); ``answering`` is the URL
        that must answer a ping (with a user's credentials, under ``--auth``)."""
        assert self.storage is not None and self.log_path is not None
        command = shutil.which("secantusd-py") or str(Path(sys.executable).parent / "secantusd-py")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [command, "--host", "127.0.0.1", "--port", str(self.port),
                 "--storage-path", str(self.storage), "--log-level", "WARNING", *flags],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.storage.parent,
            )  # fmt: skip
        url = answering or self.url
        wait_for(lambda: _answers(url), 60, "the test MongoDB server to answer")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


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
    yield from _serving(tmp_path_factory.mktemp("mongo"))


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[Server]:
    """A server of this test's own, to stop and start (outage tests) without
    disturbing the others; SecantusDB even when QWORKER_TEST_MONGO_URL is set."""
    yield from _serving(tmp_path / "own-mongo")


def _serving(root: Path) -> Iterator[Server]:
    """A SecantusDB server with its data in ``root``, running until the generator ends."""
    port = _free_port()
    server = Server(url=f"mongodb://127.0.0.1:{port}", storage=root / "data", port=port,
                    log_path=root / "server.log")  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    server.start()
    yield server
    server.stop()


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


@dataclass
class WorkerProcess:
    """A real ``qworker`` process, its output captured to files."""

    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    args: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def worker_id(self) -> str:
        return self.args[self.args.index("--id") + 1]

    def output(self) -> str:
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")

    def signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker did not exit in {timeout}s:\n{self.output()}") from None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def console_command(name: str, module: str) -> list[str]:
    """The installed console script, else the same entry point under that name."""
    script = Path(sys.executable).parent / name
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", f"from {module} import main; main(prog_name={name!r})"]


def qworker_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "qworker.cli.worker", *args]


def process_env(**more: str) -> dict[str, str]:
    """The environment of a spawned qworker process: unbuffered output, and
    ``tests/`` importable (test tasks import the side-effect log, tests/effects.py)."""
    pythonpath = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": pythonpath, **more}


@pytest.fixture
def spawn_worker(mongo_url: str, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start ``qworker --standalone`` for tasks in tests/tasks; stopped at the end."""
    started: list[WorkerProcess] = []

    def spawn(*tasks: str, worker_id: str | None = None, extra: list[str] | None = None,
              paths: list[Path] | None = None, env: dict[str, str] | None = None,
              standalone: bool = True) -> WorkerProcess:  # fmt: skip
        n = len(started)
        worker_id = worker_id or f"w{n}"
        args = ["--mongo", mongo_url, "--id", worker_id, "--log-format", "json",
                "--poll-interval", "0.2"]  # fmt: skip
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


def worker_ready(worker: WorkerProcess) -> bool:
    """True once the worker logged that it started (and so is claiming)."""
    if worker.process.poll() is not None:
        raise AssertionError(f"worker exited with {worker.process.returncode}:\n{worker.output()}")
    return "worker started" in worker.output()


@dataclass
class ManagerProcess:
    """A real ``qworker-manager serve`` process, its output captured to files."""

    process: subprocess.Popen[bytes]
    manager_id: str
    stdout: Path
    stderr: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, and the exit code (killed if it does not exit in ``timeout``)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(
                    f"manager did not stop in {timeout}s:\n{self.output()}"
                ) from None
        return self.process.returncode

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def api_url(self, timeout: float = 30) -> str:
        """The base URL of its HTTP API, from its log (tests bind port 0)."""

        def logged() -> str | None:
            for line in self.output().splitlines():
                if '"serving the API and dashboard"' in line:
                    return str(json.loads(line)["url"])
            if self.process.poll() is not None:
                raise AssertionError(f"manager exited:\n{self.output()}")
            return None

        return wait_for(logged, timeout, "the manager's HTTP API")  # type: ignore[no-any-return]


# Managers in tests ping fast and hold a short lease, so detection is quick.
PING = 0.5
LEASE = 2.0


def manager_command(mongo_url: str, manager_id: str, *extra: str) -> list[str]:
    # No API token unless the test gives one: it talks to loopback as a script would.
    token = [] if any(arg.startswith("--api-token") for arg in extra) else ["--api-token", "none"]
    return [sys.executable, "-m", "qworker.cli.manager", "--mongo", mongo_url, "serve",
            "--ping-interval", str(PING), "--lease", str(LEASE), "--log-format", "json",
            "--id", manager_id, "--http", "127.0.0.1:0", *token, *extra]  # fmt: skip


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
                stdout=o, stderr=e, cwd=tmp_path,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
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


def leading(manager: ManagerProcess, timeout: float = 60) -> ManagerProcess:
    """Wait until ``manager`` holds the lease."""
    wait_for(lambda: "leading the fleet" in manager.output(), timeout, "the manager to lead")
    return manager
