"""Running under systemd: the notify protocol, the daemons' messages, the unit files.

The daemons are real processes given ``NOTIFY_SOCKET`` (a Unix datagram
socket this test binds) and ``WATCHDOG_USEC``, as systemd gives them; the
test reads what they send. The unit files are checked by ``systemd-analyze
verify`` where it is installed, and against the code's defaults everywhere.
"""

from __future__ import annotations

import asyncio
import configparser
import itertools
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click
import pytest
import structlog
from support.effects import effects_env
from support.jobs import wait_finished
from support.logs import wait_accepted, wait_leading
from support.processes import REPO, WorkerProcess, printed_config
from support.waits import wait_for

from qworker import Client, systemd
from qworker.cli.manager import main as manager_main
from qworker.cli.manager import serve
from qworker.cli.worker import main as worker_main
from qworker.config import WorkerSettings
from qworker.manager.daemon import ManagerSettings
from qworker.protocol import DEAD_AFTER_PINGS

T = TypeVar("T")

UNITS = REPO / "deploy" / "systemd"
ENV_EXAMPLES = REPO / "deploy" / "env"
WATCHDOG = {"WATCHDOG_USEC": "1000000"}  # a 1 s watchdog: pings every 0.5 s


# -- a stand-in for systemd's notification socket ---------------------------


@dataclass
class Notifications:
    """A bound datagram socket and every message it received, with arrival times."""

    sock: socket.socket
    address: str  # as NOTIFY_SOCKET gives it
    received: list[tuple[float, list[str]]] = field(default_factory=list)

    def read(self, timeout: float) -> None:
        """One datagram, if one arrives within ``timeout``."""
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return
        self.received.append((time.monotonic(), data.decode().split("\n")))

    def drain(self) -> None:
        """Read until nothing more arrives for a moment."""
        count = -1
        while count != len(self.received):
            count = len(self.received)
            self.read(0.1)

    def states(self) -> list[str]:
        return [state for _, states in self.received for state in states]

    def times_of(self, state: str) -> list[float]:
        return [at for at, states in self.received if state in states]

    def statuses(self) -> list[str]:
        return [s.removeprefix("STATUS=") for s in self.states() if s.startswith("STATUS=")]

    def wait(self, check: Callable[[], Any], timeout: float, what: str, process: Any = None) -> Any:
        """Read messages until ``check()`` is truthy; fail naming ``what``."""
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            left = deadline - time.monotonic()
            if left <= 0:
                output = f"\n{process.output()}" if process is not None else ""
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {what}; got {self.states()}{output}"
                )
            self.read(min(left, 0.2))

    def wait_state(
        self, state: str, timeout: float = 30, times: int = 1, process: Any = None
    ) -> float:
        """Until ``state`` arrived ``times`` times; when it last did."""
        self.wait(lambda: len(self.times_of(state)) >= times, timeout, f"{state} x{times}", process)
        return self.times_of(state)[times - 1]

    def wait_status(self, fragment: str, timeout: float = 30, process: Any = None) -> str:
        return str(
            self.wait(
                lambda: next((s for s in self.statuses() if fragment in s), None),
                timeout,
                f"a STATUS with {fragment!r}",
                process,
            )
        )


def _bind(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + address[1:] if address.startswith("@") else address)
    return sock


@pytest.fixture
def notifications(tmp_path: Path) -> Iterator[Notifications]:
    """A socket file in tmp_path (in a shorter folder if that path is too long for one)."""
    folder = tmp_path
    if len(str(tmp_path / "notify.sock")) > 100:  # sun_path holds 108 bytes
        folder = Path(tempfile.mkdtemp(prefix="qw-notify-"))
    path = str(folder / "notify.sock")
    sock = _bind(path)
    yield Notifications(sock, path)
    sock.close()
    if folder != tmp_path:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def abstract_notifications() -> Iterator[Notifications]:
    address = f"@qworker-test-{uuid.uuid4().hex}"
    sock = _bind(address)
    yield Notifications(sock, address)
    sock.close()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No systemd variables from the environment the tests run in; log failures afresh."""
    for name in (systemd.NOTIFY_SOCKET, systemd.WATCHDOG_USEC, systemd.WATCHDOG_PID):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(systemd, "_failed", False)
    return monkeypatch


# -- the protocol ------------------------------------------------------------


def test_without_a_socket_nothing_is_sent_and_nothing_runs(clean_env: Any) -> None:
    assert systemd.notify("READY=1") is False
    assert systemd.stopping("stopping", within=40) is False
    # The supervising task returns at once instead of looping for nothing.
    clean_env.setenv("WATCHDOG_USEC", "1000000")
    asyncio.run(asyncio.wait_for(systemd.supervise(lambda: "status"), 1))


def test_states_go_in_one_datagram_to_a_socket_file(
    clean_env: Any, notifications: Notifications
) -> None:
    clean_env.setenv("NOTIFY_SOCKET", notifications.address)
    assert systemd.notify("READY=1", "STATUS=two\nlines") is True
    notifications.wait(lambda: notifications.received, 5, "a datagram")
    # A newline inside a value would start a bogus assignment: it is flattened.
    assert notifications.received[0][1] == ["READY=1", "STATUS=two lines"]


def test_an_abstract_socket_name_starts_with_an_at_sign(
    clean_env: Any, abstract_notifications: Notifications
) -> None:
    clean_env.setenv("NOTIFY_SOCKET", abstract_notifications.address)
    assert systemd.notify("WATCHDOG=1") is True
    abstract_notifications.wait_state("WATCHDOG=1", 5)


def test_stopping_extends_the_stop_timeout(clean_env: Any, notifications: Notifications) -> None:
    clean_env.setenv("NOTIFY_SOCKET", notifications.address)
    assert systemd.stopping("stopping: 2 running jobs", within=40.5)
    notifications.wait(lambda: notifications.received, 5, "a datagram")
    assert notifications.received[0][1] == [
        "STOPPING=1",
        "STATUS=stopping: 2 running jobs",
        "EXTEND_TIMEOUT_USEC=40500000",
    ]


def test_a_failed_send_never_raises_and_is_logged_once(clean_env: Any, tmp_path: Path) -> None:
    clean_env.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens.sock"))
    with structlog.testing.capture_logs() as logs:
        assert systemd.notify("READY=1") is False
        assert systemd.notify("WATCHDOG=1") is False
    assert [entry["event"] for entry in logs] == ["cannot notify systemd; going on without it"]
    clean_env.setenv("NOTIFY_SOCKET", "vsock:2:1234")  # not ours to speak
    assert systemd.notify("READY=1") is False


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        (None, None, None),
        ("1000000", None, 0.5),
        ("30000000", "self", 15.0),
        ("1000000", "other", None),  # set for another process (our parent)
        ("0", None, None),
        ("soon", None, None),
        ("1000000", "not-a-pid", None),
    ],
)
def test_the_watchdog_interval_is_half_the_period_and_ours_only(
    clean_env: Any, usec: str | None, pid: str | None, expected: float | None
) -> None:
    if usec is not None:
        clean_env.setenv("WATCHDOG_USEC", usec)
    if pid is not None:
        own = os.getpid()
        clean_env.setenv("WATCHDOG_PID", {"self": str(own), "other": str(own + 1)}.get(pid, pid))
    assert systemd.watchdog_interval() == expected


def read_while(notifications: Notifications, scenario: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``scenario``, reading the messages as they arrive from a thread (the loop
    under test may block), so that each is stamped when it was sent."""
    done = threading.Event()

    def read_until_done() -> None:
        while not done.is_set():
            notifications.read(0.05)

    reader = threading.Thread(target=read_until_done)
    reader.start()
    try:
        return asyncio.run(scenario())
    finally:
        done.set()
        reader.join()
        notifications.drain()


def test_the_watchdog_pings_only_while_the_event_loop_runs(
    clean_env: Any, notifications: Notifications
) -> None:
    clean_env.setenv("NOTIFY_SOCKET", notifications.address)
    clean_env.setenv("WATCHDOG_USEC", "200000")  # pings every 0.1 s
    status = ["starting"]

    async def scenario() -> tuple[float, float]:
        task = asyncio.create_task(systemd.supervise(lambda: status[0]))
        await asyncio.sleep(0.45)
        status[0] = "busy"
        blocked_from = time.monotonic()
        time.sleep(0.6)  # the loop is stuck: no ping may go out meanwhile
        blocked_until = time.monotonic()
        await asyncio.sleep(0.45)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return blocked_from, blocked_until

    blocked_from, blocked_until = read_while(notifications, scenario)
    pings = notifications.times_of("WATCHDOG=1")
    assert len([t for t in pings if t < blocked_from]) >= 4
    # Received while blocked would mean a ping not sent from the loop.
    assert not [t for t in pings if blocked_from + 0.05 < t < blocked_until], pings
    assert len([t for t in pings if t > blocked_until]) >= 3
    # The status is sent when it changes, not with every ping.
    assert notifications.statuses() == ["starting", "busy"]


def test_the_watchdog_is_fed_only_while_the_daemon_says_it_is_healthy(
    clean_env: Any, notifications: Notifications
) -> None:
    clean_env.setenv("NOTIFY_SOCKET", notifications.address)
    clean_env.setenv("WATCHDOG_USEC", "200000")  # pings every 0.1 s
    healthy = [True]

    async def scenario() -> tuple[float, float]:
        task = asyncio.create_task(systemd.supervise(None, lambda: healthy[0]))
        await asyncio.sleep(0.45)
        healthy[0] = False
        sick_from = time.monotonic()
        await asyncio.sleep(0.6)
        sick_until = time.monotonic()
        healthy[0] = True
        await asyncio.sleep(0.45)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return sick_from, sick_until

    sick_from, sick_until = read_while(notifications, scenario)
    pings = notifications.times_of("WATCHDOG=1")
    assert len([t for t in pings if t < sick_from]) >= 3
    assert not [t for t in pings if sick_from + 0.05 < t < sick_until], pings
    assert len([t for t in pings if t > sick_until]) >= 3


# -- the daemons -------------------------------------------------------------


def _systemd_env(notifications: Notifications, **more: str) -> dict[str, str]:
    return {"NOTIFY_SOCKET": notifications.address, **WATCHDOG, **more}


def _pings_keep_coming(notifications: Notifications, process: Any, since: float) -> None:
    """At least three more pings, about 0.5 s apart."""
    start = len([t for t in notifications.times_of("WATCHDOG=1") if t <= since])
    notifications.wait_state("WATCHDOG=1", 15, times=start + 3, process=process)
    pings = notifications.times_of("WATCHDOG=1")[start : start + 3]
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert all(0.25 < gap < 1.5 for gap in gaps), gaps


def test_a_standalone_worker_tells_systemd_ready_alive_and_stopping(
    client: Client, db: Any, spawn_worker: Any, mongo_url: str, notifications: Notifications
) -> None:
    worker: WorkerProcess = spawn_worker(
        "noop",
        "tracked",
        env=_systemd_env(notifications, **effects_env(mongo_url)),
        extra=["--grace", "20"],
    )
    ready_at = notifications.wait_state("READY=1", 60, process=worker)
    # READY only once the worker really works: after its "worker started".
    assert "worker started" in worker.output()
    assert notifications.wait_status("running 0 of 16 jobs", 5, worker)
    _pings_keep_coming(notifications, worker, ready_at)

    wait_finished(db, client.now("noop"))
    notifications.wait_status("1 succeeded", 10, worker)

    slow = client.now("tracked", {"sleeps": [3]})
    wait_for(lambda: db.jobs.find_one({"state": "running"}), 30, "the slow job to run")
    worker.signal(signal.SIGTERM)
    notifications.wait_state("STOPPING=1", 10, process=worker)
    stop_index, stop_message = next(
        (i, states)
        for i, (_, states) in enumerate(notifications.received)
        if "STOPPING=1" in states
    )
    # The stop timeout is stretched to the grace plus the margin.
    assert "EXTEND_TIMEOUT_USEC=35000000" in stop_message
    assert worker.process.poll() is None  # told at the start of the graceful shutdown
    assert worker.wait(30) == 0
    assert wait_finished(db, slow)["state"] == "succeeded"  # the running job was let finish
    # The watchdog was fed while the worker drained (3 s, pings every 0.5 s).
    notifications.drain()
    after = [states for _, states in notifications.received[stop_index + 1 :]]
    assert sum("WATCHDOG=1" in states for states in after) >= 3, after
    assert notifications.states().count("READY=1") == 1


def test_a_managed_worker_is_ready_while_it_waits_for_a_manager(
    spawn_worker: Any, spawn_manager: Any, mongo_url: str, notifications: Notifications
) -> None:
    worker: WorkerProcess = spawn_worker(
        "noop",
        worker_id="w-managed",
        standalone=False,
        env=_systemd_env(notifications, **effects_env(mongo_url)),
        extra=["--lease", "2"],
    )
    ready_at = notifications.wait_state("READY=1", 60, process=worker)
    # Ready (systemd would otherwise time out its start while no manager is up),
    # and the status says what it is waiting for.
    assert notifications.wait_status("waiting for a manager", 5, worker)
    _pings_keep_coming(notifications, worker, ready_at)

    wait_leading(spawn_manager())
    wait_accepted(worker)
    notifications.wait_status("running 0 of 16 jobs", 10, worker)

    worker.signal(signal.SIGTERM)
    notifications.wait_state("STOPPING=1", 10, process=worker)
    assert worker.wait(30) == 0


def test_the_manager_tells_systemd_ready_alive_and_stopping(
    spawn_manager: Any, abstract_notifications: Notifications, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through an abstract socket name, as some container managers give."""
    # spawn_manager passes this process's environment on.
    for name, value in _systemd_env(abstract_notifications).items():
        monkeypatch.setenv(name, value)
    manager = spawn_manager()
    ready_at = abstract_notifications.wait_state("READY=1", 60, process=manager)
    assert "manager started" in manager.output()
    abstract_notifications.wait_status("leading the fleet", 10, manager)
    _pings_keep_coming(abstract_notifications, manager, ready_at)

    manager.process.send_signal(signal.SIGTERM)
    abstract_notifications.wait_state("STOPPING=1", 10, process=manager)
    assert manager.stop() == 0


def test_a_worker_restarted_sooner_than_two_pings_after_a_crash_is_refused(
    db: Any, spawn_worker: Any, spawn_manager: Any, mongo_url: str
) -> None:
    """Why qworker@.service waits RestartSec=15 (more than 2 x the 5 s ping interval):
    a crashed worker's id still looks alive to the manager until it missed two
    pings, so a quicker restart is refused (exit 3, and no restart after that)."""
    ping = 3.0
    wait_leading(spawn_manager(extra=["--ping-interval", str(ping)]))

    def start() -> WorkerProcess:
        worker: WorkerProcess = spawn_worker(
            "noop", worker_id="crashy", standalone=False, env=effects_env(mongo_url)
        )
        return worker

    def pinged() -> float:
        doc = db.workers.find_one({"_id": "crashy"}) or {}
        return float(doc["pingedAt"].timestamp()) if "pingedAt" in doc else 0.0

    first = start()
    wait_accepted(first)
    before = pinged()
    wait_for(lambda: pinged() > before, 2 * ping + 5, "a ping")
    first.signal(signal.SIGKILL)  # a crash just after a ping, and no goodbye
    first.wait(10)
    last_ping = pinged()

    too_soon = start()
    assert too_soon.wait(30) == 3
    assert "already used by a live worker" in too_soon.output()

    # The manager's clock wrote pingedAt; this host is the manager's host.
    time.sleep(max(0.0, last_ping + DEAD_AFTER_PINGS * ping + 0.5 - time.time()))
    later = start()
    wait_accepted(later)


# -- the unit files ------------------------------------------------------------


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNITS / name)
    return parser


def _seconds(value: str) -> float:
    assert value.isdigit(), f"write {value!r} in plain seconds"
    return float(value)


def test_the_worker_unit_matches_the_worker() -> None:
    service = _unit("qworker@.service")["Service"]
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert service["ExecStart"] == "/usr/bin/env qworker --id %i"
    assert service["KillMode"] == "mixed" and service["KillSignal"] == "SIGTERM"
    grace = WorkerSettings(mongo="", worker_id="", tasks=()).grace
    assert _seconds(service["TimeoutStopSec"]) == grace + systemd.STOP_MARGIN
    # Two missed pings of the default interval make a worker dead; restart after that.
    ping = ManagerSettings(mongo="").ping_interval
    assert _seconds(service["RestartSec"]) > DEAD_AFTER_PINGS * ping
    assert service["Restart"] == "always"  # a recycled worker exits 0 and must come back
    assert service["RestartPreventExitStatus"].split() == ["3"]
    assert _seconds(service["WatchdogSec"]) >= 10


def test_the_manager_unit_runs_serve() -> None:
    service = _unit("qworker-manager.service")["Service"]
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert service["ExecStart"] == "/usr/bin/env qworker-manager serve"
    assert service["Restart"] == "on-failure" and _seconds(service["WatchdogSec"]) >= 10


def _env_file(path: Path) -> dict[str, str]:
    """KEY=value lines, commented-out ones too (as examples of what may be set)."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip().lstrip("#").strip()
        if line.startswith("QWORKER_") and "=" in line:
            key, _, value = line.partition("=")
            values[key] = " ".join(shlex.split(value)) if value else ""
    return values


def test_the_example_env_files_only_name_real_settings() -> None:
    known: set[str] = set()
    for command in (worker_main, manager_main, serve):
        known |= {
            p.envvar
            for p in command.params
            if isinstance(p, click.Option) and isinstance(p.envvar, str)
        }
    examples = sorted(ENV_EXAMPLES.glob("*.env"))
    assert {p.name for p in examples} >= {"common.env", "w1.env", "manager.env"}
    for path in examples:
        unknown = set(_env_file(path)) - known
        assert not unknown, f"{path.name}: not a setting: {sorted(unknown)}"


def test_the_example_worker_env_files_are_read_as_documented(tmp_path: Path) -> None:
    """Task ids separated by spaces, folders by ':' — as systemd passes them."""
    env = {**_env_file(ENV_EXAMPLES / "common.env"), **_env_file(ENV_EXAMPLES / "w1.env")}
    env["QWORKER_PATHS"] += ":/srv/more-tasks"
    env.pop("QWORKER_STANDALONE")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("QWORKER_")}
    rows = printed_config(["--id", "w1"], {**clean, **env}, tmp_path)
    assert '["send-report", "hello"]' in rows["tasks"] and "environment" in rows["tasks"]
    assert '["/opt/qworker/tasks", "/srv/more-tasks"]' in rows["paths"]
    assert '"w1"' in rows["id"] and "flag" in rows["id"]
    assert "replicaSet=rs0" in rows["mongo"] and "environment" in rows["mongo"]


SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed here")
def test_the_units_pass_systemd_analyze_verify() -> None:
    units = sorted(str(p) for p in UNITS.glob("*.service"))
    assert len(units) == 2
    assert SYSTEMD_ANALYZE is not None
    done = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", *units], capture_output=True, text=True, timeout=120
    )
    output = done.stdout + done.stderr
    # An unknown key or a bad value is only a warning (exit 0): fail on any
    # message about our units too.
    assert done.returncode == 0, output
    assert not [line for line in output.splitlines() if "qworker" in line], output
