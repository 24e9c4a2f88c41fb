"""Where a job's time goes: the MongoDB commands qworker workers send per job, by
operation, with their client-side time, and (``--profile``) py-spy profiles of the
server and of a worker under the same load.

    python bench/breakdown.py                       # 1,000 no-op jobs, 1 and 4 workers
    python bench/breakdown.py --jobs 10000 --workers 4 --profile

Each configuration runs on a FRESH SecantusDB (this server slows with every run it
serves; pass --mongo URL to use another server) with standalone workers started by
bench/counted.py, which counts every command the worker's clients send. Results go
to bench/results/breakdown-<time>.json, and a table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import HERE, TASKS, Fleet, cpu_seconds, fresh, loadavg, machine, server
from compare import ceiling

from qworker import Client

RESULTS = HERE / "results"
BATCH = 500
TOP_FRAMES = 15


def _wait_done(db: Any, jobs: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while db.jobs.count_documents({"state": "succeeded"}) < jobs:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{db.jobs.count_documents({'state': 'succeeded'})} of {jobs} done")
        time.sleep(0.25)


def _server_pid(url: str) -> int | None:
    port = url.rsplit(":", 1)[-1].split("/")[0]
    found = subprocess.run(
        ["pgrep", "-f", f"secantusd.*--port {port}"], capture_output=True, text=True
    )
    pids = [int(p) for p in found.stdout.split()]
    return pids[0] if pids else None


@contextmanager
def profiled(pids: dict[str, int | None], folder: Path) -> Iterator[dict[str, Path]]:
    """py-spy records each process while the body runs (raw collapsed stacks)."""
    outputs = {name: folder / f"{name}.txt" for name, pid in pids.items() if pid}
    spies = [
        subprocess.Popen(
            [
                "py-spy",
                "record",
                "--pid",
                str(pids[name]),
                "--format",
                "raw",
                "--rate",
                "200",
                "--nonblocking",
                "--output",
                str(path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, path in outputs.items()
    ]
    try:
        yield outputs
    finally:
        for spy in spies:
            spy.send_signal(signal.SIGINT)
        for spy in spies:
            spy.wait(60)


def top_frames(path: Path) -> dict[str, Any]:
    """The leaf frames that took the most samples, and the samples by module."""
    leaves: Counter[str] = Counter()
    modules: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines() if path.exists() else []:
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n, leaf = int(count), stack.split(";")[-1]
        total += n
        leaves[leaf] += n
        module = leaf.split("(")[-1].split(":")[0] if "(" in leaf else leaf
        modules[module.split("/site-packages/")[-1]] += n
    share = lambda n: round(100 * n / total, 1) if total else 0.0  # noqa: E731
    return {
        "samples": total,
        "leaf_frames": [[frame, share(n)] for frame, n in leaves.most_common(TOP_FRAMES)],
        "files": [[name, share(n)] for name, n in modules.most_common(TOP_FRAMES)],
    }


def _cpu(server_pid: int | None, worker_pids: list[int]) -> dict[str, float]:
    """CPU seconds used so far by the server (when it is ours) and by all the workers."""
    server = cpu_seconds(server_pid) if server_pid is not None else float("nan")
    return {"server": server, "workers": sum(cpu_seconds(pid) for pid in worker_pids)}


def run(url: str, jobs: int, workers: int, profile: bool, extra: list[str]) -> dict[str, Any]:
    """N no-op jobs, enqueued while K counted workers wait; commands per job, and the
    server's own batched ceiling measured just before, on the same server."""
    limit = ceiling(url, 1000)["batched_ceiling_jobs_per_second"]
    db_url, db = fresh(url, f"bench_bd_{workers}")
    folder = Path(tempfile.mkdtemp(prefix="qworker-breakdown-"))
    counts = str(folder / "commands-{pid}.json")
    command = [
        sys.executable,
        str(HERE / "counted.py"),
        "--standalone",
        "--mongo",
        db_url,
        "--paths",
        str(TASKS),
        "--log-format",
        "json",
        *extra,
        "noop",
    ]
    env = {**os.environ, "QWORKER_BENCH_COMMANDS": counts}
    fleet = Fleet(
        [[*command, "--id", f"bd-{n}"] for n in range(workers)], b"worker started", env=env
    )
    server_pid = _server_pid(db_url)
    pids = {
        "server": server_pid if profile else None,
        "worker": fleet.pids[0] if profile else None,
    }
    with Client(db_url) as client, profiled(pids, folder) as profiles:
        cpu_before = _cpu(server_pid, fleet.pids)
        started = time.monotonic()
        for start in range(0, jobs, BATCH):
            client.enqueue_many("noop", [None] * min(BATCH, jobs - start))
        _wait_done(db, jobs, 900)
        seconds = time.monotonic() - started
        cpu_after = _cpu(server_pid, fleet.pids)
    fleet.stop()
    used = {part: cpu_after[part] - cpu_before[part] for part in cpu_after}
    cpu_ms = {part: round(1000 * seconds_used / jobs, 3) for part, seconds_used in used.items()}
    totals: dict[str, dict[str, float]] = {}
    for path in folder.glob("commands-*.json"):
        for kind, figure in json.loads(path.read_text()).items():
            entry = totals.setdefault(kind, {"calls": 0, "ms": 0.0})
            entry["calls"] += figure["calls"]
            entry["ms"] += figure["ms"]
    work = {kind: f for kind, f in totals.items() if not kind.startswith("await ")}
    per_job = {
        kind: {
            "calls_per_job": round(f["calls"] / jobs, 4),
            "ms_per_job": round(f["ms"] / jobs, 3),
            "ms_per_call": round(f["ms"] / f["calls"], 3) if f["calls"] else 0.0,
        }
        for kind, f in sorted(totals.items(), key=lambda kv: -kv[1]["ms"])
    }
    return {
        "jobs": jobs,
        "workers": workers,
        "worker_flags": extra,
        "queue_depth_at_start": jobs,
        "seconds": round(seconds, 2),
        "jobs_per_second": round(jobs / seconds, 1),
        "batched_ceiling_jobs_per_second": limit,
        "share_of_ceiling": round(jobs / seconds / limit, 3),
        # Awaits (getMore on a change stream or a tail) wait for news: not counted as cost.
        "commands_per_job": round(sum(f["calls"] for f in work.values()) / jobs, 3),
        "command_ms_per_job": round(sum(f["ms"] for f in work.values()) / jobs, 3),
        "by_operation": per_job,
        # CPU time per job over the same span: two cores are shared by all of these.
        "cpu_ms_per_job": cpu_ms,
        "profiles": {name: top_frames(path) for name, path in profiles.items()},
    }


def show(result: dict[str, Any]) -> None:
    flags = " ".join(result["worker_flags"])
    print(
        f"\nN={result['jobs']} K={result['workers']} {flags}: {result['jobs_per_second']} jobs/s"
        f" ({100 * result['share_of_ceiling']:.0f}% of the server's batched ceiling,"
        f" {result['batched_ceiling_jobs_per_second']}); {result['commands_per_job']} commands"
        f" and {result['command_ms_per_job']} ms per job"
    )
    cpu = result["cpu_ms_per_job"]
    print(f"  CPU per job: server {cpu['server']} ms, workers {cpu['workers']} ms")
    print(f"  {'operation':<28} {'calls/job':>10} {'ms/job':>8} {'ms/call':>8}")
    for kind, f in result["by_operation"].items():
        print(f"  {kind:<28} {f['calls_per_job']:>10} {f['ms_per_job']:>8} {f['ms_per_call']:>8}")
    for name, prof in result["profiles"].items():
        print(f"  py-spy {name}: {prof['samples']} samples; top files:")
        for file, share in prof["files"][:8]:
            print(f"    {share:>5}%  {file}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--mongo", help="measure on this server (default: a fresh SecantusDB per run)"
    )
    parser.add_argument("--jobs", type=int, nargs="+", default=[1000], help="queue depths N")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4], help="worker counts K")
    parser.add_argument("--profile", action="store_true", help="py-spy the server and worker 0")
    parser.add_argument(
        "--worker-flags",
        action="append",
        default=[],
        help="qworker flags of one more variant of each run ('--no-watch-jobs'); repeatable",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON result")
    args = parser.parse_args()
    results = []
    for jobs in args.jobs:
        for workers in args.workers:
            for flags in ["", *args.worker_flags]:
                with server(args.mongo) as url:
                    result = run(url, jobs, workers, args.profile, flags.split())
                show(result)
                results.append(result)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%S%z")
    path = args.out / f"breakdown-{stamp}.json"
    path.write_text(
        json.dumps({"machine": machine(), "loadavg": loadavg(), "runs": results}, indent=2)
    )
    print(f"\nwritten: {path}")


if __name__ == "__main__":
    main()
