"""What the dashboard tests share: headless Chromium's flags, screenshots kept as test
artifacts, a manager that serves the dashboard, and jobs enqueued through its API."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import httpx
from bson import ObjectId

from support.logs import wait_leading
from support.processes import REPO, ManagerProcess

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# A slow two-core machine runs the manager, workers, the test server and Chromium at once.
WAIT_MS = 45_000


def shot(page: Any, tmp_path: Path, name: str) -> Path:
    """A full-page screenshot in tmp_path, copied to the artifacts folder
    (QWORKER_TEST_ARTIFACTS, default test-artifacts/ at the repository root, ignored by git)."""
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    artifacts = Path(os.environ.get("QWORKER_TEST_ARTIFACTS") or REPO / "test-artifacts")
    artifacts.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, artifacts / path.name)
    return path


def serving(spawn_manager: Any, extra: list[str] | None = None) -> tuple[ManagerProcess, str]:
    """A leading manager and the URL of its dashboard."""
    manager = spawn_manager(extra=extra)
    wait_leading(manager)
    return manager, manager.api_url()


def enqueue(base: str, token: str | None = None, **job: Any) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.post(f"{base}/api/jobs", json=job, headers=headers, timeout=30)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def job_doc(db: Any, job_id: str) -> dict[str, Any]:
    doc: dict[str, Any] = db.jobs.find_one({"_id": ObjectId(job_id)})
    return doc
