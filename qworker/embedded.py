"""The embedded server: a local SecantusDB shared by every qworker process.

It lets a new user run qworker with no MongoDB installed. SecantusDB is a
beta under the GPL, so it is an optional extra and never used in production.
The first process that needs it starts it detached, under a file lock, and
records its port; later processes reuse it. The port stays the folder's own
across stops and starts, so running processes reconnect to a restarted server.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import platformdirs
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from qworker.errors import EmbeddedUnavailable

SCHEME = "embedded"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0  # then it is killed
INSTALL_HINT = "install it with: pip install 'qworker[embedded]'"


def is_embedded(url: str) -> bool:
    return url == SCHEME or url.startswith(f"{SCHEME}://")


def data_dir_from_url(url: str) -> Path:
    """``embedded`` uses the user's data folder; ``embedded:///some/dir`` names one."""
    rest = url[len(SCHEME) :].removeprefix("://")
    if rest:
        return Path(rest).expanduser().resolve()
    return Path(platformdirs.user_data_dir("qworker")) / "embedded"


def _server_command() -> str:
    beside = Path(sys.executable).parent / "secantusd-py"
    found = str(beside) if beside.exists() else shutil.which("secantusd-py")
    if not found:
        raise EmbeddedUnavailable(
            f"the embedded MongoDB server (SecantusDB) is missing: {INSTALL_HINT}"
        )
    return found


def _port_for(state: dict[str, Any]) -> int:
    """The folder's own port, if it is free; a new one if something else holds it.

    Keeping one address per folder lets running workers and managers reconnect
    to a server that was stopped and started again.
    """
    recorded = state.get("port")
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", int(recorded) if isinstance(recorded, int) else 0))
        except OSError:
            sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _read_state(path: Path) -> dict[str, Any]:
    """``server.json``: the port, and the pid while a server runs; garbage is ignored."""
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _answers(url: str, timeout_ms: int = 1_000) -> bool:
    client: MongoClient[dict] = MongoClient(url, serverSelectionTimeoutMS=timeout_ms)  # type: ignore[type-arg]
    try:
        client.admin.command("ping")
        return True
    except PyMongoError:
        return False
    finally:
        client.close()


def _url(port: int) -> str:
    return f"mongodb://127.0.0.1:{port}/qworker"


def ensure_server(folder: Path) -> str:
    """The URL of the running embedded server for ``folder``, starting it if needed."""
    folder.mkdir(parents=True, exist_ok=True)
    state_path = folder / "server.json"
    with _locked(folder):
        state = _read_state(state_path)
        if "pid" in state and isinstance(state.get("port"), int) and _answers(_url(state["port"])):
            return _url(state["port"])
        command = _server_command()
        port = _port_for(state)
        with open(folder / "server.log", "ab") as log:
            process = subprocess.Popen(
                [
                    command,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--storage-path",
                    str(folder / "data"),
                    "--log-level",
                    "WARNING",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=folder,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers(_url(port), 500):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise EmbeddedUnavailable(
                    f"the embedded server did not start; see {folder / 'server.log'}"
                )
            time.sleep(0.2)
        state_path.write_text(json.dumps({"pid": process.pid, "port": port}))
        return _url(port)


def stop_server(folder: Path) -> bool:
    """Stop the embedded server of ``folder`` and wait until it has exited (its storage
    is free for the next start); ``False`` when none was running. Its port is kept."""
    state_path = folder / "server.json"
    if not state_path.exists():
        return False
    with _locked(folder):
        state = _read_state(state_path)
        pid = state.pop("pid", None)
        state_path.write_text(json.dumps(state))
        if not isinstance(pid, int) or not _is_server(pid):
            return False  # after a reboot the recorded pid may be an unrelated process
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while _is_server(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        return True


def _is_server(pid: int) -> bool:
    """A SecantusDB process that is still running (a zombie is not)."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return b"secantusd" in command and stat.rsplit(")", 1)[1].split()[0] != "Z"


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """The folder's start/stop lock: one process at a time starts or stops its server."""
    with open(folder / "server.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
