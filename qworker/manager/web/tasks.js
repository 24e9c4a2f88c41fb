// The tasks: what each is, who serves it, its fleet-wide limits and their use, pause
// and resume, and its last hour in charts (throughput, failures, wait before start).

import { STATES, fmtDuration, idOf } from "./format.js";
import { h, replace, replaceRows } from "./dom.js";
import { listView } from "./listview.js";
import { href } from "./routes.js";
import { api } from "./api.js";
import { act, changeButton } from "./actions.js";
import { throughputChart, totals, waitChart } from "./charts.js";

export const TASK_COLUMNS = ["Task", "Description", "Live workers", "Metadata", "Limits", "Paused"];
const CHART_WINDOW = 3600; // seconds: the last hour
const CHART_BUCKETS = 60;
const CHART_REFRESH_MS = 15000; // one aggregation over the hour's finished jobs

// A task's fleet-wide limits and their use, as the API sums them over partitions.
function limitsCell(limits) {
  if (!limits) return h("td", { "data-testid": "task-limits" }, h("span", { class: "muted" }, "none"));
  const parts = [];
  if (limits.concurrency != null) parts.push(`${limits.running}/${limits.concurrency} running`);
  if (limits.rate != null) parts.push(`${limits.recentStarts} of ${limits.rate}`);
  if (limits.partitionBy) parts.push(`per ${limits.partitionBy} (${limits.partitions})`);
  return h("td", { "data-testid": "task-limits" }, parts.join(", ") || "none");
}

// Pausing a task holds its queued jobs on every worker; running ones finish.
function pauseCell(t, refresh) {
  const paused = Boolean(t.paused);
  const toggle = changeButton(paused ? "Resume" : "Pause", { class: `btn btn-sm ${paused ? "btn-primary" : ""}`,
    "data-testid": paused ? "resume-task" : "pause-task" });
  toggle.addEventListener("click", () => act(toggle, `${idOf(t)} ${paused ? "resumed" : "paused"}`,
    async () => {
      await api(`tasks/${encodeURIComponent(idOf(t))}/${paused ? "resume" : "pause"}`, { method: "POST" });
      await refresh();
    }));
  return h("td", { class: "actions" }, paused
    ? h("span", { class: "badge state-cancelled", "data-testid": "task-paused" }, "paused") : null,
  " ", toggle);
}

export function taskRow(t, refresh) {
  return h("tr", { "data-testid": "task-row", "data-task": idOf(t), "data-paused": String(Boolean(t.paused)) },
    h("td", { class: "mono" }, h("a", { href: href("/jobs", { task: idOf(t) }) }, idOf(t))),
    h("td", {}, t.description || h("span", { class: "muted" }, "—")),
    h("td", {}, (t.liveWorkers || []).length
      ? t.liveWorkers.map((w) => h("a", { class: "chip", href: href("/jobs", { worker: w }) }, w))
      : h("span", { class: "muted" }, "none live")),
    h("td", {}, t.valid === false
      ? h("span", { class: "badge state-failed", title: (t.problems || []).join("\n") }, "invalid")
      : t.valid === true ? h("span", { class: "badge state-succeeded" }, "valid")
        : h("span", { class: "muted", title: "Only standalone workers or jobs name it" },
          "not announced")),
    limitsCell(t.limits),
    pauseCell(t, refresh));
}

function chartCard(name, chart, bucketSeconds, counts) {
  const sums = totals(chart);
  return h("section", { class: "card chart-card", "data-testid": "task-chart", "data-task": name,
    "data-succeeded": sums.succeeded, "data-failed": sums.failed },
  h("header", { class: "card-head" },
    h("h2", { class: "mono" }, h("a", { href: href("/jobs", { task: name }) }, name)),
    h("div", { class: "chips", title: "jobs of the task in the store now" },
      counts ? h("span", { class: "muted" }, "now:") : null,
      STATES.filter((s) => counts && counts[s]).map((s) =>
      h("a", { class: `badge badge-sm state-${s}`, href: href("/jobs", { task: name, state: s }) },
        `${counts[s]} ${s}`)))),
  h("div", { class: "chart-body" },
    h("div", { class: "chart-title" }, "Finished ",
      h("span", { class: "legend legend-ok" }, `${sums.succeeded.toLocaleString("en")} succeeded`), " ",
      h("a", { class: "legend legend-bad", href: href("/failed", { task: name, finished_since: "1 hour" }) },
        `${sums.failed.toLocaleString("en")} failed`)),
    throughputChart(chart, bucketSeconds),
    h("div", { class: "chart-title" }, "Wait before start ",
      h("span", { class: "legend legend-p50" }, "p50"), " ", h("span", { class: "legend legend-p95" }, "p95"),
      sums.worstP95 === null ? null : h("span", { class: "muted", "data-testid": "worst-p95" },
        ` · worst p95 ${fmtDuration(sums.worstP95)}`)),
    waitChart(chart, bucketSeconds)));
}

export function tasksView() {
  const charts = h("div", { class: "chart-grid", "data-testid": "task-charts" });
  let chartsAt = 0;

  // The charts fail on their own (the table stays), and are asked again 15 s later.
  async function refreshCharts(tasks) {
    chartsAt = Date.now();
    let data;
    try {
      data = await api("charts", { params: { window: CHART_WINDOW, buckets: CHART_BUCKETS } });
    } catch (error) {
      replace(charts, h("p", { class: "banner banner-error", "data-testid": "charts-error" },
        `Could not load the charts: ${error.message || error}`));
      return;
    }
    const counts = new Map(tasks.map((t) => [idOf(t), t.jobs]));
    const names = [...new Set([...Object.keys(data.tasks), ...counts.keys()])].sort();
    const empty = { succeeded: Array(data.buckets).fill(0), failed: Array(data.buckets).fill(0),
      waitP50: Array(data.buckets).fill(null), waitP95: Array(data.buckets).fill(null) };
    replaceRows(charts, names.length ? names.map((name) =>
      chartCard(name, data.tasks[name] || empty, data.bucketSeconds, counts.get(name)))
      : h("p", { class: "muted" }, "No task is known yet."), "data-task");
  }

  return listView({
    name: "task", title: "Tasks", key: "data-task", columns: TASK_COLUMNS, row: taskRow,
    empty: "No task is known yet.",
    after: [h("h2", { class: "section-title" }, "The last hour"), charts],
    async load() {
      const tasks = await api("tasks");
      if (Date.now() - chartsAt >= CHART_REFRESH_MS) await refreshCharts(tasks);
      return [...tasks].sort((a, b) => idOf(a).localeCompare(idOf(b)));
    },
  });
}
