"""The HTTP API's front door: which requests reach a route at all.

An ASGI middleware, so that it decides before anything reads a body:

* **Host.** A page that rebinds its own DNS name to 127.0.0.1 talks to the
  API under that name; only loopback names, IP addresses, the name the API is
  bound to and the names an operator allows (``--allowed-host``) are served.
* **The token**, when there is one: ``Authorization: Bearer`` on every route
  but the public ones (the dashboard's files, the health check, the API's
  description). The browser's event stream cannot send a header; it gets an
  ``HttpOnly`` cookie from ``POST /api/login``, whose value opens that stream
  and nothing else.
* **Read-only access**, with a viewer token (``--viewer-token``): a request that
  carries it may look at everything (every ``GET``, the event stream, ``/metrics``)
  and change nothing: a change gets 403 before any route runs, whatever the route,
  but for ``POST /api/login``, which gives the viewer its own event-stream cookie.
  The role found is left in the request's scope (``ROLE``) for the routes.
* **Cross-site writes.** A change (``POST``/``PUT``/``PATCH``/``DELETE``) from
  another site is refused: its ``Origin`` must be this host, its
  ``Sec-Fetch-Site`` same-origin, and it must carry what no plain form or
  ``no-cors`` fetch can: a JSON body, an ``Authorization`` header or
  ``X-Qworker-Request``; any of them makes a browser ask first (a CORS
  preflight), and this server allows no other origin.
* **Size.** Bodies over ``MAX_BODY`` are refused, streamed ones included.
* **Headers** on every answer: a content security policy that allows only this
  origin's files and no framing, ``nosniff``, no referrer.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY = 16 * 1024 * 1024
CHANGES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
PUBLIC = ("/api/health", "/healthz", "/readyz", "/api/docs", "/api/openapi.json")
EVENTS = "/api/events"
LOGIN = "/api/login"
REQUEST_HEADER = "x-qworker-request"
# Who a request is, as the guard found it (in its scope, under ROLE): the API token (or
# none needed), the read-only viewer token, or anyone (a public path).
ROLE = "qworker.role"
OPERATOR, VIEWER, ANYONE = "operator", "viewer", "anyone"
READ_ONLY = (
    "this token is read-only (a viewer token): it sees everything and changes nothing; "
    "a change needs the API token"
)
EVENTS_COOKIE = "qworker_events"
SECURE_EVENTS_COOKIE = "__Host-qworker_events"  # over HTTPS: bound to this exact origin
CSP = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
# Swagger UI's page starts itself with an inline script.
DOCS_CSP = f"{CSP}; script-src 'self' 'unsafe-inline'"
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


def events_pass(token: str) -> str:
    """The cookie value that opens the event stream: derived from the token, not the token."""
    return hmac.new(token.encode(), b"qworker event stream", hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Rules:
    token: str | None = None
    hosts: frozenset[str] = field(default_factory=frozenset)  # besides loopback names and IPs
    max_body: int = MAX_BODY
    viewer: str | None = None  # the read-only token; only beside ``token``

    @classmethod
    def make(
        cls,
        token: str | None,
        bound_host: str | None,
        allowed: Iterable[str] = (),
        viewer: str | None = None,
    ) -> Rules:
        names = {name.strip().lower().strip("[]") for name in allowed if name.strip()}
        if bound_host:
            names.add(bound_host.lower().strip("[]"))
        return cls(token=token, hosts=frozenset(names), viewer=viewer if token else None)

    def host_allowed(self, host: str) -> bool:
        name = _hostname(host)
        if not name:
            return False
        if "*" in self.hosts or name in LOOPBACK_NAMES or name in self.hosts:
            return True
        try:
            ipaddress.ip_address(name)  # an address is no name a page can rebind
        except ValueError:
            return name.endswith(".localhost")  # loopback by definition (RFC 6761)
        return True


class Guard:
    """The middleware: ``Guard(app, rules)``."""

    def __init__(self, app: App, rules: Rules) -> None:
        self.app, self.rules = app, rules

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._refusal(scope, headers)
        path = scope["path"]
        send = _with_security_headers(send, DOCS_CSP if path.startswith("/api/docs") else CSP)
        if refusal is not None:
            await _answer(send, *refusal)
            return
        await _limited(self.app, self.rules.max_body, scope, receive, send)

    def _refusal(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str] | None:
        host = headers.get("host", "")
        if not self.rules.host_allowed(host):
            return 421, (
                f"this server does not answer for host {host!r}: add it with "
                "--allowed-host if it is one of this server's names"
            )
        method, path = scope["method"], scope["path"]
        role = self._role(path, method, headers)
        if role is None:
            return 401, "a valid API token is required (Authorization: Bearer …)"
        scope[ROLE] = role
        if role == VIEWER and method in CHANGES and path != LOGIN:
            return 403, READ_ONLY
        if method in CHANGES:
            cross = _cross_site(host, headers)
            if cross:
                return 403, f"refused a change from another site ({cross})"
            if not _preflighted(headers):
                return 403, (
                    "a change needs a JSON body, an Authorization header or an "
                    "X-Qworker-Request header"
                )
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.rules.max_body:
            return 413, f"a request body may have at most {self.rules.max_body} bytes"
        return None

    def _role(self, path: str, method: str, headers: dict[str, str]) -> str | None:
        """``OPERATOR``, ``VIEWER``, ``ANYONE`` (a public path), or None: refused."""
        token, viewer = self.rules.token, self.rules.viewer
        if token is None:
            return OPERATOR
        if not (path.startswith("/api/") or path == "/metrics"):
            return ANYONE
        if path in PUBLIC or path.startswith("/api/docs/"):
            return ANYONE
        given = headers.get("authorization", "")
        if given.lower().startswith("bearer "):
            bearer = given[7:].strip()
            if _same(bearer, token):
                return OPERATOR
            if viewer is not None and _same(bearer, viewer):
                return VIEWER
        if path == EVENTS and method == "GET":
            cookie = _cookies(headers.get("cookie", ""))
            passed = cookie.get(SECURE_EVENTS_COOKIE) or cookie.get(EVENTS_COOKIE) or ""
            if _same(passed, events_pass(token)):
                return OPERATOR
            if viewer is not None and _same(passed, events_pass(viewer)):
                return VIEWER
        return None


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _hostname(host: str) -> str:
    """``example.com`` of ``example.com:8765``, ``::1`` of ``[::1]:8765``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else ""
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _cross_site(host: str, headers: dict[str, str]) -> str | None:
    """Why this request comes from another site, or None."""
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return f"Sec-Fetch-Site: {fetch_site}"
    origin = headers.get("origin")
    if origin is not None and (origin == "null" or urlsplit(origin).netloc.lower() != host.lower()):
        return f"Origin: {origin[:100]}"
    return None


def _preflighted(headers: dict[str, str]) -> bool:
    """What a browser sends only after asking the server first (a CORS preflight)."""
    kind = headers.get("content-type", "").split(";")[0].strip().lower()
    return kind == "application/json" or "authorization" in headers or REQUEST_HEADER in headers


def _cookies(header: str) -> dict[str, str]:
    pairs = (part.strip().partition("=") for part in header.split(";"))
    return {name: unquote(value) for name, _, value in pairs if name}


def _with_security_headers(send: Send, csp: str) -> Send:
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [
                *message.get("headers", []),
                *SECURITY_HEADERS,
                (b"content-security-policy", csp.encode()),
            ]
        await send(message)

    return sending


async def _answer(send: Send, status: int, error: str) -> None:
    body = json.dumps({"error": error}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _limited(app: App, limit: int, scope: Scope, receive: Receive, send: Send) -> None:
    """Run ``app``, refusing a body that grows past ``limit`` as it streams in."""
    received, too_large, started = 0, False, False

    async def receiving() -> Message:
        nonlocal received, too_large
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                too_large = True
                return {"type": "http.disconnect"}  # the route stops reading
        return message

    async def sending(message: Message) -> None:
        nonlocal started
        if too_large:
            return
        started = started or message["type"] == "http.response.start"
        await send(message)

    try:
        await app(scope, receiving, sending)
    except Exception:
        if not too_large:
            raise  # what stopped the route was not us
    if too_large and not started:
        await _answer(send, 413, f"a request body may have at most {limit} bytes")
