"""The embedded server: a local SecantusDB shared by every qworker process.

It lets a new user run qworker with no MongoDB installed. SecantusDB is a
beta under the GPL, so it is an optional extra and never used in production.
The first process that needs it starts it detached, under a file lock, and
records its port; later processes reuse it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import platformdirs
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from qworker.errors import EmbeddedUnavailable

SCHEME = "embedded"
START_TIMEOUT = 60.0
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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
    with open(folder / "server.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if state_path.exists():
            try:
                state = json.loads(state_path.read_text())
                if _answers(_url(int(state["port"]))):
                    return _url(int(state["port"]))
            except (ValueError, KeyError, TypeError):
                pass
        command = _server_command()
        port = _free_port()
        with open(folder / "server.log", "ab") as log:
            process = subprocess.Popen(
                [command, "--host", "127.0.0.1", "--port", str(port),
                 "--storage-path", str(folder / "data"), "--log-level", "WARNING"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=folder, start_new_session=True,
            )  # fmt: skip
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
    """Stop the embedded server of ``folder``; ``False`` when none was running."""
    state_path = folder / "server.json"
    if not state_path.exists():
        return False
    try:
        pid = int(json.loads(state_path.read_text())["pid"])
    except (ValueError, KeyError, TypeError):
        pid = 0
    state_path.unlink()
    # After a reboot the recorded pid may belong to an unrelated process.
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    if b"secantusd" not in command:
        return False
    os.kill(pid, 15)
    return True
