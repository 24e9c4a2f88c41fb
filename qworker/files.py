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
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())  # one line
        raise error(f"{prefix}: invalid YAML{where}: {problem}") from None
    except (ValueError, LookupError, AttributeError, TypeError, RecursionError) as exc:
        # What the parsers raise past their own errors: a number of over 4300
        # digits, a YAML date that does not exist (2001-02-30), a bad tagged
        # value (!!bool maybe, !!timestamp x), deep nesting.
        kind = "JSON" if path.suffix == ".json" else "YAML"
        if isinstance(exc, RecursionError):
            reason = "nested too deeply"
        else:
            reason = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
        raise error(f"{prefix}: invalid {kind}: {' '.join(reason.split())}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise error(f"{prefix}: expected a mapping of {what}, got {type(raw).__name__}")
    return raw
