"""``--mongo embedded:///dir``: a local SecantusDB started on demand and shared.

These tests start their own embedded servers (not the suite's test server),
each under a temporary folder, and stop them at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import platformdirs
import pytest
from pymongo import MongoClient
from support.processes import REPO, TASKS

from qworker import Client
from qworker.embedded import (
    INSTALL_HINT,
    data_dir_from_url,
    ensure_server,
    is_embedded,
    stop_server,
)
from qworker.errors import EmbeddedUnavailable

pytestmark = pytest.mark.skipif(
    not (Path(sys.executable).parent / "secantusd-py").exists(),
    reason="the embedded extra (secantusd-py) is not installed beside this Python",
)


def alive(pid: int) -> bool:
    """Running, and not a zombie (a server this process started becomes one when it ends)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def servers_under(folder: Path) -> list[int]:
    """Pids of SecantusDB processes whose storage is in ``folder``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            any(b"secantusd" in part for part in cmdline[:2])
            and (str(folder / "data").encode() in cmdline)
            and alive(int(entry.name))
        ):
            pids.append(int(entry.name))
    return pids


def state(folder: Path) -> dict[str, Any]:
    return dict(json.loads((folder / "server.json").read_text()))


def stop(folder: Path) -> None:
    """Stop the server of ``folder`` (if any) and wait until it is gone."""
    pids = servers_under(folder)
    stop_server(folder)
    deadline = time.monotonic() + 20
    while any(alive(pid) for pid in pids):
        assert time.monotonic() < deadline, f"embedded server {pids} did not stop"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One embedded server folder for the tests that only use the server."""
    folder = tmp_path_factory.mktemp("embedded")
    yield folder
    stop(folder)


@pytest.fixture
def own(tmp_path: Path) -> Iterator[Path]:
    """A folder for a test that starts and stops servers itself."""
    folder = tmp_path / "embedded"
    yield folder
    stop(folder)


def resolve_in_subprocess(url: str) -> subprocess.Popen[str]:
    program = f"from qworker.mongo import resolve_url; print(resolve_url({url!r}))"
    return subprocess.Popen(
        [sys.executable, "-c", program],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_urls() -> None:
    assert is_embedded("embedded") and is_embedded("embedded:///x")
    assert not is_embedded("mongodb://embedded/x")
    assert data_dir_from_url("embedded:///srv/qw") == Path("/srv/qw")
    assert data_dir_from_url("embedded") == Path(platformdirs.user_data_dir("qworker")) / "embedded"


def test_two_processes_starting_at_once_share_one_server(shared: Path) -> None:
    url = f"embedded://{shared}"
    first, second = resolve_in_subprocess(url), resolve_in_subprocess(url)
    outputs = [p.communicate(timeout=120) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outputs
    urls = {out.strip() for out, _ in outputs}
    assert len(urls) == 1, outputs
    port = state(shared)["port"]
    assert urls == {f"mongodb://127.0.0.1:{port}/qworker"}
    assert (shared / "data").is_dir() and (shared / "server.log").exists()
    pids = servers_under(shared)
    assert pids == [state(shared)["pid"]], pids

    # A third process, later, reuses it too.
    third = resolve_in_subprocess(url)
    out, err = third.communicate(timeout=60)
    assert out.strip() in urls, err
    assert servers_under(shared) == pids


def test_jobs_run_end_to_end_through_the_embedded_server(shared: Path) -> None:
    url = f"embedded://{shared}"
    with Client(url) as client:
        port = state(shared)["port"]
        assert client.url == f"mongodb://127.0.0.1:{port}/qworker"
        job_id = client.now("noop", {"via": "embedded"})
        worker = subprocess.run(
            [
                sys.executable,
                "-m",
                "qworker.cli.worker",
                "--mongo",
                url,
                "--standalone",
                "--burst",
                "--paths",
                str(TASKS),
                "--log-format",
                "json",
                "--id",
                "emb-1",
                "noop",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
        )
        assert worker.returncode == 0, worker.stderr
        done = client.wait(job_id, timeout=30)
        assert done["state"] == "succeeded"
        assert done["attempts"] == 1 and done["lastFinishedAt"] >= done["lastRunAt"]
        assert done["data"] == {"via": "embedded"}
    # The worker used the same server: still one process, same port.
    assert servers_under(shared) == [state(shared)["pid"]]
    assert state(shared)["port"] == port
    # And the job is visible to a plain MongoDB client on that port.
    plain: MongoClient[dict[str, Any]] = MongoClient(f"mongodb://127.0.0.1:{port}")
    try:
        assert plain.qworker.jobs.count_documents({"state": "succeeded"}) >= 1
    finally:
        plain.close()


def test_the_manager_works_through_the_embedded_server(shared: Path) -> None:
    url = f"embedded://{shared}"
    manager = [sys.executable, "-m", "qworker.cli.manager", "--mongo", url]
    queued = subprocess.run(
        [*manager, "enqueue", "noop", "--data", '{"from": "cli"}'],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert queued.returncode == 0, queued.stderr
    job_id = queued.stdout.strip()
    with Client(url) as client:
        assert client.get(job_id)["data"] == {"from": "cli"}


def test_data_survives_a_restart_and_a_stale_state_file(own: Path) -> None:
    url = f"embedded://{own}"
    own.mkdir()
    (own / "server.json").write_text("not json")  # garbage is not trusted
    with Client(url) as client:
        job_id = client.schedule("in 1 hour", "noop", {"keep": True})
    first = state(own)
    stop(own)
    assert state(own) == {"port": first["port"]}  # stopped; the folder keeps its address
    assert not alive(first["pid"])

    # Nor is a state file left by a server that is gone: a new one starts on the same data.
    (own / "server.json").write_text(json.dumps({"pid": first["pid"], "port": first["port"]}))
    with Client(url) as client:
        assert client.get(job_id)["data"] == {"keep": True}
    second = state(own)
    assert second["pid"] != first["pid"] and alive(second["pid"])
    assert servers_under(own) == [second["pid"]]


def test_stop_server(own: Path) -> None:
    assert stop_server(own) is False  # nothing started yet
    ensure_server(own)
    pid = state(own)["pid"]
    stopped = subprocess.run(
        [
            sys.executable,
            "-m",
            "qworker.cli.manager",
            "embedded",
            "stop",
            "--url",
            f"embedded://{own}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert stopped.returncode == 0, stopped.stderr
    assert str(own) in stopped.stdout
    deadline = time.monotonic() + 20
    while alive(pid):
        assert time.monotonic() < deadline, "the embedded server did not stop"
        time.sleep(0.05)
    assert stop_server(own) is False


# -- without SecantusDB installed ----------------------------------------------------


def test_missing_server_gives_the_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No secantusd-py beside the interpreter nor on PATH."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setattr(sys, "executable", str(empty / "python"))
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(EmbeddedUnavailable) as raised:
        ensure_server(tmp_path / "db")
    assert INSTALL_HINT in str(raised.value)
    assert "pip install 'qworker[embedded]'" in str(raised.value)
    assert not (tmp_path / "db" / "server.json").exists()


def test_missing_server_on_the_command_line(tmp_path: Path) -> None:
    """The real command, in a process that cannot find secantusd-py: one line, exit 2."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    folder = tmp_path / "db"
    program = (
        "import sys\n"
        f"sys.executable = {str(empty / 'python')!r}\n"
        "from qworker.cli.worker import main\n"
        "main(prog_name='qworker')\n"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            program,
            "--mongo",
            f"embedded://{folder}",
            "--standalone",
            "--paths",
            str(TASKS),
            "noop",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PATH": str(empty)},
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qworker: error: ")
    assert "SecantusDB" in lines[0] and INSTALL_HINT in lines[0]
    assert not servers_under(folder)


def test_a_stopped_server_comes_back_on_its_address_and_running_workers_reconnect(
    own: Path, tmp_path: Path
) -> None:
    """``embedded stop`` returns once the server has exited, and the next command
    starts it again at once on the same port, where the running worker finds it."""
    url = f"embedded://{own}"
    with Client(url) as client:
        before = client.url
    out, err = tmp_path / "w.out", tmp_path / "w.err"
    with open(out, "wb") as o, open(err, "wb") as e:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "qworker.cli.worker",
                "--standalone",
                "--mongo",
                url,
                "--paths",
                str(TASKS),
                "--poll-interval",
                "0.2",
                "--log-format",
                "json",
                "noop",
            ],
            stdout=o,
            stderr=e,
        )
    try:
        deadline = time.monotonic() + 60
        while "worker started" not in err.read_text():
            assert worker.poll() is None and time.monotonic() < deadline, err.read_text()
            time.sleep(0.05)
        stopped = manager_cli("embedded", "stop", "--url", url)
        assert stopped.returncode == 0 and str(own) in stopped.stdout, stopped.stderr
        assert not servers_under(own)  # gone by the time the command returned
        queued = manager_cli("--mongo", url, "enqueue", "noop")  # starts it again
        assert queued.returncode == 0, queued.stderr
        with Client(url) as client:
            assert client.url == before
            done = client.wait(queued.stdout.strip(), timeout=60)
        assert done["state"] == "succeeded" and done["lastWorker"].startswith("worker-")
    finally:
        worker.terminate()
        worker.wait(30)


def manager_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qworker.cli.manager", *args],
        capture_output=True,
        text=True,
        timeout=90,
    )
