"""Every example in README.md and docs/, run as a reader would run it.

A fenced code block is preceded by a directive, an HTML comment that says what
the block is:

* ``<!-- example: run -->``: Python runs in one namespace per document, shell in
  bash; in order, in a folder of the document's own, as in one terminal
  (what a shell block exports, the next one has);
* ``<!-- example: file PATH -->``: a file that later examples use;
* ``<!-- example: sinks PATH -->``: the same, and it must be a valid sinks file;
* ``<!-- example: background -->``: shell commands that run until stopped (a
  worker, a manager): started, and still running when the document ends;
* ``<!-- example: not run: REASON -->``: it cannot run here, and says why.

A block without a directive fails. In the examples ``mongodb://db1/app`` is the
test's database and ``127.0.0.1:8765`` a free port. The document's folder has
the demo's tasks, a task that an example only names gets a stub that returns
its data, and task code written without metadata gets an empty metadata file;
a standalone worker runs all of them.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support.processes import REPO, WorkerProcess
from support.waits import wait_for

from qworker.manager.sinks import read_sinks

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
DEMO = REPO / "qworker" / "demo"
BIN = Path(sys.executable).parent
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
DIRECTIVE = re.compile(r"<!-- example: (.+?) -->\s*\Z")
# Tasks the examples name without defining them.
STUBS = (
    "fetch",
    "parse",
    "store",
    "sync-user",
    "cleanup",
    "report",
    "poll",
    "standup",
    "heartbeat",
)
STUB_CODE = "def setup(worker, task):\n    worker.task(task.id, lambda job: job.data)\n"
# What a document's examples refer to that differs on this machine.
LOCAL: dict[str, dict[str, str]] = {
    "deploy.md": {
        "sudo -u qworker ": "",
        "/etc/qworker/": f"{REPO}/deploy/env/",
        "/opt/qworker/bin/": f"{BIN}/",
    },
}
USABLE = re.compile(r"run(, .+)?|file \S+|sinks \S+|background|not run: .{10,}")


@dataclass(frozen=True)
class Example:
    doc: Path
    line: int
    language: str
    code: str
    directive: str | None

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(REPO)}:{self.line}"


def examples(doc: Path) -> list[Example]:
    text = doc.read_text()
    found = []
    for match in FENCE.finditer(text):
        before = DIRECTIVE.search(text[: match.start()])
        found.append(
            Example(
                doc,
                text.count("\n", 0, match.start()) + 1,
                match[1],
                match[2],
                before[1].strip() if before else None,
            )
        )
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.name)
def test_every_example_says_how_it_is_tested(doc: Path) -> None:
    for example in examples(doc):
        directive = example.directive or ""
        assert USABLE.fullmatch(directive), f"{example.where}: no usable directive: {directive!r}"
        if directive == "background" or directive.startswith("run"):
            assert example.language in ("sh", "python"), example.where


@dataclass
class Session:
    """One document's examples: a folder, a namespace, a shell's exports, daemons."""

    folder: Path
    url: str
    port: int
    replace: dict[str, str]
    namespace: dict[str, Any] = field(default_factory=dict)
    daemons: list[tuple[str, WorkerProcess]] = field(default_factory=list)
    worker_started: bool = False

    def text(self, example: Example) -> str:
        code = example.code.replace("mongodb://db1/app", self.url)
        code = code.replace("127.0.0.1:8765", f"127.0.0.1:{self.port}")
        for old, new in self.replace.items():
            code = code.replace(old, new)
        return code

    def env(self) -> dict[str, str]:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("QWORKER_")}
        return {
            **clean,
            "PATH": f"{BIN}{os.pathsep}{clean.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
        }

    def write(self, example: Example, path: str) -> Path:
        target = self.folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(self.text(example))
        return target

    def python(self, example: Example) -> None:
        code = compile(self.text(example), example.where, "exec")
        here = Path.cwd()
        os.chdir(self.folder)
        try:
            exec(code, self.namespace)
        except Exception as exc:
            raise AssertionError(f"{example.where}: {type(exc).__name__}: {exc}") from exc
        finally:
            os.chdir(here)

    def shell(self, example: Example) -> None:
        state = self.folder / ".exports"
        script = (
            f"set -euo pipefail\n[ ! -f {state} ] || . {state}\n{self.text(example)}\n"
            f"export -p > {state}\n"
        )
        done = subprocess.run(
            ["bash", "-c", script],
            cwd=self.folder,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        said = f"{example.where}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
        assert done.returncode == 0, said
        assert "Traceback" not in done.stderr, f"{example.where}:\n{done.stderr}"

    def background(self, example: Example) -> None:
        for n, line in enumerate(self.text(example).splitlines()):
            command = line.split("#")[0].strip()
            if command:
                self.daemon(f"{example.line}-{n}", command)

    def daemon(self, name: str, command: str) -> WorkerProcess:
        out, err = self.folder / f"{name}.out", self.folder / f"{name}.err"
        with open(out, "wb") as o, open(err, "wb") as e:
            process = subprocess.Popen(
                ["bash", "-c", f"exec {command}"],
                cwd=self.folder,
                env=self.env(),
                stdout=o,
                stderr=e,
            )
        daemon = WorkerProcess(process, out, err, [command])
        self.daemons.append((command, daemon))
        return daemon

    def start_worker(self) -> None:
        """Stubs, empty metadata, and one standalone worker for every task in tasks/."""
        tasks = self.folder / "tasks"
        tasks.mkdir(exist_ok=True)
        for demo in DEMO.iterdir():
            if demo.suffix in (".py", ".json", ".yaml") and not (tasks / demo.name).exists():
                shutil.copy(demo, tasks / demo.name)
        for stub in STUBS:
            if not (tasks / f"{stub}.py").exists():
                (tasks / f"{stub}.py").write_text(STUB_CODE)
        ids = []
        for code in sorted(tasks.glob("*.py")):
            if not any(code.with_suffix(s).exists() for s in (".json", ".yaml", ".yml")):
                code.with_suffix(".json").write_text("{}")
            ids.append(code.stem)
        command = (
            f"qworker --standalone --mongo {self.url} --paths {tasks} --poll-interval 0.2 "
            f"--id docs-worker {' '.join(ids)}"
        )
        worker = self.daemon("all-tasks", command)
        wait_for(
            lambda: "worker started" in worker.output() or worker.process.poll() is not None,
            60,
            "the documents' worker to start",
        )
        self.worker_started = True

    def run(self, example: Example) -> None:
        directive = example.directive or ""
        if directive.startswith("not run"):
            return
        kind, _, path = directive.partition(" ")
        if kind == "file":
            self.write(example, path)
            return
        if kind == "sinks":
            read_sinks(self.write(example, path))
            return
        if not self.worker_started:
            self.start_worker()
        if directive == "background":
            self.background(example)
        elif example.language == "python":
            self.python(example)
        else:
            self.shell(example)

    def stop(self) -> None:
        client = self.namespace.get("client")
        if hasattr(client, "close"):
            client.close()
        for _, daemon in self.daemons:
            if daemon.process.poll() is None:
                daemon.process.send_signal(signal.SIGTERM)
        for _, daemon in self.daemons:
            daemon.wait(60)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def session(request: pytest.FixtureRequest, mongo_url: str, tmp_path: Path) -> Iterator[Session]:
    doc: Path = request.param
    running = Session(tmp_path, mongo_url, _free_port(), LOCAL.get(doc.name, {}))
    yield running
    running.stop()


RUNNABLE = [
    doc
    for doc in DOCS
    if any((e.directive or "").startswith(("run", "background")) for e in examples(doc))
]


@pytest.mark.parametrize("session", RUNNABLE, ids=lambda d: d.name, indirect=True)
def test_the_examples_run(session: Session, request: pytest.FixtureRequest) -> None:
    doc: Path = request.node.callspec.params["session"]
    for example in examples(doc):
        session.run(example)
    for command, daemon in session.daemons:
        assert daemon.process.poll() is None, f"{command!r} exited early:\n{daemon.output()}"
        assert "Traceback" not in daemon.output(), f"{command!r}:\n{daemon.output()}"
