"""``qworker-manager init-db``: the schema made once, and roles of least privilege.

Applications, workers and viewers then run as users that may not create
indexes (every process used to try at start, and a read-only user got a
traceback), and each role writes only what its part of the fleet writes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.errors import OperationFailure
from support.server import Server

from qworker import Client
from qworker.mongo import Names
from qworker.roles import privileges
from qworker.schema import INDEXES

ADMIN = "admin:admin-password"


def manager_cli(*args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("QWORKER_")}
    return subprocess.run(
        [sys.executable, "-m", "qworker.cli.manager", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean,
    )


def test_init_db_makes_the_schema_and_the_roles_and_may_run_again(mongo_url: str, db: Any) -> None:
    db.jobs.create_index("createdAt", name="recent")  # an index of an earlier version
    Client(mongo_url).close()  # an application's set-up drops nothing
    assert "recent" in {i["name"] for i in db.jobs.list_indexes()}
    for _ in range(2):
        done = manager_cli("--mongo", mongo_url, "init-db", "--roles")
        assert done.returncode == 0, done.stderr
    assert "collections and indexes of" in done.stdout and "updated role qworkerApp" in done.stdout
    assert db.channel.options()["capped"] is True
    made = {i["name"] for i in db.jobs.list_indexes()}
    assert made == {"_id_", *(name for name, _, _ in INDEXES["jobs"])}
    roles = db.command("rolesInfo", 1, showPrivileges=True)["roles"]
    granted = {
        r["role"]: {p["resource"]["collection"]: set(p["actions"]) for p in r["privileges"]}
        for r in roles
    }
    assert set(granted) >= set(privileges(Names()))
    app = granted["qworkerApp"]
    # This server has change streams: the application watches jobs and writes no hint.
    assert app["jobs"] == {"find", "insert", "update", "changeStream"}
    for kept in ("channel", "schedules", "leases", "tasks", "workers"):  # it writes none
        assert kept not in app


def test_each_part_runs_as_its_role_and_writes_only_what_it_may(own_server: Server) -> None:
    with MongoClient(own_server.url) as mongo:
        mongo.admin.command(
            "createUser", "admin", pwd="admin-password", roles=[{"role": "root", "db": "admin"}]
        )
    own_server.stop()
    admin_url = f"mongodb://{ADMIN}@127.0.0.1:{own_server.port}/app?authSource=admin"
    own_server.start("--auth", answering=admin_url)
    done = manager_cli("--mongo", admin_url, "init-db", "--roles")
    assert done.returncode == 0, done.stderr
    with MongoClient(admin_url) as mongo:
        for role in ("qworkerApp", "qworkerViewer"):
            mongo.app.command("createUser", role.lower(), pwd="pw", roles=[role])

    def as_user(user: str) -> str:
        return f"mongodb://{user}:pw@127.0.0.1:{own_server.port}/app"

    # A viewer lists jobs; an application enqueues: neither may create indexes.
    with Client(as_user("qworkerapp")) as app:
        job_id = app.now("noop", {"n": 1})
    listed = manager_cli("--mongo", as_user("qworkerviewer"), "jobs", "list", "--json")
    assert listed.returncode == 0 and job_id in listed.stdout, listed.stderr
    with MongoClient(as_user("qworkerapp")) as mongo:
        try:
            mongo.app.leases.insert_one({"_id": "manager", "owner": "app"})
        except OperationFailure as exc:
            assert exc.code == 13  # Unauthorized: what MongoDB answers
        else:
            pytest.skip(
                "the last check needs a server that enforces the privileges of "
                "roles, as MongoDB does: SecantusDB 0.7.0b3 authenticates users but "
                "lets them write any collection"
            )


def test_without_change_streams_an_application_may_still_send_its_wake_ups() -> None:
    names = Names()
    assert privileges(names, streams=False)["qworkerApp"] == {
        "jobs": ["find", "insert", "update"],
        "channel": ["insert"],
        "workflows": ["find", "insert", "update"],
    }
    assert "channel" not in privileges(names, streams=True)["qworkerApp"]
