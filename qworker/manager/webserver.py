"""Serving the API and dashboard from inside the manager's event loop (uvicorn).

The listening socket is bound before anything else starts, so a port in use
or an address that needs a token is a clear error at start, not a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Iterator

import structlog
import uvicorn
from fastapi import FastAPI

from qworker.config import parse_bind
from qworker.credentials import check_public_token
from qworker.errors import ConfigError

log = structlog.get_logger("qworker.web")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def listen(bind: str, token: str | None, viewer: str | None = None) -> socket.socket:
    """The bound socket for ``bind``; refuses a non-loopback address without a good token
    (and a read-only ``viewer`` token short enough to guess)."""
    host, port = parse_bind(bind)
    check_public_token(bind, is_loopback(host), token)
    if viewer is not None:
        check_public_token(bind, is_loopback(host), viewer, "the viewer token")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"--http {bind}: cannot listen there: {exc.strerror}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """The manager handles SIGTERM/SIGINT and stops us itself."""
        yield


class WebServer:
    def __init__(self, app: FastAPI, sock: socket.socket) -> None:
        self._sock = sock
        config = uvicorn.Config(
            app, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=5
        )
        self._server = _Server(config)

    @property
    def url(self) -> str:
        host, port = self._sock.getsockname()[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    async def ready(self, serving: asyncio.Task[None]) -> None:
        """Until the server answers requests (or ``serving`` ended: it failed to start)."""
        while not self._server.started and not serving.done():
            await asyncio.sleep(0.01)
        if serving.done():
            serving.result()  # what made it fail, raised here

    async def serve(self) -> None:
        log.info("serving the API and dashboard", url=self.url)
        await self._server.serve(sockets=[self._sock])

    def stop(self) -> None:
        self._server.should_exit = True
