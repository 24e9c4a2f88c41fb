"""The test MongoDB server: SecantusDB in a process of its own, over TCP."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymongo import MongoClient
from pymongo.errors import PyMongoError

from support.waits import wait_for


def free_port() -> int:
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
                [
                    command,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--storage-path",
                    str(self.storage),
                    "--log-level",
                    "WARNING",
                    *flags,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.storage.parent,
            )
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


def serving(root: Path) -> Iterator[Server]:
    """A SecantusDB server with its data in ``root``, running until the generator ends."""
    port = free_port()
    server = Server(
        url=f"mongodb://127.0.0.1:{port}",
        storage=root / "data",
        port=port,
        log_path=root / "server.log",
    )
    root.mkdir(parents=True, exist_ok=True)
    server.start()
    yield server
    server.stop()
