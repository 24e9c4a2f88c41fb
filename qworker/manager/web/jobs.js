// The job list and the failed view: filters in the URL, sorting, paging, bulk actions.

import { ACTIVE, PAGE_SIZES, REFRESH_MS, RETRYABLE, SINCE_CHOICES, STATES, idOf, parseTime, percentOf, preview, shortId, workerOf } from "./format.js";
import { emptyRow, errorBanner, h, progressBar, replace, section, setText, stateBadge, timeEl, updateProgress } from "./dom.js";
import { href, jobHref } from "./routes.js";
import { api } from "./api.js";
import { act, confirmButton } from "./actions.js";

// -- job list (and the failed view) -----------------------------------------------

export function jobsView(params, { failed = false } = {}) {
  const banner = errorBanner();
  const filters = {
    state: failed ? "failed" : params.get("state") || "",
    task: params.get("task") || "",
    worker: params.get("worker") || "",
    text: params.get("text") || "",
    since: params.get("since") || "",
    limit: Number(params.get("limit")) || 50,
    page: Math.max(1, Number(params.get("page")) || 1),
  };
  if (!PAGE_SIZES.includes(filters.limit)) filters.limit = 50;
  const path = failed ? "/failed" : "/jobs";

  const stateSelect = h("select", { id: "filter-state", name: "state", "data-testid": "filter-state" },
    h("option", { value: "" }, "any state"), STATES.map((s) => h("option", { value: s }, s)));
  stateSelect.value = filters.state;
  const taskList = h("datalist", { id: "task-names" });
  const workerList = h("datalist", { id: "worker-names" });
  const taskInput = h("input", { id: "filter-task", name: "task", placeholder: "task",
    list: "task-names", value: filters.task, "data-testid": "filter-task", spellcheck: "false" });
  const workerInput = h("input", { id: "filter-worker", name: "worker", placeholder: "worker",
    list: "worker-names", value: filters.worker, "data-testid": "filter-worker", spellcheck: "false" });
  const textInput = h("input", { id: "filter-text", name: "text", type: "search",
    placeholder: "text in description", value: filters.text, "data-testid": "filter-text" });
  const sinceSelect = h("select", { id: "filter-since", name: "since", "data-testid": "filter-since" },
    SINCE_CHOICES.map(([value, label]) => h("option", { value }, label)));
  if (filters.since && !SINCE_CHOICES.some(([v]) => v === filters.since)) {
    sinceSelect.append(h("option", { value: filters.since }, `since ${filters.since}`));
  }
  sinceSelect.value = filters.since;
  const sizeSelect = h("select", { id: "page-size", "data-testid": "page-size" },
    PAGE_SIZES.map((n) => h("option", { value: String(n) }, `${n} / page`)));
  sizeSelect.value = String(filters.limit);
  const clear = h("button", { type: "button", class: "btn btn-ghost", "data-testid": "filter-clear" },
    "Clear");

  const form = h("form", { class: "filters", id: "job-filters", onsubmit: (e) => e.preventDefault() },
    failed ? null : stateSelect, taskInput, workerInput, textInput, sinceSelect, clear,
    taskList, workerList);

  const total = h("span", { id: "job-total", "data-testid": "job-total", class: "muted" });
  const prev = h("button", { type: "button", class: "btn btn-sm", "data-testid": "page-prev" }, "← Newer");
  const next = h("button", { type: "button", class: "btn btn-sm", "data-testid": "page-next" }, "Older →");
  const range = h("span", { class: "page-range", "data-testid": "page-range" });
  const body = h("tbody");
  const retryAll = failed
    ? h("button", { type: "button", class: "btn btn-primary btn-sm", "data-testid": "retry-page" },
      "Retry all on this page")
    : null;

  const columns = failed
    ? ["Job", "Task", "Reason", "Attempts", "Worker", "Failed", ""]
    : ["Job", "Task", "State", "Progress", "Attempts", "Worker", "Created", "Data", ""];
  const root = h("div", { class: "jobs", id: failed ? "failed-view" : "jobs-view" },
    h("div", { class: "page-head" }, h("h1", {}, failed ? "Failed jobs" : "Jobs"), total,
      h("div", { class: "spacer" }), retryAll),
    form, banner.el,
    section(null, {}, h("table", { class: "table jobs-table", id: "job-list", "data-testid": "job-list" },
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { class: c === "Attempts" ? "num" : "" }, c)))),
      body),
    h("div", { class: "pager" }, prev, range, next, h("div", { class: "spacer" }), sizeSelect)),
  );

  let lastJobs = [];
  let generation = 0;

  function syncHash() {
    const url = href(path, {
      state: failed ? "" : filters.state, task: filters.task, worker: filters.worker,
      text: filters.text, since: filters.since,
      limit: filters.limit === 50 ? "" : filters.limit, page: filters.page > 1 ? filters.page : "",
    });
    if (location.hash !== url) history.replaceState(null, "", url);
  }

  let typing = null;
  function changed(resetPage = true) {
    filters.state = failed ? "failed" : stateSelect.value;
    filters.task = taskInput.value.trim();
    filters.worker = workerInput.value.trim();
    filters.text = textInput.value.trim();
    filters.since = sinceSelect.value;
    filters.limit = Number(sizeSelect.value) || 50;
    if (resetPage) filters.page = 1;
    syncHash();
    refresh().catch(() => {});
  }
  for (const el of [stateSelect, sinceSelect, sizeSelect]) el.addEventListener("change", () => changed());
  for (const el of [taskInput, workerInput, textInput]) {
    el.addEventListener("input", () => {
      clearTimeout(typing);
      typing = setTimeout(() => changed(), 350);
    });
    el.addEventListener("change", () => {
      clearTimeout(typing);
      changed();
    });
  }
  clear.addEventListener("click", () => {
    stateSelect.value = "";
    taskInput.value = workerInput.value = textInput.value = "";
    sinceSelect.value = "";
    changed();
  });
  prev.addEventListener("click", () => {
    filters.page = Math.max(1, filters.page - 1);
    syncHash();
    refresh().catch(() => {});
  });
  next.addEventListener("click", () => {
    filters.page += 1;
    syncHash();
    refresh().catch(() => {});
  });
  if (retryAll) {
    retryAll.addEventListener("click", () => act(retryAll, "Jobs requeued", async () => {
      const results = await Promise.allSettled(lastJobs.map((j) => api(`jobs/${encodeURIComponent(j._id)}/retry`, { method: "POST" })));
      const bad = results.filter((r) => r.status === "rejected");
      await refresh();
      if (bad.length) throw new Error(`${bad.length} could not be retried: ${bad[0].reason.message}`);
    }));
  }

  function actions(job) {
    const cell = h("td", { class: "actions" });
    if (RETRYABLE.has(job.state)) {
      const retry = h("button", { type: "button", class: "btn btn-primary btn-sm", "data-testid": "retry",
        title: "Queue this job again, now" }, "Retry");
      retry.addEventListener("click", (event) => {
        event.stopPropagation();
        act(retry, `Job ${shortId(job._id)} requeued`, async () => {
          await api(`jobs/${encodeURIComponent(job._id)}/retry`, { method: "POST" });
          await refresh();
        });
      });
      cell.append(retry);
    }
    if (ACTIVE.has(job.state) && !job.cancelRequested) {
      const cancel = h("button", { type: "button", class: "btn btn-sm", "data-testid": "cancel" }, "Cancel");
      cancel.addEventListener("click", (event) => {
        event.stopPropagation();
        act(cancel, `Cancel of ${shortId(job._id)} requested`, async () => {
          await api(`jobs/${encodeURIComponent(job._id)}/cancel`, { method: "POST" });
          await refresh();
        });
      });
      cell.append(cancel);
    }
    if (job.state === "running") return cell; // cancel it first: the API refuses
    cell.append(confirmButton("Delete", { "data-testid": "delete", title: "Delete this job" },
      (button) => act(button, `Job ${shortId(job._id)} deleted`, async () => {
        await api(`jobs/${encodeURIComponent(job._id)}`, { method: "DELETE" });
        await refresh();
      })));
    return cell;
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
      return h("tr", attrs, idCell, h("td", { class: "mono" }, job.name),
        h("td", { class: "reason", "data-testid": "fail-reason" },
          preview(job.failReason || (job.error && `${job.error.type}: ${job.error.message}`), 120)),
        attempts, worker, h("td", {}, timeEl(job.failedAt || job.lastFinishedAt)), actions(job));
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
    return h("tr", attrs, idCell, h("td", { class: "mono" }, job.name),
      h("td", {}, stateBadge(job.state), note ? h("div", { class: "sub" }, note) : null),
      h("td", { class: "progress-cell" }, progress), attempts, worker,
      h("td", {}, timeEl(job.createdAt)),
      h("td", { class: "data-preview", title: preview(job.data, 2000) },
        job.description ? h("span", { class: "desc" }, preview(job.description, 60)) : null,
        h("code", {}, preview(job.data, 60))),
      actions(job));
  }

  async function refresh() {
    const mine = ++generation;
    const skip = (filters.page - 1) * filters.limit;
    let result;
    try {
      result = await api("jobs", { params: {
        state: filters.state, task: filters.task, worker: filters.worker, text: filters.text,
        since: filters.since, limit: filters.limit, skip,
      } });
    } catch (error) {
      if (mine === generation) banner.show(error);
      throw error;
    }
    if (mine !== generation) return; // a newer query answered first
    banner.clear();
    lastJobs = result.jobs || [];
    const count = result.total ?? lastJobs.length;
    if (!lastJobs.length && count > 0 && filters.page > 1) {
      filters.page = Math.max(1, Math.ceil(count / filters.limit));
      syncHash();
      return refresh();
    }
    setText(total, `${count} job${count === 1 ? "" : "s"}`);
    total.dataset.total = String(count);
    const first = lastJobs.length ? skip + 1 : 0;
    setText(range, `${first}–${skip + lastJobs.length} of ${count}`);
    prev.disabled = filters.page <= 1;
    next.disabled = skip + lastJobs.length >= count;
    if (retryAll) retryAll.disabled = !lastJobs.length;
    replace(body, lastJobs.length ? lastJobs.map(row)
      : emptyRow(columns.length, failed ? "No failed jobs match." : "No jobs match."));
  }

  // Suggestions for the task and worker fields (best effort).
  api("tasks").then((tasks) => replace(taskList, tasks.map((t) => h("option", { value: idOf(t) }))))
    .catch(() => {});
  api("workers").then((ws) => replace(workerList, ws.map((w) => h("option", { value: idOf(w) }))))
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
