"""The CLI of the dashboard's actions: ``jobs retry|cancel|delete`` over ids or
``--all-matching`` filters, ``workers stop``, ``schedules run``; help and clear errors.
``Client`` does the work (see tests/manager/test_api_bulk.py); these run the CLI in
process (click's CliRunner) against the real server, and a real worker for the stop.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from bson import ObjectId
from click.testing import CliRunner, Result
from support.processes import worker_ready
from support.waits import wait_for

from qworker import Client
from qworker.cli.manager import main
from qworker.when import utcnow


def cli(mongo_url: str, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, ["--mongo", mongo_url, *args], input=input)


def ok(result: Result) -> str:
    assert result.exit_code == 0, f"exit {result.exit_code}\n{result.output}"
    return result.stdout


def failed_jobs(client: Client, db: Any, customer: str, n: int) -> list[str]:
    ids = client.enqueue_many("noop", [{"customer": customer}] * n)
    db.jobs.update_many(
        {"_id": {"$in": [ObjectId(i) for i in ids]}},
        {"$set": {"state": "failed", "lastFinishedAt": utcnow(), "failReason": "card declined"}},
    )
    return ids


def states(db: Any, ids: list[str]) -> list[str]:
    found = {str(d["_id"]): d["state"] for d in db.jobs.find({}, {"state": 1})}
    return [found.get(i, "deleted") for i in ids]


MATCHING = [
    "--all-matching",
    "--state",
    "failed",
    "--data-field",
    "customer",
    "--data-value",
    "acme",
]


def test_retry_all_matching_counts_asks_and_acts(mongo_url: str, client: Client, db: Any) -> None:
    acme = failed_jobs(client, db, "acme", 3)
    bolt = failed_jobs(client, db, "bolt", 1)
    dry = ok(cli(mongo_url, "jobs", "retry", *MATCHING, "--dry-run"))
    assert dry.strip() == "3 jobs match, 3 would be retried"
    refused = cli(mongo_url, "jobs", "retry", *MATCHING, input="n\n")
    assert refused.exit_code == 1 and "retry 3 jobs?" in refused.output
    assert states(db, acme + bolt) == ["failed"] * 4
    done = ok(cli(mongo_url, "jobs", "retry", *MATCHING, input="y\n"))
    assert done.strip().endswith("3 of 3 jobs matched retried")
    assert states(db, acme + bolt) == ["queued"] * 3 + ["failed"]
    again = json.loads(ok(cli(mongo_url, "jobs", "retry", *MATCHING, "--yes", "--json")))
    assert again == {"action": "retry", "matched": 0, "changed": 0}


def test_cancel_and_delete_over_ids_or_every_job(mongo_url: str, client: Client, db: Any) -> None:
    queued = client.enqueue_many("noop", [None] * 3)
    done = failed_jobs(client, db, "acme", 1)
    assert ok(cli(mongo_url, "jobs", "cancel", queued[0])).strip() == f"{queued[0]} cancelled"
    assert ok(cli(mongo_url, "jobs", "cancel", *queued, *done)).strip() == (
        "2 of 4 jobs matched cancelled or asked to stop"
    )
    dry = ok(cli(mongo_url, "jobs", "delete", "--all-matching", "--dry-run"))
    assert dry.strip() == "4 jobs match, 4 would be deleted"
    client.db.jobs.update_one({"_id": ObjectId(queued[0])}, {"$set": {"state": "running"}})
    dry = ok(cli(mongo_url, "jobs", "delete", "--all-matching", "--dry-run"))
    assert dry.strip() == (
        "4 jobs match, 3 would be deleted; 1 left alone: running jobs are not deleted"
    )
    ok(cli(mongo_url, "jobs", "delete", "--all-matching", "--yes"))
    assert states(db, queued + done) == ["running", "deleted", "deleted", "deleted"]


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["jobs", "retry"], "give a JOB_ID (or several), or --all-matching"),
        (
            ["jobs", "retry", "--state", "failed"],
            "filters (--state) select jobs with --all-matching",
        ),
        (["jobs", "delete", "0" * 24, "--all-matching"], "not both"),
        (["jobs", "cancel", "--all-matching", "--data-field", "$x"], "not a dotted path"),
        (["jobs", "retry", "--all-matching", "--finished-since", "blursday"], "finished_since"),
        (["jobs", "delete", "nope", "0" * 24], "not a job id"),
    ],
)
def test_bad_bulk_commands_say_why(mongo_url: str, args: list[str], said: str) -> None:
    result = cli(mongo_url, *args)
    assert result.exit_code == 2, result.output
    assert said in result.output and "Traceback" not in result.output


def test_workers_stop_asks_a_real_worker_to_stop(
    mongo_url: str, client: Client, spawn_worker: Any
) -> None:
    worker = spawn_worker("noop", worker_id="solo", extra=["--lease", "3"])
    wait_for(
        lambda: worker_ready(worker) and any(w["_id"] == "solo" for w in client.workers()),
        30,
        "the worker's entry",
    )
    listed = json.loads(ok(cli(mongo_url, "workers", "list", "--json")))
    assert [w["_id"] for w in listed] == ["solo"] and listed[0]["jobs"] == []
    said = ok(cli(mongo_url, "workers", "stop", "solo"))
    assert said.strip() == "solo: asked to stop (its running jobs finish first)"
    assert worker.wait(30) == 0
    gone = cli(mongo_url, "workers", "stop", "solo")
    assert gone.exit_code == 1 and "is stopped: nothing to stop" in gone.output
    missing = cli(mongo_url, "workers", "stop", "nobody")
    assert (
        missing.exit_code == 1 and "main workers stop: error: no worker 'nobody'" in missing.output
    )
    assert "stopped" in ok(cli(mongo_url, "workers"))  # the group still lists


def test_schedules_run_fires_once_now(mongo_url: str, client: Client, db: Any) -> None:
    client.every("1 hour", "noop", {"n": 1}, name="hourly", overlap="skip")
    said = ok(cli(mongo_url, "schedules", "run", "hourly")).strip()
    job_id, word = said.split()
    assert word == "queued" and client.get(job_id)["scheduleId"] == "hourly"
    busy = cli(mongo_url, "schedules", "run", "hourly")
    assert busy.exit_code == 1 and "still queued or running (overlap skip)" in busy.output
    missing = cli(mongo_url, "schedules", "run", "nothing")
    assert missing.exit_code == 1 and "no schedule named 'nothing'" in missing.output


def test_every_new_command_has_help(mongo_url: str) -> None:
    for args in (
        ["jobs", "retry"],
        ["jobs", "cancel"],
        ["jobs", "delete"],
        ["workers"],
        ["workers", "stop"],
        ["workers", "list"],
        ["schedules", "run"],
    ):
        out = ok(CliRunner().invoke(main, [*args, "--help"]))
        assert "Usage:" in out and len(out.splitlines()) > 5, args
    assert "--all-matching" in ok(CliRunner().invoke(main, ["jobs", "retry", "--help"]))
