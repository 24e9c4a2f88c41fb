"""``qworker``: the worker daemon's command line."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from qworker.cli.common import (
    Seconds,
    config_option,
    envvar,
    mongo_of,
    reports_errors,
    secret_file_option,
    sources,
    warn_of_secrets_on_the_command_line,
)
from qworker.config import WorkerSettings, describe
from qworker.errors import WorkerFailed
from qworker.logs import configure
from qworker.model import MAX_CONCURRENCY
from qworker.mongo import CHANNEL_BYTES, redact, require_url
from qworker.tasks import select
from qworker.worker.daemon import Worker

F = TypeVar("F", bound=Callable[..., Any])


def _option(*decls: str, name: str, **kwargs: Any) -> Callable[[F], F]:
    return click.option(*decls, name, envvar=envvar(name), show_envvar=True, **kwargs)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("task", nargs=-1)
@config_option
@_option(
    "-i",
    "--id",
    name="id",
    default=f"worker-{os.getpid()}",
    show_default="worker-<pid>",
    help="Worker id, unique in the fleet.",
)
@_option(
    "-m",
    "--mongo",
    name="mongo",
    help="MongoDB URL (mongodb://host:port/db), or 'embedded' for the local server.",
)
@secret_file_option("mongo_file", "the MongoDB URL", "--mongo")
@_option(
    "-s",
    "--standalone",
    name="standalone",
    is_flag=True,
    default=False,
    help="Run without a qworker-manager.",
)
@_option(
    "-p",
    "--paths",
    name="paths",
    multiple=True,
    default=["tasks"],
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder of task definitions (repeatable).",
)
@_option(
    "-t",
    "--tasks",
    name="tasks",
    multiple=True,
    help="Task id to run (repeatable), added to the TASK arguments.",
)
@_option(
    "--concurrency",
    name="concurrency",
    type=click.IntRange(min=1, max=MAX_CONCURRENCY),
    default=16,
    show_default=True,
    help="Jobs run at once by this worker (also the claim batch size).",
)
@_option(
    "--grace",
    name="grace",
    type=Seconds(min=0),
    default=25.0,
    show_default=True,
    help="Seconds running jobs get to finish on SIGTERM/SIGINT.",
)
@_option(
    "--lease",
    name="lease",
    type=Seconds(min=1),
    default=30.0,
    show_default=True,
    help="Seconds a claim lasts unless renewed; a dead worker's jobs return after it.",
)
@_option(
    "--poll-interval",
    name="poll_interval",
    type=Seconds(min=0.05),
    default=1.0,
    show_default=True,
    help="Seconds between queue reads when no wake-up arrives.",
)
@_option("--prefix", name="prefix", default="", help="Prefix of qworker's collection names.")
@_option(
    "--channel-size",
    name="channel_size",
    type=click.IntRange(min=65_536),
    default=CHANNEL_BYTES,
    show_default=True,
    help="Bytes of the capped channel collection, when this process creates it.",
)
@_option(
    "--burst",
    name="burst",
    is_flag=True,
    default=False,
    help="Exit once no job of these tasks is due and none is running.",
)
@_option(
    "--watch-jobs/--no-watch-jobs",
    name="watch_jobs",
    default=True,
    show_default=True,
    help="Learn of new jobs from a change stream on jobs, where the server has them "
    "(else, and with --no-watch-jobs, from job:queued wake-ups; always also by polling).",
)
@_option(
    "--metrics",
    name="metrics",
    default=None,
    help="HOST:PORT to serve this worker's Prometheus /metrics on  [default: none]",
)
@_option(
    "--trace-writes",
    name="trace_writes",
    is_flag=True,
    default=False,
    help="With OpenTelemetry (qworker[otel]): a span for each claim and each batch of writes.",
)
@_option(
    "--health",
    name="health",
    default=None,
    help="HOST:PORT to answer /healthz (alive) and /readyz (ready) on  [default: none]",
)
@_option(
    "--watchdog",
    name="watchdog",
    type=Seconds(min=0),
    default=60.0,
    show_default=True,
    help="Exit non-zero (5) when claims stall with due jobs and free slots, or a wake-up "
    "stream is dead while MongoDB answers, for this long (at least 10 poll intervals; "
    "0: never).",
)
@_option(
    "--max-jobs",
    name="max_jobs",
    type=click.IntRange(min=1),
    default=None,
    help="Recycle after claiming this many jobs: finish them, then exit 0  [default: never]",
)
@_option(
    "--max-memory",
    name="max_memory",
    type=click.FloatRange(min=1),
    default=None,
    help="Recycle once resident memory passes this many MB: stop claiming, finish the "
    "running jobs, exit 0  [default: never]",
)
@_option("-v", "--verbose", name="verbose", count=True, help="More logging (-vv for libraries).")
@_option(
    "--log-format",
    name="log_format",
    type=click.Choice(["console", "json"]),
    default=None,
    help="Log format  [default: console on a terminal, else json]",
)
@click.option(
    "--print-config", is_flag=True, help="Show the settings and their sources, then exit."
)
@click.pass_context
@reports_errors
def main(ctx: click.Context, /, task: tuple[str, ...], print_config: bool, **opts: Any) -> None:
    """Run the jobs of TASK... from MongoDB.

    Options come from flags, QWORKER_* environment variables or --config,
    in that order of precedence.
    """
    wanted = tuple(dict.fromkeys([*task, *opts["tasks"]]))
    settings = WorkerSettings(
        mongo=mongo_of(opts["mongo"], opts["mongo_file"]) or "",
        worker_id=opts["id"],
        tasks=wanted,
        paths=tuple(Path(p) for p in opts["paths"]),
        standalone=opts["standalone"],
        concurrency=opts["concurrency"],
        grace=opts["grace"],
        lease=opts["lease"],
        poll_interval=opts["poll_interval"],
        prefix=opts["prefix"],
        burst=opts["burst"],
        watch_jobs=opts["watch_jobs"],
        channel_size=opts["channel_size"],
        metrics=opts["metrics"],
        trace_writes=opts["trace_writes"],
        health=opts["health"],
        watchdog=opts["watchdog"],
        max_jobs=opts["max_jobs"],
        max_memory=opts["max_memory"],
        sources=sources(ctx),
    )
    if print_config:
        shown = {k: v for k, v in ctx.params.items() if k not in ("print_config", "task")}
        shown["tasks"] = list(wanted)
        shown["mongo"] = redact(settings.mongo) if settings.mongo else None
        # TASK arguments and --tasks are one setting: say where each part came from.
        origin = dict(settings.sources)
        if opts["mongo_file"]:
            origin["mongo"] = f"file {opts['mongo_file']} ({origin['mongo_file']})"
        if task:
            extra = [] if origin["tasks"] == "default" else [origin["tasks"]]
            origin["tasks"] = " + ".join(["arguments", *extra])
        click.echo(describe(shown, origin))
        return
    require_url(settings.mongo)
    configure(opts["verbose"], opts["log_format"])
    warn_of_secrets_on_the_command_line(ctx)
    metas = select(settings.paths, settings.tasks)
    worker = Worker(settings, metas)
    try:
        worker.load()
    except WorkerFailed as exc:
        _stopped_by_task_code(str(exc))
    if settings.metrics:
        from qworker.worker.metrics import serve_worker_metrics

        serve_worker_metrics(worker, settings.metrics)
    code = asyncio.run(worker.run())
    if worker.refused:
        click.echo(f"qworker: terminated by the manager: {worker.refused}", err=True)
    if worker.failure:
        _stopped_by_task_code(worker.failure)
    sys.exit(code)


def _stopped_by_task_code(reason: str) -> None:
    click.echo(f"qworker: stopped by its task code: {reason}", err=True)
    sys.exit(1)


if __name__ == "__main__":
    main()
