// The overview: fleet figures, workers, queue depth by task, recent failures.

import { MOVES, REFRESH_MS, STATES, fmtRate, idOf, preview, shortId } from "./format.js";
import { emptyRow, errorBanner, h, replace, replaceRows, section, setText, svg, timeEl } from "./dom.js";
import { href, jobHref } from "./routes.js";
import { api } from "./api.js";
import { TASK_COLUMNS, taskRow } from "./tasks.js";

// -- overview ---------------------------------------------------------------------

export function overviewView() {
  const banner = errorBanner();
  const stat = (id, label) => {
    const value = h("div", { class: "stat-value", id, "data-testid": id }, "–");
    const note = h("div", { class: "stat-note" });
    return { el: h("div", { class: "stat" }, h("div", { class: "stat-label" }, label), value, note),
      value, note };
  };
  const workersStat = stat("stat-workers", "Workers live");
  const rateStat = stat("throughput", "Succeeded / s");
  const failedWindowStat = stat("stat-failed-window", "Failed, last minute");
  const queuedStat = stat("stat-queued", "Queued");
  const runningStat = stat("stat-running", "Running");
  const failedStat = stat("stat-failed", "Failed, kept");
  const spark = svg("svg", { class: "spark", viewBox: "0 0 120 28", preserveAspectRatio: "none",
    "aria-hidden": "true" });
  rateStat.el.append(spark);
  const samples = [];

  const workersBody = h("tbody");
  const queueBody = h("tbody");
  const failuresBody = h("tbody");
  const tasksBody = h("tbody");
  const queueHead = h("tr", {}, h("th", {}, "Task"),
    STATES.map((s) => h("th", { class: "num" }, s)), h("th", { class: "num" }, "total"),
    h("th", { class: "bar-col" }, ""));

  const root = h("div", { class: "overview", id: "overview" },
    h("div", { class: "page-head" }, h("h1", {}, "Fleet overview")),
    banner.el,
    h("div", { class: "stats" }, workersStat.el, rateStat.el, failedWindowStat.el, queuedStat.el,
      runningStat.el, failedStat.el),
    // The workers table has the most columns: it gets the page's whole width.
    section("Workers", {}, h("table", { class: "table", id: "workers-table" },
      h("thead", {}, h("tr", {}, ["Worker", "Host", "State", "Tasks", "Running", "Last ping"]
        .map((t) => h("th", { class: t === "Running" ? "num" : "" }, t)))),
      workersBody),
    h("div", { class: "card-foot" }, h("a", { href: "#/workers" }, "Workers with their running jobs →"))),
    section("Queue by task", {}, h("table", { class: "table", id: "queue-table" },
      h("thead", {}, queueHead), queueBody)),
    h("div", { class: "grid-2" },
      section("Recent failures", {}, h("table", { class: "table", id: "failures-table" },
        h("thead", {}, h("tr", {}, ["Job", "Task", "Reason", "Failed"].map((t) => h("th", {}, t)))),
        failuresBody),
      h("div", { class: "card-foot" }, h("a", { href: "#/failed" }, "All failed jobs →"))),
      section("Tasks", {}, h("table", { class: "table", id: "tasks-table" },
        h("thead", {}, h("tr", {}, TASK_COLUMNS.map((t) => h("th", {}, t)))), tasksBody),
      h("div", { class: "card-foot" }, h("a", { href: "#/tasks" }, "Tasks with their last hour →")))),
  );

  function renderStats(ov) {
    const jobs = ov.jobs || {};
    const w = ov.workers || {};
    setText(workersStat.value, `${w.live ?? 0}`);
    setText(workersStat.note, `of ${w.known ?? 0} known`);
    setText(rateStat.value, fmtRate(ov.succeededPerSecond || 0));
    const window = ov.window || 60;
    setText(rateStat.note, `${Math.round((ov.succeededPerSecond || 0) * window)} in ${window} s`);
    setText(failedWindowStat.value, `${ov.failedInWindow ?? 0}`);
    failedWindowStat.el.classList.toggle("stat-bad", (ov.failedInWindow || 0) > 0);
    setText(queuedStat.value, `${jobs.queued ?? 0}`);
    setText(queuedStat.note, jobs.waiting ? `${jobs.waiting} waiting` : "");
    setText(runningStat.value, `${jobs.running ?? 0}`);
    setText(failedStat.value, `${jobs.failed ?? 0}`);
    failedStat.el.classList.toggle("stat-bad", (jobs.failed || 0) > 0);
    samples.push(ov.succeededPerSecond || 0);
    if (samples.length > 60) samples.shift();
    drawSpark(spark, samples);
  }

  function renderWorkers(workers) {
    const rows = [...workers].sort((a, b) =>
      Number(Boolean(b.live)) - Number(Boolean(a.live)) || idOf(a).localeCompare(idOf(b)));
    replace(workersBody, rows.length ? rows.map((w) => {
      const state = w.status || (w.state === "running" && w.live === false ? "lost" : w.state) || "unknown";
      return h("tr", { "data-testid": "worker-row", "data-worker-id": idOf(w), "data-state": state },
        h("td", { class: "mono" }, h("a", { href: href("/jobs", { worker: idOf(w) }) }, idOf(w))),
        h("td", {}, w.host || "—", w.pid ? h("span", { class: "muted" }, ` · pid ${w.pid}`) : null),
        h("td", {}, h("span", { class: `badge worker-${state}`, "data-testid": "worker-state" }, state),
          h("span", { class: "chip chip-muted" }, w.standalone ? "standalone" : "managed")),
        h("td", {}, (w.tasks || []).map((t) =>
          h("a", { class: "chip", href: href("/jobs", { task: t }) }, t))),
        h("td", { class: "num", "data-testid": "worker-running" }, `${w.runningJobs ?? w.running ?? 0}`),
        h("td", {}, timeEl(w.pingedAt)));
    }) : emptyRow(6, "No worker has been seen yet."));
  }

  function renderQueue(tasks) {
    const names = Object.keys(tasks || {}).sort();
    replace(queueBody, names.length ? names.map((name) => {
      const counts = tasks[name];
      const total = STATES.reduce((sum, s) => sum + (counts[s] || 0), 0);
      const bar = h("div", { class: "stack" }, STATES.filter((s) => counts[s]).map((s) =>
        h("span", { class: `seg state-${s}`, title: `${s}: ${counts[s]}`,
          style: { flexGrow: String(counts[s]) } })));
      return h("tr", { "data-testid": "queue-row", "data-task": name },
        h("td", { class: "mono" }, h("a", { href: href("/jobs", { task: name }) }, name)),
        STATES.map((s) => h("td", { class: "num", "data-state": s, "data-count": counts[s] || 0 },
          counts[s]
            ? h("a", { class: `count state-text-${s}`, href: href("/jobs", { task: name, state: s }) },
              String(counts[s]))
            : h("span", { class: "muted" }, "·"))),
        h("td", { class: "num strong" }, String(total)),
        h("td", { class: "bar-col" }, bar));
    }) : emptyRow(STATES.length + 3, "No jobs in the store."));
  }

  function renderFailures(jobs) {
    replace(failuresBody, jobs.length ? jobs.map((job) =>
      h("tr", { "data-testid": "failure-row", "data-job-id": job._id, class: "clickable",
        onclick: () => { location.hash = jobHref(job._id); } },
      h("td", { class: "mono" }, h("a", { href: jobHref(job._id) }, shortId(job._id))),
      h("td", { class: "mono" }, job.name),
      h("td", { class: "reason" }, preview(job.failReason || (job.error && job.error.message), 70)),
      h("td", {}, timeEl(job.failedAt || job.lastFinishedAt)))) : emptyRow(4, "No failed jobs."));
  }

  function renderTasks(tasks) {
    const rows = [...tasks].sort((a, b) => idOf(a).localeCompare(idOf(b)));
    replaceRows(tasksBody, rows.length ? rows.map((t) => taskRow(t, refresh))
      : emptyRow(6, "No task is known yet."), "data-task");
  }

  async function refresh() {
    const [ov, workers, failed, tasks] = await Promise.allSettled([
      api("overview"), api("workers"), api("jobs", { params: { state: "failed", limit: 8 } }),
      api("tasks"),
    ]);
    const problems = [ov, workers, failed, tasks].filter((r) => r.status === "rejected");
    if (ov.status === "fulfilled") {
      renderStats(ov.value);
      renderQueue(ov.value.tasks);
    }
    if (workers.status === "fulfilled") renderWorkers(workers.value);
    if (failed.status === "fulfilled") renderFailures(failed.value.jobs || []);
    if (tasks.status === "fulfilled") renderTasks(tasks.value);
    if (problems.length) banner.show(problems[0].reason);
    else banner.clear();
  }

  return {
    root, refresh, every: REFRESH_MS,
    onEvent(name, body) {
      if (name !== "worker:notification") return "soon"; // workers and managers come and go
      return MOVES.includes(body.type) ? "soon" : null;
    },
  };
}

export function drawSpark(el, samples) {
  el.replaceChildren();
  if (samples.length < 2) return;
  const max = Math.max(...samples, 0.0001);
  const step = 120 / (samples.length - 1);
  const points = samples.map((v, i) => `${(i * step).toFixed(1)},${(26 - (v / max) * 24).toFixed(1)}`);
  el.append(svg("polyline", { points: points.join(" "), fill: "none", class: "spark-line" }));
}
