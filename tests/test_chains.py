"""Chains: steps run one after another on real workers, stopping at the first failure.
A chain is a workflow (kind ``chain``) whose id is its last step's."""

from __future__ import annotations

from typing import Any

import pytest
from bson import ObjectId
from click.testing import CliRunner

from qworker import Client, InvalidJobError, Step
from qworker.cli.manager import main
from qworker.workflows import node_range


def steps_of(db: Any, chain_id: str) -> list[dict[str, Any]]:
    workflow_id = db.jobs.find_one({"_id": ObjectId(chain_id)})["flow"]["id"]
    return list(db.jobs.find({"_id": node_range(workflow_id)}).sort("_id", 1))


def test_a_chain_passes_each_result_on_and_wait_returns_the_last_step(
    client: Client, db: Any, spawn_worker: Any
) -> None:
    chain_id = client.chain([("double", {"x": 1}), "double", Step("double", previous_result=True)])
    first, second, third = steps_of(db, chain_id)
    assert [first["state"], second["state"], third["state"]] == ["queued", "waiting", "waiting"]
    assert str(third["_id"]) == chain_id

    spawn_worker("double")
    last = client.wait(chain_id, timeout=60)
    assert last["state"] == "succeeded" and last["result"] == {"x": 8.0}
    first, second, third = steps_of(db, chain_id)
    assert [s["state"] for s in (first, second, third)] == ["succeeded"] * 3
    assert first["result"] == {"x": 2.0} and second["result"] == {"x": 4.0}
    # In series: each step started after the one before it finished.
    assert first["lastFinishedAt"] <= second["lastRunAt"]
    assert second["lastFinishedAt"] <= third["lastRunAt"]


def test_a_step_with_its_own_data_does_not_take_the_previous_result(
    client: Client, db: Any, spawn_worker: Any
) -> None:
    spawn_worker("double")
    chain_id = client.chain([("double", {"x": 1}), ("double", {"x": 10})])
    assert client.wait(chain_id, timeout=60)["result"] == {"x": 20.0}


def test_a_chain_stops_at_the_first_failure_and_says_where(
    client: Client, db: Any, spawn_worker: Any
) -> None:
    spawn_worker("double", "shortlived")
    chain_id = client.chain([("double", {"x": 1}), ("shortlived", {"fail": True}), "double"])
    last = client.wait(chain_id, timeout=60)
    first, failed, never = steps_of(db, chain_id)
    assert first["state"] == "succeeded" and failed["state"] == "failed"
    assert last["_id"] == never["_id"] and never["state"] == "cancelled"
    assert never["attempts"] == 0 and "lastRunAt" not in never
    assert never["failReason"] == (
        f"chain stopped at step 2 of 3 (task 'shortlived', job {failed['_id']}): "
        "RuntimeError: asked to fail"
    )
    assert never["flow"]["doomedBy"]["job"] == failed["_id"]

    # Retrying the failed step puts the rest of the chain back to waiting;
    # it fails again, and the chain stops again.
    client.retry(str(failed["_id"]))
    assert steps_of(db, chain_id)[2]["state"] == "waiting"
    again = client.wait(chain_id, timeout=60)
    assert again["state"] == "cancelled" and again["attempts"] == 0
    assert steps_of(db, chain_id)[1]["failCount"] == 1


def test_cancelling_a_queued_step_cancels_the_rest(client: Client, db: Any) -> None:
    chain_id = client.chain([("double", {"x": 1}), "double", "double"])
    first = steps_of(db, chain_id)[0]
    client.cancel(str(first["_id"]))
    states = [(s["state"], s.get("failReason", "")) for s in steps_of(db, chain_id)]
    assert states[0] == ("cancelled", "cancelled")
    assert [state for state, _ in states[1:]] == ["cancelled", "cancelled"]
    assert all(reason.startswith("chain stopped at step 1 of 3") for _, reason in states[1:])


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([("double", {"x": 1})], "at least two steps"),
        ([("double", {"x": 1}), 5], "a step is a task id"),
        ([("double", {"x": 1}), ("Bad Task", None)], "not a valid task id"),
        ([("double", {"x": {1, 2}}), "double"], "not JSON-serialisable"),
    ],
)
def test_bad_chains_store_nothing(client: Client, db: Any, steps: Any, message: str) -> None:
    with pytest.raises(InvalidJobError, match=message):
        client.chain(steps)
    assert db.jobs.count_documents({}) == 0 and db.workflows.count_documents({}) == 0


def test_jobs_show_names_the_chain_step(client: Client, mongo_url: str) -> None:
    chain_id = client.chain([("double", {"x": 1}), "double"])
    shown = CliRunner().invoke(main, ["--mongo", mongo_url, "jobs", "show", chain_id])
    assert shown.exit_code == 0, shown.output
    workflow_id = client.get(chain_id)["flow"]["id"]
    assert f"workflow:     node 'double-2' of chain {workflow_id}" in shown.output
    assert "state:        waiting" in shown.output


def test_a_chain_is_listed_among_the_workflows(client: Client) -> None:
    chain_id = client.chain([("double", {"x": 1}), "double", "double"])
    [listed] = client.workflows()
    assert listed["kind"] == "chain" and listed["size"] == 3
    assert listed["counts"]["queued"] == 1 and listed["counts"]["waiting"] == 2
    info = client.workflow_info(str(listed["_id"]))
    assert [n["node"] for n in info["nodes"]] == ["double", "double-2", "double-3"]
    assert info["nodes"][-1]["id"] == chain_id and info["nodes"][-1]["deps"] == ["double-2"]
