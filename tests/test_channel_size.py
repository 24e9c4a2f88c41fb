"""The channel's capped size is a setting, used by whichever process creates it."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from qworker import Client
from qworker.mongo import CHANNEL_BYTES


def test_the_client_creates_the_channel_with_the_default_size(client: Client, db: Any) -> None:
    options = db.channel.options()
    assert options["capped"] is True and options["size"] >= CHANNEL_BYTES


def test_the_manager_cli_creates_the_channel_with_the_size_asked_for(
    mongo_url: str, db: Any
) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "qworker.cli.manager",
            "--mongo",
            mongo_url,
            "--channel-size",
            "262144",
            "jobs",
            "list",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    options = db.channel.options()
    assert options["capped"] is True and 262_144 <= options["size"] < CHANNEL_BYTES
