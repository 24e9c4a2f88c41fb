"""systemd's notification protocol (``sd_notify``), without a dependency.

A service started with ``Type=notify`` finds in ``$NOTIFY_SOCKET`` the path of
a Unix datagram socket (or, starting with ``@``, an abstract socket name) and
tells systemd about itself by sending it newline-separated ``KEY=value``
lines: ``READY=1`` once it works, ``STATUS=...`` for ``systemctl status``,
``WATCHDOG=1`` to prove it is alive, ``STOPPING=1`` when it shuts down.

Outside systemd (no ``$NOTIFY_SOCKET``) everything here does nothing. Nothing
here raises: a daemon must never stop because it could not tell systemd about
itself. A failed send is logged once, then silently retried with the next one.

The watchdog is pinged by an asyncio task (``supervise``), never by a thread:
if the event loop is blocked, the pings stop, and systemd kills and restarts
the process after ``WatchdogSec`` — a blocked loop claims nothing, renews no
lease and answers no manager, so a restart is the cure.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable

import structlog

log = structlog.get_logger("qworker.systemd")

NOTIFY_SOCKET = "NOTIFY_SOCKET"
WATCHDOG_USEC = "WATCHDOG_USEC"
WATCHDOG_PID = "WATCHDOG_PID"

STATUS_EVERY = 2.0  # seconds between looks at the status line, when it is shown
SEND_TIMEOUT = 1.0  # a full socket buffer must not hold the event loop for long
STOP_MARGIN = 15.0  # beyond a worker's grace: hand jobs back, run finalizers, disconnect

_failed = False  # a failed send was logged: later failures are not


def _address() -> str | None:
    """Where to send, as ``socket.sendto`` wants it; None outside systemd."""
    path = os.environ.get(NOTIFY_SOCKET, "")
    if not path:
        return None
    if path.startswith("@"):
        return "\0" + path[1:]  # Linux abstract namespace
    return path


def _failure(reason: str) -> bool:
    global _failed
    if not _failed:
        _failed = True
        log.warning(
            "cannot notify systemd; going on without it",
            socket=os.environ.get(NOTIFY_SOCKET),
            error=reason,
        )
    return False


def notify(*states: str) -> bool:
    """Send ``states`` (``"READY=1"``, ``"STATUS=..."``) in one datagram; True if sent.

    Does nothing (False) when ``$NOTIFY_SOCKET`` is unset; never raises.
    """
    address = _address()
    if address is None or not states:
        return False
    if not address.startswith(("/", "\0")):
        return _failure(f"unsupported socket address {address!r}")
    payload = "\n".join(s.replace("\n", " ") for s in states).encode("utf-8", "replace")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(SEND_TIMEOUT)
            sock.sendto(payload, address)
    except OSError as exc:
        return _failure(str(exc))
    return True


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings: half of systemd's ``WatchdogSec``, or None.

    None when systemd set no watchdog, or set it for another process
    (``$WATCHDOG_PID``, when given, must be ours: a child inherits the
    variables of a parent that is the one watched).
    """
    usec = os.environ.get(WATCHDOG_USEC, "")
    pid = os.environ.get(WATCHDOG_PID, "")
    try:
        if pid and int(pid) != os.getpid():
            return None
        period = int(usec)
    except ValueError:
        return None
    return period / 2 / 1_000_000 if period > 0 else None


def stopping(status: str, within: float | None = None) -> bool:
    """Say that shutdown began; ``within`` seconds: extend systemd's stop timeout to them.

    ``EXTEND_TIMEOUT_USEC`` only ever lengthens ``TimeoutStopSec``, so a worker
    given a longer ``--grace`` than its unit expects is not killed mid-drain.
    """
    states = ["STOPPING=1", f"STATUS={status}"]
    if within is not None and within > 0:
        states.append(f"EXTEND_TIMEOUT_USEC={int(within * 1_000_000)}")
    return notify(*states)


async def supervise(
    status: Callable[[], str] | None = None, healthy: Callable[[], bool] | None = None
) -> None:
    """Until cancelled: ``WATCHDOG=1`` at ``watchdog_interval()`` (while ``healthy()``, if
    given), ``STATUS=`` when it changes.

    Returns at once outside systemd. Start it with the daemon's other tasks
    and cancel it with them.
    """
    if _address() is None:
        return
    ping_every = watchdog_interval()
    if ping_every is None and status is None:
        return
    loop = asyncio.get_running_loop()
    next_ping = loop.time()
    shown: str | None = None
    while True:
        states = []
        now = loop.time()
        if ping_every is not None and now >= next_ping and (healthy is None or healthy()):
            states.append("WATCHDOG=1")
            next_ping = now + ping_every
        if status is not None:
            try:
                line = status()
            except Exception as exc:  # a status line is not worth stopping for
                line = f"status unavailable: {exc}"
            if line != shown:
                states.append(f"STATUS={line}")
                shown = line
        if states:
            notify(*states)
        waits = [STATUS_EVERY] if status is not None else []
        if ping_every is not None:
            waits.append(max(next_ping - loop.time(), 0.0))
        await asyncio.sleep(min(waits))
