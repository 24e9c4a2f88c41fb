"""``qworker-manager schedules ...``: recurring schedules, for operators."""

from __future__ import annotations

from typing import Any

import click

from qworker.cli.common import Seconds, Settings, json_data, pass_settings, reports_errors
from qworker.cli.output import emit_json, schedule_detail, schedule_rows
from qworker.schedules import MISFIRE_POLICIES, OVERLAP_POLICIES, make_schedule


@click.group()
def schedules() -> None:
    """Recurring schedules: every N minutes, or cron, run by the leader manager."""


@schedules.command("add")
@click.argument("name")
@click.argument("task")
@click.option("--every", help="Interval: '30 minutes', '1h', or seconds.")
@click.option("--cron", help="Crontab: 5 fields, or 6 with seconds first; or @daily, @hourly.")
@click.option("--tz", "timezone", help="Time zone of the cron fields  [default: UTC]")
@click.option("--start-at", help="First run of an interval: 'now', 'midnight', an ISO time.")
@click.option("--data", callback=json_data, help="Job data as JSON.")
@click.option(
    "--misfire",
    type=click.Choice(MISFIRE_POLICIES),
    default="coalesce",
    show_default=True,
    help="After downtime: one run for the missed window, or none.",
)
@click.option("--grace", default="60", show_default=True, help="Lateness still on time (skip).")
@click.option(
    "--overlap",
    type=click.Choice(OVERLAP_POLICIES),
    help="A fire while the last fire's job is queued or running: starts anyway (allow, "
    "the default), is dropped (skip), or is kept, one only, to start once that job has "
    "ended (buffer-one).",
)
@click.option("--unique", is_flag=True, help="The same as --overlap skip.")
@click.option(
    "--pause-on-failure",
    is_flag=True,
    help="Pause the schedule once a fire's job fails for good (after its retries); "
    "'schedules resume' starts it again.",
)
@click.option("--priority", help="A number, or lowest/low/normal/high/highest.")
@click.option("--max-attempts", type=click.IntRange(min=1), help="Runs allowed to fail.")
@click.option("--timeout", type=Seconds(min=0, min_open=True), help="Seconds.")
@click.option("--description", help="Free text on each job, searchable with 'jobs list --text'.")
@click.option(
    "--replace/--no-replace",
    default=True,
    show_default=True,
    help="Replace a schedule of the same name, or fail.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the schedule as JSON.")
@pass_settings
@reports_errors
def schedules_add(
    settings: Settings,
    /,
    name: str,
    task: str,
    data: Any,
    replace: bool,
    as_json: bool,
    **options: Any,
) -> None:
    """Add (or replace) the schedule NAME, which enqueues a job of TASK at every fire."""
    schedule = make_schedule(name, task, data, **options)
    with settings.client() as client:
        view = client.add_schedule(schedule, replace)
    emit_json(view) if as_json else schedule_detail(view)


@schedules.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_settings
@reports_errors
def schedules_list(settings: Settings, as_json: bool) -> None:
    """Every schedule: its trigger, next run, last job, last success and last failure."""
    with settings.client() as client:
        found = client.schedule_list()
    emit_json(found) if as_json else schedule_rows(found)


@schedules.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_settings
@reports_errors
def schedules_show(settings: Settings, name: str, as_json: bool) -> None:
    """One schedule in full."""
    with settings.client() as client:
        view = client.schedule_info(name)
    emit_json(view) if as_json else schedule_detail(view)


@schedules.command("pause")
@click.argument("name")
@pass_settings
@reports_errors
def schedules_pause(settings: Settings, name: str) -> None:
    """Stop firing NAME until it is resumed."""
    with settings.client() as client:
        client.pause_schedule(name)
    click.echo(f"{name} paused")


@schedules.command("resume")
@click.argument("name")
@pass_settings
@reports_errors
def schedules_resume(settings: Settings, name: str) -> None:
    """Fire NAME again, from its next fire time after now (missed fires are not run).

    A schedule that a failure paused (--pause-on-failure) is let go of that failure, and
    of the earlier ones: only a fire's job that fails from now on pauses it again."""
    with settings.client() as client:
        view = client.resume_schedule(name)
    click.echo(f"{name} resumed; next run {view['nextRunAt'].isoformat()}")


@schedules.command("run")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
@pass_settings
@reports_errors
def schedules_run(settings: Settings, name: str, as_json: bool) -> None:
    """Fire NAME once, now, as its trigger would (its job options and overlap policy: under
    skip it is refused while its last job runs, under buffer-one it waits behind it); its
    next fire does not move, and a paused schedule runs too. Prints the job's id."""
    with settings.client() as client:
        ran = client.run_schedule_now(name)
    if as_json:
        emit_json(ran)
    elif ran["outcome"] == "buffered":
        click.echo(f"{ran['jobId']} buffered: it starts once the job of {name}'s last fire ends")
    else:
        click.echo(f"{ran['jobId']} queued")


@schedules.command("remove")
@click.argument("name")
@pass_settings
@reports_errors
def schedules_remove(settings: Settings, name: str) -> None:
    """Delete NAME; its jobs stay."""
    with settings.client() as client:
        client.remove_schedule(name)
    click.echo(f"{name} removed")
