"""Fault injection: a worker cut off from the network while it runs a job.

One worker runs inside a network namespace joined to the host by a veth pair;
the test's own SecantusDB server listens on the host end. The worker starts a
long job, then its end of the link goes down: it cannot renew the lease, which
expires, and a worker outside recovers the job and finishes it. The link comes
back; the cut-off worker, alive all along, finishes its stale run and tries to
record it. That write is conditional on the claim's lockToken, which is no
longer its own: the job must keep the outside worker's outcome, unchanged.

What a lease cannot do is stop the cut-off worker's handler: both runs go on
at once for a while (the test checks that this really happened, as the
premise of the scenario). "Never twice at once" holds only for a worker that
is dead or frozen; a live, partitioned one keeps running (README "Guarantees").

Needs root (CAP_NET_ADMIN) and iproute2 (``ip``); skipped, saying why, otherwise.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId
from pymongo import MongoClient
from pymongo.errors import PyMongoError
from support.effects import effects_env
from support.logs import alive, log_events, ready, wait_logged
from support.netns import Host, Unavailable, make_host
from support.processes import REPO, TASKS, WorkerProcess, process_env, qworker_command
from support.waits import wait_for

from qworker import Client

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def link() -> Iterator[Host]:
    try:
        host = make_host()
    except Unavailable as exc:
        pytest.skip(str(exc))
    try:
        yield host
    finally:
        host.remove()


@dataclass
class OwnServer:
    url: str
    process: subprocess.Popen[bytes]


def _answers(url: str) -> bool:
    mongo: MongoClient[dict[str, Any]] = MongoClient(url, serverSelectionTimeoutMS=500)
    try:
        mongo.admin.command("ping")
        return True
    except PyMongoError:
        return False
    finally:
        mongo.close()


@pytest.fixture
def server(link: Host, tmp_path: Path) -> Iterator[OwnServer]:
    """A SecantusDB server of this test's own, listening on the host end of the link only."""
    with socket.socket() as sock:
        sock.bind((link.host_address, 0))
        port = sock.getsockname()[1]
    command = shutil.which("secantusd-py") or str(Path(sys.executable).parent / "secantusd-py")
    with open(tmp_path / "server.log", "ab") as log:
        process = subprocess.Popen(
            [
                command,
                "--host",
                link.host_address,
                "--port",
                str(port),
                "--storage-path",
                str(tmp_path / "data"),
                "--log-level",
                "WARNING",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    url = f"mongodb://{link.host_address}:{port}"
    try:
        wait_for(lambda: _answers(url), 60, "the test's own server to answer")
        yield OwnServer(f"{url}/qwt_partition", process)
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def start_worker(
    server: OwnServer, link: Host, tmp_path: Path
) -> Iterator[Callable[..., WorkerProcess]]:
    """``qworker --standalone`` on the test's server, on the host or inside the namespace."""
    started: list[WorkerProcess] = []

    def start(worker_id: str, *tasks: str, inside: bool = False) -> WorkerProcess:
        args = [
            "--mongo",
            server.url,
            "--id",
            worker_id,
            "--standalone",
            "--lease",
            "2",
            "--log-format",
            "json",
            "--poll-interval",
            "0.2",
            "--paths",
            str(TASKS),
            *tasks,
        ]
        command = qworker_command(*args)
        if inside:
            command = link.inside(command)
        out, err = tmp_path / f"{worker_id}.out", tmp_path / f"{worker_id}.err"
        env = process_env(**effects_env(server.url))
        with open(out, "wb") as o, open(err, "wb") as e:
            process = subprocess.Popen(command, stdout=o, stderr=e, cwd=REPO, env=env)
        worker = WorkerProcess(process, out, err, args)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.process.poll() is None:
            worker.process.send_signal(signal.SIGKILL)
            worker.process.wait()


def test_a_cut_off_worker_cannot_overwrite_the_outcome_of_the_run_that_replaced_it(
    server: OwnServer, link: Host, start_worker: Callable[..., WorkerProcess]
) -> None:
    mongo: MongoClient[dict[str, Any]] = MongoClient(server.url, tz_aware=True)
    db = mongo.get_default_database()
    client = Client(server.url)
    try:
        # 'noop' is for the cut-off worker alone: a probe that it is back and has written.
        cut = start_worker("cut", "chaos_record", "noop", inside=True)
        ready(cut)
        # 20 s in 'cut' (still working when the other run ends), then 0.5 s outside.
        job_id = client.now("chaos_record", {"sleeps": [20, 0.5]})
        oid = ObjectId(job_id)
        first = wait_for(lambda: db.effects.find_one({"job": job_id}), 30, "the job to start")
        assert first["worker"] == "cut" and first["pid"] == cut.pid

        link.down()
        cut_at = time.time()
        outside = start_worker("outside", "chaos_record")
        done = wait_for(
            lambda: db.jobs.find_one({"_id": oid, "state": "succeeded"}),
            60,
            "the job to be recovered and finished outside",
        )
        second = db.effects.find_one({"job": job_id, "worker": "outside"})
        assert second is not None and "end" in second
        assert done["result"] == {
            "worker": "outside",
            "pid": outside.pid,
            "run": str(second["_id"]),
        }
        assert done["attempts"] == 2 and done["lostCount"] == 1, done
        # The premise: the cut-off worker is alive and its run is still going on.
        alive(cut)
        assert "end" not in db.effects.find_one({"_id": first["_id"]})
        assert second["start"] > cut_at

        link.up()
        # Its stale run ends (its 'end' reaches the server once the link is back) ...
        stale = wait_for(
            lambda: db.effects.find_one({"_id": first["_id"], "end": {"$exists": True}}),
            120,
            "the cut-off worker's run to end once the link is back",
        )
        wait_logged(cut, "job succeeded", 30)
        # ... and it records it: a job it alone can run, finishing after that, shows its
        # outbox has been written (it writes in order, retrying until it succeeds).
        probe = client.now("noop")
        finished = wait_for(
            lambda: db.jobs.find_one({"_id": ObjectId(probe), "state": "succeeded"}),
            120,
            "the cut-off worker to run a new job",
        )
        assert finished["lastWorker"] == "cut"

        # The stale success changed nothing: the job is exactly as the outside worker left it.
        assert db.jobs.find_one({"_id": oid}) == done
        runs = sorted(db.effects.find({"job": job_id}), key=lambda r: r["attempt"])
        assert [(r["worker"], r["attempt"]) for r in runs] == [("cut", 1), ("outside", 2)]
        # Both runs did their work at once: the lease cannot stop a live worker's handler.
        assert stale["start"] < second["start"] and second["end"] < stale["end"]
        succeeded = [e for e in log_events(cut.output()) if e["event"] == "job succeeded"]
        assert job_id in [e["job_id"] for e in succeeded]  # it did try to record its run
        alive(cut)
        alive(outside)
    finally:
        client.close()
        mongo.close()
