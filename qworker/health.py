"""Health probes answered from memory, with no round trip to MongoDB per request.

``/healthz`` says the process is alive: its event loop turns (the answer comes
from that loop, and a tick it keeps says whether it was blocked just now).
``/readyz`` says it is ready: every check the daemon registered passes (a
worker: accepted by a manager or standalone, MongoDB answered within the last
lease, claims not stalled; a manager: MongoDB answered within the last lease).
The worker serves them on ``--health HOST:PORT`` with the small HTTP server
here; the manager on its HTTP API, beside the dashboard.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import Callable
from typing import Any

from qworker.config import parse_bind
from qworker.errors import ConfigError

Doc = dict[str, Any]
Check = Callable[[], str | None]  # None when all is well, else what is wrong

TICK_SECONDS = 1.0
BLOCKED_AFTER = 5.0  # a tick older than this: the loop was blocked, not alive
READ_SECONDS = 5.0  # a probe that sends no request line in this long is dropped
MAX_HEADER_LINES = 100
REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class Health:
    def __init__(self) -> None:
        self._checks: dict[str, Check] = {}
        self.ticked = time.monotonic()

    def check(self, name: str, check: Check) -> None:
        self._checks[name] = check

    def alive(self) -> tuple[bool, Doc]:
        lag = time.monotonic() - self.ticked
        ok = lag < BLOCKED_AFTER
        return ok, {"status": "alive" if ok else "blocked", "loopLagSeconds": round(lag, 3)}

    def ready(self) -> tuple[bool, Doc]:
        alive, body = self.alive()
        problems = {name: why for name, check in self._checks.items() if (why := check())}
        if not alive:
            problems["loop"] = f"the event loop was blocked for {body['loopLagSeconds']} s"
        return not problems, {"status": "ready" if not problems else "not ready", **problems}

    def answer(self, path: str) -> tuple[int, Doc]:
        """The status and body of ``GET path``."""
        probe = {"/healthz": self.alive, "/readyz": self.ready}.get(path.split("?")[0])
        if probe is None:
            return 404, {"error": "not found: try /healthz or /readyz"}
        ok, body = probe()
        return (200 if ok else 503), body

    async def tick(self) -> None:
        """Until cancelled: mark that the loop turns."""
        while True:
            self.ticked = time.monotonic()
            await asyncio.sleep(TICK_SECONDS)


async def serve(bind: str, health: Health) -> asyncio.Server:
    """``/healthz`` and ``/readyz`` on ``HOST:PORT``, from the running loop."""
    host, port = parse_bind(bind, "--health")
    try:
        return await asyncio.start_server(functools.partial(_answer, health), host, port)
    except OSError as exc:
        raise ConfigError(f"--health {bind}: cannot listen there: {exc.strerror}") from None


async def _answer(
    health: Health, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        method, path = await _request(reader)
        status, body = health.answer(path) if method in ("GET", "HEAD") else (405, {})
        payload = json.dumps(body).encode()
        head = (
            f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nCache-Control: no-store\r\n"
            "Connection: close\r\n\r\n"
        )
        writer.write(head.encode() + (payload if method != "HEAD" else b""))
        await writer.drain()
    except (TimeoutError, ConnectionError, ValueError, UnicodeDecodeError):
        pass  # a probe that hung up or sent nonsense gets nothing
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _request(reader: asyncio.StreamReader) -> tuple[str, str]:
    """The method and path of an HTTP request, its headers read and ignored."""
    line = await asyncio.wait_for(reader.readline(), READ_SECONDS)
    method, path, _ = line.decode("ascii").split(" ", 2)
    for _ in range(MAX_HEADER_LINES):
        header = await asyncio.wait_for(reader.readline(), READ_SECONDS)
        if header in (b"\r\n", b"\n", b""):
            return method, path
    raise ValueError("too many header lines")
