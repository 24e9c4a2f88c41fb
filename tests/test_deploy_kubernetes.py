"""deploy/kubernetes/: the manifests, the KEDA query, and docs/deploy.md's MongoDB commands.

No cluster runs here. The core kinds are validated against the Kubernetes
schemas that the ``kubernetes-validate`` package bundles (offline, strict: an
unknown field is an error); KEDA's kinds, for which no package has a schema,
by the fields that matter. The KEDA query is read from keda.yaml and run with
pymongo against the test server, the way KEDA's Go driver runs it
(``countDocuments``: an aggregation with ``$match``), and compared with what a
worker claims: its own candidate query, and a real worker's claims.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
import kubernetes_validate
import pytest
import yaml
from bson import ObjectId, json_util
from kubernetes_validate.utils import all_versions
from packaging.version import Version
from pymongo import AsyncMongoClient
from support.processes import REPO, printed_config

from qworker import Client, systemd
from qworker.cli.manager import main as manager_main
from qworker.cli.manager import serve
from qworker.cli.worker import main as worker_main
from qworker.config import parse_bind
from qworker.schema import INDEXES
from qworker.store import WorkerStore
from qworker.when import utcnow
from qworker.worker.daemon import Worker

KUBERNETES = REPO / "deploy" / "kubernetes"
MANIFESTS = ("manager.yaml", "worker.yaml", "keda.yaml")
DEPLOY_DOC = REPO / "docs" / "deploy.md"
# The oldest Kubernetes the manifests claim (policy/v1, autoscaling/v2 for KEDA's
# HPA and startup probes are all older), and the newest the package carries.
OLDEST_KUBERNETES = "1.27"
POD_NAME = "qworker-hello-6f7d9c8b5-x2x7q"
Doc = dict[str, Any]


# -- reading the manifests -----------------------------------------------------------


def documents(name: str) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all((KUBERNETES / name).read_text()) if doc]


def every_document() -> list[Doc]:
    return [doc for name in MANIFESTS for doc in documents(name)]


def one(kind: str, name: str | None = None) -> Doc:
    found = [
        doc
        for doc in every_document()
        if doc["kind"] == kind and name in (None, doc["metadata"]["name"])
    ]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''} in {MANIFESTS}"
    return found[0]


def container(deployment: Doc) -> Doc:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def flags(args: list[str]) -> dict[str, str]:
    """``--name=value`` as ``{"--name": "value"}`` (a switch: ``""``). The manifests
    give every value after ``=``, so that whatever does not start with ``--`` is a
    command or a task id."""
    return {name: value for name, _, value in (a.partition("=") for a in args if a[:2] == "--")}


def positionals(args: list[str]) -> list[str]:
    return [arg for arg in args if not arg.startswith("--")]


def port_number(container: Doc, port: int | str) -> int:
    """A probe's or Service's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port in named, f"no container port named {port!r}: {sorted(named)}"
    return int(named[port])


def mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "K": 1e3 / 2**20, "M": 1e6 / 2**20}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMG]i?)", quantity)
    assert match, f"a quantity such as 1Gi or 512Mi, not {quantity!r}"
    return float(match[1]) * units[match[2]]


WORKER = one("Deployment", "qworker-hello")
MANAGER = one("Deployment", "qworker-manager")
SCALED = one("ScaledObject")
TASK = positionals(container(WORKER)["args"])[-1]


def trigger(name: str) -> Doc:
    found = [t for t in SCALED["spec"]["triggers"] if t.get("name") == name]
    assert len(found) == 1, f"no trigger {name!r}"
    return dict(found[0])


def keda_query(name: str = "runnable") -> Doc:
    """The trigger's query as KEDA's driver reads it: extended JSON (here plain JSON)."""
    text = trigger(name)["metadata"]["query"]
    query: Doc = json_util.loads(text)
    assert query == json.loads(text), "the query uses extended JSON wrappers"
    return query


# -- the schemas ---------------------------------------------------------------------


def schema_versions() -> list[str]:
    versions = [v for v in all_versions() if Version(v) >= Version(OLDEST_KUBERNETES)]
    return sorted({versions[0], kubernetes_validate.latest_version()})


@pytest.mark.parametrize("version", schema_versions())
def test_the_core_manifests_validate_against_the_kubernetes_schemas(version: str) -> None:
    validated = []
    for doc in every_document():
        if doc["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD: no bundled schema (below)
        kubernetes_validate.validate(doc, version, strict=True)
        validated.append(f"{doc['kind']}/{doc['metadata']['name']}")
    assert sorted(validated) == [
        "ConfigMap/qworker-tasks",
        "Deployment/qworker-hello",
        "Deployment/qworker-manager",
        "PodDisruptionBudget/qworker-manager",
        "Service/qworker-manager",
    ]


def test_the_validator_refuses_a_misspelt_field() -> None:
    """The validation above is not vacuous: strict schemas reject an unknown field."""
    broken = json.loads(json.dumps(WORKER))
    broken["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="livenesProbe"):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


def test_the_kustomization_applies_every_manifest() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == sorted(MANIFESTS)
    assert kustomization["namespace"] == "qworker"
    # The manager answers the Service's names in that namespace.
    env = {e["name"]: e.get("value") for e in container(MANAGER)["env"]}
    assert "qworker-manager.qworker.svc" in env["QWORKER_ALLOWED_HOSTS"].split()


# -- KEDA: no schema, so the fields that matter ----------------------------------------


def test_the_scaled_object_scales_the_worker_deployment_on_mongodb() -> None:
    assert SCALED["apiVersion"] == "keda.sh/v1alpha1"
    spec = SCALED["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": WORKER["metadata"]["name"],
    }
    assert "replicas" not in WORKER["spec"], "KEDA's HPA owns the worker count"
    assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    worker_flags = flags(container(WORKER)["args"])
    auth = one("TriggerAuthentication")
    assert auth["apiVersion"] == "keda.sh/v1alpha1"
    assert [t["name"] for t in spec["triggers"]] == ["runnable", "running"]
    for item in spec["triggers"]:
        assert item["type"] == "mongodb"
        metadata = item["metadata"]
        # KEDA's CRD takes strings only: an unquoted 8 would be refused.
        assert all(isinstance(v, str) for v in metadata.values()), metadata
        assert metadata["dbName"] == "app" and metadata["collection"] == "jobs"
        assert metadata["queryValue"] == worker_flags["--concurrency"]
        assert metadata["activationQueryValue"] == "0"
        assert item["authenticationRef"] == {"name": auth["metadata"]["name"]}
    assert keda_query("running") == {"state": "running", "name": TASK}
    assert keda_query()["name"] == TASK
    # The connection string is a Secret's key, as the Deployments' URLs are.
    (ref,) = auth["spec"]["secretTargetRef"]
    assert ref["parameter"] == "connectionString"
    urls = {
        e["valueFrom"]["secretKeyRef"]["name"]
        for deployment in (WORKER, MANAGER)
        for e in container(deployment)["env"]
        if e["name"] == "QWORKER_MONGO"
    }
    assert urls == {ref["name"]}


# -- the probes, the ports, the grace --------------------------------------------------


def probes(deployment: Doc) -> dict[str, tuple[str, int]]:
    spec = container(deployment)
    return {
        kind: (spec[kind]["httpGet"]["path"], port_number(spec, spec[kind]["httpGet"]["port"]))
        for kind in ("startupProbe", "livenessProbe", "readinessProbe")
    }


def test_the_worker_probes_are_its_health_endpoints() -> None:
    host, port = parse_bind(flags(container(WORKER)["args"])["--health"], "--health")
    assert (host, port) == ("0.0.0.0", 8081)
    assert probes(WORKER) == {
        "startupProbe": ("/healthz", 8081),
        "livenessProbe": ("/healthz", 8081),
        "readinessProbe": ("/readyz", 8081),
    }


def test_the_manager_probes_and_service_are_on_its_http_port() -> None:
    spec = container(MANAGER)
    host, port = parse_bind(flags(spec["args"])["--http"])
    assert host == "0.0.0.0"
    assert probes(MANAGER) == {
        "startupProbe": ("/healthz", port),
        "livenessProbe": ("/healthz", port),
        "readinessProbe": ("/readyz", port),
    }
    service = one("Service", "qworker-manager")
    (exposed,) = service["spec"]["ports"]
    assert port_number(spec, exposed["targetPort"]) == port
    labels = MANAGER["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert MANAGER["spec"]["replicas"] == 2
    budget = one("PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_the_pod_outlasts_the_workers_grace_and_recycles_below_its_memory_limit() -> None:
    spec = container(WORKER)
    worker_flags = flags(spec["args"])
    grace = float(worker_flags["--grace"])
    stop = WORKER["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    # As the systemd unit's TimeoutStopSec: the grace, then time to hand jobs back.
    assert stop > grace
    assert stop >= grace + systemd.STOP_MARGIN
    assert int(worker_flags["--max-jobs"]) > 0
    assert float(worker_flags["--max-memory"]) < mebibytes(spec["resources"]["limits"]["memory"])
    assert "memory" in spec["resources"]["requests"] and "cpu" in spec["resources"]["requests"]


# -- the containers' flags and variables are the daemons' own ---------------------------


def options(*commands: click.Command) -> tuple[set[str], set[str]]:
    names: set[str] = set()
    envvars: set[str] = set()
    for command in commands:
        for param in command.params:
            if isinstance(param, click.Option):
                names.update(o for o in param.opts if o.startswith("--"))
                if isinstance(param.envvar, str):
                    envvars.add(param.envvar)
    return names, envvars


def test_the_manager_container_runs_serve_with_real_options() -> None:
    spec = container(MANAGER)
    assert spec["args"][:2] == ["qworker-manager", "serve"]
    names, envvars = options(serve, manager_main)
    unknown = set(flags(spec["args"])) - names
    assert not unknown, f"not options of qworker-manager serve: {sorted(unknown)}"
    settings = {e["name"] for e in spec["env"] if e["name"].startswith("QWORKER_")}
    assert settings <= envvars, sorted(settings - envvars)


def test_the_worker_container_runs_qworker_with_real_options(tmp_path: Path) -> None:
    """The manifest's arguments and variables, as the kubelet expands them, through
    ``qworker --print-config``."""
    spec = container(WORKER)
    assert spec["args"][0] == "qworker"
    names, envvars = options(worker_main)
    unknown = set(flags(spec["args"])) - names
    assert not unknown, f"not options of qworker: {sorted(unknown)}"
    env: dict[str, str] = {}
    for item in spec["env"]:
        if "fieldRef" in item.get("valueFrom", {}):
            assert item["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            env[item["name"]] = POD_NAME
        elif "secretKeyRef" in item.get("valueFrom", {}):
            env[item["name"]] = "mongodb://db1:27017,db2:27017/app?replicaSet=rs0&w=majority"
        else:
            env[item["name"]] = item["value"]
    assert {k for k in env if k.startswith("QWORKER_")} <= envvars
    args = [re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], arg) for arg in spec["args"][1:]]
    rows = printed_config(args, {"PATH": "/usr/bin:/bin", **env}, tmp_path)
    assert f'"{POD_NAME}"' in rows["id"]
    assert f'["{TASK}"]' in rows["tasks"]
    assert '["/etc/qworker/tasks"]' in rows["paths"]
    assert "replicaSet=rs0" in rows["mongo"] and "environment" in rows["mongo"]
    mounts = {m["mountPath"] for m in spec["volumeMounts"]}
    assert "/etc/qworker/tasks" in mounts


# -- the KEDA query, against MongoDB --------------------------------------------------


def configmap_tasks(folder: Path) -> Path:
    """The ConfigMap's files, as its volume lays them out."""
    folder.mkdir()
    for name, text in one("ConfigMap", "qworker-tasks")["data"].items():
        (folder / name).write_text(text)
    return folder


def ids(db: Any, query: Doc) -> set[ObjectId]:
    return {doc["_id"] for doc in db.jobs.find(query, {"_id": 1})}


def candidates(mongo_url: str, tasks: list[str]) -> set[ObjectId]:
    """What a worker of ``tasks`` reads as its candidates now (the claim's own query)."""

    async def read() -> set[ObjectId]:
        client: AsyncMongoClient[Doc] = AsyncMongoClient(mongo_url, tz_aware=True)
        try:
            db = client.get_default_database()
            store = WorkerStore(db["jobs"], db["workflows"])
            return {doc["_id"] for doc in await store.candidates(tasks, utcnow(), 10_000)}
        finally:
            await client.close()

    return asyncio.run(read())


def test_the_keda_query_counts_exactly_the_jobs_a_worker_claims_now(
    client: Client,
    db: Any,
    mongo_url: str,
    burst: Callable[..., Worker],
    tmp_path: Path,
) -> None:
    now = utcnow()
    other = "other-task"  # no worker of the test runs it
    due = [ObjectId(client.now(TASK, {"name": f"n{n}"})) for n in range(3)]
    overdue_start = ObjectId(client.schedule(now - timedelta(hours=1), TASK, {"name": "late"}))
    later = ObjectId(client.schedule("in 1 hour", TASK))
    of_other = ObjectId(client.now(other))
    running, succeeded, failed, cancelled, lost, deadline = (
        ObjectId(client.now(TASK)) for _ in range(6)
    )
    client.cancel(str(cancelled))
    held = {"lockedBy": "elsewhere", "lockToken": "t", "lockExpiresAt": now + timedelta(hours=1)}
    db.jobs.update_one({"_id": running}, {"$set": {"state": "running", **held}})
    db.jobs.update_one({"_id": succeeded}, {"$set": {"state": "succeeded"}})
    db.jobs.update_one({"_id": failed}, {"$set": {"state": "failed"}})
    # Lost with a worker before: claimed alone, by a worker running nothing else.
    db.jobs.update_one({"_id": lost}, {"$set": {"lostCount": 1}})
    # Past its deadline: claimed, and ended expired without running.
    db.jobs.update_one({"_id": deadline}, {"$set": {"expiresAt": now - timedelta(seconds=1)}})
    client.chain([(other, 1), (TASK, 2)])  # its second step waits for the first
    waiting = db.jobs.find_one({"name": TASK, "state": "waiting"})["_id"]
    # Written around qworker: a nextRunAt that is no date. The claim never matches it
    # (a query's $lte compares dates with dates); $expr alone would (BSON order).
    malformed = db.jobs.insert_one({"name": TASK, "state": "queued", "nextRunAt": "now"})
    runnable = {*due, overdue_start, lost, deadline}
    others = {later, of_other, running, succeeded, failed, cancelled, waiting}
    assert malformed.inserted_id not in runnable | others

    query = keda_query()
    assert db.jobs.count_documents(query) == len(runnable)
    assert ids(db, query) == runnable
    assert candidates(mongo_url, [TASK]) == runnable
    assert ids(db, keda_query("running")) == {running}

    # What KEDA cannot see: a pause. Its jobs stay counted; a worker claims none.
    folder = configmap_tasks(tmp_path / "tasks")
    client.pause_task(TASK)
    assert ids(db, query) == runnable
    burst(TASK, paths=[folder])
    assert db.jobs.count_documents({"lastWorker": "in-process"}) == 0
    client.resume_task(TASK)

    # A real worker, with the ConfigMap's task, claims exactly those jobs.
    burst(TASK, paths=[folder])
    claimed = ids(db, {"lastWorker": "in-process"})
    assert claimed == runnable
    assert db.jobs.count_documents(query) == 0
    outcomes = {doc["_id"]: doc for doc in db.jobs.find({"_id": {"$in": list(runnable)}})}
    assert outcomes[deadline]["state"] == "expired"
    for job_id in runnable - {deadline}:
        assert outcomes[job_id]["state"] == "succeeded", outcomes[job_id]
    assert outcomes[overdue_start]["result"] == {"greeting": "Hello, late!"}
    assert db.jobs.find_one({"_id": malformed.inserted_id})["state"] == "queued"
    still = {doc["_id"]: doc["state"] for doc in db.jobs.find({"_id": {"$in": list(others)}})}
    assert still == {
        later: "queued",
        of_other: "queued",
        running: "running",
        succeeded: "succeeded",
        failed: "failed",
        cancelled: "cancelled",
        waiting: "waiting",
    }


def test_the_query_in_the_docs_is_the_one_in_keda_yaml() -> None:
    text = DEPLOY_DOC.read_text()
    blocks = [json.loads(b) for b in re.findall(r"```json\n(.*?)```", text, re.DOTALL)]
    assert keda_query() in blocks


# -- docs/deploy.md: the mongosh commands are what qworker makes -------------------------


def test_the_mongosh_commands_in_the_docs_are_what_the_script_prints() -> None:
    """The ``createRole``/``createIndex`` block is the output of the script before it,
    which reads ``qworker.roles`` and ``qworker.schema``: rerun the script and paste its
    output when either changes."""
    text = DEPLOY_DOC.read_text()
    fences = re.findall(r"^```(\w*)\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)
    (script_at,) = [
        n for n, (lang, code) in enumerate(fences) if lang == "python" and "role_documents" in code
    ]
    language, printed = fences[script_at + 1]
    assert language == "js"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(fences[script_at][1], "docs/deploy.md", "exec"), {})
    assert printed == out.getvalue(), (
        "docs/deploy.md: the mongosh commands differ from what the script prints now:\n"
        + out.getvalue()
    )
    for role in ("qworkerApp", "qworkerWorker", "qworkerManager", "qworkerViewer"):
        assert f'db.createRole({{role: "{role}"' in printed


def test_the_index_table_in_the_docs_lists_every_index() -> None:
    text = DEPLOY_DOC.read_text()
    section = text[text.index("### The indexes") :]
    section = section[: section.index("\n### ")]
    listed = set(re.findall(r"^\| `(\w+)` \| `(\w+)` \|", section, re.MULTILINE))
    made = {(collection, name) for collection, found in INDEXES.items() for name, _, _ in found}
    assert listed == made
