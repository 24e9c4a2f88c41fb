"""The operator's fleet work in the dashboard, in headless Chromium against real workers:
bulk actions over a filter, a shared link, the workers view with "stop gracefully", the
tasks view with its charts, limits and pause, and read-only access.

Screenshots of each view go to the test artifacts (``support.browser.shot``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId
from support.browser import enqueue, job_doc, serving, shot
from support.jobs import wait_finished
from support.logs import wait_accepted
from support.processes import managed, worker_ready
from support.waits import wait_for

from qworker import Client, limits
from qworker.limits import Limits, Rate
from qworker.mongo import Names
from qworker.operations import run
from qworker.when import utcnow

sync_api = pytest.importorskip("playwright.sync_api", reason="the dashboard tests need playwright")
expect = sync_api.expect
TOKEN = "the-operators-token-1234"
VIEWER = "the-viewers-token-9876"


def rows(page: Any) -> Any:
    return page.get_by_test_id("job-row")


def with_worker(spawn_manager: Any, spawn_worker: Any, worker_id: str, extra: list[str]) -> str:
    """A manager serving the dashboard (with ``extra`` flags) and a standalone worker of
    dash_fail, started: the dashboard's URL."""
    _, base = serving(spawn_manager, extra=extra)
    worker = spawn_worker("dash_fail", worker_id=worker_id)
    wait_for(lambda: worker_ready(worker), 60, "the standalone worker to start")
    return base


def test_a_bulk_retry_of_the_failed_jobs_a_filter_matches_reruns_exactly_those(
    spawn_manager: Any, spawn_worker: Any, db: Any, page: Any, browser: Any, tmp_path: Path
) -> None:
    base = with_worker(spawn_manager, spawn_worker, "dash-bulk", [])
    acme = [enqueue(base, task="dash_fail", data={"customer": "acme", "n": n}) for n in range(3)]
    other = [enqueue(base, task="dash_fail", data={"customer": "other", "n": n}) for n in range(2)]
    fine = enqueue(base, task="dash_fail", data={"customer": "acme", "ok": True})
    for job_id in [*acme, *other, fine]:
        wait_finished(db, job_id)
    first_runs = {job_id: job_doc(db, job_id)["lastRunAt"] for job_id in [*acme, *other, fine]}

    # Find them by what they carry: the URL takes the filter and the sort order.
    page.goto(f"{base}/#/failed")
    expect(rows(page)).to_have_count(5)
    page.get_by_test_id("filter-data-field").fill("customer")
    page.get_by_test_id("filter-data-value").fill("acme")
    expect(rows(page)).to_have_count(3)
    page.get_by_test_id("sort").select_option("duration:desc")
    expect(page).to_have_url(
        re.compile(r"data_field=customer&data_value=acme&sort=duration&order=desc")
    )
    listed = page.eval_on_selector_all(
        '[data-testid="job-row"]', "rows => rows.map((row) => row.dataset.jobId)"
    )
    assert sorted(listed) == sorted(acme)
    expect(page.get_by_test_id("matching-count")).to_have_text("3 matching")

    # A shared link opens the same list, in a new tab.
    other_tab = browser.new_context(viewport={"width": 1440, "height": 900}).new_page()
    other_tab.goto(page.url)
    expect(other_tab.get_by_test_id("filter-data-field")).to_have_value("customer")
    expect(other_tab.get_by_test_id("filter-data-value")).to_have_value("acme")
    expect(other_tab.get_by_test_id("sort")).to_have_value("duration:desc")
    expect(other_tab.get_by_test_id("job-row")).to_have_count(3)
    # A link with a value the page does not know says so, and offers nothing to act on.
    other_tab.goto(f"{base}/#/jobs?state=faild")
    expect(other_tab.get_by_test_id("view-error")).to_contain_text("state")
    expect(other_tab.get_by_test_id("bulk-matching-delete")).to_be_disabled()
    other_tab.context.close()

    # Retry all that match, from the keyboard: the dialog counts them before anything runs.
    page.get_by_test_id("bulk-matching-retry").focus()
    page.keyboard.press("Enter")
    dialog = page.get_by_test_id("confirm-dialog")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("Retry 3 jobs?")
    expect(page.get_by_test_id("confirm-text")).to_contain_text("customer = acme")
    shot(page, tmp_path, "bulk-retry-confirm")
    assert all(job_doc(db, job_id)["state"] == "failed" for job_id in acme)
    page.wait_for_timeout(400)  # a key in the dialog's first 350 ms is a double press's
    page.keyboard.press("Enter")
    expect(dialog).to_have_count(0)
    expect(page.get_by_test_id("toast").first).to_have_text("3 jobs requeued")
    for job_id in acme:
        wait_for(lambda j=job_id: job_doc(db, j)["lastRunAt"] > first_runs[j], 60, "a rerun")
        assert wait_finished(db, job_id)["state"] == "failed"
    for job_id in [*other, fine]:
        assert job_doc(db, job_id)["lastRunAt"] == first_runs[job_id], "not matched: not rerun"
    shot(page, tmp_path, "jobs-filtered")

    # Selected jobs: one of the others is deleted, after its own dialog; Escape declines.
    page.goto(f"{base}/#/jobs?data_value=other&data_field=customer")
    expect(rows(page)).to_have_count(2)
    # Enter pressed twice on "Delete all" deletes nothing: the second press reaches the
    # busy button, or the dialog's Cancel (where its focus starts).
    page.get_by_test_id("bulk-matching-delete").focus()
    page.keyboard.press("Enter")
    page.wait_for_timeout(150)
    page.keyboard.press("Enter")
    page.wait_for_timeout(1000)
    assert all(job_doc(db, job_id) is not None for job_id in other)
    if dialog.count():
        expect(page.get_by_test_id("confirm-no")).to_be_focused()
        page.keyboard.press("Escape")
    expect(dialog).to_have_count(0)
    page.locator(f'[data-job-id="{other[0]}"] [data-testid="select-job"]').check()
    expect(page.get_by_test_id("selected-count")).to_have_text("1 selected")
    page.get_by_test_id("bulk-selected-delete").click()
    expect(dialog).to_contain_text("Delete 1 job?")
    page.keyboard.press("Escape")
    expect(dialog).to_have_count(0)
    assert job_doc(db, other[0]) is not None
    page.get_by_test_id("bulk-selected-delete").click()
    page.get_by_test_id("confirm-yes").click()
    expect(page.get_by_test_id("toast").last).to_have_text("1 job deleted")
    expect(rows(page)).to_have_count(1)
    assert job_doc(db, other[0]) is None and job_doc(db, other[1]) is not None


def test_the_workers_view_shows_running_jobs_and_stops_a_worker_gracefully(
    spawn_manager: Any, spawn_worker: Any, mongo_url: str, db: Any, page: Any, tmp_path: Path
) -> None:
    _, base = serving(spawn_manager)
    # A grace longer than the job: asked to stop, it lets the job finish.
    worker = managed(
        spawn_worker, mongo_url, "dash_slow", worker_id="dash-w1", extra=["--grace", "30"]
    )
    wait_accepted(worker)
    job_id = enqueue(base, task="dash_slow", data={"steps": 6, "delay": 1.0})
    wait_for(lambda: job_doc(db, job_id)["state"] == "running", 30, "the job to run")

    page.goto(f"{base}/#/workers")
    row = page.locator('[data-testid="worker-row"][data-worker-id="dash-w1"]')
    expect(row.get_by_test_id("worker-state")).to_have_text("running")
    expect(row.locator(f'[data-testid="worker-job"][data-job-id="{job_id}"]')).to_contain_text(
        "dash_slow"
    )
    shot(page, tmp_path, "workers")

    row.get_by_test_id("stop-worker").click()
    expect(page.get_by_test_id("confirm-dialog")).to_contain_text("its 1 running job")
    page.get_by_test_id("confirm-yes").click()
    expect(page.get_by_test_id("toast").first).to_have_text("dash-w1 asked to stop")
    # Gracefully: its job ends where it ran, and the worker exits 0.
    assert worker.process.wait(timeout=90) == 0
    done = wait_finished(db, job_id)
    assert done["state"] == "succeeded" and done["attempts"] == 1 and not done.get("lostCount")
    expect(row.get_by_test_id("worker-state")).to_have_text("stopped")
    expect(row.get_by_test_id("stop-worker")).to_have_count(0)
    shot(page, tmp_path, "workers-stopped")


def test_the_tasks_view_charts_the_last_hour_shows_limits_and_pauses_a_task(
    spawn_manager: Any, spawn_worker: Any, client: Client, db: Any, page: Any, tmp_path: Path
) -> None:
    base = with_worker(spawn_manager, spawn_worker, "dash-tasks", [])
    ran = [client.now("dash_fail", {"ok": True, "n": n}) for n in range(3)]
    ran += [client.now("dash_fail", {"why": f"chart {n}"}) for n in range(2)]
    for job_id in ran:
        wait_finished(db, job_id)
    client.now("dash_slow", {"steps": 1})  # a task the fleet knows of, by its job
    # A slot of a fleet-wide limit, taken as a worker takes one.
    capped = Limits(concurrency=2, rate=Rate(100, 60.0))
    run(limits.acquire("dash_slow", "", capped, [ObjectId()], "w:1", utcnow()), db, Names())

    page.goto(f"{base}/#/tasks")
    chart = page.locator('[data-testid="task-chart"][data-task="dash_fail"]')
    expect(chart).to_have_attribute("data-succeeded", "3")
    expect(chart).to_have_attribute("data-failed", "2")
    expect(chart.get_by_test_id("worst-p95")).to_contain_text("worst p95")
    assert (
        chart.locator("rect.chart-ok").count() >= 1 and chart.locator("rect.chart-bad").count() >= 1
    )
    row = page.locator('[data-testid="task-row"][data-task="dash_slow"]')
    expect(row.get_by_test_id("task-limits")).to_have_text("1/2 running, 1 of 100/minute")
    shot(page, tmp_path, "tasks")
    row.get_by_test_id("pause-task").click()
    expect(row).to_have_attribute("data-paused", "true")
    expect(row.get_by_test_id("task-paused")).to_be_visible()
    assert client.task_controls("dash_slow")["paused"] is True
    row.get_by_test_id("resume-task").click()
    expect(row).to_have_attribute("data-paused", "false")
    assert client.task_controls("dash_slow")["paused"] is False


VIEWS = [
    ("overview", "worker-row"),
    ("jobs", "job-row"),
    ("failed", "job-row"),
    ("workers", "worker-row"),
    ("tasks", "task-row"),
    ("schedules", "schedule-row"),
    ("workflows", "workflow-row"),  # the one view with nothing to change
]


def test_a_viewer_token_sees_every_view_and_changes_nothing(
    spawn_manager: Any, spawn_worker: Any, client: Client, db: Any, page: Any, tmp_path: Path
) -> None:
    tokens = ["--api-token", TOKEN, "--viewer-token", VIEWER]
    base = with_worker(spawn_manager, spawn_worker, "dash-viewed", tokens)
    failed = client.now("dash_fail", {"why": "seen, not retried"})
    wait_finished(db, failed)
    client.every("1 hour", "dash_slow", name="dash-viewed-hourly")
    workflow = client.group([("dash_fail", {"why": "in a group"})], check_tasks=False)
    wait_for(lambda: client.workflow_info(workflow)["state"] == "failed", 60, "the group to fail")

    page.goto(f"{base}/#token={VIEWER}")
    expect(page.get_by_test_id("read-only")).to_be_visible()
    for view, content in [
        *VIEWS,
        (f"jobs/{failed}", "job-state"),
        (f"workflows/{workflow}", "workflow-node"),
    ]:
        page.goto(f"{base}/#/{view}")
        expect(page.get_by_test_id(content).first).to_be_visible()
        # The controls are there, and hidden: none is visible, none can be reached.
        page.wait_for_timeout(300)
        assert page.locator("#view [data-change]").count() > 0 or view == "workflows", view
        assert page.locator("#view [data-change] >> visible=true").count() == 0, view
        name = view.split("/")[0] + ("-detail" if "/" in view else "")
        shot(page, tmp_path, f"read-only-{name}")

    # Every change the API has, sent from the page with the viewer's token: refused.
    answers = page.evaluate(
        """async (token) => {
            const spec = await (await fetch("api/openapi.json")).json();
            const found = [];
            for (const [path, methods] of Object.entries(spec.paths)) {
                for (const method of Object.keys(methods)) {
                    if (method === "get" || path === "/api/login") continue;
                    const url = path.slice(1).replace(/\\{[^}]+\\}/g, "x");
                    const answer = await fetch(url, { method: method.toUpperCase(), body: "{}",
                        headers: { Authorization: `Bearer ${token}`, "X-Qworker-Request": "1",
                            "Content-Type": "application/json" } });
                    found.push([method, path, answer.status]);
                }
            }
            return found;
        }""",
        VIEWER,
    )
    assert len(answers) >= 15 and ("post", "/api/jobs/bulk", 403) in [tuple(a) for a in answers]
    assert all(status == 403 for _, _, status in answers), answers
    assert job_doc(db, failed)["state"] == "failed" and job_doc(db, failed)["attempts"] == 1
