"""MongoDB roles for each part of a fleet: what each may read and write, and no more.

Every collection is written by only the parts that need to: an application
enqueues and looks at jobs (and wakes workers); a worker runs them and lists
itself; the manager keeps the fleet, the schedules and the lease; an operator
acts on jobs and schedules; a viewer reads. ``qworker-manager init-db
--roles`` creates them (again, when they change) in the fleet's database;
users are then given them with MongoDB's own ``createUser``/``grantRolesToUser``.
"""

from __future__ import annotations

from typing import Any

from pymongo.database import Database
from pymongo.errors import OperationFailure

from qworker.mongo import Names
from qworker.streams import watchable

READ = ["find"]
WRITE = ["find", "insert", "update"]
ALL = ["find", "insert", "update", "remove"]
# Watching jobs: the workers' wake-ups and every client's wait.
WATCH = ["changeStream"]

Doc = dict[str, Any]


def privileges(names: Names, streams: bool = True) -> dict[str, dict[str, list[str]]]:
    """Role name → collection → actions.

    Where the server has change streams (``streams``), an application writes
    nothing to the channel: workers watch ``jobs``. Then only workers, managers
    and operators can write the channel, and so forge what it carries.
    """
    app = {names.jobs: WRITE + WATCH} if streams else {names.jobs: WRITE, names.channel: ["insert"]}
    app[names.workflows] = WRITE
    return {
        "qworkerApp": app,
        "qworkerWorker": {
            names.jobs: WRITE + WATCH,
            names.channel: ["find", "insert"],
            names.workers: WRITE,
            names.leases: READ,
            names.workflows: WRITE,  # a job's sub-workflows
            names.controls: READ,  # the pauses of its tasks
            names.limits: WRITE,  # the slots of its tasks' fleet-wide limits
        },
        "qworkerOperator": {
            names.jobs: ALL + WATCH,
            names.schedules: ALL,
            names.channel: ["insert"],
            names.workers: ["find", "update"],  # asking a worker to stop (stopRequested)
            names.tasks: READ,
            names.workflows: WRITE,
            names.controls: WRITE,  # pausing tasks
            names.limits: READ,
        },
        "qworkerViewer": {
            names.jobs: READ + WATCH,
            names.schedules: READ,
            names.workers: READ,
            names.tasks: READ,
            names.workflows: READ,
            names.controls: READ,
            names.limits: READ,
        },
        "qworkerManager": {
            names.jobs: ALL + WATCH,
            names.channel: ["find", "insert"],
            names.workers: ALL,
            names.tasks: ALL,
            names.leases: ALL,
            names.schedules: ALL,
            names.workflows: ALL,
            names.controls: ALL,
            names.limits: ALL,
        },
    }


# The manager makes the collections and indexes (init-db, and at every start).
SCHEMA_ACTIONS = ["createCollection", "createIndex", "dropIndex", "listIndexes", "collMod"]


def role_documents(db_name: str, names: Names, streams: bool = True) -> dict[str, list[Doc]]:
    """Role name → its privileges as ``createRole`` takes them."""
    roles: dict[str, list[Doc]] = {}
    for role, collections in privileges(names, streams).items():
        roles[role] = [
            {"resource": {"db": db_name, "collection": name}, "actions": actions}
            for name, actions in collections.items()
        ]
        if role == "qworkerManager":
            roles[role].append(
                {"resource": {"db": db_name, "collection": ""}, "actions": SCHEMA_ACTIONS}
            )
    return roles


def create_roles(db: Database[Doc], names: Names) -> list[str]:
    """Create the roles in ``db``, or bring existing ones up to date; what was done."""
    done = []
    watched = watchable(db[names.jobs])
    for role, granted in role_documents(db.name, names, watched).items():
        try:
            db.command("createRole", role, privileges=granted, roles=[])
            done.append(f"created role {role}")
        except OperationFailure as exc:
            if "already exists" not in str(exc) and exc.code != 51002:
                raise
            db.command("updateRole", role, privileges=granted, roles=[])
            done.append(f"updated role {role}")
    return done
