"""Several hosts: 2,000 jobs on a fleet spread over three, through a cut, a host's
death and a slow link (needs root and iproute2: the hosts are network namespaces).

    sudo python bench/hosts.py [--jobs 2000] [--out bench/results]

* The **server's host** is this one: SecantusDB, and one worker.
* **Host A** and **host B** are network namespaces joined to it by veth pairs
  (``tests/support/netns.py``), each with a manager and two workers. Host B's
  link is 20 ms slower each way: its processes reach the server through a
  proxy here that holds every chunk for 20 ms (this kernel has no ``netem``
  qdisc, so ``tc`` cannot add it).
* The jobs are the fault-injection tests' ``chaos_record`` (each run stamps
  its start and end in ``effects``), 0.3 s of work each, queued at once.
* Meanwhile: host A is cut off at 3 s and joined again 12 s later; at 20 s,
  every process of the host whose manager leads is SIGKILLed (the leader's
  host dies), and started again 10 s later (it reboots).

The processes' logs stay in a temporary folder, named at the end. Reported in
``hosts-<time>.json``: how long it all took, every job's state
(nothing may be lost), the jobs run more than once and why (each must have
had a run on the cut or the killed host: the README's guarantees allow a
second run only when a worker died or was cut off), runs of one job that
overlapped in time (allowed only with the cut host, whose live handler a
lease cannot stop), who led the fleet when, and each host's share of the
runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pymongo import MongoClient

HERE = Path(__file__).parent
TESTS = HERE.parent / "tests"
sys.path.insert(0, str(TESTS))

from support.netns import Host, Unavailable, make_host  # noqa: E402

from qworker import Client  # noqa: E402

TASKS = TESTS / "support" / "tasks"
DELAY = 0.020  # seconds each way on host B's link
WORK = 0.3  # seconds per job
CUT_AT, CUT_FOR = 3.0, 12.0
KILL_AT, DOWN_FOR = 20.0, 10.0
Doc = dict[str, Any]


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        return int(sock.getsockname()[1])


class DelayProxy:
    """TCP from ``listen`` to ``target``, every chunk held ``DELAY`` seconds each way,
    in order and without holding up the chunks behind it (a slow link, not a narrow one)."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.listen, self.target = listen, target
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._serve(), self.loop).result(10)

    async def _serve(self) -> None:
        await asyncio.start_server(self._join, *self.listen)

    async def _join(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, chunk = await held.get()
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                if not chunk:
                    writer.close()
                    return
                writer.write(chunk)
                await writer.drain()

        sending = asyncio.create_task(deliver())
        with contextlib.suppress(OSError):
            while chunk := await reader.read(65536):
                held.put_nowait((time.monotonic() + DELAY, chunk))
        held.put_nowait((time.monotonic() + DELAY, b""))
        with contextlib.suppress(OSError):
            await sending


@dataclass
class Machine:
    """One host of the fleet: its processes, and how they reach the server."""

    name: str
    url: str
    net: Host | None  # None: the server's own host
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def command(self, argv: list[str]) -> list[str]:
        return argv if self.net is None else self.net.inside(argv)


class Fleet:
    """Starts and kills the processes of the hosts; each logs to a file in ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def start(self, machine: Machine, workers: int, manager: bool) -> None:
        env = {**os.environ, "PYTHONPATH": str(TESTS), "QWORKER_TEST_EFFECTS_URL": machine.url}
        python, json_logs = [sys.executable, "-m"], ["--log-format", "json"]
        argv = []
        if manager:
            serve = ["serve", "--id", f"manager-{machine.name}", "--http", "off", *json_logs]
            argv.append([*python, "qworker.cli.manager", "--mongo", machine.url, *serve])
        for n in range(workers):
            worker = ["--mongo", machine.url, "--id", f"{machine.name}{n}", *json_logs]
            options = ["--lease", "5", "--paths", str(TASKS), "chaos_record"]
            argv.append([*python, "qworker.cli.worker", *worker, *options])
        for one in argv:
            name = one[one.index("--id") + 1]
            with open(self.folder / f"{name}.log", "ab") as log:
                machine.processes.append(
                    subprocess.Popen(
                        machine.command(one), stdout=log, stderr=subprocess.STDOUT, env=env
                    )
                )

    @staticmethod
    def kill(machine: Machine) -> None:
        for process in machine.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
            process.wait()
        machine.processes.clear()

    @staticmethod
    def stop(machine: Machine) -> None:
        for process in machine.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in machine.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _server(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = _port()
    command = shutil.which("secantusd-py") or str(Path(sys.executable).parent / "secantusd-py")
    argv = [command, "--host", "0.0.0.0", "--port", str(port)]
    argv += ["--storage-path", str(folder / "data"), "--log-level", "WARNING"]
    with open(folder / "server.log", "ab") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    return process, port


def _leader(db: Any) -> str | None:
    lease = db.leases.find_one({"_id": "manager"})
    if lease is None or lease.get("expiresAt") is None:
        return None
    if lease["expiresAt"].replace(tzinfo=UTC) < datetime.now(UTC):
        return None
    return str(lease.get("owner"))


def _analyse(db: Any, jobs: int, cut: str, killed: str, windows: Doc) -> Doc:
    runs: dict[str, list[Doc]] = {}
    for run in db.effects.find():
        runs.setdefault(run["job"], []).append(run)
    states = Counter(doc["state"] for doc in db.jobs.find({"name": "chaos_record"}))
    faulty = {cut, killed}

    def host(run: Doc) -> str:
        return str(run["worker"]).rstrip("0123456789")

    repeated = {job: r for job, r in runs.items() if len(r) > 1}
    unexplained = [job for job, r in repeated.items() if not {host(x) for x in r[:-1]} & faulty]
    killed_at = windows["killed"]["wall"]

    def end(run: Doc) -> float:
        """When a run stopped: its end, or its process's death (killed mid-run)."""
        return float(run.get("end", killed_at if host(run) == killed else float("inf")))

    overlapping = []
    for job, r in repeated.items():
        ordered = sorted(r, key=lambda x: x["start"])
        for a, b in itertools.pairwise(ordered):
            if b["start"] < end(a):
                overlapping.append({"job": job, "hosts": [host(a), host(b)]})
    return {
        "jobs": jobs,
        "states": dict(states),
        "lost": jobs - states.get("succeeded", 0),
        "never_started": jobs - len(runs),
        "run_more_than_once": len(repeated),
        "repeats_without_a_fault": len(unexplained),
        "overlapping_runs": len(overlapping),
        "overlapping_without_the_cut_host": sum(1 for o in overlapping if cut not in o["hosts"]),
        "runs_per_host": dict(Counter(host(x) for r in runs.values() for x in r)),
        "windows": windows,
    }


def run(jobs: int, out: Path) -> Doc:
    folder = Path(tempfile.mkdtemp(prefix="qworker-hosts-"))
    server, port = _server(folder)
    made: list[Host] = []
    try:
        a, b = make_host("qwhostA"), make_host("qwhostB")
        made += [a, b]
        proxy_port = _port()
        DelayProxy((b.host_address, proxy_port), ("127.0.0.1", port))
        # Direct: the server names itself by the address it listens on (0.0.0.0), which
        # a client following the replica set's member list could not reach (nor would
        # host B's clients go through the slow link).
        path = "bench_hosts?directConnection=true"
        local = f"mongodb://127.0.0.1:{port}/{path}"
        machines = {
            "s": Machine("s", local, None),
            "a": Machine("a", f"mongodb://{a.host_address}:{port}/{path}", a),
            "b": Machine("b", f"mongodb://{b.host_address}:{proxy_port}/{path}", b),
        }
        mongo: MongoClient[Doc] = MongoClient(local, tz_aware=True, serverSelectionTimeoutMS=60_000)
        db = mongo.get_default_database()
        Client(local).close()
        fleet = Fleet(folder)
        fleet.start(machines["s"], 1, manager=False)
        for name in ("a", "b"):
            fleet.start(machines[name], 2, manager=True)
        time.sleep(8)  # the managers elect a leader, the workers are accepted
        return _timeline(db, fleet, machines, a, jobs, out)
    finally:
        for host in made:
            host.remove()
        server.terminate()
        server.wait(30)
        print(f"the processes' logs: {folder}")


def _timeline(
    db: Any, fleet: Fleet, machines: dict[str, Machine], a: Host, jobs: int, out: Path
) -> Doc:
    with Client(machines["s"].url) as client:
        began = time.monotonic()
        for start in range(0, jobs, 500):
            client.enqueue_many("chaos_record", [{"sleeps": [WORK]}] * min(500, jobs - start))
    windows: Doc = {"leaders": []}

    def at(moment: float) -> None:
        while time.monotonic() - began < moment:
            leader = _leader(db)
            if not windows["leaders"] or windows["leaders"][-1][1] != leader:
                windows["leaders"].append([round(time.monotonic() - began, 1), leader])
            time.sleep(0.2)

    at(CUT_AT)
    a.down()
    at(CUT_AT + CUT_FOR)
    a.up()
    at(KILL_AT)
    leader = _leader(db) or "manager-b"
    killed = leader.removeprefix("manager-")
    fleet.kill(machines[killed])
    windows["killed"] = {"host": killed, "at": round(time.monotonic() - began, 1)}
    windows["killed"]["wall"] = time.time()
    at(KILL_AT + DOWN_FOR)
    fleet.start(machines[killed], 2, manager=True)
    deadline = began + 600
    while db.jobs.count_documents({"name": "chaos_record", "state": {"$ne": "succeeded"}}):
        if time.monotonic() > deadline:
            break
        at(time.monotonic() - began + 1)
    seconds = time.monotonic() - began
    for machine in machines.values():
        fleet.stop(machine)
    result = _analyse(db, jobs, "a", killed, windows)
    result.update(
        seconds=round(seconds, 1),
        jobs_per_second=round(jobs / seconds, 1),
        work_s=WORK,
        link_delay_ms=DELAY * 1000,
        cut={"host": "a", "at": CUT_AT, "for": CUT_FOR},
        when=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"hosts-{result['when'].replace(':', '')}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result, indent=2, default=str))
    print(f"written to {path}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    try:
        run(args.jobs, args.out)
    except Unavailable as exc:
        sys.exit(f"cannot make the hosts: {exc}")


if __name__ == "__main__":
    main()
