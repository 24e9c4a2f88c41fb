"""What the benchmarks share: the server, worker fleets, and small statistics."""

from __future__ import annotations

import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pymongo import MongoClient
from pymongo.errors import PyMongoError

HERE = Path(__file__).parent
TASKS = HERE / "tasks"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def server(url: str | None) -> Iterator[str]:
    """The server to measure: the given URL, or a fresh SecantusDB."""
    if url:
        yield url
        return
    folder = Path(tempfile.mkdtemp(prefix="qworker-bench-"))
    port = free_port()
    command = shutil.which("secantusd-py") or str(Path(sys.executable).parent / "secantusd-py")
    with open(folder / "server.log", "wb") as log:
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
            cwd=folder,
        )
    url = f"mongodb://127.0.0.1:{port}"
    mongo: MongoClient[dict[str, Any]] = MongoClient(url, serverSelectionTimeoutMS=60_000)
    try:
        mongo.admin.command("ping")
    except PyMongoError:
        process.kill()
        sys.exit(f"the server did not start:\n{(folder / 'server.log').read_text()}")
    mongo.close()
    try:
        yield url
    finally:
        process.terminate()
        process.wait(30)
        shutil.rmtree(folder, ignore_errors=True)


class Fleet:
    """Worker processes, each started by one command; ready once each prints ``ready``.

    The stream that carries the marker is drained in the background after it,
    so a chatty worker never blocks on a full pipe.
    """

    def __init__(
        self,
        commands: Sequence[Sequence[str]],
        ready: bytes,
        stream: Literal["stdout", "stderr"] = "stderr",
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 120,
    ) -> None:
        out = subprocess.PIPE if stream == "stdout" else subprocess.DEVNULL
        err = subprocess.PIPE if stream == "stderr" else subprocess.DEVNULL
        self.processes = [
            subprocess.Popen(list(command), cwd=cwd, env=env, stdout=out, stderr=err)
            for command in commands
        ]
        self._stream = stream
        self.started = time.monotonic()
        for process in self.processes:
            self._wait_ready(process, ready, timeout)

    def _wait_ready(self, process: subprocess.Popen[bytes], ready: bytes, timeout: float) -> None:
        lines = process.stdout if self._stream == "stdout" else process.stderr
        assert lines is not None
        seen: list[bytes] = []
        timer = threading.Timer(timeout, process.kill)
        timer.start()
        try:
            for line in lines:
                if ready in line:
                    break
                seen = [*seen[-20:], line]
            else:
                self.stop()
                tail = b"".join(seen).decode(errors="replace")
                raise RuntimeError(f"a worker exited before it was ready:\n{tail}")
        finally:
            timer.cancel()
        threading.Thread(target=lambda: [None for _ in lines], daemon=True).start()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def rss_mb(self) -> list[float]:
        return [rss_mb(pid) for pid in self.pids]

    def stop(self, timeout: float = 60) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def qworker_fleet(
    url: str,
    count: int,
    concurrency: int | None = None,
    tasks: Sequence[str] = ("noop",),
    standalone: bool = True,
) -> Fleet:
    """K real ``qworker`` processes serving ``tasks`` (of bench/tasks): ``--standalone``
    unless a manager is to accept them."""
    extra = [] if concurrency is None else ["--concurrency", str(concurrency)]
    command = [
        sys.executable,
        "-m",
        "qworker.cli.worker",
        *(["--standalone"] if standalone else []),
        "--mongo",
        url,
        "--paths",
        str(TASKS),
        *extra,
        "--log-format",
        "json",
        *tasks,
    ]
    return Fleet([[*command, "--id", f"bench-{n}"] for n in range(count)], b"worker started")


def rss_mb(pid: int) -> float:
    """Resident memory of one process (VmRSS), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_count(count: Callable[[], int], target: int, deadline: float) -> int:
    """``count()`` polled until it reaches ``target`` or the monotonic ``deadline`` passes,
    for at most a tenth of the time: on SecantusDB a count at depth costs the server
    a quarter of a second, which the run measured would pay."""
    while True:
        before = time.monotonic()
        done = count()
        if done >= target or time.monotonic() > deadline:
            return done
        time.sleep(max(1.0, 10 * (time.monotonic() - before)))


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a live process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def fresh(url: str, name: str) -> tuple[str, Any]:
    """A database of this name, emptied: its URL and a pymongo handle."""
    db_url = f"{url.rstrip('/')}/{name}"
    mongo: MongoClient[dict[str, Any]] = MongoClient(db_url, tz_aware=True)
    db = mongo.get_default_database()
    mongo.drop_database(db.name)
    return db_url, db


def machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }


def loadavg() -> float:
    """The 1-minute load average."""
    return float(Path("/proc/loadavg").read_text().split()[0])
