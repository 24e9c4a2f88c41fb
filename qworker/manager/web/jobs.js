// The job list and the failed view: filters in the URL, sorting, paging, and actions
// on one job, on the selected ones or on every job the filter matches.

import { ACTIVE, REFRESH_MS, RETRYABLE, idOf, parseTime, percentOf, preview, ranFor, shortId, workerOf } from "./format.js";
import { emptyRow, errorBanner, h, progressBar, replace, replaceRows, section, setText, stateBadge, timeEl, updateProgress } from "./dom.js";
import { href, jobHref } from "./routes.js";
import { api } from "./api.js";
import { act, changeButton, confirmButton } from "./actions.js";
import { BULK_ACTIONS, bulkBar } from "./bulk.js";
import { jobFilters } from "./jobfilters.js";

// The last page a link may ask for: the API skips at most 1e9 jobs.
const MAX_PAGE = 1_000_000;

export function jobsView(params, { failed = false } = {}) {
  const banner = errorBanner();
  const path = failed ? "/failed" : "/jobs";
  let page = Math.min(MAX_PAGE, Math.max(1, Number(params.get("page")) || 1));
  const filters = jobFilters(params, { failed, onChange: () => {
    page = 1;
    selected.clear(); // ticked under another filter: not what this one shows
    syncHash();
    refresh().catch(() => {});
  } });

  const total = h("span", { id: "job-total", "data-testid": "job-total", class: "muted" });
  const prev = h("button", { type: "button", class: "btn btn-sm", "data-testid": "page-prev" }, "← Previous");
  const next = h("button", { type: "button", class: "btn btn-sm", "data-testid": "page-next" }, "Next →");
  const range = h("span", { class: "page-range", "data-testid": "page-range" });
  const body = h("tbody");
  const selected = new Set(); // ids of rows shown: a job that leaves the list leaves it
  const selectPage = h("input", { type: "checkbox", "aria-label": "select the jobs on this page",
    "data-testid": "select-page" });
  const selection = bulkBar({
    actions: failed ? ["retry", "delete"] : Object.keys(BULK_ACTIONS),
    selected, filter: () => filters.filter(), after: () => refresh().catch(() => {}),
  });

  const columns = failed
    ? ["Job", "Task", "Reason", "Attempts", "Worker", "Failed", ""]
    : ["Job", "Task", "State", "Progress", "Attempts", "Worker", "Created", "Finished", "Data", ""];
  const root = h("div", { class: "jobs", id: failed ? "failed-view" : "jobs-view" },
    h("div", { class: "page-head" }, h("h1", {}, failed ? "Failed jobs" : "Jobs"), total),
    filters.form, selection.el, banner.el,
    section(null, {}, h("table", { class: "table jobs-table", id: "job-list", "data-testid": "job-list" },
      h("thead", {}, h("tr", {}, h("th", { class: "pick", "data-change": "" }, selectPage),
        columns.map((c) => h("th", { class: c === "Attempts" ? "num" : "" }, c)))),
      body),
    h("div", { class: "pager" }, prev, range, next, h("div", { class: "spacer" }), filters.size)),
  );

  let lastJobs = [];
  let lastTotal = 0;
  let generation = 0;

  function syncHash() {
    const url = href(path, { ...filters.linked(), page: page > 1 ? page : "" });
    if (location.hash !== url) history.replaceState(null, "", url);
  }

  prev.addEventListener("click", () => {
    page = Math.max(1, page - 1);
    selected.clear();
    syncHash();
    refresh().catch(() => {});
  });
  next.addEventListener("click", () => {
    page = Math.min(MAX_PAGE, page + 1);
    selected.clear();
    syncHash();
    refresh().catch(() => {});
  });
  selectPage.addEventListener("change", () => {
    for (const job of lastJobs) {
      if (selectPage.checked) selected.add(job._id);
      else selected.delete(job._id);
    }
    for (const box of body.querySelectorAll("input[data-pick]")) box.checked = selectPage.checked;
    selection.render();
  });

  function stopping(handler) {
    return (event) => {
      event.stopPropagation();
      handler();
    };
  }

  function actions(job) {
    const cell = h("td", { class: "actions" });
    if (RETRYABLE.has(job.state)) {
      const retry = changeButton("Retry", { class: "btn btn-primary btn-sm", "data-testid": "retry",
        title: "Queue this job again, now" });
      retry.addEventListener("click", stopping(() => act(retry, `Job ${shortId(job._id)} requeued`, async () => {
        await api(`jobs/${encodeURIComponent(job._id)}/retry`, { method: "POST" });
        await refresh();
      })));
      cell.append(retry);
    }
    if (ACTIVE.has(job.state) && !job.cancelRequested) {
      const cancel = changeButton("Cancel", { "data-testid": "cancel" });
      cancel.addEventListener("click", stopping(() => act(cancel, `Cancel of ${shortId(job._id)} requested`, async () => {
        await api(`jobs/${encodeURIComponent(job._id)}/cancel`, { method: "POST" });
        await refresh();
      })));
      cell.append(cancel);
    }
    if (job.state === "running") return cell; // cancel it first: the API refuses
    cell.append(confirmButton("Delete", { "data-testid": "delete", title: "Delete this job" },
      `Job ${shortId(job._id)} (${job.name}) and its log are deleted for good.`,
      (button) => act(button, `Job ${shortId(job._id)} deleted`, async () => {
        await api(`jobs/${encodeURIComponent(job._id)}`, { method: "DELETE" });
        await refresh();
      })));
    return cell;
  }

  function pick(job) {
    const box = h("input", { type: "checkbox", "data-pick": "", "aria-label": `select job ${job._id}`,
      "data-testid": "select-job", checked: selected.has(job._id) });
    box.addEventListener("click", (event) => event.stopPropagation());
    box.addEventListener("change", () => {
      if (box.checked) selected.add(job._id);
      else selected.delete(job._id);
      selectPage.checked = lastJobs.every((j) => selected.has(j._id));
      selection.render();
    });
    return h("td", { class: "pick", "data-change": "" }, box);
  }

  function finishedCell(job, at) {
    const took = ranFor(job);
    return h("td", { "data-testid": "job-finished" }, timeEl(at),
      took && job.state !== "running" ? h("div", { class: "sub", "data-testid": "job-took" }, `took ${took}`) : null);
  }

  function row(job) {
    const open = () => { location.hash = jobHref(job._id); };
    const attrs = { "data-testid": "job-row", "data-job-id": job._id, "data-state": job.state,
      class: "clickable", onclick: open };
    const attempts = h("td", { class: "num" }, `${job.attempts ?? 0}`,
      job.maxAttempts ? h("span", { class: "muted" }, `/${job.maxAttempts}`) : null);
    const idCell = h("td", { class: "mono" }, h("a", { href: jobHref(job._id), title: job._id },
      shortId(job._id)));
    const worker = h("td", { class: "mono" }, workerOf(job) || h("span", { class: "muted" }, "—"));
    if (failed) {
      return h("tr", attrs, pick(job), idCell, h("td", { class: "mono" }, job.name),
        h("td", { class: "reason", "data-testid": "fail-reason" },
          preview(job.failReason || (job.error && `${job.error.type}: ${job.error.message}`), 120)),
        attempts, worker, finishedCell(job, job.failedAt || job.lastFinishedAt), actions(job));
    }
    const step = job.progress && job.progress.step;
    const progress = job.state === "running"
      ? [progressBar(percentOf(job) ?? 0, null, job.state, { class: "progress progress-sm" }),
        h("div", { class: "sub progress-step" }, step || "")]
      : h("span", { class: "muted" }, job.state === "succeeded" ? "done" : "—");
    const due = parseTime(job.nextRunAt);
    let note = null;
    if (job.cancelRequested && job.state === "running") note = "cancelling";
    else if (job.state === "waiting") note = "for the previous step";
    else if (job.state === "queued" && due && due.getTime() > Date.now() + 1000) note = ["due ", timeEl(job.nextRunAt)];
    return h("tr", attrs, pick(job), idCell, h("td", { class: "mono" }, job.name),
      h("td", {}, stateBadge(job.state), note ? h("div", { class: "sub" }, note) : null),
      h("td", { class: "progress-cell" }, progress), attempts, worker,
      h("td", {}, timeEl(job.createdAt)),
      job.state === "running" ? h("td", {}, h("span", { class: "muted" }, "—")) : finishedCell(job, job.lastFinishedAt),
      h("td", { class: "data-preview", title: preview(job.data, 2000) },
        job.description ? h("span", { class: "desc" }, preview(job.description, 60)) : null,
        h("code", {}, preview(job.data, 60))),
      actions(job));
  }

  async function refresh() {
    const mine = ++generation;
    const limit = filters.limit();
    const skip = (page - 1) * limit;
    let result;
    try {
      result = await api("jobs", { params: { ...filters.filter(), ...filters.order(), limit, skip } });
    } catch (error) {
      if (mine === generation) {
        banner.show(error);
        selection.render(null); // what matches is not known: nothing to act on
      }
      throw error;
    }
    if (mine !== generation) return; // a newer query answered first
    banner.clear();
    lastJobs = result.jobs || [];
    lastTotal = result.total ?? lastJobs.length;
    const shown = new Set(lastJobs.map((j) => j._id));
    for (const id of selected) if (!shown.has(id)) selected.delete(id);
    if (!lastJobs.length && lastTotal > 0 && page > 1) {
      page = Math.max(1, Math.ceil(lastTotal / limit));
      syncHash();
      return refresh();
    }
    setText(total, `${lastTotal} job${lastTotal === 1 ? "" : "s"}`);
    total.dataset.total = String(lastTotal);
    const first = lastJobs.length ? skip + 1 : 0;
    setText(range, `${first}–${skip + lastJobs.length} of ${lastTotal}`);
    prev.disabled = page <= 1;
    next.disabled = skip + lastJobs.length >= lastTotal;
    selectPage.checked = lastJobs.length > 0 && lastJobs.every((j) => selected.has(j._id));
    selection.render(lastTotal);
    replaceRows(body, lastJobs.length ? lastJobs.map(row)
      : emptyRow(columns.length + 1, failed ? "No failed jobs match." : "No jobs match."), "data-job-id");
  }

  // Suggestions for the task and worker fields (best effort).
  api("tasks").then((tasks) => replace(filters.lists.task, tasks.map((t) => h("option", { value: idOf(t) }))))
    .catch(() => {});
  api("workers").then((ws) => replace(filters.lists.worker, ws.map((w) => h("option", { value: idOf(w) }))))
    .catch(() => {});

  return {
    root, refresh, every: REFRESH_MS,
    onEvent(name, body) {
      if (name !== "worker:notification") return null;
      if (body.type === "progress" && !failed) {
        const bar = body.sourceId && root.querySelector(
          `tr[data-job-id="${CSS.escape(body.sourceId)}"] .progress`);
        if (bar && typeof body.percent === "number") {
          updateProgress(bar, Math.max(0, Math.min(100, body.percent)), null, "running");
          const step = bar.parentElement.querySelector(".progress-step");
          if (step) setText(step, body.step || "");
        }
        return null;
      }
      return body.type && body.type.startsWith("log") ? null : "soon";
    },
  };
}
