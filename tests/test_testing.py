"""``qworker.testing``: an application's test helpers, against the real server.

``run_jobs`` runs jobs with real task code (tests/support/tasks) in the test's
process; the assertions read the real jobs collection; the pytest plugin is
run by pytest itself, in a subprocess, on this suite's server and on an
embedded one of its own.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient
from support.processes import TASKS
from support.server import Server

from qworker import Client, InvalidJobError, TaskDefinitionError
from qworker.embedded import stop_server
from qworker.pytest_plugin import with_database
from qworker.testing import (
    WorkerExitError,
    assert_enqueued,
    enqueued,
    refute_enqueued,
    run_jobs,
)
from qworker.testing.running import drive, load_worker

pytest_plugins = ["pytester"]

EMBEDDED = (Path(sys.executable).parent / "secantusd-py").exists()


def task_folder(tmp_path: Path, *tasks: str) -> Path:
    """A folder with copies of some of the test tasks."""
    folder = tmp_path / "tasks"
    folder.mkdir()
    for task in tasks:
        for suffix in (".json", ".py"):
            shutil.copy(TASKS / f"{task}{suffix}", folder)
    return folder


def written_task(tmp_path: Path, task: str, code: str) -> Path:
    """A folder with one task: this code, and empty metadata."""
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / f"{task}.json").write_text("{}")
    (folder / f"{task}.py").write_text(code)
    return folder


# -- run_jobs ---------------------------------------------------------------


def test_run_jobs_runs_the_due_jobs_with_their_code_and_returns_the_outcomes(
    client: Client,
) -> None:
    doubled = client.now("double", {"x": 2})
    broken = client.now("double", {"y": 1})  # no "x": the handler raises KeyError
    later = client.schedule("in 1 hour", "double", {"x": 5})

    outcomes = {o.id: o for o in run_jobs(client, paths=[TASKS], tasks=["double"])}

    assert set(outcomes) == {doubled, broken}  # the job due later is not waited for
    assert outcomes[doubled].state == "succeeded"
    assert outcomes[doubled].result == {"x": 4.0} and outcomes[doubled].error is None
    assert outcomes[doubled].task == "double"
    assert outcomes[doubled].doc == client.get(doubled)
    failed = outcomes[broken]
    assert failed.state == "failed" and failed.result is None
    assert failed.error is not None and failed.error["type"] == "KeyError"
    assert [job["_id"] for job in enqueued(client, "double")] == [client.get(later)["_id"]]


def test_run_jobs_with_a_limit_runs_that_many_by_priority_and_leaves_the_rest(
    client: Client,
) -> None:
    low = client.now("double", {"x": 1}, priority="low")
    normal = client.now("double", {"x": 2})
    high = client.now("double", {"x": 3}, priority="high")

    first = run_jobs(client, paths=[TASKS], tasks=["double"], limit=2)

    assert [o.id for o in first] == [high, normal]
    assert [str(job["_id"]) for job in enqueued(client, "double")] == [low]
    rest = run_jobs(client, paths=[TASKS], tasks=["double"])
    assert [(o.id, o.state) for o in rest] == [(low, "succeeded")]


def test_run_jobs_runs_what_the_jobs_set_off(client: Client, tmp_path: Path) -> None:
    folder = written_task(
        tmp_path,
        "slow_double",
        "import time\n\n"
        "def setup(worker, task):\n"
        "    @worker.task(task.id)\n"
        "    def run(job):\n"
        "        time.sleep(job.data.get('sleep', 0))  # longer than a read of the queue\n"
        "        return {'x': 2 * job.data['x']}\n",
    )
    last = client.chain([("slow_double", {"x": 1, "sleep": 0.5}), "slow_double"])

    outcomes = run_jobs(client, paths=[folder])

    assert [(o.state, o.result) for o in outcomes] == [
        ("succeeded", {"x": 2}),
        ("succeeded", {"x": 4}),
    ]
    assert outcomes[-1].id == last


def test_drive_runs_a_worker_until_what_the_test_waits_for_holds(
    client: Client, mongo_url: str
) -> None:
    later = client.schedule("in 1 second", "double", {"x": 3})  # a burst would not wait
    worker = load_worker(mongo_url, ["double"], [TASKS], worker_id="w", burst=False)

    drive(worker, until=lambda: client.get(later)["state"] == "succeeded")

    assert client.get(later)["result"] == {"x": 6.0}
    assert worker.counters.succeeded == 1


def test_run_jobs_runs_only_the_tasks_named(client: Client) -> None:
    doubled = client.now("double", {"x": 1})
    other = client.now("dash_fail", {"ok": True})

    outcomes = run_jobs(client, paths=[TASKS], tasks=["double"])

    assert [o.id for o in outcomes] == [doubled]
    assert client.get(other)["state"] == "queued"


def test_run_jobs_without_tasks_runs_every_task_of_the_paths(
    client: Client, tmp_path: Path
) -> None:
    folder = task_folder(tmp_path, "double", "dash_fail")
    doubled = client.now("double", {"x": 1})
    failing = client.now("dash_fail", {"why": "testing"})

    outcomes = {o.id: o for o in run_jobs(client, paths=[str(folder)])}

    assert outcomes[doubled].state == "succeeded"
    assert outcomes[failing].state == "failed"
    assert outcomes[failing].error is not None
    assert outcomes[failing].error["message"] == "dash failure: testing"


def test_run_jobs_uses_the_clients_collection_prefix(mongo_url: str) -> None:
    with Client(mongo_url, prefix="app_") as prefixed:
        job_id = prefixed.now("double", {"x": 4})
        (outcome,) = run_jobs(prefixed, paths=[TASKS], tasks=["double"])
        assert (outcome.id, outcome.result) == (job_id, {"x": 8.0})


def test_run_jobs_works_inside_a_running_event_loop(client: Client) -> None:
    job_id = client.now("double", {"x": 5})

    async def an_async_test() -> list[Any]:
        return run_jobs(client, paths=[TASKS], tasks=["double"])

    (outcome,) = asyncio.run(an_async_test())
    assert (outcome.id, outcome.state, outcome.result) == (job_id, "succeeded", {"x": 10.0})


def test_run_jobs_names_an_unknown_task_and_the_folders_it_looked_in(client: Client) -> None:
    with pytest.raises(TaskDefinitionError, match=rf"task 'nope' not found: .* in {TASKS}"):
        run_jobs(client, paths=[TASKS], tasks=["double", "nope"])


@pytest.mark.parametrize(
    ("options", "error", "says"),
    [
        ({"paths": "tasks"}, TypeError, r"paths=\['tasks'\]"),
        ({"paths": ["no-such-folder"]}, TaskDefinitionError, "no task folder no-such-folder"),
        ({"paths": [TASKS], "tasks": "double"}, TypeError, r"tasks=\['double'\]"),
        ({"paths": [TASKS], "limit": 0}, ValueError, "at least 1, not 0"),
    ],
)
def test_run_jobs_says_what_is_wrong_with_its_arguments(
    client: Client, options: dict[str, Any], error: type[Exception], says: str
) -> None:
    with pytest.raises(error, match=says):
        run_jobs(client, **options)


def test_run_jobs_without_any_task_in_the_folder_says_so(client: Client, tmp_path: Path) -> None:
    with pytest.raises(TaskDefinitionError, match=f"no task in {tmp_path}"):
        run_jobs(client, paths=[tmp_path])


def test_run_jobs_raises_when_task_code_stops_the_worker(client: Client, tmp_path: Path) -> None:
    folder = written_task(
        tmp_path,
        "quitter",
        "def setup(worker, task):\n"
        "    worker.task(task.id, lambda job: worker.fail('the disk is full'))\n",
    )
    job_id = client.now("quitter")

    with pytest.raises(WorkerExitError, match="exit code 1: the disk is full"):
        run_jobs(client, paths=[folder])
    assert client.get(job_id)["state"] == "queued"  # handed back: not the job's fault


# -- assertions on what is enqueued -------------------------------------------


def test_assert_enqueued_matches_data_as_a_subset_and_fields_by_their_python_names(
    client: Client,
) -> None:
    data = {"to": "ada@example.com", "user": {"id": 7, "name": "Ada"}, "tags": ["a", "b"]}
    job_id = client.now("welcome", data, priority="high", max_attempts=3)

    job = assert_enqueued(client, "welcome", data={"to": "ada@example.com"})
    assert str(job["_id"]) == job_id
    assert_enqueued(client, "welcome", data={"user": {"id": 7}}, priority=10, max_attempts=3)
    assert_enqueued(client, "welcome", data=data, priority="high", state="queued")
    assert_enqueued(client, "welcome", maxAttempts=3)  # the stored name works too
    assert_enqueued(client, "welcome")
    refute_enqueued(client, "welcome", data={"tags": ["a"]})  # lists must be equal
    refute_enqueued(client, "welcome", data={"user": {"id": 8}})
    refute_enqueued(client, "welcome", max_attempts=2)
    refute_enqueued(client, "welcome", state="waiting")


def test_assert_enqueued_fails_listing_what_was_enqueued_for_the_task(client: Client) -> None:
    first = client.now("welcome", {"to": "grace@example.com"})
    second = client.now("welcome", {"to": "linus@example.com"}, priority="low")

    with pytest.raises(AssertionError) as failure:
        assert_enqueued(client, "welcome", data={"to": "ada@example.com"}, priority="low")

    assert str(failure.value).splitlines() == [
        "no job of task 'welcome' is enqueued with data={'to': 'ada@example.com'}, priority=-10",
        "enqueued jobs of task 'welcome' (2):",
        f"  {first} (queued): data={{'to': 'grace@example.com'}}, priority=0",
        f"  {second} (queued): data={{'to': 'linus@example.com'}}, priority=-10",
    ]


def test_assert_enqueued_of_a_task_with_no_job_names_the_tasks_that_have_some(
    client: Client,
) -> None:
    client.now("welcome", {})
    client.enqueue_many("report", [{}, {}])

    with pytest.raises(AssertionError) as failure:
        assert_enqueued(client, "welcom")

    assert str(failure.value) == (
        "no job of task 'welcom' is enqueued\n"
        "task 'welcom' has none; other tasks have: 'report' (2), 'welcome' (1)"
    )


def test_assert_enqueued_on_an_empty_queue_says_nothing_is(client: Client) -> None:
    client.cancel(client.now("welcome"))  # cancelled: no longer enqueued

    with pytest.raises(AssertionError, match="task 'welcome' has none, nor has any other task"):
        assert_enqueued(client, "welcome")


def test_refute_enqueued_fails_marking_the_jobs_that_match(client: Client) -> None:
    first = client.now("welcome", {"to": "ada@example.com"})
    second = client.now("welcome", {"to": "grace@example.com"})
    refute_enqueued(client, "welcome", data={"to": "linus@example.com"})
    refute_enqueued(client, "report")

    with pytest.raises(AssertionError) as failure:
        refute_enqueued(client, "welcome", data={"to": "grace@example.com"})

    assert str(failure.value).splitlines() == [
        "1 job(s) of task 'welcome' enqueued with data={'to': 'grace@example.com'}, expected none",
        "enqueued jobs of task 'welcome' (2), * marks those that match:",
        f"  {first} (queued): data={{'to': 'ada@example.com'}}",
        f"* {second} (queued): data={{'to': 'grace@example.com'}}",
    ]
    with pytest.raises(AssertionError, match=r"2 job\(s\) of task 'welcome' enqueued, expected"):
        refute_enqueued(client, "welcome")


def test_enqueued_lists_the_queued_and_waiting_jobs_of_the_task_in_order(
    client: Client,
) -> None:
    first = client.now("double", {"x": 1})
    chain = client.chain([("double", {"x": 2}), "double"])  # its second step waits
    client.now("noop")
    cancelled = client.now("double", {"x": 3})
    client.cancel(cancelled)

    jobs = enqueued(client, "double")

    assert str(jobs[0]["_id"]) == first
    assert [job["state"] for job in jobs] == ["queued", "queued", "waiting"]
    assert str(jobs[-1]["_id"]) == chain
    run_jobs(client, paths=[TASKS], tasks=["double"])
    assert enqueued(client, "double") == []


def test_the_assertions_refuse_what_can_never_match(client: Client) -> None:
    with pytest.raises(ValueError, match="state='succeeded' never is"):
        assert_enqueued(client, "welcome", state="succeeded")
    with pytest.raises(InvalidJobError, match="not JSON-serialisable"):
        refute_enqueued(client, "welcome", data={"when": object()})
    with pytest.raises(InvalidJobError, match="not a valid task id"):
        enqueued(client, "Not A Task")


# -- the pytest plugin ---------------------------------------------------------

APP_TESTS = """
from pathlib import Path

from qworker.testing import assert_enqueued, enqueued, run_jobs

NAMES = Path(__file__).parent / "databases.txt"


def test_enqueue_and_run(qworker_client, qworker_url):
    with NAMES.open("a") as names:
        names.write(qworker_client.db.name + "\\n")
    assert qworker_client.url == qworker_url
    job_id = qworker_client.now("double", {"x": 21})
    assert str(assert_enqueued(qworker_client, "double", data={"x": 21})["_id"]) == job_id
    (outcome,) = run_jobs(qworker_client, paths=[TASKS])
    assert outcome.result == {"x": 42.0}


def test_each_test_has_a_database_of_its_own(qworker_client):
    with NAMES.open("a") as names:
        names.write(qworker_client.db.name + "\\n")
    assert enqueued(qworker_client, "double") == []
"""


def app_tests(pytester: pytest.Pytester, tmp_path: Path) -> Path:
    """A user's test file of the plugin's fixtures; the file their databases are listed in."""
    folder = task_folder(tmp_path, "double")
    pytester.makepyfile(test_app=f"TASKS = {str(folder)!r}\n{APP_TESTS}")
    return pytester.path / "databases.txt"


def test_the_plugin_gives_each_test_a_fresh_database_and_drops_it(
    pytester: pytest.Pytester,
    tmp_path: Path,
    mongo_server: Server,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("QWORKER_TEST_MONGO_URL", mongo_server.url)
    names = app_tests(pytester, tmp_path)

    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=2)

    made = names.read_text().split()
    assert len(set(made)) == 2 and all(name.startswith("qworker_test_") for name in made)
    mongo: MongoClient[dict[str, Any]] = MongoClient(mongo_server.url)
    try:
        assert not set(made) & set(mongo.list_database_names())
    finally:
        mongo.close()


def test_the_plugins_option_wins_over_the_environment(
    pytester: pytest.Pytester,
    tmp_path: Path,
    mongo_server: Server,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(
        "QWORKER_TEST_MONGO_URL", "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=1"
    )
    app_tests(pytester, tmp_path)

    ran = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--qworker-mongo", mongo_server.url
    )
    ran.assert_outcomes(passed=2)


@pytest.mark.skipif(not EMBEDDED, reason="the embedded extra (secantusd-py) is not installed")
def test_the_plugin_uses_the_embedded_server_and_starts_it_only_when_asked(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("QWORKER_TEST_MONGO_URL", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    folder = tmp_path / "data" / "qworker" / "embedded"
    pytester.makepyfile(test_other="def test_unrelated():\n    assert True\n")

    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)
    assert not folder.exists()  # a suite that does not ask for the fixture starts nothing

    app_tests(pytester, tmp_path)
    try:
        ran = pytester.runpytest_subprocess("-p", "no:cacheprovider", "test_app.py")
        ran.assert_outcomes(passed=2)
        assert (folder / "server.json").exists()
    finally:
        stop_server(folder)


def test_loading_the_plugin_imports_no_worker_code() -> None:
    code = (
        "import sys, qworker.pytest_plugin\n"
        "heavy = ('qworker.worker', 'qworker.testing')\n"
        "print(sorted(m for m in sys.modules if m.startswith(heavy)))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert loaded.strip() == "[]"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mongodb://127.0.0.1:27017", "mongodb://127.0.0.1:27017/t1"),
        ("mongodb://h1,h2/app?replicaSet=rs", "mongodb://h1,h2/t1?replicaSet=rs"),
        ("mongodb://u:p@h/app", "mongodb://u:p@h/t1?authSource=app"),
        ("mongodb://u:p@h/?tls=true", "mongodb://u:p@h/t1?tls=true&authSource=admin"),
        ("mongodb://u:p@h/app?authSource=users", "mongodb://u:p@h/t1?authSource=users"),
    ],
)
def test_the_tests_database_keeps_the_urls_server_options_and_credentials(
    url: str, expected: str
) -> None:
    assert with_database(url, "t1") == expected
