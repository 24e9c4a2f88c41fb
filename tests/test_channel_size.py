"""The channel's capped size is a setting, used by whichever process creates it; the
number of messages it holds is bounded too."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from qworker import Client
from qworker.channel import message
from qworker.mongo import CHANNEL_BYTES, CHANNEL_DOCS


def test_the_client_creates_the_channel_with_the_default_size(client: Client, db: Any) -> None:
    options = db.channel.options()
    assert options["capped"] is True and options["size"] >= CHANNEL_BYTES
    assert options["max"] == CHANNEL_DOCS


def test_the_channel_keeps_only_its_newest_messages(client: Client, db: Any) -> None:
    sent = [message("job:queued", {"n": n}) for n in range(CHANNEL_DOCS + 50)]
    db.channel.insert_many(sent[:CHANNEL_DOCS])
    db.channel.insert_many(sent[CHANNEL_DOCS:])  # SecantusDB keeps a whole batch
    kept = [doc["message"]["n"] for doc in db.channel.find({}, sort=[("$natural", 1)])]
    assert kept[-1] == CHANNEL_DOCS + 49 and len(kept) == CHANNEL_DOCS


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
