"""Operating a fleet: ``workers``, ``tasks``, ``jobs list`` filters and paging, delete, purge.

The library (``qworker.Client``) does the work and the CLI prints it, so most
checks run the CLI in-process (click's CliRunner) against a store populated
directly: jobs in every state of several tasks, and worker and task entries
as the manager and standalone workers write them. Real processes are in
``test_fleet_workers.py``.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bson import ObjectId
from click.testing import CliRunner, Result
from support.jobs import wait_finished
from support.logs import one_error_line

from qworker import Client
from qworker.cli.manager import main
from qworker.errors import InvalidJobError, JobNotFound
from qworker.when import utcnow

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def cli(mongo_url: str, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, ["--mongo", mongo_url, *args], input=input)


def ok(result: Result) -> str:
    assert result.exit_code == 0, f"exit {result.exit_code}\n{result.output}"
    return result.stdout


def one_line_error(result: Result, command: str, *fragments: str, code: int = 1) -> str:
    assert result.exit_code == code, result.output
    return one_error_line(result.stderr, f"main {command}", *fragments)


def rows(table: str) -> list[list[str]]:
    """A table's rows as cells (columns are separated by two spaces or more)."""
    header, rule, *body = table.strip("\n").splitlines()
    assert set(rule.replace(" ", "")) == {"-"}
    return [re.split(r"\s{2,}", line.strip()) for line in [header, *body]]


def by_id(table: str) -> dict[str, dict[str, str]]:
    header, *body = rows(table)
    # Empty cells at the end of a row are trimmed; none in the middle in these tests.
    return {
        row[0]: dict(zip(header, row + [""] * (len(header) - len(row)), strict=True))
        for row in body
    }


def ids(result: Result) -> list[str]:
    return [str(doc["_id"]) for doc in json.loads(ok(result))]


# -- a populated store ---------------------------------------------------------


def job_in(
    db: Any,
    client: Client,
    task: str,
    state: str,
    *,
    created: datetime | None = None,
    finished: datetime | None = None,
    worker: str | None = None,
) -> str:
    """A job of ``task`` put in ``state`` the way a worker would leave it."""
    job_id = client.now(task)
    fields: dict[str, Any] = {"state": state}
    if created is not None:
        fields["createdAt"] = created
    if state in ("succeeded", "failed", "cancelled"):
        fields["lastFinishedAt"] = finished or utcnow()
    if worker is not None:
        fields["lastWorker"] = worker
        if state == "running":
            fields.update(lockedBy=worker, lockToken=f"{worker}:n:1", lockExpiresAt=utcnow() + HOUR)
    db.jobs.update_one({"_id": ObjectId(job_id)}, {"$set": fields})
    return job_id


def worker_entry(
    db: Any,
    worker_id: str,
    state: str,
    *,
    pinged: timedelta = timedelta(0),
    standalone: bool = False,
    tasks: list[str] | None = None,
    interval: float | None = None,
    pid: int = 100,
) -> None:
    """A ``workers`` entry as the manager writes it, or a standalone worker its own."""
    now = utcnow()
    doc: dict[str, Any] = {
        "_id": worker_id,
        "host": "host-a",
        "pid": pid,
        "nonce": f"nonce-{worker_id}",
        "tasks": tasks or ["mailer"],
        "state": state,
        "startedAt": now - DAY,
        "pingedAt": now - pinged,
        "running": 0,
    }
    if standalone:
        doc.update(standalone=True, pingInterval=interval or 1.0)
    if state == "stopped":
        doc["stoppedAt"] = now
    db.workers.insert_one(doc)


@pytest.fixture
def fleet(client: Client, db: Any) -> dict[str, Any]:
    """Workers in every state, two announced tasks (one invalid), jobs of three tasks."""
    worker_entry(db, "m-live", "running", tasks=["mailer", "billing"], pid=11)
    worker_entry(db, "s-live", "running", standalone=True, tasks=["mailer", "report"], pid=12)
    worker_entry(db, "s-lost", "running", standalone=True, pinged=timedelta(seconds=10), pid=13)
    worker_entry(db, "m-lost", "running", pinged=timedelta(minutes=5), pid=14)
    worker_entry(db, "m-stopped", "stopped", pid=15)
    worker_entry(db, "m-dead", "dead", pid=16)
    db.tasks.insert_many(
        [
            {
                "_id": "mailer",
                "name": "Mailer",
                "description": "mails",
                "metadata": {},
                "valid": True,
                "problems": [],
                "workers": ["m-live", "m-dead"],
                "definedAt": utcnow(),
            },
            {
                "_id": "billing",
                "name": "Billing",
                "description": "",
                "metadata": {"timeout": -1},
                "valid": False,
                "problems": ["timeout: must be > 0"],
                "workers": ["m-live"],
                "definedAt": utcnow(),
            },
        ]
    )
    ago = utcnow() - DAY
    mailer, report = ("mailer", "report")
    return {
        "running": job_in(db, client, mailer, "running", worker="m-live"),
        "running2": job_in(db, client, mailer, "running", worker="m-live"),
        "queued": job_in(db, client, mailer, "queued"),
        # (created, finished) long ago, or now and an hour ago.
        "old_ok": job_in(
            db,
            client,
            mailer,
            "succeeded",
            created=ago - 9 * DAY,
            finished=ago - 8 * DAY,
            worker="s-live",
        ),
        "young_ok": job_in(
            db, client, report, "succeeded", finished=ago + DAY - HOUR, worker="s-live"
        ),
        "old_failed": job_in(
            db,
            client,
            report,
            "failed",
            created=ago - 2 * DAY,
            finished=ago - 2 * DAY,
            worker="m-live",
        ),
        "old_cancelled": job_in(
            db, client, "billing", "cancelled", created=ago - 8 * DAY, finished=ago - 7 * DAY
        ),
    }


# -- workers ---------------------------------------------------------------------


def test_workers_table_lists_live_workers_first_with_their_running_jobs(
    mongo_url: str, fleet: dict[str, Any]
) -> None:
    table = ok(cli(mongo_url, "workers"))
    header = rows(table)[0]
    assert header == [
        "ID",
        "HOST",
        "PID",
        "STATE",
        "KIND",
        "TASKS",
        "RUNNING",
        "STARTED",
        "LAST PING",
    ]
    listed = by_id(table)
    assert list(listed) == ["m-live", "s-live", "m-lost", "s-lost", "m-stopped", "m-dead"]
    assert listed["m-live"]["STATE"] == "running" and listed["m-live"]["KIND"] == "managed"
    assert listed["m-live"]["RUNNING"] == "2"  # from the jobs it holds, not its last ping
    assert listed["m-live"]["TASKS"] == "mailer,billing" and listed["m-live"]["PID"] == "11"
    assert listed["s-live"]["KIND"] == "standalone" and listed["s-live"]["RUNNING"] == "0"
    # A standalone worker silent for 3 of its ping intervals (1 s here) is lost; a managed
    # one after 3 of the default 5 s.
    assert listed["s-lost"]["STATE"] == "lost" and listed["m-lost"]["STATE"] == "lost"
    assert re.fullmatch(r"1\ds ago", listed["s-lost"]["LAST PING"])
    assert listed["m-lost"]["LAST PING"] == "5m ago"
    assert listed["m-stopped"]["STATE"] == "stopped" and listed["m-dead"]["STATE"] == "dead"


def test_workers_json_and_state_filter(mongo_url: str, fleet: dict[str, Any]) -> None:
    found = json.loads(ok(cli(mongo_url, "workers", "--json")))
    assert isinstance(found, list) and len(found) == 6
    live = found[0]
    assert live["_id"] == "m-live" and live["status"] == "running" and live["live"] is True
    assert live["runningJobs"] == 2 and live["standalone"] is False
    assert datetime.fromisoformat(live["pingedAt"]) <= datetime.now(UTC)
    assert {w["_id"]: w["state"] for w in found}["s-lost"] == "running"  # as stored
    assert {w["_id"]: w["status"] for w in found}["s-lost"] == "lost"  # as shown

    def listed(state: str) -> list[str]:
        return [
            w["_id"] for w in json.loads(ok(cli(mongo_url, "workers", "--state", state, "--json")))
        ]

    assert listed("running") == ["m-live", "s-live"]
    assert listed("lost") == ["m-lost", "s-lost"]
    assert listed("stopped") == ["m-stopped"]
    assert listed("dead") == ["m-dead"]
    result = cli(mongo_url, "workers", "--state", "zombie")
    assert result.exit_code == 2 and "'--state'" in result.stderr


def test_workers_when_there_are_none(mongo_url: str) -> None:
    assert json.loads(ok(cli(mongo_url, "workers", "--json"))) == []
    assert rows(ok(cli(mongo_url, "workers")))[1:] == []


def test_client_workers_rejects_an_unknown_state(client: Client) -> None:
    with pytest.raises(InvalidJobError, match="worker state must be one of running, lost"):
        client.workers("zombie")


# -- tasks -----------------------------------------------------------------------


def test_tasks_table_counts_jobs_by_state_and_live_workers(
    mongo_url: str, fleet: dict[str, Any]
) -> None:
    table = ok(cli(mongo_url, "tasks"))
    assert rows(table)[0] == [
        "ID",
        "NAME",
        "VALID",
        "PAUSED",
        "LIMITS",
        "WORKERS",
        "WAITING",
        "QUEUED",
        "RUNNING",
        "SUCCEEDED",
        "FAILED",
        "CANCELLED",
        "EXPIRED",
    ]
    listed = by_id(table)
    assert list(listed) == ["billing", "mailer", "report"]
    mailer = listed["mailer"]
    assert (mailer["NAME"], mailer["VALID"], mailer["WORKERS"]) == ("Mailer", "yes", "2")
    assert (mailer["PAUSED"], mailer["LIMITS"]) == ("-", "-")
    assert [
        mailer[s] for s in ("WAITING", "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")
    ] == ["0", "1", "2", "1", "0", "0"]
    assert listed["billing"]["VALID"] == "no" and listed["billing"]["CANCELLED"] == "1"
    assert listed["billing"]["WORKERS"] == "1"  # m-live; m-dead announced it once
    # Only standalone workers run 'report': never announced, listed from its jobs.
    report = listed["report"]
    assert (report["VALID"], report["WORKERS"], report["SUCCEEDED"], report["FAILED"]) == (
        "-",
        "1",
        "1",
        "1",
    )


def test_tasks_json(mongo_url: str, fleet: dict[str, Any]) -> None:
    found = {t["_id"]: t for t in json.loads(ok(cli(mongo_url, "tasks", "--json")))}
    assert found["mailer"]["jobs"] == {
        "waiting": 0,
        "queued": 1,
        "running": 2,
        "succeeded": 1,
        "failed": 0,
        "cancelled": 0,
        "expired": 0,
    }
    assert found["mailer"]["liveWorkers"] == ["m-live", "s-live"]
    assert found["mailer"]["workers"] == ["m-live", "m-dead"]  # who announced it, as stored
    assert found["billing"]["valid"] is False
    assert found["billing"]["problems"] == ["timeout: must be > 0"]
    assert found["report"]["valid"] is None and found["report"]["definedAt"] is None
    assert found["report"]["liveWorkers"] == ["s-live"]


def test_tasks_when_there_are_none(mongo_url: str) -> None:
    assert json.loads(ok(cli(mongo_url, "tasks", "--json"))) == []


# -- jobs list: filters and paging -------------------------------------------------


def test_jobs_list_by_worker(mongo_url: str, fleet: dict[str, Any]) -> None:
    j = fleet
    assert set(ids(cli(mongo_url, "jobs", "list", "--worker", "m-live", "--json"))) == {
        j["running"],
        j["running2"],
        j["old_failed"],
    }
    assert set(ids(cli(mongo_url, "jobs", "list", "--worker", "s-live", "--json"))) == {
        j["old_ok"],
        j["young_ok"],
    }
    assert ids(cli(mongo_url, "jobs", "list", "--worker", "nobody", "--json")) == []


def test_jobs_list_by_worker_finds_running_jobs_claimed_before_last_worker_existed(
    client: Client, db: Any
) -> None:
    job_id = client.now("mailer")
    db.jobs.update_one({"_id": ObjectId(job_id)}, {"$set": {"state": "running", "lockedBy": "old"}})
    assert [str(d["_id"]) for d in client.jobs(worker="old")] == [job_id]


def test_jobs_list_since_and_until(mongo_url: str, fleet: dict[str, Any]) -> None:
    j = fleet
    recent = {j["running"], j["running2"], j["queued"], j["young_ok"]}
    assert set(ids(cli(mongo_url, "jobs", "list", "--since", "1 day", "--json"))) == recent
    assert set(ids(cli(mongo_url, "jobs", "list", "--since", "2 hours ago", "--json"))) == recent
    assert set(ids(cli(mongo_url, "jobs", "list", "--until", "1d", "--json"))) == {
        j["old_ok"],
        j["old_failed"],
        j["old_cancelled"],
    }
    four_days_ago = (utcnow() - 4 * DAY).isoformat()
    five_days = ["--since", "5 days", "--until", "1 day", "--json"]
    assert ids(cli(mongo_url, "jobs", "list", *five_days)) == [j["old_failed"]]
    assert ids(
        cli(mongo_url, "jobs", "list", "--since", four_days_ago, "--until", "1 day", "--json")
    ) == [j["old_failed"]]
    assert ids(cli(mongo_url, "jobs", "list", "--since", "2030-01-01T00:00:00Z", "--json")) == []
    one_line_error(
        cli(mongo_url, "jobs", "list", "--since", "yesterday"),
        "jobs list",
        "since='yesterday' is not a time",
        code=2,
    )
    one_line_error(
        cli(mongo_url, "jobs", "list", "--until", "soon"), "jobs list", "until='soon'", code=2
    )


def test_client_jobs_since_until_take_datetimes(client: Client, fleet: dict[str, Any]) -> None:
    now = utcnow()
    found = client.jobs(since=now - 4 * DAY, until=now - DAY)
    assert [str(d["_id"]) for d in found] == [fleet["old_failed"]]
    naive = (now - 4 * DAY).replace(tzinfo=None)  # naive times are UTC
    assert client.count_jobs(since=naive, until=now - DAY) == 1
    assert client.count_jobs(task="mailer", since="1 day") == 3
    assert client.count_jobs(state="succeeded", worker="s-live") == 2
    assert client.count_jobs() == 7


def test_jobs_list_pages_with_a_footer_on_stderr(mongo_url: str, client: Client, db: Any) -> None:
    created = [client.now("mailer", {"n": n}) for n in range(7)]
    for n, job_id in enumerate(created):  # distinct creation times, in this order
        created_at = utcnow() - timedelta(minutes=10 - n)
        db.jobs.update_one({"_id": ObjectId(job_id)}, {"$set": {"createdAt": created_at}})
    newest_first = created[::-1]
    page = cli(mongo_url, "jobs", "list", "--limit", "3", "--skip", "3")
    assert [r[0] for r in rows(ok(page))[1:]] == newest_first[3:6]
    assert page.stderr.strip() == "showing 4-6 of 7"
    last = cli(mongo_url, "jobs", "list", "--limit", "3", "--skip", "6")
    assert last.stderr.strip() == "showing 7-7 of 7"
    beyond = cli(mongo_url, "jobs", "list", "--skip", "10")
    assert beyond.stderr.strip() == "showing none of 7 (skipped 10)"
    filtered = cli(mongo_url, "jobs", "list", "--task", "mailer", "--limit", "2")
    assert filtered.stderr.strip() == "showing 1-2 of 7"
    # --json prints the list only: no footer anywhere.
    as_json = cli(mongo_url, "jobs", "list", "--limit", "3", "--json")
    assert ids(as_json) == newest_first[:3] and as_json.stderr == ""
    empty = cli(mongo_url, "jobs", "list", "--task", "nothing")
    assert empty.stderr.strip() == "showing none of 0"


def test_jobs_list_shows_the_worker_column(mongo_url: str, fleet: dict[str, Any]) -> None:
    listed = by_id(ok(cli(mongo_url, "jobs", "list", "--task", "report")))
    assert listed[fleet["young_ok"]]["WORKER"] == "s-live"
    assert listed[fleet["old_failed"]]["WORKER"] == "m-live"


# -- jobs delete -----------------------------------------------------------------


def test_jobs_delete_deletes_queued_and_finished_jobs_and_refuses_running_ones(
    mongo_url: str, client: Client, db: Any, fleet: dict[str, Any]
) -> None:
    out = ok(cli(mongo_url, "jobs", "delete", fleet["queued"]))
    assert out.strip() == f"{fleet['queued']} deleted (was queued)"
    out = ok(cli(mongo_url, "jobs", "delete", fleet["old_failed"]))
    assert out.strip() == f"{fleet['old_failed']} deleted (was failed)"
    assert db.jobs.count_documents({"_id": ObjectId(fleet["queued"])}) == 0
    running = fleet["running"]
    one_line_error(
        cli(mongo_url, "jobs", "delete", running), "jobs delete", running, "is running", "cancel it"
    )
    assert db.jobs.find_one({"_id": ObjectId(running)})["state"] == "running"
    one_line_error(
        cli(mongo_url, "jobs", "delete", fleet["queued"]),
        "jobs delete",
        f"no job {fleet['queued']}",
    )
    one_line_error(cli(mongo_url, "jobs", "delete", "zz"), "jobs delete", "'zz'")
    assert db.jobs.count_documents({}) == 5


def test_client_delete(client: Client) -> None:
    job_id = client.schedule("in 1 hour", "mailer")
    assert str(client.delete(job_id)["_id"]) == job_id
    with pytest.raises(JobNotFound):
        client.get(job_id)
    with pytest.raises(JobNotFound):
        client.delete(job_id)


def test_deleting_a_queued_chain_step_stops_the_chain(client: Client, db: Any) -> None:
    last = client.chain([("mailer", {}), ("report", {}), ("billing", {})])
    first = db.jobs.find_one(sort=[("_id", 1)])  # a chain's steps are in order of id
    client.delete(str(first["_id"]))
    rest = list(db.jobs.find().sort("_id", 1))
    assert [d["state"] for d in rest] == ["cancelled", "cancelled"]
    assert str(rest[-1]["_id"]) == last
    assert (
        "chain stopped at step 1 of 3" in rest[0]["failReason"]
        and "deleted" in rest[0]["failReason"]
    )


def test_deleting_a_finished_chain_step_leaves_the_chain_alone(client: Client, db: Any) -> None:
    client.chain([("mailer", {}), ("report", {}), ("billing", {})])
    first, second, _ = db.jobs.find().sort("_id", 1)
    db.jobs.update_one({"_id": first["_id"]}, {"$set": {"state": "succeeded"}})
    db.jobs.update_one({"_id": second["_id"]}, {"$set": {"state": "queued"}})
    client.delete(str(first["_id"]))
    assert [d["state"] for d in db.jobs.find().sort("_id", 1)] == ["queued", "waiting"]


# -- jobs purge ------------------------------------------------------------------


def states(db: Any) -> list[str]:
    return sorted(d["state"] for d in db.jobs.find())


def test_jobs_purge_asks_then_deletes_only_old_jobs_in_that_state(
    mongo_url: str, db: Any, fleet: dict[str, Any]
) -> None:
    before = states(db)
    declined = cli(
        mongo_url, "jobs", "purge", "--state", "succeeded", "--older-than", "7 days", input="n\n"
    )
    assert declined.exit_code == 1
    assert "delete 1 succeeded job finished more than 7 days ago? [y/N]" in declined.stdout
    assert states(db) == before
    accepted = cli(
        mongo_url, "jobs", "purge", "--state", "succeeded", "--older-than", "7 days", input="y\n"
    )
    assert ok(accepted).splitlines()[-1] == "deleted 1 succeeded job finished more than 7 days ago"
    assert db.jobs.count_documents({"_id": ObjectId(fleet["old_ok"])}) == 0
    # The young succeeded job, and every job not finished, are still there.
    assert db.jobs.count_documents({"_id": ObjectId(fleet["young_ok"])}) == 1
    assert states(db) == ["cancelled", "failed", "queued", "running", "running", "succeeded"]


def test_jobs_purge_yes_and_nothing_to_do(mongo_url: str, db: Any, fleet: dict[str, Any]) -> None:
    out = ok(cli(mongo_url, "jobs", "purge", "--state", "failed", "--older-than", "1d", "--yes"))
    assert out.strip() == "deleted 1 failed job finished more than 1d ago"
    out = ok(cli(mongo_url, "jobs", "purge", "--state", "failed", "--older-than", "1d", "--yes"))
    assert out.strip() == "deleted 0 failed jobs finished more than 1d ago"
    # Nothing to delete: no question asked.
    out = ok(cli(mongo_url, "jobs", "purge", "--state", "cancelled", "--older-than", "30 days"))
    assert out.strip() == "deleted 0 cancelled jobs finished more than 30 days ago"
    assert sorted(states(db)) == [
        "cancelled",
        "queued",
        "running",
        "running",
        "succeeded",
        "succeeded",
    ]


def test_jobs_purge_bad_input(mongo_url: str, db: Any, fleet: dict[str, Any]) -> None:
    result = cli(mongo_url, "jobs", "purge", "--state", "queued", "--older-than", "1d", "--yes")
    assert result.exit_code == 2 and "'--state'" in result.stderr
    result = cli(mongo_url, "jobs", "purge", "--state", "failed", "--yes")
    assert result.exit_code == 2 and "--older-than" in result.stderr
    one_line_error(
        cli(mongo_url, "jobs", "purge", "--state", "failed", "--older-than", "soon", "--yes"),
        "jobs purge",
        "older_than",
        "'soon' is not a duration",
        code=2,
    )
    assert db.jobs.count_documents({}) == 7


def test_client_purge(client: Client, db: Any, fleet: dict[str, Any]) -> None:
    for state in ("queued", "running", "waiting", "nonsense"):
        with pytest.raises(InvalidJobError, match="state must be one of succeeded, failed"):
            client.purge(state, "0s")
    assert client.purge("succeeded", 0, dry_run=True) == 2
    assert db.jobs.count_documents({}) == 7
    assert client.purge("succeeded", timedelta(days=2)) == 1
    assert client.purge("succeeded", "0") == 1
    assert client.purge("succeeded", "0") == 0
    with pytest.raises(InvalidJobError, match="older_than"):
        client.purge("failed", -5)
    assert states(db) == ["cancelled", "failed", "queued", "running", "running"]


# -- jobs that ran: lastWorker -----------------------------------------------------


def test_jobs_show_names_the_last_worker(mongo_url: str, fleet: dict[str, Any]) -> None:
    shown = ok(cli(mongo_url, "jobs", "show", fleet["young_ok"]))
    assert "last worker:  s-live" in shown
    running = ok(cli(mongo_url, "jobs", "show", fleet["running"]))
    assert "locked by:    m-live" in running and "last worker" not in running


def test_the_claim_records_the_last_worker(client: Client, db: Any, spawn_worker: Any) -> None:
    spawn_worker("noop", worker_id="runner-1")
    job_id = client.now("noop")
    done = wait_finished(db, job_id)
    assert done["state"] == "succeeded"
    assert done["lastWorker"] == "runner-1" and "lockedBy" not in done
    assert [str(d["_id"]) for d in client.jobs(worker="runner-1")] == [job_id]


def test_jobs_help_lists_the_new_commands(mongo_url: str) -> None:
    out = ok(CliRunner().invoke(main, ["jobs", "--help"]))
    assert "delete" in out and "purge" in out
    out = ok(CliRunner().invoke(main, ["--help"]))
    assert "workers" in out and "tasks" in out


def test_no_mongo_given_is_one_line() -> None:
    result = CliRunner(env={"QWORKER_MONGO": None}).invoke(main, ["workers"])
    assert result.exit_code == 2
    assert result.stderr.strip().startswith("main workers: error: no MongoDB given")
