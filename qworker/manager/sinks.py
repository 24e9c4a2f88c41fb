"""Where the manager relays notifications: its structured log, and webhooks.

A webhook gets an HTTP POST of the notification as JSON, for the event types
and tasks it asked for, retried with backoff, with the headers its settings
give (an ``Authorization``, say) and, given a shared ``secret``, an HMAC-SHA256
signature of the body in ``X-Qworker-Signature-256`` (``sha256=<hex>``, as
GitHub signs its webhooks) so that the receiver can tell it came from us. Deliveries run beside the
manager through a bounded queue per webhook, so a slow or dead endpoint never
blocks it; when a queue is full the oldest notification is dropped, and said.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from qworker.errors import ConfigError
from qworker.files import read_mapping

log = structlog.get_logger("qworker.sinks")

QUEUE_SIZE = 1_000


SIGNATURE_HEADER = "X-Qworker-Signature-256"
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP header name (RFC 9110)
KNOWN = {"url", "events", "tasks", "retries", "backoff", "timeout", "headers", "secret"}


@dataclass(frozen=True)
class Webhook:
    url: str
    events: frozenset[str] | None = None  # None: every event type
    tasks: frozenset[str] | None = None  # None: every task
    retries: int = 5
    backoff: float = 1.0
    timeout: float = 5.0
    headers: tuple[tuple[str, str], ...] = ()
    secret: str | None = field(default=None, repr=False)

    @property
    def shown(self) -> str:
        """The URL as logs show it: scheme and host only (paths and queries carry tokens)."""
        parts = urllib.parse.urlsplit(self.url)
        return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")

    def request_headers(self, body: bytes) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "qworker-manager",
            **dict(self.headers),
        }
        if self.secret is not None:
            digest = hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()
            headers[SIGNATURE_HEADER] = f"sha256={digest}"
        return headers

    def wants(self, note: dict[str, Any]) -> bool:
        kind, task = note.get("type"), note.get("task")  # anything: the channel is open to all
        return (self.events is None or (isinstance(kind, str) and kind in self.events)) and (
            self.tasks is None or (isinstance(task, str) and task in self.tasks)
        )


@dataclass(frozen=True)
class SinkSettings:
    log: bool = True
    webhooks: tuple[Webhook, ...] = ()


def read_sinks(path: Path) -> SinkSettings:
    """``log: true|false`` and ``webhooks: [{url, events, tasks, retries, backoff, timeout}]``."""
    raw = read_mapping(path, f"sinks file {path}", "sinks", ConfigError)
    unknown = set(raw) - {"log", "webhooks"}
    if unknown:
        raise ConfigError(f"sinks file {path}: unknown setting(s) {sorted(unknown)}")
    if not isinstance(raw.get("log", True), bool):
        raise ConfigError(f"sinks file {path}: 'log' must be true or false")
    hooks = raw.get("webhooks", [])
    if not isinstance(hooks, list):
        raise ConfigError(f"sinks file {path}: 'webhooks' must be a list")
    return SinkSettings(
        log=raw.get("log", True),
        webhooks=tuple(_webhook(path, n, hook) for n, hook in enumerate(hooks)),
    )


def _webhook(path: Path, n: int, raw: Any) -> Webhook:
    where = f"sinks file {path}: webhooks[{n}]"
    if not isinstance(raw, dict) or not isinstance(raw.get("url"), str):
        raise ConfigError(f"{where}: expected a mapping with a 'url'")
    if not raw["url"].startswith(("http://", "https://")):
        raise ConfigError(f"{where}: 'url' must be an http(s) URL, got {raw['url']!r}")
    unknown = set(raw) - KNOWN
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {sorted(unknown)} (known: {sorted(KNOWN)})")
    chosen = {}
    for key in ("events", "tasks"):
        value = raw.get(key)
        if value is not None and not (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
        ):
            raise ConfigError(f"{where}: '{key}' must be a list of strings")
        chosen[key] = frozenset(value) if value is not None else None
    numbers = {}
    for key, minimum in (("retries", 0), ("backoff", 0), ("timeout", 0.1)):
        value = raw.get(key, getattr(Webhook, key))
        if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
            raise ConfigError(f"{where}: '{key}' must be a number >= {minimum}")
        numbers[key] = value
    return Webhook(
        url=raw["url"],
        events=chosen["events"],
        tasks=chosen["tasks"],
        retries=int(numbers["retries"]),
        backoff=float(numbers["backoff"]),
        timeout=float(numbers["timeout"]),
        headers=_headers(where, raw.get("headers", {})),
        secret=_secret(where, raw.get("secret")),
    )


def _headers(where: str, raw: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: 'headers' must be a mapping of header names to values")
    for name, value in raw.items():
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            raise ConfigError(f"{where}: headers: {name!r} is not an HTTP header name")
        if not isinstance(value, str) or any(c in value for c in "\r\n"):
            raise ConfigError(f"{where}: headers: the value of {name!r} must be one line of text")
    return tuple(raw.items())


def _secret(where: str, raw: Any) -> str | None:
    if raw is not None and (not isinstance(raw, str) or not raw):
        raise ConfigError(f"{where}: 'secret' must be a non-empty string (the shared HMAC key)")
    return raw


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


class Sinks:
    def __init__(self, settings: SinkSettings) -> None:
        self.settings = settings
        self._queues = [asyncio.Queue[dict[str, Any]](QUEUE_SIZE) for _ in settings.webhooks]
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._deliver(hook, queue))
            for hook, queue in zip(self.settings.webhooks, self._queues, strict=True)
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def relay(self, note: dict[str, Any]) -> None:
        """Hand a notification to every sink; returns at once."""
        if self.settings.log:
            log.info("notification", **{k: v for k, v in note.items() if k != "event"})
        for hook, queue in zip(self.settings.webhooks, self._queues, strict=True):
            if not hook.wants(note):
                continue
            if queue.full():
                queue.get_nowait()
                log.warning(
                    "webhook queue full: dropped the oldest notification", webhook=hook.shown
                )
            queue.put_nowait(note)

    async def _deliver(self, hook: Webhook, queue: asyncio.Queue[dict[str, Any]]) -> None:
        while True:
            note = await queue.get()
            body = json.dumps(note, default=_default).encode()
            for attempt in range(hook.retries + 1):
                error = await asyncio.to_thread(_post, hook, body)
                if error is None:
                    break
                if attempt == hook.retries:
                    log.error(
                        "webhook gave up", webhook=hook.shown, error=error, attempts=attempt + 1
                    )
                    break
                delay = hook.backoff * 2**attempt
                log.warning(
                    "webhook failed; retrying", webhook=hook.shown, error=error, retry_in=delay
                )
                await asyncio.sleep(delay)


def _post(hook: Webhook, body: bytes) -> str | None:
    """POST ``body``; the error, or None on a 2xx answer."""
    request = urllib.request.Request(
        hook.url, data=body, method="POST", headers=hook.request_headers(body)
    )
    try:
        with urllib.request.urlopen(request, timeout=hook.timeout) as answer:
            return None if 200 <= answer.status < 300 else f"HTTP {answer.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return str(getattr(exc, "reason", exc))
