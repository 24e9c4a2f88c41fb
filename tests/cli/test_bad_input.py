"""Bad input to ``qworker``: one clear message, exit 2, no traceback, no MongoDB.

Every case runs the real command against an unreachable MongoDB URL. Had the
worker contacted MongoDB before checking its tasks, it would report "cannot
reach MongoDB" (after its server-selection timeout) instead of the task error,
so getting the task error, quickly, proves the check comes first.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.processes import TASKS, console_command

UNREACHABLE = "mongodb://127.0.0.1:1/x"
# Well under the 10 s server selection timeout that contacting MongoDB would cost.
QUICK = 8.0


@dataclass
class Result:
    code: int
    out: str
    err: str
    seconds: float

    @property
    def lines(self) -> list[str]:
        return self.err.strip().splitlines()


QWORKER = console_command("qworker", "qworker.cli.worker")


def qworker(cwd: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    started = time.monotonic()
    done = subprocess.run(
        [*QWORKER, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("QWORKER_")},
            **(env or {}),
        },
    )
    return Result(done.returncode, done.stdout, done.stderr, time.monotonic() - started)


def assert_usage_error(result: Result, *fragments: str, lines: int | None = 1) -> str:
    """Exit 2, messages only on stderr, each fragment in them, no traceback; the text."""
    assert result.code == 2, result
    assert "Traceback" not in result.err, result.err
    assert result.out == "", result.out
    assert result.lines, "no message on stderr"
    for line in result.lines:
        assert line.startswith("qworker: error: "), result.err
    if lines is not None:
        assert len(result.lines) == lines, result.err
    assert len(set(result.lines)) == len(result.lines), f"repeated message:\n{result.err}"
    for fragment in fragments:
        assert fragment in result.err, f"{fragment!r} not in:\n{result.err}"
    return result.err


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "tasks"
    path.mkdir()
    return path


GOOD_CODE = "def setup(worker, task):\n    worker.task(task.id, lambda job: None)\n"


def write_task(
    folder: Path,
    name: str,
    meta: str | dict[str, object] = "{}",
    code: str | None = GOOD_CODE,
    suffix: str = ".json",
) -> Path:
    path = folder / f"{name}{suffix}"
    path.write_text(meta if isinstance(meta, str) else json.dumps(meta))
    if code is not None:
        (folder / f"{name}.py").write_text(code)
    return path


def run_tasks(tmp_path: Path, folder: Path, *tasks: str, extra: tuple[str, ...] = ()) -> Result:
    result = qworker(
        tmp_path, "--mongo", UNREACHABLE, "--standalone", "--paths", str(folder), *extra, *tasks
    )
    assert result.seconds < QUICK, f"took {result.seconds:.1f}s: did it contact MongoDB?"
    return result


def test_a_good_task_does_reach_for_mongodb(tmp_path: Path, folder: Path) -> None:
    """The control case: with valid tasks, the same command fails on MongoDB instead."""
    write_task(folder, "fine")
    url = f"{UNREACHABLE}?serverSelectionTimeoutMS=300"
    result = qworker(tmp_path, "--mongo", url, "--standalone", "--paths", str(folder), "fine")
    assert_usage_error(result, "cannot reach MongoDB", "127.0.0.1:1")


# -- naming tasks ------------------------------------------------------------


def test_no_task_named(tmp_path: Path, folder: Path) -> None:
    write_task(folder, "fine")
    assert_usage_error(run_tasks(tmp_path, folder), "no tasks named", "--tasks", str(folder))


def test_unknown_task_names_it_and_the_folders_searched(tmp_path: Path, folder: Path) -> None:
    write_task(folder, "fine")
    missing = tmp_path / "nowhere"
    result = run_tasks(tmp_path, folder, "ghost", extra=("--paths", str(missing)))
    err = assert_usage_error(result, "'ghost'", "not found", str(folder), str(missing))
    assert "missing folder" in err


def test_every_unknown_task_is_listed_at_once(tmp_path: Path, folder: Path) -> None:
    write_task(folder, "fine")
    result = run_tasks(tmp_path, folder, "ghost", "fine", "spectre")
    assert_usage_error(result, "'ghost'", "'spectre'", lines=2)


def test_disabled_task(tmp_path: Path, folder: Path) -> None:
    path = write_task(folder, "off", {"disabled": True})
    assert_usage_error(run_tasks(tmp_path, folder, "off"), str(path), "'off'", "disabled")


def test_duplicate_task_id_across_paths(tmp_path: Path, folder: Path) -> None:
    other = tmp_path / "more"
    other.mkdir()
    first = write_task(folder, "twin")
    second = write_task(other, "twin", suffix=".yaml", meta="description: again\n")
    result = run_tasks(tmp_path, folder, "twin", extra=("--paths", str(other)))
    assert_usage_error(result, str(first), str(second), "'twin'", "already defined")


def test_duplicate_task_id_through_the_id_field(tmp_path: Path, folder: Path) -> None:
    write_task(folder, "alpha")
    second = write_task(folder, "beta", {"id": "alpha"})
    assert_usage_error(run_tasks(tmp_path, folder, "alpha"), str(second), "'alpha'")


# -- metadata files ----------------------------------------------------------


def test_missing_code_file(tmp_path: Path, folder: Path) -> None:
    path = write_task(folder, "lonely", code=None)
    assert_usage_error(run_tasks(tmp_path, folder, "lonely"), str(path), "lonely.py")


def test_invalid_json_gives_line_and_column(tmp_path: Path, folder: Path) -> None:
    path = write_task(folder, "broken", '{\n  "description": "x",\n  "priority": ,\n}\n')
    result = run_tasks(tmp_path, folder, "broken")
    assert_usage_error(result, str(path), "invalid JSON", "line 3, column 15")


def test_invalid_yaml_gives_line(tmp_path: Path, folder: Path) -> None:
    path = write_task(
        folder, "broken", "name: Broken\ndescription: fine\nconcurrency: : 3\n", suffix=".yaml"
    )
    assert_usage_error(run_tasks(tmp_path, folder, "broken"), str(path), "invalid YAML", "line 3")


def test_metadata_that_is_not_a_mapping(tmp_path: Path, folder: Path) -> None:
    path = write_task(folder, "listy", "- a\n- b\n", suffix=".yml")
    assert_usage_error(run_tasks(tmp_path, folder, "listy"), str(path), "mapping")


def test_metadata_that_is_not_utf8(tmp_path: Path, folder: Path) -> None:
    path = folder / "binary.json"
    path.write_bytes(b'\xff\xfe{"a": 1}')
    (folder / "binary.py").write_text(GOOD_CODE)
    assert_usage_error(run_tasks(tmp_path, folder, "binary"), str(path), "cannot read")


def test_unknown_field(tmp_path: Path, folder: Path) -> None:
    path = write_task(folder, "typo", {"description": "x", "concurency": 2})
    err = assert_usage_error(run_tasks(tmp_path, folder, "typo"), str(path), "'concurency'")
    assert "unknown field" in err and "concurrency" in err.split("'concurency'")[1]


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("concurrency", "many", "whole number from 1 to 100000"),
        ("concurrency", 0, "whole number from 1 to 100000"),
        ("concurrency", 10**9, "whole number from 1 to 100000"),
        ("maxAttempts", 0, "whole number from 1 to 2147483647"),
        ("maxAttempts", True, "whole number from 1 to 2147483647"),
        ("maxAttempts", 2**62, "whole number from 1 to 2147483647"),
        ("priority", 2**63, "64-bit number"),
        ("priority", -(2**63) - 1, "64-bit number"),
        ("isolation", "fork", "thread"),
        ("jobAttributes", "data", "list of attribute paths"),
        ("timeout", "soon", "seconds"),
        ("timeout", "nan", "seconds"),
        ("priority", "urgent", "highest"),
        ("backoff", {"delay": 1, "factor": 0.5}, "factor >= 1"),
        ("disabled", "yes", "true or false"),
        ("id", "Not Safe", "url-safe"),
        ("retention", "a while", "'forever'"),
        ("failedRetention", -5, "'7 days'"),
        ("schedule", "* * *", "expected 5 fields"),
        ("schedule", "0 9 * * 8", "'8' is not a day"),
        ("schedule", "0 3 * * *  # nightly", "got 7"),
        ("every", "soon", "'soon' is not a duration"),
        ("every", "0.5s", "between 1 second and 10 years"),
        ("every", None, "one of every or cron"),
        ("schedule", 5, "a cron expression, or a mapping of"),
        ("schedule", None, "a cron expression, or a mapping of"),
        ("schedule", {"cron": "* * * * *", "colour": "red"}, "a cron expression, or a mapping of"),
        ("schedule", {"cron": "0 3 * * *", "timezone": "Nowhere/Land"}, "unknown time zone"),
        ("schedule", {"every": "1h", "misfire": "later"}, "misfire must be one of"),
        ("schedule", {"every": "1h", "startAt": "blah blah"}, "cannot understand"),
        ("schedule", {"every": "1h", "data": 5, "priority": "urgent"}, "priority 'urgent'"),
        ("schedule", {}, "one of every or cron"),
        ("every", [1], "duration"),
        ("schedule", {"cron": "* * * * *", "grace": {}}, "grace"),
    ],
)
def test_wrong_type(tmp_path: Path, folder: Path, field: str, value: object, expected: str) -> None:
    path = write_task(folder, "typed", {field: value})
    result = run_tasks(tmp_path, folder, "typed")
    assert_usage_error(result, str(path), f"field '{field}'", expected)


def test_a_schedule_and_every_together_are_refused(tmp_path: Path, folder: Path) -> None:
    path = write_task(folder, "twice", {"schedule": "*/5 * * * *", "every": "5 minutes"})
    result = run_tasks(tmp_path, folder, "twice")
    assert_usage_error(result, str(path), "give 'schedule' or 'every', not both")


def test_every_wrong_field_is_reported_in_one_go(tmp_path: Path, folder: Path) -> None:
    bad = {"concurrency": "many", "maxAttempts": 0, "isolation": "fork", "jobAttributes": "data"}
    path = write_task(folder, "typed", bad)
    err = assert_usage_error(run_tasks(tmp_path, folder, "typed"), str(path), lines=len(bad))
    for name, value in bad.items():
        assert f"field '{name}'" in err and repr(value) in err


def test_problems_of_several_tasks_are_reported_together(tmp_path: Path, folder: Path) -> None:
    one = write_task(folder, "one", {"concurrency": 0})
    two = write_task(folder, "two", "{", code=None)
    assert_usage_error(run_tasks(tmp_path, folder, "one", "two"), str(one), str(two), lines=2)


def test_a_broken_task_that_is_not_named_does_not_matter(tmp_path: Path, folder: Path) -> None:
    """Only the named tasks are checked: the run goes on to MongoDB (and fails there)."""
    write_task(folder, "broken", "{")
    write_task(folder, "fine")
    url = f"{UNREACHABLE}?serverSelectionTimeoutMS=300"
    result = qworker(tmp_path, "--mongo", url, "--standalone", "--paths", str(folder), "fine")
    err = assert_usage_error(result, "cannot reach MongoDB")
    assert "broken" not in err


# -- code files --------------------------------------------------------------


def test_module_that_raises_on_import(tmp_path: Path, folder: Path) -> None:
    code = 'import os\n\nLIMIT = 3\nraise RuntimeError("no database configured")\n'
    write_task(folder, "boom", code=code)
    result = run_tasks(tmp_path, folder, "boom")
    code_path = folder / "boom.py"
    assert_usage_error(result, f"{code_path}:4", "RuntimeError: no database configured")


def test_module_that_raises_on_import_in_the_default_folder(tmp_path: Path, folder: Path) -> None:
    """The default ``--paths tasks`` is relative: the line is still found."""
    write_task(folder, "boom", code='\n\nraise RuntimeError("relative")\n')
    result = qworker(tmp_path, "--mongo", UNREACHABLE, "--standalone", "boom")
    assert result.seconds < QUICK
    assert_usage_error(result, "tasks/boom.py:3: RuntimeError: relative")


def test_setup_that_raises_in_the_default_folder(tmp_path: Path, folder: Path) -> None:
    write_task(folder, "angry", code="def setup(worker, task):\n    raise KeyError('k')\n")
    result = qworker(tmp_path, "--mongo", UNREACHABLE, "--standalone", "angry")
    assert_usage_error(result, "tasks/angry.py:2: setup() raised KeyError")


def test_module_that_raises_in_a_helper_names_the_task_file_line(
    tmp_path: Path, folder: Path
) -> None:
    code = "def helper():\n    return {}['missing']\n\n\nVALUE = helper()\n"
    write_task(folder, "keyed", code=code)
    result = run_tasks(tmp_path, folder, "keyed")
    # The deepest frame in the task's own file: line 2, inside helper().
    assert_usage_error(result, f"{folder / 'keyed.py'}:2", "KeyError")


def test_module_with_a_syntax_error(tmp_path: Path, folder: Path) -> None:
    write_task(folder, "syntax", code="def setup(worker, task)\n    pass\n")
    result = run_tasks(tmp_path, folder, "syntax")
    assert_usage_error(result, f"{folder / 'syntax.py'}:1", "SyntaxError")


def test_module_without_setup(tmp_path: Path, folder: Path) -> None:
    write_task(folder, "nosetup", code="def run(job):\n    return 1\n")
    result = run_tasks(tmp_path, folder, "nosetup")
    assert_usage_error(result, str(folder / "nosetup.py"), "setup(worker, task)")


def test_setup_that_registers_no_handler(tmp_path: Path, folder: Path) -> None:
    write_task(folder, "idle", code="def setup(worker, task):\n    pass\n")
    result = run_tasks(tmp_path, folder, "idle")
    assert_usage_error(result, str(folder / "idle.py"), "no handler", "'idle'", "worker.task(")


def test_setup_that_raises(tmp_path: Path, folder: Path) -> None:
    code = "def setup(worker, task):\n    x = 1\n    raise ValueError('bad setup')\n"
    write_task(folder, "angry", code=code)
    result = run_tasks(tmp_path, folder, "angry")
    assert_usage_error(result, f"{folder / 'angry.py'}:3", "setup() raised ValueError: bad setup")


def test_setup_that_registers_a_handler_twice(tmp_path: Path, folder: Path) -> None:
    code = (
        "def setup(worker, task):\n"
        "    worker.task(task.id, print)\n"
        "    worker.task(task.id, print)\n"
    )
    write_task(folder, "double", code=code)
    result = run_tasks(tmp_path, folder, "double")
    assert_usage_error(result, f"{folder / 'double.py'}:3", "already has a handler")


# -- config files ------------------------------------------------------------


def run_config(tmp_path: Path, config: Path | str, *extra: str) -> Result:
    result = qworker(
        tmp_path, "--mongo", UNREACHABLE, "--standalone", "--config", str(config), *extra, "noop"
    )
    assert result.seconds < QUICK, f"took {result.seconds:.1f}s: did it contact MongoDB?"
    return result


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    assert_usage_error(run_config(tmp_path, path), str(path), "cannot read", "No such file")


def test_config_file_that_is_a_folder(tmp_path: Path) -> None:
    result = run_config(tmp_path, tmp_path)
    assert result.code == 2 and "Traceback" not in result.err
    assert str(tmp_path) in result.err and "directory" in result.err


def test_config_file_that_is_not_text(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    path.write_bytes(b"\xff\xfe\x00{}")
    assert_usage_error(run_config(tmp_path, path), str(path), "cannot read")


def test_config_file_with_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    path.write_text('{\n  "concurrency": 2,\n}\n')
    assert_usage_error(run_config(tmp_path, path), str(path), "invalid JSON", "line 3, column 1")


def test_config_file_with_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "settings.yaml"
    path.write_text("concurrency: 2\npaths: [a, b\nid: w1\n")
    assert_usage_error(run_config(tmp_path, path), str(path), "invalid YAML", "line 3")


def test_config_file_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    path.write_text("[1, 2]")
    assert_usage_error(run_config(tmp_path, path), str(path), "mapping")


def test_config_file_with_an_unknown_key(tmp_path: Path) -> None:
    path = tmp_path / "settings.yaml"
    path.write_text("concurrency: 2\nconcurency: 3\n")
    err = assert_usage_error(run_config(tmp_path, path), str(path), "'concurency'")
    assert "unknown setting" in err and "concurrency" in err.split("'concurency'")[1]


@pytest.mark.parametrize(
    ("settings", "key", "expected"),
    [
        ({"concurrency": "many"}, "concurrency", "whole number"),
        ({"concurrency": [1]}, "concurrency", "whole number"),
        ({"concurrency": 2.5}, "concurrency", "whole number"),
        ({"concurrency": 0}, "concurrency", "range"),
        ({"standalone": 5}, "standalone", "true or false"),
        ({"paths": [1]}, "paths", "list of strings"),
        ({"grace": "long"}, "grace", "duration"),
        ({"log-format": "xml"}, "log_format", "'xml'"),
        ({"id": {"name": "w1"}}, "id", "string"),
    ],
)
def test_config_file_with_a_bad_value(
    tmp_path: Path, settings: dict[str, object], key: str, expected: str
) -> None:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(settings))
    assert_usage_error(run_config(tmp_path, path), str(path), f"'{key}'", expected)


def test_config_file_named_by_environment(tmp_path: Path) -> None:
    path = tmp_path / "env.yaml"
    path.write_text("bogus: 1\n")
    result = qworker(tmp_path, "--mongo", UNREACHABLE, "noop", env={"QWORKER_CONFIG": str(path)})
    assert_usage_error(result, str(path), "'bogus'")


# -- the MongoDB URL ---------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["http://localhost/db", "mongodb://", "localhost:27017", "mongodb://host:notaport/db"]
)
def test_malformed_mongo_url(tmp_path: Path, url: str) -> None:
    tasks = TASKS
    result = qworker(tmp_path, "--mongo", url, "--standalone", "--paths", str(tasks), "noop")
    assert result.seconds < QUICK
    assert_usage_error(result, "--mongo", repr(url), "not a MongoDB URL")


def test_unreachable_mongo_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    tasks = TASKS
    url = "mongodb://127.0.0.1:1/x?serverSelectionTimeoutMS=300"
    result = qworker(tmp_path, "--mongo", url, "--standalone", "--paths", str(tasks), "noop")
    assert_usage_error(result, "cannot reach MongoDB", "127.0.0.1:1", "Connection refused")
    assert result.seconds < QUICK, "serverSelectionTimeoutMS in the URL was not honoured"


def test_missing_mongo(tmp_path: Path) -> None:
    tasks = TASKS
    result = qworker(tmp_path, "--standalone", "--paths", str(tasks), "noop")
    assert result.code == 2 and "Traceback" not in result.err
    assert "--mongo" in result.err and "QWORKER_MONGO" in result.err
