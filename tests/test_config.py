"""Settings precedence: flag > QWORKER_ environment variable > config file > default.

Checked through ``qworker --print-config``, which shows each setting's value and
where it came from, and touches neither MongoDB nor the task folders.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.processes import console_command

UNREACHABLE = "mongodb://127.0.0.1:1/x"


QWORKER = console_command("qworker", "qworker.cli.worker")


def run(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("QWORKER_")}
    return subprocess.run(
        [*QWORKER, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **(env or {})},
    )


def settings(cwd: Path, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """``{setting: (value, source)}`` from ``qworker --print-config``."""
    done = run(cwd, *args, "--print-config", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    decoder = json.JSONDecoder()
    shown: dict[str, Any] = {}
    for line in done.stdout.splitlines():
        key, rest = line.split(None, 1)
        value, end = decoder.raw_decode(rest)
        shown[key] = (value, rest[end:].strip())
    return shown


def write_config(folder: Path, fmt: str, values: dict[str, Any]) -> Path:
    path = folder / f"settings.{fmt}"
    path.write_text(json.dumps(values) if fmt == "json" else yaml.safe_dump(values))
    return path


FILE = {
    "concurrency": 4,
    "id": "from-file",
    "paths": ["file-a", "file-b"],
    "tasks": ["file-task"],
    "mongo": "mongodb://file-host:1/filedb",
}
ENV = {
    "QWORKER_CONCURRENCY": "5",
    "QWORKER_ID": "from-env",
    "QWORKER_PATHS": os.pathsep.join(["env-a", "env-b"]),
    "QWORKER_TASKS": "env-task-1 env-task-2",
    "QWORKER_MONGO": "mongodb://env-host:1/envdb",
}
FLAGS = [
    "--concurrency",
    "6",
    "--id",
    "from-flag",
    "--paths",
    "flag-a",
    "--paths",
    "flag-b",
    "--tasks",
    "flag-task",
    "--mongo",
    "mongodb://flag-host:1/flagdb",
]
EXPECTED = {
    "file": {
        "concurrency": 4,
        "id": "from-file",
        "paths": ["file-a", "file-b"],
        "tasks": ["file-task"],
        "mongo": "mongodb://file-host:1/filedb",
    },
    "environment": {
        "concurrency": 5,
        "id": "from-env",
        "paths": ["env-a", "env-b"],
        "tasks": ["env-task-1", "env-task-2"],
        "mongo": "mongodb://env-host:1/envdb",
    },
    "flag": {
        "concurrency": 6,
        "id": "from-flag",
        "paths": ["flag-a", "flag-b"],
        "tasks": ["flag-task"],
        "mongo": "mongodb://flag-host:1/flagdb",
    },
}


def test_defaults(tmp_path: Path) -> None:
    shown = settings(tmp_path, "--mongo", UNREACHABLE)
    assert shown["mongo"] == (UNREACHABLE, "flag")
    assert shown["concurrency"] == (16, "default")
    assert shown["paths"] == (["tasks"], "default")
    assert shown["tasks"] == ([], "default")
    assert shown["standalone"] == (False, "default")
    assert shown["config"] == (None, "default")
    worker_id, source = shown["id"]
    assert source == "default" and re.fullmatch(r"worker-\d+", worker_id)


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_config_file_beats_defaults(tmp_path: Path, fmt: str) -> None:
    path = write_config(tmp_path, fmt, FILE)
    shown = settings(tmp_path, "--config", str(path))
    for name, value in EXPECTED["file"].items():
        assert shown[name] == (value, f"file {path}"), name
    assert shown["lease"] == (30.0, "default")


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_environment_beats_config_file(tmp_path: Path, fmt: str) -> None:
    path = write_config(tmp_path, fmt, FILE)
    shown = settings(tmp_path, "--config", str(path), env=ENV)
    for name, value in EXPECTED["environment"].items():
        assert shown[name] == (value, "environment"), name


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_flags_beat_environment_and_config_file(tmp_path: Path, fmt: str) -> None:
    path = write_config(tmp_path, fmt, FILE)
    shown = settings(tmp_path, "--config", str(path), *FLAGS, env=ENV)
    for name, value in EXPECTED["flag"].items():
        assert shown[name] == (value, "flag"), name


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_each_setting_takes_its_own_highest_source(tmp_path: Path, fmt: str) -> None:
    path = write_config(tmp_path, fmt, {k: FILE[k] for k in ("concurrency", "id", "paths")})
    env = {
        "QWORKER_ID": "from-env",
        "QWORKER_MONGO": "mongodb://env-host:1/envdb",
        "QWORKER_CONCURRENCY": "5",
    }
    shown = settings(tmp_path, "--config", str(path), "--concurrency", "6", env=env)
    assert shown["concurrency"] == (6, "flag")
    assert shown["id"] == ("from-env", "environment")
    assert shown["mongo"] == ("mongodb://env-host:1/envdb", "environment")
    assert shown["paths"] == (["file-a", "file-b"], f"file {path}")
    assert shown["tasks"] == ([], "default")
    assert shown["grace"] == (25.0, "default")


def test_yaml_keys_may_use_dashes_and_flags_follow_the_same_order(tmp_path: Path) -> None:
    path = tmp_path / "settings.yml"
    path.write_text("poll-interval: 0.5\nstandalone: true\nlog_format: json\ngrace: 3\n")
    shown = settings(
        tmp_path, "--mongo", UNREACHABLE, "-c", str(path), env={"QWORKER_STANDALONE": "false"}
    )
    assert shown["poll_interval"] == (0.5, f"file {path}")
    assert shown["log_format"] == ("json", f"file {path}")
    assert shown["grace"] == (3.0, f"file {path}")
    assert shown["standalone"] == (False, "environment")


def test_config_file_named_by_the_environment(tmp_path: Path) -> None:
    path = write_config(tmp_path, "json", {"concurrency": 3})
    shown = settings(tmp_path, "--mongo", UNREACHABLE, env={"QWORKER_CONFIG": str(path)})
    assert shown["config"] == (str(path), "environment")
    assert shown["concurrency"] == (3, f"file {path}")


def test_config_flag_beats_config_environment_variable(tmp_path: Path) -> None:
    from_env = write_config(tmp_path, "json", {"concurrency": 3, "id": "env-file"})
    (tmp_path / "flag").mkdir()
    from_flag = write_config(tmp_path / "flag", "yaml", {"concurrency": 2})
    shown = settings(
        tmp_path,
        "--mongo",
        UNREACHABLE,
        "--config",
        str(from_flag),
        env={"QWORKER_CONFIG": str(from_env)},
    )
    assert shown["config"] == (str(from_flag), "flag")
    assert shown["concurrency"] == (2, f"file {from_flag}")
    # Only one file is read: nothing of the other one leaks in.
    assert shown["id"][1] == "default"


def test_empty_config_file_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing set yet\n")
    shown = settings(tmp_path, "--mongo", UNREACHABLE, "--config", str(path))
    assert shown["concurrency"] == (16, "default")
    assert shown["config"] == (str(path), "flag")


# -- TASK arguments and --tasks ------------------------------------------------


def test_task_arguments_and_tasks_option_are_merged_without_duplicates(tmp_path: Path) -> None:
    shown = settings(
        tmp_path,
        "--mongo",
        UNREACHABLE,
        "beta",
        "alpha",
        "--tasks",
        "alpha",
        "-t",
        "gamma",
        "beta",
    )
    assert shown["tasks"] == (["beta", "alpha", "gamma"], "arguments + flag")
    assert "task" not in shown


def test_task_arguments_alone(tmp_path: Path) -> None:
    shown = settings(tmp_path, "--mongo", UNREACHABLE, "one", "two", "one")
    assert shown["tasks"] == (["one", "two"], "arguments")


def test_task_arguments_merge_with_tasks_from_environment_and_file(tmp_path: Path) -> None:
    env = {"QWORKER_TASKS": "env-task shared"}
    shown = settings(tmp_path, "--mongo", UNREACHABLE, "shared", "arg", env=env)
    assert shown["tasks"] == (["shared", "arg", "env-task"], "arguments + environment")

    path = write_config(tmp_path, "yaml", {"tasks": ["file-task", "arg"]})
    shown = settings(tmp_path, "--mongo", UNREACHABLE, "-c", str(path), "arg")
    assert shown["tasks"] == (["arg", "file-task"], f"arguments + file {path}")


# -- the settings are the ones the worker runs with ----------------------------


def test_config_file_settings_reach_the_worker(tmp_path: Path) -> None:
    """Not only printed: the file's paths and tasks are what the worker loads."""
    folder = tmp_path / "from-config"
    folder.mkdir()
    path = write_config(
        tmp_path,
        "yaml",
        {"mongo": UNREACHABLE, "standalone": True, "paths": [str(folder)], "tasks": ["ghost"]},
    )
    done = run(tmp_path, "--config", str(path))
    assert done.returncode == 2
    assert "task 'ghost' not found" in done.stderr and str(folder) in done.stderr


def test_environment_settings_reach_the_worker(tmp_path: Path) -> None:
    folder = tmp_path / "from-env"
    folder.mkdir()
    env = {
        "QWORKER_MONGO": UNREACHABLE,
        "QWORKER_PATHS": str(folder),
        "QWORKER_TASKS": "phantom",
        "QWORKER_STANDALONE": "1",
    }
    done = run(tmp_path, env=env)
    assert done.returncode == 2
    assert "task 'phantom' not found" in done.stderr and str(folder) in done.stderr


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_a_single_folder_or_task_may_be_written_as_a_string(tmp_path: Path, fmt: str) -> None:
    path = write_config(tmp_path, fmt, {"paths": "only-here", "tasks": "one-task"})
    shown = settings(tmp_path, "--config", str(path), "--mongo", UNREACHABLE)
    assert shown["paths"] == (["only-here"], f"file {path}")
    assert shown["tasks"][0] == ["one-task"]


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "1e400"])
@pytest.mark.parametrize("source", ["flag", "environment", "file"])
def test_seconds_must_be_finite_from_every_source(tmp_path: Path, value: str, source: str) -> None:
    """``nan`` passes a plain range check and used to crash the worker at its first claim."""
    args: list[str] = ["--print-config", "--mongo", UNREACHABLE, "--id", "w1", "some-task"]
    env: dict[str, str] = {}
    if source == "flag":
        args += ["--lease", value]
    elif source == "environment":
        env["QWORKER_LEASE"] = value
    else:
        (tmp_path / "settings.yaml").write_text(f"lease: {value}\n")
        args += ["--config", str(tmp_path / "settings.yaml")]
    done = run(tmp_path, *args, env=env)
    assert done.returncode == 2, done.stdout
    assert "lease" in done.stderr
    assert "finite" in done.stderr or "range" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_print_config_needs_no_mongodb_url(tmp_path: Path) -> None:
    shown = settings(tmp_path, "some-task")
    assert shown["mongo"] == (None, "default")
    done = run(tmp_path, "--standalone", "some-task")  # running does need one
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "qworker: error: no MongoDB given: use --mongo URL or QWORKER_MONGO (or 'embedded')"
    )


SECRET_URL = "mongodb://app:s3cr%40t-pw@db1.example.com:27017,db2:27017/app?authSource=admin"
MASKED_URL = "mongodb://app:***@db1.example.com:27017,db2:27017/app?authSource=admin"


@pytest.mark.parametrize("source", ["flag", "environment", "file"])
def test_print_config_masks_the_mongodb_password(tmp_path: Path, source: str) -> None:
    args: list[str] = []
    env: dict[str, str] = {}
    if source == "flag":
        args = ["--mongo", SECRET_URL]
    elif source == "environment":
        env = {"QWORKER_MONGO": SECRET_URL}
    else:
        args = ["--config", str(write_config(tmp_path, "yaml", {"mongo": SECRET_URL}))]
    done = run(tmp_path, *args, "--print-config", env=env)
    assert done.returncode == 0, done.stderr
    assert "s3cr" not in done.stdout
    assert settings(tmp_path, *args, env=env)["mongo"][0] == MASKED_URL


def test_a_bad_url_is_reported_without_its_password(tmp_path: Path) -> None:
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "t.json").write_text("{}")
    code = "def setup(worker, task):\n    worker.task(task.id, print)\n"
    (tmp_path / "tasks" / "t.py").write_text(code)
    done = run(tmp_path, "--standalone", "--mongo", "mongodb://app:s3cret@db1:99999/app", "t")
    assert done.returncode == 2
    assert "s3cret" not in done.stderr and "mongodb://app:***@db1:99999/app" in done.stderr


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_a_string_of_several_tasks_or_folders_splits_as_in_the_environment(
    tmp_path: Path, fmt: str
) -> None:
    path = write_config(tmp_path, fmt, {"tasks": "send-report hello", "paths": "a:b"})
    shown = settings(tmp_path, "--config", str(path))
    assert shown["tasks"][0] == ["send-report", "hello"]
    assert shown["paths"][0] == ["a", "b"]
    env = {"QWORKER_TASKS": "send-report hello", "QWORKER_PATHS": "a:b"}
    from_env = settings(tmp_path, env=env)
    assert (from_env["tasks"][0], from_env["paths"][0]) == (shown["tasks"][0], shown["paths"][0])


@pytest.mark.parametrize("source", ["flag", "environment", "file"])
def test_durations_are_seconds_from_every_source(tmp_path: Path, source: str) -> None:
    values = {"grace": "30 seconds", "lease": "1m 30s", "poll_interval": "500ms"}
    if source == "flag":
        args = [f"--{k.replace('_', '-')}={v}" for k, v in values.items()]
        shown = settings(tmp_path, *args)
    elif source == "environment":
        shown = settings(tmp_path, env={f"QWORKER_{k.upper()}": v for k, v in values.items()})
    else:
        shown = settings(tmp_path, "--config", str(write_config(tmp_path, "yaml", values)))
    assert (shown["grace"][0], shown["lease"][0], shown["poll_interval"][0]) == (30.0, 90.0, 0.5)


def test_a_mongo_url_file_is_read_and_masked(tmp_path: Path) -> None:
    url_file = tmp_path / "mongo-url"
    url_file.write_text(SECRET_URL + "\n")
    assert settings(tmp_path, "--mongo-file", str(url_file))["mongo"][0] == MASKED_URL


def test_a_password_on_the_command_line_is_warned_of(tmp_path: Path) -> None:
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "t.json").write_text("{}")
    code = "def setup(worker, task):\n    worker.task(task.id, str)\n"
    (tmp_path / "tasks" / "t.py").write_text(code)
    url = "mongodb://app:s3cret@127.0.0.1:1/app?serverSelectionTimeoutMS=300"
    done = run(tmp_path, "--standalone", "--log-format", "json", "--mongo", url, "t")
    assert done.returncode == 2
    assert "--mongo is on the command line, where 'ps' shows it" in done.stderr
    assert "use --mongo-file or QWORKER_MONGO" in done.stderr and "s3cret" not in done.stderr
