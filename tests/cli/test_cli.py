"""``qworker-manager``: enqueue, inspect and act on jobs, the demo, and ``--help``."""

from __future__ import annotations

import json
import os
import re
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import pytest
from bson import ObjectId
from click.testing import CliRunner
from support.logs import one_error_line
from support.processes import REPO, console_command

from qworker import Client, lifecycle
from qworker.cli.manager import main as manager_main
from qworker.schedules import make_schedule

UNREACHABLE = "mongodb://127.0.0.1:1/x"
MS = timedelta(milliseconds=1)


MANAGER = console_command("qworker-manager", "qworker.cli.manager")
WORKER = console_command("qworker", "qworker.cli.worker")


def run(
    *args: str, cwd: Path = REPO, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("QWORKER_")}
    return subprocess.run(
        [*MANAGER, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**clean, "COLUMNS": "200", **(env or {})},
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr
    return done.stdout


def one_line_error(done: subprocess.CompletedProcess[str], command: str, *fragments: str) -> str:
    assert done.returncode != 0
    return one_error_line(done.stderr, f"qworker-manager {command}", *fragments)


def ids_in(text: str) -> list[str]:
    return re.findall(r"\b[0-9a-f]{24}\b", text)


# -- enqueue ---------------------------------------------------------------------


def test_enqueue_prints_the_id_of_the_stored_job(mongo_url: str, db: Any) -> None:
    out = ok(
        run(
            "--mongo",
            mongo_url,
            "enqueue",
            "send-mail",
            "--data",
            '{"to": ["a@b.c"], "n": 2}',
            "--when",
            "in 10 minutes",
            "--priority",
            "high",
            "--max-attempts",
            "3",
            "--timeout",
            "2.5",
            "--description",
            "welcome mail",
        )
    )
    job_id = out.strip()
    assert re.fullmatch(r"[0-9a-f]{24}", job_id), out
    doc = db.jobs.find_one({"_id": ObjectId(job_id)})
    assert doc is not None
    assert doc["name"] == "send-mail"
    assert doc["data"] == {"to": ["a@b.c"], "n": 2}
    assert doc["state"] == "queued"
    assert doc["priority"] == 10
    assert abs(doc["nextRunAt"] - doc["createdAt"] - timedelta(minutes=10)) <= 2 * MS
    assert doc["maxAttempts"] == 3 and doc["timeout"] == 2.5
    assert doc["description"] == "welcome mail"


def test_enqueue_at_an_iso_time_without_data(mongo_url: str, db: Any) -> None:
    job_id = ok(run("--mongo", mongo_url, "enqueue", "report", "--when", "2031-02-03T04:05:06Z"))
    doc = db.jobs.find_one({"_id": ObjectId(job_id.strip())})
    assert doc["nextRunAt"] == datetime(2031, 2, 3, 4, 5, 6, tzinfo=UTC)
    assert doc["data"] is None and doc["priority"] == 0


def test_enqueue_with_mongo_from_the_environment(mongo_url: str, db: Any) -> None:
    job_id = ok(run("enqueue", "noop", env={"QWORKER_MONGO": mongo_url})).strip()
    assert db.jobs.count_documents({"_id": ObjectId(job_id)}) == 1


def test_enqueue_with_mongo_from_a_config_file(mongo_url: str, db: Any, tmp_path: Path) -> None:
    config = tmp_path / "manager.yaml"
    config.write_text(f"mongo: {mongo_url}\n")
    job_id = ok(run("--config", str(config), "enqueue", "noop")).strip()
    assert db.jobs.count_documents({"_id": ObjectId(job_id)}) == 1


@pytest.mark.parametrize("data", ["{bad", '{"a": 1,}', "[1, 2", "'single'"])
def test_enqueue_with_bad_data_json(mongo_url: str, db: Any, data: str) -> None:
    done = run("--mongo", mongo_url, "enqueue", "noop", "--data", data)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "'--data'" in done.stderr and "not valid JSON" in done.stderr
    assert re.search(r"line \d+, column \d+", done.stderr)
    assert done.stdout == ""
    assert db.jobs.count_documents({}) == 0


def test_bad_data_is_reported_before_connecting() -> None:
    done = run("--mongo", UNREACHABLE, "enqueue", "noop", "--data", "{", timeout=8)
    assert done.returncode == 2 and "not valid JSON" in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["Not-A-Task"], "is not a valid task id"),
        (["noop", "--when", "whenever"], "cannot understand when='whenever'"),
        (["noop", "--priority", "urgent"], "priority 'urgent'"),
        (["noop", "--data", "NaN"], "job data is not JSON-serialisable"),
        (["noop", "--data", '{"n": 100000000000000000000000}'], "cannot be stored"),
    ],
)
def test_enqueue_with_invalid_job_input(
    mongo_url: str, db: Any, args: list[str], message: str
) -> None:
    done = run("--mongo", mongo_url, "enqueue", *args)
    one_line_error(done, "enqueue", message)
    assert done.returncode == 2
    assert db.jobs.count_documents({}) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--max-attempts", "0"], "--max-attempts"), (["--timeout", "0"], "--timeout")],
)
def test_enqueue_with_out_of_range_options(
    mongo_url: str, db: Any, args: list[str], message: str
) -> None:
    done = run("--mongo", mongo_url, "enqueue", "noop", *args)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert db.jobs.count_documents({}) == 0


def test_no_mongo_given() -> None:
    one_line_error(run("jobs", "list"), "jobs list", "no MongoDB given", "--mongo", "QWORKER_MONGO")


def test_unreachable_mongo() -> None:
    done = run("--mongo", f"{UNREACHABLE}?serverSelectionTimeoutMS=300", "jobs", "list")
    one_line_error(done, "jobs list", "cannot reach MongoDB", "127.0.0.1:1")


def test_bad_credentials_are_one_line(mongo_server: Any) -> None:
    """SecantusDB refuses a user it does not have, as mongod does."""
    base = mongo_server.url.removeprefix("mongodb://")
    done = run("--mongo", f"mongodb://app:wrong-password@{base}/app", "jobs", "list")
    line = one_line_error(done, "jobs list", "MongoDB refused the credentials")
    assert "wrong-password" not in line and done.returncode == 2


def test_a_mongo_url_file_keeps_the_password_off_the_command_line(
    mongo_url: str, client: Client, tmp_path: Path
) -> None:
    url_file = tmp_path / "mongo-url"
    url_file.write_text(mongo_url + "\n")
    job_id = client.now("noop")
    listed = json.loads(ok(run("--mongo-file", str(url_file), "jobs", "list", "--json")))
    assert [job["_id"] for job in listed] == [job_id]
    both = run("--mongo", mongo_url, "--mongo-file", str(url_file), "jobs", "list")
    one_error_line(both.stderr, "qworker-manager", "give --mongo or --mongo-file, not both")


def test_malformed_mongo_url() -> None:
    one_line_error(run("--mongo", "http://x/y", "jobs", "list"), "jobs list", "not a MongoDB URL")


def test_connection_options_may_follow_the_subcommand(mongo_url: str, client: Client) -> None:
    job_id = client.now("noop")
    listed = json.loads(ok(run("jobs", "list", "--mongo", mongo_url, "--json")))
    assert [job["_id"] for job in listed] == [job_id]
    # After the subcommand wins over before it (and over the environment).
    env = {"QWORKER_MONGO": UNREACHABLE}
    listed = json.loads(
        ok(run("--mongo", UNREACHABLE, "jobs", "list", "-m", mongo_url, "--json", env=env))
    )
    assert [job["_id"] for job in listed] == [job_id]
    queued = ok(run("enqueue", "noop", "--mongo", mongo_url, "--prefix", "other_")).strip()
    assert Client(mongo_url, prefix="other_").get(queued)["name"] == "noop"


def test_retry_cancel_and_delete_print_json_when_asked(mongo_url: str, client: Client) -> None:
    job_id = client.now("noop", {"n": 1})
    cancelled = json.loads(ok(run("--mongo", mongo_url, "jobs", "cancel", job_id, "--json")))
    assert cancelled["_id"] == job_id and cancelled["state"] == "cancelled"
    retried = json.loads(ok(run("--mongo", mongo_url, "jobs", "retry", job_id, "--json")))
    assert retried["state"] == "queued" and retried["data"] == {"n": 1}
    client.cancel(job_id)
    deleted = json.loads(ok(run("--mongo", mongo_url, "jobs", "delete", job_id, "--json")))
    assert deleted["_id"] == job_id and deleted["state"] == "cancelled"
    assert client.count_jobs() == 0


def test_a_schedule_from_task_metadata_is_not_removed_but_can_be_paused(
    mongo_url: str, client: Client
) -> None:
    """Removed, it would come back as soon as a worker defines the task again."""
    client.add_schedule(make_schedule("task:tick", "tick", every="1 hour", origin="metadata"))
    done = run("--mongo", mongo_url, "schedules", "remove", "task:tick")
    line = one_line_error(done, "schedules remove", "comes from the metadata of task 'tick'")
    assert "pause it instead (schedules pause task:tick)" in line and done.returncode == 1
    assert client.schedule_info("task:tick")["paused"] is False
    ok(run("--mongo", mongo_url, "schedules", "pause", "task:tick"))
    assert client.schedule_info("task:tick")["paused"] is True


# -- jobs show -------------------------------------------------------------------


def test_jobs_show_table_and_json(mongo_url: str, client: Client) -> None:
    job_id = client.schedule(
        "2031-01-01T00:00:00Z", "report", {"month": "jan"}, priority=5, description="monthly"
    )
    table = ok(run("--mongo", mongo_url, "jobs", "show", job_id))
    fields = dict(re.split(r":\s+", line, maxsplit=1) for line in table.strip().splitlines())
    assert fields["id"] == job_id
    assert fields["task"] == "report"
    assert fields["state"] == "queued"
    assert fields["priority"] == "5"
    assert fields["description"] == "monthly"
    assert json.loads(fields["data"]) == {"month": "jan"}
    assert fields["next run"] == "2031-01-01 00:00:00"

    shown = json.loads(ok(run("--mongo", mongo_url, "jobs", "show", job_id, "--json")))
    assert shown["_id"] == job_id
    assert shown["name"] == "report" and shown["state"] == "queued"
    assert shown["data"] == {"month": "jan"}
    assert datetime.fromisoformat(shown["nextRunAt"]) == datetime(2031, 1, 1, tzinfo=UTC)


def test_jobs_show_unknown_id(mongo_url: str, client: Client) -> None:
    missing = str(ObjectId())
    one_line_error(run("--mongo", mongo_url, "jobs", "show", missing), "jobs show", missing)
    one_line_error(
        run("--mongo", mongo_url, "jobs", "show", "nope", "--json"),
        "jobs show",
        "'nope'",
        "24 hexadecimal characters",
    )


# -- jobs list -------------------------------------------------------------------


def test_jobs_list_filters(mongo_url: str, client: Client) -> None:
    invoice = client.now("billing", {"n": 1}, description="Monthly INVOICE run")
    digest = client.now("mailer", description="weekly digest")
    later = client.schedule("in 1 hour", "mailer", description="weekly invoice reminder")
    client.cancel(digest)

    def listed(*args: str) -> list[str]:
        # In-process (the same command, without a process start) to keep this quick.
        result = CliRunner().invoke(manager_main, ["--mongo", mongo_url, "jobs", "list", *args])
        assert result.exit_code == 0, result.output
        return [j["_id"] for j in json.loads(result.stdout)]

    assert listed("--json") == [later, digest, invoice]  # newest first
    assert listed("--json", "--state", "cancelled") == [digest]
    assert listed("--json", "--state", "queued") == [later, invoice]
    assert listed("--json", "--task", "mailer") == [later, digest]
    assert listed("--json", "--text", "invoice") == [later, invoice]
    assert listed("--json", "--task", "mailer", "--text", "invoice") == [later]
    assert listed("--json", "--state", "failed") == []
    assert listed("--json", "--limit", "1") == [later]
    assert listed("--json", "--limit", "1", "--skip", "1") == [digest]

    table = ok(run("--mongo", mongo_url, "jobs", "list", "--task", "mailer"))
    header, rule, *rows = table.strip().splitlines()
    assert header.split()[:3] == ["ID", "TASK", "STATE"]
    assert set(rule.replace(" ", "")) == {"-"}
    assert [ids_in(r) for r in rows] == [[later], [digest]]
    assert "cancelled" in rows[1] and "queued" in rows[0]


def test_jobs_list_rejects_an_unknown_state(mongo_url: str) -> None:
    done = run("--mongo", mongo_url, "jobs", "list", "--state", "done")
    assert done.returncode == 2 and "'--state'" in done.stderr and "Traceback" not in done.stderr


def test_jobs_list_when_there_are_none(mongo_url: str) -> None:
    assert json.loads(ok(run("--mongo", mongo_url, "jobs", "list", "--json"))) == []
    assert ids_in(ok(run("--mongo", mongo_url, "jobs", "list"))) == []


# -- jobs cancel / retry -----------------------------------------------------------


def test_jobs_cancel_and_retry(mongo_url: str, client: Client, db: Any) -> None:
    job_id = client.schedule("in 1 hour", "noop")
    out = ok(run("--mongo", mongo_url, "jobs", "cancel", job_id))
    assert out.split() == [job_id, "cancelled"]
    assert db.jobs.find_one({"_id": ObjectId(job_id)})["state"] == "cancelled"

    out = ok(run("--mongo", mongo_url, "jobs", "retry", job_id))
    assert out.split() == [job_id, "queued"]
    doc = db.jobs.find_one({"_id": ObjectId(job_id)})
    assert doc["state"] == "queued"
    assert doc["nextRunAt"] <= datetime.now(UTC) + MS

    done = run("--mongo", mongo_url, "jobs", "retry", job_id)
    one_line_error(done, "jobs retry", job_id, "only finished jobs can be retried")
    assert db.jobs.find_one({"_id": ObjectId(job_id)})["state"] == "queued"


def test_jobs_cancel_unknown(mongo_url: str) -> None:
    missing = str(ObjectId())
    one_line_error(run("--mongo", mongo_url, "jobs", "cancel", missing), "jobs cancel", missing)
    one_line_error(run("--mongo", mongo_url, "jobs", "retry", "zz"), "jobs retry", "'zz'")


# -- expired jobs ------------------------------------------------------------------


def test_expired_jobs_are_listed_shown_counted_and_retried(mongo_url: str, db: Any) -> None:
    now = datetime.now(UTC)

    def cli(*args: str) -> str:
        # In-process (the same commands, without a process start) to keep this quick.
        result = CliRunner().invoke(manager_main, ["--mongo", mongo_url, *args])
        assert result.exit_code == 0, result.output
        return result.stdout

    job_id = cli("enqueue", "mailer", "--expires", "2 minutes").strip()
    deadline = db.jobs.find_one({"_id": ObjectId(job_id)})["expiresAt"]
    assert abs((deadline - now).total_seconds() - 120) < 5
    db.jobs.update_one({"_id": ObjectId(job_id)}, lifecycle.expiry(now, lifecycle.KEEP))

    assert [j["_id"] for j in json.loads(cli("jobs", "list", "--state", "expired", "--json"))] == [
        job_id
    ]
    header, _, row = cli("jobs", "list", "--state", "expired").strip().splitlines()
    assert ids_in(row) == [job_id] and "expired" in row and lifecycle.EXPIRED_REASON in row
    fields = dict(
        re.split(r":\s+", line, maxsplit=1) for line in cli("jobs", "show", job_id).splitlines()
    )
    assert fields["state"] == "expired" and fields["fail reason"] == lifecycle.EXPIRED_REASON
    assert fields["deadline"] == deadline.strftime("%Y-%m-%d %H:%M:%S")  # the stored one
    assert "kept until" in fields  # retention (expireAt), not the deadline
    header, _, row = cli("tasks").strip().splitlines()
    counts = dict(zip(header.split(), row.split(), strict=True))
    assert counts["EXPIRED"] == "1" and counts["QUEUED"] == "0"
    assert cli("jobs", "purge", "--state", "expired", "--older-than", "1 day", "--yes")
    assert cli("jobs", "retry", job_id).split() == [job_id, "queued"]


# -- demo --------------------------------------------------------------------------


def test_demo_runs_every_job_to_its_end_from_any_folder(
    mongo_url: str, db: Any, tmp_path: Path
) -> None:
    done = run("--mongo", mongo_url, "demo", cwd=tmp_path, timeout=120)  # not the repo's root
    out = ok(done)
    jobs = list(db.jobs.find({"description": "demo"}))
    assert len(jobs) == 5
    states = sorted(j["state"] for j in jobs)
    assert states == ["failed"] + ["succeeded"] * 4, states
    by_task: dict[str, list[dict[str, Any]]] = {}
    for job in jobs:
        by_task.setdefault(job["name"], []).append(job)
    assert sorted(j["result"]["greeting"] for j in by_task["hello"]) == [
        "Hello, qworker!",
        "Hello, world!",
    ]
    assert by_task["countdown"][0]["result"] == {"steps": 5}
    assert by_task["countdown"][0]["progress"]["percent"] == 100
    failed = next(j for j in by_task["flaky"] if j["state"] == "failed")
    assert failed["data"] == {"fail": True}
    assert failed["attempts"] == 2 and failed["failCount"] == 2  # maxAttempts: 2
    assert "the data asked this job to fail" in failed["failReason"]
    # The closing table lists every demo job.
    assert set(ids_in(out)) >= {str(j["_id"]) for j in jobs}

    # And 'jobs show' gives the failed job's story: reason, traceback, log.
    story = ok(run("--mongo", mongo_url, "jobs", "show", str(failed["_id"])))
    assert "state:        failed" in story
    assert "traceback:" in story and "Refused" in story
    assert "log:" in story and "refusing input" in story


# -- help ----------------------------------------------------------------------------


def _command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            paths += _command_paths(command, (*prefix, name))
        else:
            paths.append((*prefix, name))
    return paths


MANAGER_COMMANDS = _command_paths(manager_main)


def test_the_manager_has_the_commands_we_test() -> None:
    names = {" ".join(p) for p in MANAGER_COMMANDS}
    assert {
        "enqueue",
        "jobs",
        "jobs show",
        "jobs list",
        "jobs cancel",
        "jobs retry",
        "demo",
    } <= names


@pytest.mark.parametrize("path", MANAGER_COMMANDS, ids=lambda p: " ".join(p) or "(root)")
def test_manager_help(path: tuple[str, ...]) -> None:
    out = ok(run(*path, "--help"))
    assert out.startswith(f"Usage: qworker-manager {' '.join(path)}".rstrip())
    assert "Options:" in out and "--help" in out
    command: click.Command = manager_main
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    if isinstance(command, click.Group):
        for sub in command.commands:
            assert sub in out
    # -h is the short form everywhere.
    assert ok(run(*path, "-h")) == out


def test_worker_help() -> None:
    done = subprocess.run([*WORKER, "--help"], capture_output=True, text=True, timeout=60)
    out = ok(done)
    assert out.startswith("Usage: qworker [OPTIONS] [TASK]...")
    for option in (
        "--mongo",
        "--paths",
        "--tasks",
        "--concurrency",
        "--config",
        "--standalone",
        "--print-config",
        "QWORKER_MONGO",
    ):
        assert option in out
