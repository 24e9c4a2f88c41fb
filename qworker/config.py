"""Settings: flags, then ``QWORKER_`` environment variables, then a config file.

click resolves the precedence (command line, environment, ``default_map``,
default); this module reads and checks the file that fills the default map,
and describes where each setting came from.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qworker.errors import ConfigError
from qworker.files import read_mapping
from qworker.mongo import CHANNEL_BYTES

ENV_PREFIX = "QWORKER"


def read_config_file(path: Path, allowed: Iterable[str]) -> dict[str, Any]:
    """The settings in a JSON or YAML file, keys normalised to option names.

    Unknown keys are an error that names the file and the key, so a typo never
    silently falls back to a default.
    """
    raw = read_mapping(path, f"config file {path}", "settings", ConfigError)
    allowed_names = set(allowed)
    settings: dict[str, Any] = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name not in allowed_names:
            raise ConfigError(
                f"config file {path}: unknown setting {str(key)!r} "
                f"(known: {', '.join(sorted(allowed_names))})"
            )
        settings[name] = value
    return settings


@dataclass(frozen=True)
class WorkerSettings:
    """Everything a worker process runs with."""

    mongo: str
    worker_id: str
    tasks: tuple[str, ...]
    paths: tuple[Path, ...] = (Path("tasks"),)
    standalone: bool = False
    concurrency: int = 16
    grace: float = 25.0
    lease: float = 30.0
    poll_interval: float = 1.0
    prefix: str = ""
    burst: bool = False
    watch_jobs: bool = True  # a change stream on jobs, where the server has them
    channel_size: int = CHANNEL_BYTES
    metrics: str | None = None  # HOST:PORT of this worker's own /metrics
    trace_writes: bool = False  # claims and outbox writes in spans of their own (tracing)
    health: str | None = None  # HOST:PORT of this worker's /healthz and /readyz
    watchdog: float = 60.0  # seconds stalled or deaf before it exits (0: never)
    max_jobs: int | None = None  # recycle after claiming this many
    max_memory: float | None = None  # recycle past this resident memory, in MB
    sources: Mapping[str, str] = field(default_factory=dict)


def parse_bind(text: str, option: str = "--http") -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8765`` for IPv6); port 0 picks a free one."""
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65_535:
        raise ConfigError(f"{option} {text!r}: expected HOST:PORT such as 127.0.0.1:8765")
    return host, int(port)


def describe(values: Mapping[str, Any], sources: Mapping[str, str]) -> str:
    """A table of settings and their source, for ``--print-config``."""
    width = max(len(k) for k in values)
    lines = []
    for key, value in values.items():
        shown = [str(v) for v in value] if isinstance(value, list | tuple) else value
        lines.append(f"{key:<{width}}  {json.dumps(shown, default=str):<40}  {sources[key]}")
    return "\n".join(lines)
