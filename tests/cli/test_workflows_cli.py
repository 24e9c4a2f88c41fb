"""``qworker-manager workflows list|show|cancel|retry`` against the real server."""

from __future__ import annotations

import json
from typing import Any

from click.testing import CliRunner

from qworker import Client
from qworker.cli.manager import main


def cli(mongo_url: str, *args: str) -> Any:
    done = CliRunner().invoke(main, ["--mongo", mongo_url, "workflows", *args])
    assert done.exit_code == 0, done.output
    return done.output


def test_list_show_retry_and_cancel(client: Client, mongo_url: str, burst: Any) -> None:
    wf = client.workflow("nightly")
    extract = wf.add("double", {"x": 1}, name="extract")
    transform = wf.add("shortlived", {"fail": True}, name="transform", deps=[extract])
    wf.add("gather", name="load", deps=[extract, transform])
    workflow_id = wf.enqueue()
    group_id = client.group([("double", {"x": n}) for n in range(30)], on_success="gather")
    burst("double", "shortlived", "gather")

    listed = cli(mongo_url, "list").splitlines()
    assert listed[0].split() == ["ID", "NAME", "KIND", "STATE", "FINISHED", "FAILED", "CREATED"]
    assert listed[2].split()[:5] == [group_id, "group", "group", "succeeded", "30/30"]
    assert listed[3].split()[:6] == [workflow_id, "nightly", "workflow", "failed", "3/3", "1"]

    tree = cli(mongo_url, "show", workflow_id).splitlines()
    assert tree[0] == f"workflow {workflow_id} 'nightly': failed, 3 of 3 finished"
    assert tree[2].split()[:3] == ["extract", "succeeded", "double"]
    assert tree[3].startswith("    transform  failed  shortlived")
    assert (
        tree[4].startswith("      load  cancelled  gather")
        and "after extract, transform" in tree[4]
    )
    shown = cli(mongo_url, "show", group_id).splitlines()
    assert "  (showing 21 of 31 nodes: --all for every one)" in shown
    assert len(cli(mongo_url, "show", group_id, "--all").splitlines()) == 2 + 31
    as_json = json.loads(cli(mongo_url, "show", workflow_id, "--json"))
    assert [n["node"] for n in as_json["nodes"]] == ["extract", "transform", "load"]

    assert (
        cli(mongo_url, "retry", workflow_id)
        == f"{workflow_id}: queued 1 node(s) again: transform\n"
    )
    assert cli(mongo_url, "cancel", workflow_id) == f"{workflow_id} cancelled: 2 cancelled\n"


def test_an_unknown_workflow_is_a_clear_error(mongo_url: str) -> None:
    done = CliRunner().invoke(main, ["--mongo", mongo_url, "workflows", "show", "0" * 24])
    assert done.exit_code != 0 and f"no workflow {'0' * 24}" in done.output
    done = CliRunner().invoke(main, ["--mongo", mongo_url, "workflows", "show", "nope"])
    assert done.exit_code != 0 and "nope" in done.output and "Traceback" not in done.output
