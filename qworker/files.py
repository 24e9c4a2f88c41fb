"""Reading the JSON and YAML files people write: task metadata and config files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from qworker.errors import QworkerError


def read_mapping(path: Path, prefix: str, what: str, error: type[QworkerError]) -> dict[str, Any]:
    """The mapping in ``path`` (``.json``, else YAML); an empty file is ``{}``.

    Every problem raises ``error`` with ``prefix`` and the line and column.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"{prefix}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise error(f"{prefix}: cannot read: not UTF-8 text ({exc.reason})") from None
    try:
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise error(
            f"{prefix}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise error(f"{prefix}: invalid YAML{where}: {problem}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise error(f"{prefix}: expected a mapping of {what}, got {type(raw).__name__}")
    return raw
