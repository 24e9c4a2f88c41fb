"""Real ``qworker`` and ``qworker-manager`` processes: their commands, environment, output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support.effects import effects_env
from support.waits import wait_for

TESTS = Path(__file__).parent.parent
TASKS = TESTS / "support" / "tasks"
REPO = TESTS.parent


@dataclass
class WorkerProcess:
    """A real ``qworker`` process, its output captured to files."""

    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    args: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def worker_id(self) -> str:
        return self.args[self.args.index("--id") + 1]

    def output(self) -> str:
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")

    def signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker did not exit in {timeout}s:\n{self.output()}") from None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def console_command(name: str, module: str) -> list[str]:
    """The installed console script, else the same entry point under that name."""
    script = Path(sys.executable).parent / name
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", f"from {module} import main; main(prog_name={name!r})"]


def qworker_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "qworker.cli.worker", *args]


def printed_config(args: list[str], env: dict[str, str], cwd: Path) -> dict[str, str]:
    """``qworker ARGS --print-config`` under exactly ``env``: each setting's line, by name."""
    done = subprocess.run(
        [sys.executable, "-m", "qworker.cli.worker", *args, "--print-config"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )
    assert done.returncode == 0, done.stderr
    return {line.split()[0]: line for line in done.stdout.splitlines()}


def process_env(**more: str) -> dict[str, str]:
    """The environment of a spawned qworker process: unbuffered output, and
    ``tests/`` importable (test tasks import the side-effect log, tests/support/effects.py)."""
    pythonpath = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": pythonpath, **more}


def worker_ready(worker: WorkerProcess) -> bool:
    """True once the worker logged that it started (and so is claiming)."""
    if worker.process.poll() is not None:
        raise AssertionError(f"worker exited with {worker.process.returncode}:\n{worker.output()}")
    return "worker started" in worker.output()


@dataclass
class ManagerProcess:
    """A real ``qworker-manager serve`` process, its output captured to files."""

    process: subprocess.Popen[bytes]
    manager_id: str
    stdout: Path
    stderr: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, and the exit code (killed if it does not exit in ``timeout``)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(
                    f"manager did not stop in {timeout}s:\n{self.output()}"
                ) from None
        return self.process.returncode

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def api_url(self, timeout: float = 30) -> str:
        """The base URL of its HTTP API, from its log (tests bind port 0)."""

        def logged() -> str | None:
            for line in self.output().splitlines():
                if '"serving the API and dashboard"' in line:
                    return str(json.loads(line)["url"])
            if self.process.poll() is not None:
                raise AssertionError(f"manager exited:\n{self.output()}")
            return None

        return wait_for(logged, timeout, "the manager's HTTP API")  # type: ignore[no-any-return]


# Managers in tests ping fast and hold a short lease, so detection is quick.
PING = 0.5
LEASE = 2.0


def manager_command(mongo_url: str, manager_id: str, *extra: str) -> list[str]:
    # No API token unless the test gives one: it talks to loopback as a script would.
    token = [] if any(arg.startswith("--api-token") for arg in extra) else ["--api-token", "none"]
    return [
        sys.executable,
        "-m",
        "qworker.cli.manager",
        "--mongo",
        mongo_url,
        "serve",
        "--ping-interval",
        str(PING),
        "--lease",
        str(LEASE),
        "--log-format",
        "json",
        "--id",
        manager_id,
        "--http",
        "127.0.0.1:0",
        *token,
        *extra,
    ]


def leading(manager: ManagerProcess, timeout: float = 60) -> ManagerProcess:
    """Wait until ``manager`` holds the lease."""
    wait_for(lambda: "leading the fleet" in manager.output(), timeout, "the manager to lead")
    return manager


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers signal 0: look at its state where /proc exists.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def managed(
    spawn_worker: Any,
    mongo_url: str,
    *tasks: str,
    worker_id: str,
    extra: list[str] | None = None,
    paths: list[Any] | None = None,
) -> WorkerProcess:
    """A worker that needs a manager (no --standalone), recording side effects."""
    worker: WorkerProcess = spawn_worker(
        *tasks,
        worker_id=worker_id,
        standalone=False,
        env=effects_env(mongo_url),
        extra=["--lease", "2", "--grace", "5", *(extra or [])],
        paths=paths,
    )
    return worker
