"""Secrets the daemons are given (the API token, a MongoDB URL with a password):
read from files, made when none is given, and kept off the command line.

What is on a command line, any local user reads with ``ps``; a file of mode
0600 only its owner does. The manager's API on loopback is open to every user
of the machine unless it asks for a token, so it makes one by default, keeps
it in the user's state folder, and opens the dashboard with it in a link.
"""

from __future__ import annotations

import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from qworker.errors import ConfigError

NO_TOKEN = "none"  # --api-token none: no token, on loopback only
MIN_TOKEN_CHARS = 16  # beyond loopback: a guessable token is no protection
TOKEN_FILE = "api-token"


@dataclass(frozen=True)
class ApiToken:
    value: str | None
    origin: str  # "given", "file PATH", "generated in PATH", "none"


def read_secret(path: Path, what: str) -> str:
    """The secret in ``path`` (one line; the trailing newline dropped)."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} file {path}: cannot read: {exc}") from None
    if not text or "\n" in text:
        raise ConfigError(f"{what} file {path}: expected one line, the {what}")
    return text


def api_token(given: str | None, file: Path | None, state: Path | None = None) -> ApiToken:
    """The manager's API token: given, read from ``file``, ``none``, or its own."""
    if given and file:
        raise ConfigError("give --api-token or --api-token-file, not both")
    if file is not None:
        return ApiToken(read_secret(file, "API token"), f"file {file}")
    if given and given.strip().lower() == NO_TOKEN:
        return ApiToken(None, NO_TOKEN)
    if given:
        return ApiToken(given, "given")
    folder = state or Path(platformdirs.user_state_dir("qworker"))
    path = folder / TOKEN_FILE
    if path.exists():
        return ApiToken(read_secret(path, "API token"), f"file {path}")
    folder.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(descriptor, "w") as out:
        out.write(token + "\n")
    return ApiToken(token, f"generated in {path}")


def viewer_token(given: str | None, file: Path | None, api: str | None) -> str | None:
    """The read-only token (``--viewer-token``): given, read from ``file``, or none.

    It opens every view and no change; it makes sense only beside an API token (without
    one every request may change anything), and must not be that token.
    """
    if given and file:
        raise ConfigError("give --viewer-token or --viewer-token-file, not both")
    token = read_secret(file, "viewer token") if file is not None else given or None
    if token is None:
        return None
    if api is None:
        raise ConfigError(
            "--viewer-token needs an API token: with --api-token none every request may "
            "change anything, so a read-only token would guard nothing"
        )
    if token == api:
        raise ConfigError("the viewer token must differ from the API token")
    return token


def check_public_token(
    bind: str, loopback: bool, token: str | None, what: str = "the API token"
) -> None:
    """Serving beyond this machine needs a token, and one not short enough to guess."""
    if loopback:
        return
    if token is None:
        raise ConfigError(
            f"--http {bind}: serving beyond this machine needs an API token "
            "(--api-token-file, --api-token or QWORKER_API_TOKEN)"
        )
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(
            f"--http {bind}: {what} has {len(token)} characters; beyond this machine "
            f"give one of at least {MIN_TOKEN_CHARS} (`python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'`)"
        )
