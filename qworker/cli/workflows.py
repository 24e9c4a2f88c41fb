"""``qworker-manager workflows ...``: groups and DAGs, for operators."""

from __future__ import annotations

import click

from qworker.cli.common import Settings, pass_settings, reports_errors
from qworker.cli.output import emit_json, workflow_rows, workflow_tree
from qworker.store import MAX_SKIP


@click.group()
def workflows() -> None:
    """Groups and DAGs of jobs: list them, show one as a tree, cancel or retry one."""


@workflows.command("list")
@click.option("--limit", type=click.IntRange(1, 1_000), default=50, show_default=True)
@click.option(
    "--skip", type=click.IntRange(0, MAX_SKIP), default=0, help="Skip this many (paging)."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_settings
@reports_errors
def workflows_list(settings: Settings, limit: int, skip: int, as_json: bool) -> None:
    """List workflows and groups, newest first, with their state and progress."""
    with settings.client() as client:
        found = client.workflows(limit=limit, skip=skip)
    emit_json(found) if as_json else workflow_rows(found)


@workflows.command("show")
@click.argument("workflow_id")
@click.option("--all", "every_node", is_flag=True, help="Every job of a large group.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_settings
@reports_errors
def workflows_show(settings: Settings, workflow_id: str, every_node: bool, as_json: bool) -> None:
    """Show a workflow as a tree: each node, indented by depth, with its state."""
    with settings.client() as client:
        info = client.workflow_info(workflow_id)
    emit_json(info) if as_json else workflow_tree(info, every_node)


@workflows.command("cancel")
@click.argument("workflow_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_settings
@reports_errors
def workflows_cancel(settings: Settings, workflow_id: str, as_json: bool) -> None:
    """Cancel the nodes not started yet, and ask the running ones to stop."""
    with settings.client() as client:
        info = client.cancel_workflow(workflow_id)
    if as_json:
        emit_json(info)
        return
    running = info["counts"]["running"]
    asked = f", {running} running asked to stop" if running else ""
    click.echo(f"{info['_id']} {info['state']}: {info['counts']['cancelled']} cancelled{asked}")


@workflows.command("retry")
@click.argument("workflow_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the nodes queued now).")
@pass_settings
@reports_errors
def workflows_retry(settings: Settings, workflow_id: str, as_json: bool) -> None:
    """Run a finished workflow's failed and cancelled nodes again; succeeded ones are kept."""
    with settings.client() as client:
        queued = client.retry_workflow(workflow_id)
    if as_json:
        emit_json(queued)
        return
    names = ", ".join(str(doc["flow"]["node"]) for doc in queued)
    click.echo(f"{workflow_id}: queued {len(queued)} node(s) again: {names}")
