"""``qworker-manager``: the manager daemon (``serve``) and operator commands."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from qworker import protocol
from qworker.cli.common import (
    Seconds,
    Settings,
    config_option,
    envvar,
    json_data,
    mongo_of,
    pass_settings,
    reports_errors,
    secret_file_option,
    warn_of_secrets_on_the_command_line,
)
from qworker.cli.output import (
    emit_json,
    job_detail,
    job_rows,
    page_footer,
    worker_rows,
)
from qworker.cli.schedules import schedules
from qworker.cli.tasks import tasks
from qworker.cli.workflows import workflows
from qworker.client import Client
from qworker.credentials import api_token as api_token_of
from qworker.credentials import viewer_token as viewer_token_of
from qworker.embedded import data_dir_from_url, is_embedded, stop_server
from qworker.fleet import WORKER_STATES
from qworker.logs import configure
from qworker.manager.daemon import DEFAULT_HTTP, Manager, ManagerSettings
from qworker.manager.sinks import read_sinks
from qworker.model import FINISHED_STATES, JobState
from qworker.mongo import (
    CHANNEL_BYTES,
    Names,
    database_name,
    redact,
    resolve_url,
    sync_client,
)
from qworker.roles import create_roles
from qworker.schema import prepare
from qworker.store import MAX_SKIP, SORTS
from qworker.when import utcnow

F = TypeVar("F", bound=Callable[..., Any])


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@config_option
@click.option(
    "-m",
    "--mongo",
    envvar=envvar("mongo"),
    show_envvar=True,
    help="MongoDB URL (mongodb://host:port/db), or 'embedded'.",
)
@secret_file_option("mongo_file", "the MongoDB URL", "--mongo")
@click.option(
    "--prefix",
    envvar=envvar("prefix"),
    default="",
    show_envvar=True,
    help="Prefix of qworker's collection names.",
)
@click.option(
    "--channel-size",
    type=click.IntRange(min=65_536),
    default=CHANNEL_BYTES,
    show_default=True,
    envvar=envvar("channel_size"),
    show_envvar=True,
    help="Bytes of the capped channel collection, when this process creates it.",
)
@click.pass_context
@reports_errors
def main(
    ctx: click.Context,
    config: str | None,
    mongo: str | None,
    mongo_file: Path | None,
    prefix: str,
    channel_size: int,
) -> None:
    """Run and operate a qworker fleet: the manager daemon, jobs, the embedded server."""
    ctx.obj = Settings(mongo_of(mongo, mongo_file), prefix, channel_size)


@main.command()
@click.argument("task")
@click.option("--data", callback=json_data, help="Job data as JSON.")
@click.option(
    "--when", help="'now' (default), 'in 20 minutes', an ISO 8601 time, or 'tomorrow at 9am'."
)
@click.option("--priority", help="A number, or lowest/low/normal/high/highest.")
@click.option(
    "--unique", help="A key: while a queued or running job of TASK has it, print that job's id."
)
@click.option(
    "--unique-while",
    type=click.Choice(["active", "queued", "period"]),
    help="How long --unique holds: while a job is queued or running (active, the default), "
    "while one is queued, or for --unique-period (a throttle).",
)
@click.option(
    "--unique-period", help="With --unique-while period: one job per key per this ('10 minutes')."
)
@click.option(
    "--unique-replace",
    type=click.Choice(["data", "nextRunAt"]),
    multiple=True,
    help="Debounce: the queued job holding --unique takes this job's data or run time "
    "instead (repeatable).",
)
@click.option("--max-attempts", type=click.IntRange(min=1), help="Runs allowed to fail.")
@click.option("--timeout", type=Seconds(min=0, min_open=True), help="Seconds.")
@click.option("--description", help="Free text, searchable with 'jobs list --text'.")
@click.option(
    "--expires",
    help="A deadline: seconds or a duration from the run time ('10 minutes'), or a time; "
    "a job not started by then ends expired.",
)
@pass_settings
@reports_errors
def enqueue(settings: Settings, /, task: str, data: Any, **opts: Any) -> None:
    """Queue a job of TASK and print its id."""
    opts["unique"] = _unique_option(
        opts["unique"],
        opts.pop("unique_while"),
        opts.pop("unique_period"),
        opts.pop("unique_replace"),
    )
    with settings.client() as client:
        click.echo(client.schedule(opts.pop("when"), task, data, **opts))


def _unique_option(
    key: str | None, mode: str | None, period: str | None, replace: tuple[str, ...]
) -> str | dict[str, Any] | None:
    """``--unique`` and its mode options as ``unique=`` takes them (a plain key alone)."""
    if mode is None and period is None and not replace:
        return key
    if key is None:
        raise click.UsageError("--unique-while, --unique-period and --unique-replace need --unique")
    spec: dict[str, Any] = {"key": key, "while": mode or ("period" if period else "active")}
    if period is not None:
        spec["period"] = period
    if replace:
        spec["replace"] = list(replace)
    return spec


@main.group()
def jobs() -> None:
    """Inspect and act on jobs."""


@jobs.command("show")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the job document as JSON.")
@pass_settings
@reports_errors
def jobs_show(settings: Settings, job_id: str, as_json: bool) -> None:
    """Show one job: data, state, progress, result or error, and its log."""
    with settings.client() as client:
        job = client.get(job_id)
    emit_json(job) if as_json else job_detail(job)


def job_filter_options(fn: F) -> F:
    """The filters of a job listing, as ``Client.jobs`` takes them (``JobFilter``)."""
    for option in (
        click.option(
            "--state",
            type=click.Choice([s.value for s in JobState]),
            help="Only jobs in this state.",
        ),
        click.option("--task", help="Only jobs of this task."),
        click.option("--worker", help="Only jobs this worker runs, or ran last."),
        click.option("--text", help="Only jobs whose description contains this text."),
        click.option(
            "--since", help="Created at or after: an ISO time, or a duration ago ('2 hours')."
        ),
        click.option("--until", help="Created before: an ISO time, or a duration ago ('1d')."),
        click.option(
            "--finished-since",
            help="Finished (succeeded, failed, cancelled, expired) at or after: an ISO time, "
            "or a duration ago.",
        ),
        click.option("--finished-until", help="Finished before: an ISO time, or a duration ago."),
        click.option(
            "--data-field",
            help="A dotted path inside the job's data ('customer', 'address.city'): only "
            "jobs that have it, or that hold --data-value there.",
        ),
        click.option(
            "--data-value",
            help="What --data-field holds; '42' also finds the number, 'true' the boolean.",
        ),
        click.option("--error", help="Only jobs whose failure reason or error has this text."),
    )[::-1]:
        fn = option(fn)
    return fn


@jobs.command("list")
@job_filter_options
@click.option(
    "--sort",
    type=click.Choice(SORTS),
    default="created",
    show_default=True,
    help="By creation, by finish time, or by the duration of the last run (of a "
    "succeeded or failed job); jobs without one come last.",
)
@click.option("--asc", is_flag=True, help="Oldest (or shortest) first.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option(
    "--skip", type=click.IntRange(0, MAX_SKIP), default=0, help="Skip this many (paging)."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the list only).")
@pass_settings
@reports_errors
def jobs_list(
    settings: Settings,
    /,
    as_json: bool,
    limit: int,
    skip: int,
    sort: str,
    asc: bool,
    **filters: Any,
) -> None:
    """List jobs, newest first, and how many match (on stderr)."""
    order = "asc" if asc else "desc"
    with settings.client() as client:
        found = client.jobs(limit=limit, skip=skip, sort=sort, order=order, **filters)
        total = 0 if as_json else client.count_jobs(**filters)
    if as_json:
        emit_json(found)
        return
    job_rows(found)
    page_footer(skip, len(found), total)


# What a bulk action did, in the past tense, for its summary line.
DONE = {"retry": "retried", "cancel": "cancelled or asked to stop", "delete": "deleted"}
RULE = {
    "retry": "only finished jobs are retried",
    "cancel": "only waiting, queued and running jobs are cancelled",
    "delete": "running jobs are not deleted",
}


def bulk_options(action: str) -> Callable[[F], F]:
    """JOB_ID..., or ``--all-matching`` the listing's filters; ``--dry-run``, ``--yes``."""

    def decorate(fn: F) -> F:
        fn = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")(fn)
        fn = click.option(
            "--yes", is_flag=True, help="Do not ask for confirmation (--all-matching)."
        )(fn)
        fn = click.option(
            "--dry-run", is_flag=True, help=f"Change nothing: say how many would be {DONE[action]}."
        )(fn)
        fn = job_filter_options(fn)
        fn = click.option(
            "--all-matching",
            is_flag=True,
            help="Every job the filters match (with none: every job), in batches; "
            "asks for confirmation first.",
        )(fn)
        return click.argument("job_ids", metavar="[JOB_ID]...", nargs=-1)(fn)

    return decorate


def act_on_jobs(
    settings: Settings,
    action: str,
    job_ids: tuple[str, ...],
    all_matching: bool,
    dry_run: bool,
    yes: bool,
    as_json: bool,
    filters: dict[str, Any],
    one: Callable[[Client, str], None],
) -> None:
    """One job (``one``, as before), several, or all that match: ``Client.bulk``."""
    given = {name: value for name, value in filters.items() if value is not None}
    if job_ids and all_matching:
        raise click.UsageError("give JOB_IDs or --all-matching, not both")
    if given and not all_matching:
        flags = ", ".join(f"--{name.replace('_', '-')}" for name in given)
        raise click.UsageError(f"filters ({flags}) select jobs with --all-matching only")
    if not job_ids and not all_matching:
        raise click.UsageError("give a JOB_ID (or several), or --all-matching with filters")
    where: dict[str, Any] = {"filter": given} if all_matching else {"ids": list(job_ids)}
    with settings.client() as client:
        if len(job_ids) == 1 and not dry_run:
            one(client, job_ids[0])
            return
        counted = client.bulk(action, **where, dry_run=True)
        if dry_run:
            emit_json(counted) if as_json else click.echo(_would(action, counted))
            return
        if all_matching and counted["eligible"] and not yes:
            click.confirm(
                f"{action} {_jobs(counted['eligible'])}? ({_would(action, counted)})", abort=True
            )
        done = client.bulk(action, **where) if counted["eligible"] else {**counted, "dryRun": False}
    if as_json:
        emit_json({key: value for key, value in done.items() if key not in ("dryRun", "eligible")})
        return
    click.echo(f"{done['changed']} of {_jobs(done['matched'])} matched {DONE[action]}")


def _jobs(n: int) -> str:
    return f"{n} job{'' if n == 1 else 's'}"


def _would(action: str, counted: dict[str, Any]) -> str:
    left = counted["matched"] - counted["eligible"]
    rule = f"; {left} left alone: {RULE[action]}" if left else ""
    return f"{_jobs(counted['matched'])} match, {counted['eligible']} would be {DONE[action]}{rule}"


@jobs.command("cancel")
@bulk_options("cancel")
@pass_settings
@reports_errors
def jobs_cancel(
    settings: Settings,
    /,
    job_ids: tuple[str, ...],
    all_matching: bool,
    dry_run: bool,
    yes: bool,
    as_json: bool,
    **filters: Any,
) -> None:
    """Cancel queued jobs, or ask running ones to stop: JOB_ID..., or --all-matching."""

    def one(client: Client, job_id: str) -> None:
        job = client.cancel(job_id)
        said = "cancel requested" if job.get("cancelRequested") else job["state"]
        emit_json(job) if as_json else click.echo(f"{job['_id']} {said}")

    act_on_jobs(settings, "cancel", job_ids, all_matching, dry_run, yes, as_json, filters, one)


@jobs.command("retry")
@bulk_options("retry")
@pass_settings
@reports_errors
def jobs_retry(
    settings: Settings,
    /,
    job_ids: tuple[str, ...],
    all_matching: bool,
    dry_run: bool,
    yes: bool,
    as_json: bool,
    **filters: Any,
) -> None:
    """Queue finished jobs again: JOB_ID..., or --all-matching the filters."""

    def one(client: Client, job_id: str) -> None:
        job = client.retry(job_id)
        emit_json(job) if as_json else click.echo(f"{job['_id']} {job['state']}")

    act_on_jobs(settings, "retry", job_ids, all_matching, dry_run, yes, as_json, filters, one)


@jobs.command("delete")
@bulk_options("delete")
@pass_settings
@reports_errors
def jobs_delete(
    settings: Settings,
    /,
    job_ids: tuple[str, ...],
    all_matching: bool,
    dry_run: bool,
    yes: bool,
    as_json: bool,
    **filters: Any,
) -> None:
    """Delete jobs that are not running (cancel a running one first): JOB_ID..., or
    --all-matching the filters."""

    def one(client: Client, job_id: str) -> None:
        job = client.delete(job_id)
        emit_json(job) if as_json else click.echo(f"{job['_id']} deleted (was {job['state']})")

    act_on_jobs(settings, "delete", job_ids, all_matching, dry_run, yes, as_json, filters, one)


@jobs.command("purge")
@click.option(
    "--state",
    required=True,
    type=click.Choice([s.value for s in FINISHED_STATES]),
    help="Which finished jobs.",
)
@click.option("--older-than", required=True, help="Finished longer ago than this: '7 days'.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_settings
@reports_errors
def jobs_purge(settings: Settings, state: str, older_than: str, yes: bool) -> None:
    """Delete the finished jobs in STATE that ended over --older-than ago."""

    def described(n: int) -> str:
        return f"{n} {state} job{'' if n == 1 else 's'} finished more than {older_than} ago"

    with settings.client() as client:
        count = client.purge(state, older_than, dry_run=True)
        if count and not yes:
            click.confirm(f"delete {described(count)}?", abort=True)
        deleted = client.purge(state, older_than) if count else 0
    click.echo(f"deleted {described(deleted)}")


@main.group("workers", invoke_without_command=True)
@click.option("--state", type=click.Choice(WORKER_STATES), help="Only workers in this state.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_settings
@reports_errors
def workers(settings: Settings, state: str | None, as_json: bool) -> None:
    """The workers, managed and standalone: state, tasks, running jobs, last ping (as
    'workers list'); 'workers stop ID' asks one to stop gracefully.

    A running worker silent for 3 ping intervals is shown as lost.
    """
    if click.get_current_context().invoked_subcommand is None:
        _list_workers(settings, state, as_json)


@workers.command("list")
@click.option("--state", type=click.Choice(WORKER_STATES), help="Only workers in this state.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_settings
@reports_errors
def workers_list(settings: Settings, state: str | None, as_json: bool) -> None:
    """The workers: state, tasks, running jobs, last ping; lost when silent."""
    _list_workers(settings, state, as_json)


def _list_workers(settings: Settings, state: str | None, as_json: bool) -> None:
    with settings.client() as client:
        found = client.workers(state)
    emit_json(found) if as_json else worker_rows(found, utcnow())


@workers.command("stop")
@click.argument("worker_id")
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
@pass_settings
@reports_errors
def workers_stop(settings: Settings, worker_id: str, as_json: bool) -> None:
    """Ask the running worker WORKER_ID to stop gracefully, as SIGTERM does: it claims no
    more jobs, lets its running ones finish within its --grace, and exits. Managed or
    standalone; asked once per instance of the worker."""
    with settings.client() as client:
        asked = client.stop_worker(worker_id)
    if as_json:
        emit_json(asked)
    elif asked["alreadyAsked"]:
        click.echo(f"{worker_id}: already asked to stop at {asked['stopRequestedAt'].isoformat()}")
    else:
        click.echo(f"{worker_id}: asked to stop (its running jobs finish first)")


DEMO_TASKS = Path(__file__).parent.parent / "demo"
DEMO_JOBS: list[tuple[str, Any]] = [
    ("hello", {"name": "world"}),
    ("hello", {"name": "qworker"}),
    ("countdown", {"steps": 5, "delay": 0.4}),
    ("flaky", {"fail": False}),
    ("flaky", {"fail": True}),
]


@main.command()
@click.option(
    "--paths",
    default=str(DEMO_TASKS),
    show_default="the demo tasks shipped with qworker",
    type=click.Path(file_okay=False, exists=True),
    help="Folder of the example tasks.",
)
@pass_settings
@reports_errors
def demo(settings: Settings, paths: str) -> None:
    """Enqueue example jobs, run a worker until they are done, show the results.

    Uses the embedded server unless --mongo is given.
    """
    settings.mongo = settings.mongo or "embedded"
    with settings.client() as client:
        assert client.url is not None  # made from a URL
        ids = [client.now(task, data, description="demo") for task, data in DEMO_JOBS]
        click.echo(f"queued {len(ids)} jobs on {redact(client.url)}; starting a worker\n")
        tasks = sorted({task for task, _ in DEMO_JOBS})
        worker = [
            sys.executable,
            "-m",
            "qworker.cli.worker",
            "--standalone",
            "--burst",
            "--mongo",
            client.url,
            "--paths",
            str(Path(paths)),
            "--id",
            "demo-worker",
            "--log-format",
            "console",
            "--prefix",
            settings.prefix,
            *tasks,
        ]
        code = subprocess.call(worker)
        click.echo("")
        job_rows([client.get(i) for i in ids])
    if is_embedded(settings.mongo):
        click.echo(
            "\nThe embedded server keeps running for the next command; "
            "'qworker-manager embedded stop' stops it."
        )
    if code:
        sys.exit(code)


@main.command()
@click.option(
    "--id",
    "manager_id",
    envvar=envvar("manager_id"),
    show_envvar=True,
    help="Manager id  [default: manager-<host>-<pid>]",
)
@click.option(
    "--ping-interval",
    type=Seconds(min=0.1),
    default=protocol.DEFAULT_PING_SECONDS,
    show_default=True,
    envvar=envvar("ping_interval"),
    show_envvar=True,
    help="Seconds between worker pings; two missed ones make a worker dead.",
)
@click.option(
    "--lease",
    type=Seconds(min=1),
    default=10.0,
    show_default=True,
    envvar=envvar("manager_lease"),
    show_envvar=True,
    help="Seconds the leader's lease lasts; a standby takes over after it.",
)
@click.option(
    "--sinks",
    type=click.Path(dir_okay=False),
    envvar=envvar("sinks"),
    show_envvar=True,
    help="JSON/YAML file: where notifications go (log: true|false, webhooks: [...]).",
)
@click.option(
    "--http",
    default=DEFAULT_HTTP,
    show_default=True,
    envvar=envvar("http"),
    show_envvar=True,
    help="HOST:PORT of the HTTP API, dashboard and /metrics; 'off' to serve none.",
)
@click.option(
    "--api-token",
    envvar=envvar("api_token"),
    show_envvar=True,
    help="Required on every API request (Bearer); 'none' for none (loopback only). "
    "[default: one made and kept in the user's state folder]",
)
@secret_file_option("api_token_file", "the API token", "--api-token")
@click.option(
    "--viewer-token",
    envvar=envvar("viewer_token"),
    show_envvar=True,
    help="A read-only token: it sees every page and route and changes nothing (a change "
    "gets 403). Needs an API token beside it, and differs from it.  [default: none]",
)
@secret_file_option("viewer_token_file", "the viewer token", "--viewer-token")
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    envvar=envvar("allowed_hosts"),
    show_envvar=True,
    help="A name the API answers for, besides loopback names, IP addresses and the --http "
    "host (repeatable; '*' for any): what browsers send as Host.",
)
@click.option("-v", "--verbose", count=True, help="More logging.")
@click.option(
    "--log-format",
    type=click.Choice(["console", "json"]),
    envvar=envvar("log_format"),
    help="Log format  [default: console on a terminal, else json]",
)
@pass_settings
@reports_errors
def serve(
    settings: Settings,
    /,
    manager_id: str | None,
    ping_interval: float,
    lease: float,
    sinks: str | None,
    http: str,
    api_token: str | None,
    api_token_file: Path | None,
    viewer_token: str | None,
    viewer_token_file: Path | None,
    allowed_hosts: tuple[str, ...],
    verbose: int,
    log_format: str | None,
) -> None:
    """Run the manager: accept workers, watch their pings, recover their jobs, run the
    schedules, and serve the HTTP API, dashboard and metrics (--http)."""
    url = settings.url()
    configure(verbose, log_format)
    token = api_token_of(api_token, api_token_file)
    viewer = viewer_token_of(viewer_token, viewer_token_file, token.value)
    warn_of_secrets_on_the_command_line(click.get_current_context(), "api_token", "viewer_token")
    options: dict[str, Any] = {"manager_id": manager_id} if manager_id else {}
    if sinks:
        options["sinks"] = read_sinks(Path(sinks))
    manager = Manager(
        ManagerSettings(
            mongo=url,
            prefix=settings.prefix,
            ping_interval=ping_interval,
            lease=lease,
            channel_size=settings.channel_size,
            http=None if http.strip().lower() in ("off", "none", "") else http,
            api_token=token.value,
            api_token_origin=token.origin,
            viewer_token=viewer,
            allowed_hosts=allowed_hosts,
            **options,
        )
    )
    sys.exit(asyncio.run(manager.run()))


@main.command("init-db")
@click.option(
    "--roles",
    "with_roles",
    is_flag=True,
    help="Also create (or update) the roles of each part of a fleet: qworkerApp, "
    "qworkerWorker, qworkerOperator, qworkerViewer, qworkerManager.",
)
@pass_settings
@reports_errors
def init_db(settings: Settings, with_roles: bool) -> None:
    """Create the collections and indexes (what every process would otherwise try at start),
    so that applications and workers can run as users that may not create indexes."""
    url = resolve_url(settings.url())
    names = Names(settings.prefix)
    prepare(url, names, settings.channel_size, required=True)
    click.echo(f"collections and indexes of {redact(url)} are ready")
    if with_roles:
        with sync_client(url) as mongo:
            for done in create_roles(mongo[database_name(url)], names):
                click.echo(done)


@main.group()
def embedded() -> None:
    """The local embedded server (SecantusDB) that '--mongo embedded' starts."""


@embedded.command("stop")
@click.option(
    "--url",
    default="embedded",
    show_default=True,
    help="Which embedded server: 'embedded' or 'embedded:///folder'.",
)
def embedded_stop(url: str) -> None:
    """Stop the embedded server; its data stays for the next start."""
    folder = data_dir_from_url(url)
    click.echo(f"stopped the server in {folder}" if stop_server(folder) else "none was running")


@main.command()
@click.option("--for", "seconds", type=Seconds(min=0), help="Stop after this many seconds.")
@pass_settings
@reports_errors
def watch(settings: Settings, seconds: float | None) -> None:
    """Follow the fleet live: running jobs with progress, outcomes, workers coming and going.

    Job events come from managed workers (standalone ones notify no one). On a
    terminal the view redraws in place; in a pipe each event is one line.
    """
    from qworker.cli.watch import watch as follow

    # A command started in the background by a non-interactive shell inherits
    # SIGINT ignored; Ctrl-C (or SIGINT from a supervisor) must still end a watch.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(follow(settings.url(), settings.prefix, seconds, sys.stdout))


main.add_command(schedules)
main.add_command(tasks)
main.add_command(workflows)

if __name__ == "__main__":
    main()
