"""The web dashboard, end to end: a real manager serving it, real workers, headless Chromium.

Every view is driven as an operator would (Playwright's sync API) and saved as a
screenshot (``support.browser.shot``). The fleet operations (bulk actions, workers,
tasks, read-only access) are in test_dashboard_operations.
"""

from __future__ import annotations

import functools
import re
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId
from support.browser import WAIT_MS, enqueue, job_doc, serving, shot
from support.jobs import wait_finished
from support.logs import wait_accepted
from support.processes import managed, worker_ready
from support.waits import wait_for

from qworker import Client
from qworker.lifecycle import EXPIRED_REASON
from qworker.model import new_job
from qworker.when import utcnow

sync_api = pytest.importorskip("playwright.sync_api", reason="the dashboard tests need playwright")
expect = sync_api.expect
TOKEN = "s3cret"


def test_a_job_enqueued_through_the_api_is_listed(
    spawn_manager: Any, page: Any, tmp_path: Path
) -> None:
    _, base = serving(spawn_manager)
    # Job data is user input: it must show as text, never as markup.
    hostile = "<img src=x onerror=alert(1)><b>bold</b>"
    first = enqueue(base, task="dash_slow", data={"note": hostile}, description="first one")
    second = enqueue(base, task="dash_fail", data={"why": "listed"}, description="second one")

    page.goto(f"{base}/#/jobs")
    rows = page.get_by_test_id("job-row")
    expect(rows).to_have_count(2)
    # Newest first, both queued (no worker runs them).
    expect(rows.nth(0)).to_have_attribute("data-job-id", second)
    expect(rows.nth(1)).to_have_attribute("data-job-id", first)
    expect(page.locator(f'[data-job-id="{first}"] [data-state]')).to_have_text("queued")
    expect(page.get_by_test_id("job-total")).to_have_text("2 jobs")
    expect(page.locator(f'[data-job-id="{first}"]')).to_contain_text("<b>bold</b>")
    assert page.locator("#job-list b, #job-list img").count() == 0
    shot(page, tmp_path, "jobs")

    # Filters narrow the list and land in the URL, so the view can be linked.
    page.get_by_test_id("filter-task").fill("dash_fail")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-job-id", second)
    expect(page).to_have_url(re.compile(r"#/jobs\?task=dash_fail$"))
    page.get_by_test_id("filter-clear").click()
    page.get_by_test_id("filter-text").fill("first")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-job-id", first)

    # A linked view opens with its filters; a row opens the job.
    page.goto(f"{base}/#/jobs?task=dash_slow&state=queued")
    expect(page.get_by_test_id("filter-state")).to_have_value("queued")
    expect(rows).to_have_count(1)
    rows.first.click()
    expect(page.get_by_test_id("job-detail")).to_have_attribute("data-job-id", first)
    expect(page.get_by_test_id("job-data")).to_contain_text(hostile)
    assert page.locator("#job-detail b, #job-detail img").count() == 0


def test_progress_moves_in_the_job_detail(
    spawn_manager: Any, spawn_worker: Any, mongo_url: str, db: Any, page: Any, tmp_path: Path
) -> None:
    _, base = serving(spawn_manager)
    # Managed, so its progress also arrives as events; the view polls besides.
    worker = managed(spawn_worker, mongo_url, "dash_slow", worker_id="dash-w1")
    wait_accepted(worker)
    job_id = enqueue(base, task="dash_slow", data={"steps": 6, "delay": 1.0})

    page.goto(f"{base}/#/jobs/{job_id}")
    bar = page.get_by_test_id("job-progress")
    expect(page.get_by_test_id("job-detail")).to_have_attribute("data-job-id", job_id)
    # Record every value the bar shows, from inside the page.
    page.evaluate(
        """() => {
            window.__seen = [];
            const bar = document.getElementById("job-progress");
            const note = () => window.__seen.push([bar.dataset.percent, bar.dataset.state,
                document.getElementById("job-step").textContent]);
            note();
            new MutationObserver(note).observe(bar, {attributes: true});
        }"""
    )
    expect(page.get_by_test_id("job-state")).to_have_text("running")
    expect(page.get_by_test_id("job-step")).to_contain_text(" of 6")
    page.wait_for_function(
        "() => { const p = Number(document.getElementById('job-progress').dataset.percent);"
        " return p > 0 && p < 100; }",
        timeout=WAIT_MS,
    )
    expect(page.get_by_test_id("log-line").first).to_contain_text("step 1 of 6")
    shot(page, tmp_path, "job-running")

    expect(page.get_by_test_id("job-state")).to_have_text("succeeded")
    expect(bar).to_have_attribute("data-percent", "100")
    expect(page.get_by_test_id("job-result")).to_contain_text('"steps": 6')
    expect(page.get_by_test_id("log-line")).to_have_count(6)
    seen = page.evaluate("window.__seen")
    between = {float(p) for p, state, _ in seen if state == "running" and 0 < float(p) < 100}
    assert len(between) >= 2, f"the bar should move through the steps, it showed {seen}"
    assert any(step.startswith("step ") for _, _, step in seen), seen
    assert wait_finished(db, job_id)["state"] == "succeeded"
    shot(page, tmp_path, "job-succeeded")


def test_a_failed_job_is_listed_and_retried(
    spawn_manager: Any, spawn_worker: Any, db: Any, page: Any, tmp_path: Path
) -> None:
    _, base = serving(spawn_manager)
    worker = spawn_worker("dash_fail", worker_id="dash-standalone")
    wait_for(lambda: worker_ready(worker), 60, "the standalone worker to start")
    job_id = enqueue(base, task="dash_fail", data={"why": "retry me"})
    assert wait_finished(db, job_id)["state"] == "failed"

    page.goto(f"{base}/#/failed")
    row = page.locator(f'[data-testid="job-row"][data-job-id="{job_id}"]')
    expect(row).to_be_visible()
    expect(row.get_by_test_id("fail-reason")).to_contain_text("dash failure: retry me")
    expect(page.locator("#nav-failed-count")).to_have_text("1")
    shot(page, tmp_path, "failed")

    # The detail shows the error with its traceback and the log.
    row.locator("a").first.click()
    expect(page.get_by_test_id("job-state")).to_have_text("failed")
    expect(page.get_by_test_id("job-error-title")).to_contain_text("ValueError: dash failure")
    expect(page.get_by_test_id("job-traceback")).to_contain_text("Traceback")
    expect(page.get_by_test_id("log-line")).to_contain_text("about to fail on purpose")
    shot(page, tmp_path, "job-failed")

    page.go_back()
    expect(row).to_be_visible()
    first_run = job_doc(db, job_id)["lastRunAt"]
    row.get_by_test_id("retry").click()
    expect(page.get_by_test_id("toast").first).to_contain_text("requeued")
    # The worker runs it again, with a fresh budget: attempt 1 again, failed again.
    wait_for(lambda: job_doc(db, job_id)["lastRunAt"] > first_run, 60, "the retried job to run")
    assert wait_finished(db, job_id)["state"] == "failed"
    page.goto(f"{base}/#/jobs/{job_id}")
    expect(page.get_by_test_id("job-attempts")).to_have_text(re.compile(r"^1\b"))

    # A succeeded job has no Retry in the lists; its own page can run it again.
    done = enqueue(base, task="dash_fail", data={"why": "never", "ok": True})
    assert wait_finished(db, done)["state"] == "succeeded"
    page.goto(f"{base}/#/jobs")
    listed = page.locator(f'[data-testid="job-row"][data-job-id="{done}"]')
    expect(listed).to_be_visible()
    expect(listed.get_by_test_id("retry")).to_have_count(0)
    page.goto(f"{base}/#/jobs/{done}")
    again = page.get_by_test_id("retry")
    expect(again).to_have_text("Run again")
    assert "btn-primary" not in (again.get_attribute("class") or "")


def test_a_job_the_manager_expired_is_shown_expired_and_can_be_retried(
    spawn_manager: Any, db: Any, page: Any, tmp_path: Path
) -> None:
    _, base = serving(spawn_manager)
    doc = new_job("dash_slow", {"why": "too late"}, now=utcnow(), run_at=utcnow(), expires=1)
    db.jobs.insert_one(doc)  # enqueue(base, ..., expires=1) once the API takes it
    job_id = str(doc["_id"])
    wait_for(lambda: job_doc(db, job_id)["state"] == "expired", 15, "the manager to expire it")

    page.goto(f"{base}/#/jobs?state=expired")
    expect(page.get_by_test_id("filter-state")).to_have_value("expired")
    row = page.locator(f'[data-testid="job-row"][data-job-id="{job_id}"]')
    expect(row.locator("[data-state]").last).to_have_text("expired")
    shot(page, tmp_path, "jobs-expired")

    row.locator("a").first.click()
    expect(page.get_by_test_id("job-state")).to_have_text("expired")
    expect(page.get_by_test_id("job-error-title")).to_have_text(EXPIRED_REASON)
    expect(page.locator("#job-error h2")).to_have_text("Expired")
    expect(page.locator("#job-facts")).to_contain_text("Deadline")
    shot(page, tmp_path, "job-expired")

    page.go_back()
    row.get_by_test_id("retry").click()
    expect(page.get_by_test_id("toast").first).to_contain_text("requeued")
    queued = job_doc(db, job_id)
    assert queued["state"] == "queued" and "expiresAt" not in queued


def test_the_token_form_unlocks_a_guarded_manager(
    spawn_manager: Any, page: Any, tmp_path: Path
) -> None:
    _, base = serving(spawn_manager, extra=["--api-token", TOKEN])
    job_id = enqueue(base, TOKEN, task="dash_slow", description="behind a token")

    page.goto(f"{base}/#/jobs")
    form = page.get_by_test_id("token-form")
    expect(form).to_be_visible()
    expect(page.get_by_test_id("job-row")).to_have_count(0)
    shot(page, tmp_path, "token")

    page.get_by_test_id("token-input").fill("wrong")
    page.get_by_test_id("token-submit").click()
    expect(page.get_by_test_id("token-error")).to_contain_text("refused")
    page.get_by_test_id("token-input").fill(TOKEN)
    page.get_by_test_id("token-submit").click()
    expect(form).to_be_hidden()
    expect(page.locator(f'[data-testid="job-row"][data-job-id="{job_id}"]')).to_be_visible()
    # The token is in no cookie; the one cookie opens the event stream only, and no
    # script of any page can read it.
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert set(cookies) == {"qworker_events"} and TOKEN not in cookies["qworker_events"]["value"]
    events_cookie = cookies["qworker_events"]
    assert events_cookie["httpOnly"] and events_cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""
    expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "live")

    # A new page keeps the token: no form.
    page.reload()
    expect(page.locator(f'[data-testid="job-row"][data-job-id="{job_id}"]')).to_be_visible()
    expect(form).to_be_hidden()
    shot(page, tmp_path, "token-accepted")


def test_the_overview_shows_workers_and_queue_depth(
    spawn_manager: Any,
    spawn_worker: Any,
    mongo_url: str,
    client: Client,
    db: Any,
    page: Any,
    tmp_path: Path,
) -> None:
    _, base = serving(spawn_manager)
    worker = managed(spawn_worker, mongo_url, "dash_slow", worker_id="dash-w1")
    wait_accepted(worker)
    done = client.now("dash_slow", {"steps": 1, "delay": 0.1})
    assert wait_finished(db, done)["state"] == "succeeded"
    for n in range(3):  # no worker runs dash_fail here: they wait in the queue
        enqueue(base, task="dash_fail", data={"n": n})

    page.goto(f"{base}/#/overview")
    worker_row = page.locator('[data-testid="worker-row"][data-worker-id="dash-w1"]')
    expect(worker_row).to_be_visible()
    expect(worker_row.get_by_test_id("worker-state")).to_have_text("running")
    expect(worker_row).to_contain_text("dash_slow")
    queued = page.locator('[data-testid="queue-row"][data-task="dash_fail"] [data-state="queued"]')
    expect(queued).to_have_attribute("data-count", "3")
    done_cell = '[data-testid="queue-row"][data-task="dash_slow"] [data-state="succeeded"]'
    expect(page.locator(done_cell)).to_have_attribute("data-count", "1")
    expect(page.get_by_test_id("stat-queued")).to_have_text("3")
    expect(page.get_by_test_id("throughput")).not_to_have_text("0")
    expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "live")
    shot(page, tmp_path, "overview")

    # A queue count links to those jobs.
    queued.locator("a").click()
    expect(page.get_by_test_id("job-row")).to_have_count(3)
    expect(page).to_have_url(re.compile(r"#/jobs\?task=dash_fail&state=queued$"))

    # A worker with a long id and many tasks still fits its card at 1400 px.
    wide = managed(
        spawn_worker,
        mongo_url,
        "dash_slow",
        "record",
        "noop",
        "notify",
        "tracked",
        "cooperative",
        worker_id="dash-worker-with-a-long-id-on-host-b7",
    )
    wait_accepted(wide)
    page.set_viewport_size({"width": 1400, "height": 900})
    page.goto(f"{base}/#/overview")
    expect(page.locator('[data-worker-id="dash-worker-with-a-long-id-on-host-b7"]')).to_be_visible()
    sizes = page.evaluate("""() => {
        const table = document.querySelector("#workers-table");
        const right = (element) => element.getBoundingClientRect().right;
        return {table: right(table), card: right(table.closest(".card")),
                page: document.documentElement.scrollWidth, window: window.innerWidth};
    }""")
    assert sizes["table"] <= sizes["card"] + 1 and sizes["page"] <= sizes["window"], sizes
    shot(page, tmp_path, "overview-1400")


def test_the_schedules_view_lists_pauses_and_runs_a_schedule_now(
    spawn_manager: Any, client: Client, db: Any, page: Any, tmp_path: Path
) -> None:
    _, base = serving(spawn_manager)
    client.every("1 hour", "dash_slow", {"steps": 1}, name="dash-hourly")

    page.goto(f"{base}/#/schedules")
    row = page.locator('[data-testid="schedule-row"][data-name="dash-hourly"]')
    expect(row).to_be_visible()
    expect(row).to_contain_text("dash_slow")
    expect(row).to_contain_text("every 1h")
    expect(row.get_by_test_id("next-run")).to_contain_text("in ")
    shot(page, tmp_path, "schedules")

    row.get_by_test_id("pause").click()
    expect(row).to_have_attribute("data-paused", "true")
    expect(row.get_by_test_id("paused")).to_be_visible()
    assert client.schedule_info("dash-hourly")["paused"] is True
    shot(page, tmp_path, "schedules-paused")
    row.get_by_test_id("resume").click()
    expect(row).to_have_attribute("data-paused", "false")
    assert client.schedule_info("dash-hourly")["paused"] is False

    # Run now: one fire, now, as the trigger would make it; its job is the last one shown.
    row.get_by_test_id("run-now").click()
    expect(page.get_by_test_id("toast").filter(has_text="dash-hourly: job ")).to_have_count(1)
    (fired,) = db.jobs.find({"scheduleId": "dash-hourly"})
    assert fired["runNow"] is True and fired["state"] == "queued"
    expect(row).to_contain_text(str(fired["_id"])[-8:])
    shot(page, tmp_path, "schedules-run-now")


ATTACK = """<!doctype html><html><body>
<form id="f" method="POST" action="{base}/api/jobs/{job}/retry" target="sink"></form>
<iframe name="sink"></iframe>
<script>
  fetch("{base}/api/jobs/{running}/cancel", {{method: "POST", mode: "no-cors"}});
  fetch("{base}/api/jobs", {{method: "POST", mode: "no-cors",
    headers: {{"Content-Type": "text/plain"}}, body: JSON.stringify({{task: "dash_slow"}})}});
  document.getElementById("f").submit();
  setTimeout(() => {{ document.title = "done"; }}, 1500);
</script></body></html>"""


def test_a_page_of_another_site_cannot_change_anything(
    spawn_manager: Any,
    spawn_worker: Any,
    mongo_url: str,
    client: Client,
    db: Any,
    page: Any,
    tmp_path: Path,
) -> None:
    """What Chromium sends for a cross-site form POST and no-cors fetches, which need no
    CORS preflight: seen to cancel and retry jobs on a loopback manager without a token."""
    _, base = serving(spawn_manager)
    worker = managed(spawn_worker, mongo_url, "dash_slow", worker_id="dash-w1")
    wait_accepted(worker)
    running = client.now("dash_slow", {"steps": 30, "delay": 1.0})
    wait_for(lambda: job_doc(db, running)["state"] == "running", 30, "the job to run")
    failed = client.now("dash_fail_nobody_runs")
    client.cancel(failed)
    (tmp_path / "attack").mkdir()
    (tmp_path / "attack" / "index.html").write_text(
        ATTACK.format(base=base, job=failed, running=running)
    )
    server = ThreadingHTTPServer(
        ("127.0.0.1", 0),
        functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path / "attack")),
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        page.goto(f"http://localhost:{server.server_address[1]}/index.html")
        expect(page).to_have_title("done")
    finally:
        server.shutdown()
    time.sleep(1)
    assert job_doc(db, running)["state"] == "running" and not job_doc(db, running).get(
        "cancelRequested"
    )
    assert job_doc(db, failed)["state"] == "cancelled"  # not retried
    assert client.count_jobs(task="dash_slow") == 1  # nothing enqueued


def test_the_workflows_view_draws_a_live_graph_that_can_be_retried(
    spawn_manager: Any, spawn_worker: Any, client: Client, db: Any, page: Any, tmp_path: Path
) -> None:
    _, base = serving(spawn_manager)
    wf = client.workflow("dash-dag", check_tasks=False)
    extract = wf.add("dash_slow", {"steps": 1, "delay": 0.2}, name="extract")
    transform = wf.add("dash_fail", {"why": "in a dag"}, name="transform", deps=[extract])
    wf.add("dash_slow", {"steps": 1}, name="load", deps=[extract, transform])
    workflow_id = wf.enqueue()
    children = [("dash_slow", {"steps": 1, "delay": 0.05})] * 50
    group_id = client.group(children, on_success="dash_fail", check_tasks=False)

    page.goto(f"{base}/#/workflows")
    rows = page.get_by_test_id("workflow-row")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_have_attribute("data-workflow-id", group_id)
    rows.nth(1).click()
    expect(page.get_by_test_id("workflow-detail")).to_have_attribute(
        "data-workflow-id", workflow_id
    )
    expect(page.get_by_test_id("workflow-node")).to_have_count(3)

    def node(name: str) -> Any:
        return page.locator(f'[data-testid="workflow-node"][data-node="{name}"]')

    expect(node("extract")).to_have_attribute("data-state", "queued")
    expect(node("load")).to_have_attribute("data-state", "waiting")
    assert page.locator(".wf-edge").count() == 3

    # Live: the graph follows the run, without a reload.
    worker = spawn_worker("dash_slow", "dash_fail", worker_id="dash-wf")
    wait_for(lambda: worker_ready(worker), 60, "the standalone worker to start")
    expect(node("transform")).to_have_attribute("data-state", "failed")
    expect(node("load")).to_have_attribute("data-state", "cancelled")
    expect(page.get_by_test_id("workflow-state")).to_have_text("failed")
    shot(page, tmp_path, "workflow-failed")

    transform_id = ObjectId(client.workflow_info(workflow_id)["nodes"][1]["id"])
    first_run = job_doc(db, str(transform_id))["lastRunAt"]
    page.get_by_test_id("workflow-retry").click()
    expect(page.get_by_test_id("toast").first).to_contain_text("queued again")
    wait_for(
        lambda: job_doc(db, str(transform_id)).get("lastRunAt", first_run) > first_run,
        60,
        "the retried node to run",
    )
    expect(node("load")).to_have_attribute("data-state", "cancelled")

    # A large group is a grid of its jobs, and its callback.
    page.goto(f"{base}/#/workflows/{group_id}")
    expect(page.locator(".wf-cell")).to_have_count(50)
    expect(page.locator('.wf-cell[data-state="succeeded"]')).to_have_count(50)
    expect(node("on_success")).to_have_attribute("data-state", "failed")
    shot(page, tmp_path, "workflow-group")
