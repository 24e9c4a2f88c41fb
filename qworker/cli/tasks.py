"""``qworker-manager tasks ...``: the tasks of the fleet, and pausing them for every worker."""

from __future__ import annotations

import click

from qworker.cli.common import Settings, pass_settings, reports_errors
from qworker.cli.output import emit_json, task_rows


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def tasks(context: click.Context, as_json: bool) -> None:
    """The tasks: validity, live workers, whether paused, and their jobs counted by state
    (as 'tasks list'); 'tasks pause ID' and 'tasks resume ID' act on one, fleet-wide."""
    if context.invoked_subcommand is None:
        context.invoke(tasks_list, as_json=as_json)


@tasks.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_settings
@reports_errors
def tasks_list(settings: Settings, as_json: bool) -> None:
    """The tasks: validity, live workers, whether paused, fleet-wide limits and their use,
    and their jobs counted by state."""
    with settings.client() as client:
        found = client.tasks()
    emit_json(found) if as_json else task_rows(found)


@tasks.command("pause")
@click.argument("task_id")
@pass_settings
@reports_errors
def tasks_pause(settings: Settings, task_id: str) -> None:
    """Claim no job of TASK_ID on any worker until it is resumed: its queued jobs wait,
    its running ones finish. Kept in MongoDB, so it outlives restarts."""
    with settings.client() as client:
        client.pause_task(task_id)
    click.echo(f"{task_id}: paused (its queued jobs wait; running ones finish)")


@tasks.command("resume")
@click.argument("task_id")
@pass_settings
@reports_errors
def tasks_resume(settings: Settings, task_id: str) -> None:
    """Let every worker claim TASK_ID's jobs again."""
    with settings.client() as client:
        client.resume_task(task_id)
    click.echo(f"{task_id}: resumed")
