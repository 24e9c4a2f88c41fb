// The qworker dashboard: plain ES module, no build step, no dependencies.
//
// Views are picked by the URL's hash (#/overview, #/jobs?state=failed, #/jobs/ID,
// #/failed, #/schedules, #/workflows, #/workflows/ID). Each view refreshes itself every few seconds and also
// listens to the manager's server-sent events (/api/events) for live updates.
// Everything shown is inserted as text nodes: job data is user input.

const STATES = ["waiting", "queued", "running", "succeeded", "failed", "cancelled", "expired"];
const ACTIVE = new Set(["waiting", "queued", "running"]);
const FINISHED = new Set(["succeeded", "failed", "cancelled", "expired"]);
// What an operator retries; a succeeded job can be run again from its own page.
const RETRYABLE = new Set(["failed", "cancelled", "expired"]);
// Notifications of a job that moved (the rest are progress and log lines).
const MOVES = ["start", "success", "fail", "cancel", "expire", "snooze"];
const TOKEN_KEY = "qworker_token"; // in sessionStorage: this origin's, this tab's
const SINCE_CHOICES = [
  ["", "any time"], ["5 minutes", "last 5 minutes"], ["1 hour", "last hour"],
  ["24 hours", "last 24 hours"], ["7 days", "last 7 days"],
];
const PAGE_SIZES = [25, 50, 100];
const REFRESH_MS = 2500; // every view, so it is right even without notifications
const ACTIVE_JOB_REFRESH_MS = 1500; // a job that runs: standalone workers send no events
const IDLE_JOB_REFRESH_MS = 4000;

// -- DOM helpers: text only, never HTML ------------------------------------

function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (key === "class") {
      el.className = value;
    } else if (key === "value") {
      el.value = value;
    } else if (key === "style" && typeof value === "object") {
      Object.assign(el.style, value);
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function replace(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

function setText(el, text) {
  const value = text === null || text === undefined ? "" : String(text);
  if (el.textContent !== value) el.textContent = value;
}

function svg(tag, attrs) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, String(value));
  return el;
}

// -- formatting --------------------------------------------------------------

function parseTime(value) {
  if (!value) return null;
  // The API sends ISO 8601 with an offset; a naive one is UTC.
  const text = /[zZ]|[+-]\d\d:?\d\d$/.test(value) ? value : `${value}Z`;
  const date = new Date(text);
  return Number.isNaN(date.getTime()) ? null : date;
}

function absolute(date) {
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ` +
    `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
}

function relative(date, now = Date.now()) {
  const seconds = Math.round((date.getTime() - now) / 1000);
  const abs = Math.abs(seconds);
  let text;
  if (abs < 2) return "just now";
  if (abs < 60) text = `${abs} s`;
  else if (abs < 3600) text = `${Math.round(abs / 60)} min`;
  else if (abs < 86400) text = `${Math.round(abs / 360) / 10} h`;
  else text = `${Math.round(abs / 8640) / 10} d`;
  return seconds < 0 ? `${text} ago` : `in ${text}`;
}

function timeEl(value, empty = "—") {
  const date = parseTime(value);
  if (!date) return h("span", { class: "muted" }, empty);
  return h("time", { datetime: date.toISOString(), title: absolute(date), "data-rel": "" },
    relative(date));
}

function refreshRelativeTimes() {
  const now = Date.now();
  for (const el of document.querySelectorAll("time[data-rel]")) {
    setText(el, relative(new Date(el.getAttribute("datetime")), now));
  }
}

function json(value) {
  return JSON.stringify(value, null, 2);
}

function preview(value, max = 80) {
  if (value === null || value === undefined) return "";
  const text = typeof value === "string" ? value : JSON.stringify(value);
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

function idOf(doc) {
  return String(doc._id ?? doc.id ?? "");
}

function shortId(id) {
  return id ? String(id).slice(-8) : "";
}

function percentOf(doc) {
  const p = doc && doc.progress;
  if (doc && doc.state === "succeeded") return 100;
  if (!p || typeof p.percent !== "number") return null;
  return Math.max(0, Math.min(100, p.percent));
}

function fmtDuration(seconds) {
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${Math.round(seconds * 10) / 10} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} min`;
}

// How long the last run took, or has been running.
function ranFor(job) {
  const start = parseTime(job.lastRunAt);
  if (!start) return "";
  const end = job.state === "running" ? new Date() : parseTime(job.lastFinishedAt);
  if (!end || end < start) return "";
  return fmtDuration((end.getTime() - start.getTime()) / 1000);
}

function fmtPercent(value) {
  return `${Math.round(value * 10) / 10}%`;
}

function fmtRate(perSecond) {
  if (!perSecond) return "0";
  if (perSecond >= 100) return perSecond.toFixed(0);
  if (perSecond >= 1) return perSecond.toFixed(1);
  return perSecond.toFixed(2);
}

function workerOf(doc) {
  return doc.lockedBy || doc.workerId || doc.worker || doc.lastWorker || "";
}

function stateBadge(state, extra = {}) {
  return h("span", { class: `badge state-${state || "unknown"}`, "data-state": state, ...extra },
    state || "unknown");
}

// -- hash routes -------------------------------------------------------------

function currentRoute() {
  const raw = location.hash.replace(/^#/, "") || "/overview";
  const at = raw.indexOf("?");
  let path = (at < 0 ? raw : raw.slice(0, at)).replace(/\/+$/, "") || "/overview";
  try {
    path = decodeURIComponent(path);
  } catch {
    // keep it as typed
  }
  const params = new URLSearchParams(at < 0 ? "" : raw.slice(at + 1));
  return { path, params };
}

function href(path, params) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params || {})) {
    if (value !== null && value !== undefined && value !== "") query.set(key, String(value));
  }
  const qs = query.toString();
  return `#${path}${qs ? `?${qs}` : ""}`;
}

function jobHref(id) {
  return `#/jobs/${encodeURIComponent(id)}`;
}

// -- the API, with the token ---------------------------------------------------

class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

// The token goes in the Authorization header; no cookie carries it. A link the
// manager prints (#token=...) hands it over once, and leaves no trace in the URL.
function tokenFromLink() {
  const match = /(?:^#|&)token=([^&]*)/.exec(location.hash);
  if (!match) return "";
  const rest = location.hash.replace(match[0], "").replace(/^#&/, "#");
  history.replaceState(null, "", rest === "#" ? location.pathname : rest);
  return decodeURIComponent(match[1]);
}

let token = "";
let tokenPrompt = null;

async function saveToken(value) {
  token = value;
  sessionStorage.setItem(TOKEN_KEY, value);
  // The event stream cannot send a header: the manager sets an HttpOnly cookie for it.
  await fetch("api/login", { method: "POST", headers: { Authorization: `Bearer ${value}`,
    "X-Qworker-Request": "1" }, credentials: "same-origin" }).catch(() => {});
}

function askToken(refused) {
  if (!tokenPrompt) {
    tokenPrompt = new Promise((resolve) => {
      const overlay = document.getElementById("token-overlay");
      const form = document.getElementById("token-form");
      const input = document.getElementById("token-input");
      const error = document.getElementById("token-error");
      error.hidden = !refused;
      setText(error, refused ? "That token was refused. Try again." : "");
      overlay.hidden = false;
      input.value = "";
      input.focus();
      form.onsubmit = async (event) => {
        event.preventDefault();
        const value = input.value.trim();
        if (!value) return;
        await saveToken(value);
        overlay.hidden = true;
        form.onsubmit = null;
        tokenPrompt = null;
        resolve();
        live.reconnect();
      };
    });
  }
  return tokenPrompt;
}

async function api(path, { method = "GET", params, body } = {}) {
  let url = `api/${path}`; // relative: works behind a proxy that adds a path prefix
  if (params) {
    const query = new URLSearchParams();
    for (const [key, value] of Object.entries(params)) {
      if (value !== null && value !== undefined && value !== "") query.set(key, String(value));
    }
    if (query.toString()) url += `?${query}`;
  }
  for (;;) {
    const headers = { Accept: "application/json", "X-Qworker-Request": "1" };
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(url, {
        method, headers, credentials: "same-origin", cache: "no-store",
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch {
      live.reachable(false);
      throw new ApiError(0, "cannot reach the manager");
    }
    live.reachable(true);
    if (response.status === 401) {
      await askToken(Boolean(token));
      continue;
    }
    if (response.status === 204) return null;
    let data = null;
    try {
      data = await response.json();
    } catch {
      data = null;
    }
    if (!response.ok) {
      const message = (data && (data.error || data.detail)) || `${response.status} ${response.statusText}`;
      throw new ApiError(response.status, typeof message === "string" ? message : json(message), data);
    }
    return data;
  }
}

// -- toasts ---------------------------------------------------------------------

function toast(message, kind = "ok") {
  const box = document.getElementById("toasts");
  const el = h("div", { class: `toast toast-${kind}`, role: "status", "data-testid": "toast" }, message);
  box.append(el);
  setTimeout(() => el.classList.add("toast-out"), 3500);
  setTimeout(() => el.remove(), 4000);
}

// Runs an action from a button; the button is disabled meanwhile.
async function act(button, label, work) {
  button.disabled = true;
  try {
    await work();
    toast(label);
    return true;
  } catch (error) {
    toast(error.message || String(error), "error");
    return false;
  } finally {
    button.disabled = false;
  }
}

// A destructive button asks again on its first click.
function confirmButton(text, props, onConfirm) {
  let armed = null;
  const button = h("button", { type: "button", class: "btn btn-danger btn-sm", ...props }, text);
  button.addEventListener("click", async (event) => {
    event.stopPropagation();
    if (!armed) {
      button.classList.add("armed");
      setText(button, "Sure?");
      armed = setTimeout(() => {
        armed = null;
        button.classList.remove("armed");
        setText(button, text);
      }, 3000);
      return;
    }
    clearTimeout(armed);
    armed = null;
    button.classList.remove("armed");
    setText(button, text);
    await onConfirm(button);
  });
  return button;
}

// -- live events ----------------------------------------------------------------

const EVENTS = [
  "worker:notification", "worker:initialize", "worker:stop", "worker:terminate",
  "worker:dead", "manager:start", "manager:stop",
];

const live = {
  source: null,
  streamState: "connecting",
  apiUp: true,
  retryTimer: null,
  listeners: new Set(),

  connect() {
    clearTimeout(this.retryTimer);
    if (this.source) this.source.close();
    const source = new EventSource("api/events", { withCredentials: true });
    this.source = source;
    this.setStream("connecting");
    source.onopen = () => this.setStream("live");
    source.onerror = () => {
      if (source !== this.source) return;
      if (source.readyState === EventSource.CLOSED) {
        // Refused (a 401, a proxy) or the manager is gone: poll, and try again later.
        this.setStream("closed");
        this.retryTimer = setTimeout(() => this.connect(), 5000);
        api("health").catch(() => {});
      } else {
        this.setStream("connecting");
      }
    };
    for (const name of EVENTS) {
      source.addEventListener(name, (event) => {
        let body;
        try {
          body = JSON.parse(event.data);
        } catch {
          return;
        }
        for (const listener of this.listeners) listener(name, body);
      });
    }
  },

  reconnect() {
    this.connect();
  },

  sleep() {
    clearTimeout(this.retryTimer);
    if (this.source) this.source.close();
    this.source = null;
    this.setStream("closed");
  },

  reachable(up) {
    if (up === this.apiUp) return;
    this.apiUp = up;
    this.render();
  },

  setStream(state) {
    this.streamState = state;
    this.render();
  },

  render() {
    const el = document.getElementById("conn");
    let state;
    let text;
    let title;
    if (!this.apiUp) {
      [state, text, title] = ["offline", "Offline", "The manager does not answer; retrying"];
    } else if (this.streamState === "live") {
      [state, text, title] = ["live", "Live", "Receiving the manager's events as they happen"];
    } else if (this.streamState === "connecting") {
      [state, text, title] = ["connecting", "Connecting…", "Connecting to the event stream"];
    } else {
      [state, text, title] = ["polling", "Polling", "No event stream: refreshing every few seconds"];
    }
    el.dataset.state = state;
    el.title = title;
    setText(document.getElementById("conn-text"), text);
  },

  on(listener) {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  },
};

// -- shared pieces ------------------------------------------------------------------

function section(title, props, ...children) {
  // A wide table scrolls inside its card on a narrow screen.
  const wrapped = children.map((child) =>
    child instanceof HTMLTableElement ? h("div", { class: "table-wrap" }, child) : child);
  return h("section", { class: "card", ...props },
    title ? h("header", { class: "card-head" }, h("h2", {}, title)) : null, ...wrapped);
}

function emptyRow(columns, text) {
  return h("tr", { class: "empty" }, h("td", { colspan: columns }, text));
}

function errorBanner() {
  const el = h("div", { class: "banner banner-error", "data-testid": "view-error", hidden: true });
  return {
    el,
    show(error) {
      el.hidden = false;
      setText(el, `Could not load: ${error.message || error}`);
    },
    clear() {
      el.hidden = true;
    },
  };
}

function progressBar(percent, step, state, props = {}) {
  const bar = h("div", { class: "bar" });
  const label = h("span", { class: "progress-label" });
  const el = h("div", { class: "progress", role: "progressbar", "aria-valuemin": 0,
    "aria-valuemax": 100, ...props }, bar, label);
  updateProgress(el, percent, step, state);
  return el;
}

function updateProgress(el, percent, step, state) {
  const value = percent === null || percent === undefined ? 0 : percent;
  el.dataset.percent = String(Math.round(value * 10) / 10);
  el.dataset.state = state || "";
  el.setAttribute("aria-valuenow", String(value));
  el.querySelector(".bar").style.width = `${value}%`;
  const label = percent === null || percent === undefined ? "" : fmtPercent(value);
  setText(el.querySelector(".progress-label"), [label, step].filter(Boolean).join(" · "));
}

// -- overview ---------------------------------------------------------------------

function overviewView() {
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
      workersBody)),
    section("Queue by task", {}, h("table", { class: "table", id: "queue-table" },
      h("thead", {}, queueHead), queueBody)),
    h("div", { class: "grid-2" },
      section("Recent failures", {}, h("table", { class: "table", id: "failures-table" },
        h("thead", {}, h("tr", {}, ["Job", "Task", "Reason", "Failed"].map((t) => h("th", {}, t)))),
        failuresBody),
      h("div", { class: "card-foot" }, h("a", { href: "#/failed" }, "All failed jobs →"))),
      section("Tasks", {}, h("table", { class: "table", id: "tasks-table" },
        h("thead", {}, h("tr", {}, ["Task", "Description", "Live workers", "Metadata", "Limits", "Claims"]
          .map((t) => h("th", {}, t)))),
        tasksBody))),
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
    replace(tasksBody, rows.length ? rows.map((t) =>
      h("tr", { "data-testid": "task-row", "data-task": idOf(t), "data-paused": String(Boolean(t.paused)) },
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
        pauseCell(t)))
      : emptyRow(6, "No task is known yet."));
  }

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
  function pauseCell(t) {
    const paused = Boolean(t.paused);
    const toggle = h("button", { type: "button", class: `btn btn-sm ${paused ? "btn-primary" : ""}`,
      "data-testid": paused ? "resume-task" : "pause-task" }, paused ? "Resume" : "Pause");
    toggle.addEventListener("click", () => act(toggle, `${idOf(t)} ${paused ? "resumed" : "paused"}`,
      async () => {
        await api(`tasks/${encodeURIComponent(idOf(t))}/${paused ? "resume" : "pause"}`, { method: "POST" });
        await refresh();
      }));
    return h("td", { class: "actions" }, paused
      ? h("span", { class: "badge state-cancelled", "data-testid": "task-paused" }, "paused") : null,
    " ", toggle);
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

function drawSpark(el, samples) {
  el.replaceChildren();
  if (samples.length < 2) return;
  const max = Math.max(...samples, 0.0001);
  const step = 120 / (samples.length - 1);
  const points = samples.map((v, i) => `${(i * step).toFixed(1)},${(26 - (v / max) * 24).toFixed(1)}`);
  el.append(svg("polyline", { points: points.join(" "), fill: "none", class: "spark-line" }));
}

// -- job list (and the failed view) -----------------------------------------------

function jobsView(params, { failed = false } = {}) {
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

// -- one job ------------------------------------------------------------------------

function jobView(id) {
  const banner = errorBanner();
  const title = h("h1", { class: "mono" }, h("span", { class: "muted" }, "Job "), id);
  const state = h("span", { id: "job-state", "data-testid": "job-state", class: "badge" });
  const actionsBox = h("div", { class: "actions", id: "job-actions" });
  const progress = progressBar(null, null, "", { id: "job-progress", "data-testid": "job-progress" });
  const progressCard = section(null, { class: "card progress-card", id: "job-progress-card" },
    h("div", { class: "progress-head" }, h("span", {}, "Progress"),
      h("span", { id: "job-step", "data-testid": "job-step", class: "step" })),
    progress);
  const facts = h("dl", { class: "facts", id: "job-facts" });
  const dataPre = h("pre", { id: "job-data", "data-testid": "job-data", class: "code" });
  const resultPre = h("pre", { id: "job-result", "data-testid": "job-result", class: "code" });
  const resultCard = section("Result", { id: "job-result-card", hidden: true }, resultPre);
  const errorTitle = h("div", { class: "error-title", id: "job-error-title", "data-testid": "job-error-title" });
  const reason = h("div", { class: "error-reason", id: "job-fail-reason" });
  const trace = h("pre", { id: "job-traceback", "data-testid": "job-traceback", class: "code trace" });
  const traceBox = h("details", { open: true }, h("summary", {}, "Traceback"), trace);
  const errorCard = section("Error", { id: "job-error", "data-testid": "job-error", hidden: true,
    class: "card card-error" }, errorTitle, reason, traceBox);
  const logCount = h("span", { class: "muted", id: "job-log-count" });
  const logs = h("ol", { class: "logs", id: "job-logs", "data-testid": "job-logs" });
  const logCard = h("section", { class: "card" },
    h("header", { class: "card-head" }, h("h2", {}, "Log"), logCount), logs);

  const root = h("div", { class: "job-detail", id: "job-detail", "data-testid": "job-detail",
    "data-job-id": id },
  h("div", { class: "crumbs" }, h("a", { href: "#/jobs" }, "Jobs"), " / ", shortId(id)),
  h("div", { class: "page-head" }, title, state, h("div", { class: "spacer" }), actionsBox),
  banner.el,
  progressCard,
  h("div", { class: "grid-2" },
    section("Details", {}, facts),
    section("Data", {}, dataPre)),
  errorCard, resultCard, logCard);

  let doc = null;
  let pending = []; // log lines from events, not yet in the stored job
  let lastLive = null; // the latest progress event: the store may not have it yet
  let actionsKey = "";
  let gone = false;

  function fact(label, ...value) {
    return [h("dt", {}, label), h("dd", {}, ...value)];
  }

  function renderFacts(job) {
    const chain = job.chain;
    replace(facts,
      fact("Task", h("a", { class: "mono", href: href("/jobs", { task: job.name }) }, job.name)),
      fact("State", stateBadge(job.state),
        job.cancelRequested && job.state === "running" ? " cancel requested" : ""),
      fact("Attempts", h("span", { id: "job-attempts", "data-testid": "job-attempts" },
        `${job.attempts ?? 0}${job.maxAttempts ? ` of ${job.maxAttempts}` : ""}`),
      job.failCount ? h("span", { class: "muted" }, ` · ${job.failCount} failed`) : null,
      job.lostCount ? h("span", { class: "muted" }, ` · lost ${job.lostCount}×`) : null),
      fact("Priority", `${job.priority ?? 0}`),
      workerOf(job) ? fact("Worker", h("a", { class: "mono", href: href("/jobs", { worker: workerOf(job) }) },
        workerOf(job))) : null,
      fact("Created", timeEl(job.createdAt)),
      fact(FINISHED.has(job.state) ? "Was due" : "Due", timeEl(job.nextRunAt)),
      fact("Started", timeEl(job.lastRunAt)),
      fact("Finished", timeEl(job.lastFinishedAt)),
      ranFor(job) ? fact(job.state === "running" ? "Running for" : "Took",
        h("span", { "data-testid": "job-duration" }, ranFor(job))) : null,
      job.timeout ? fact("Timeout", `${job.timeout} s`) : null,
      job.description ? fact("Description", job.description) : null,
      job.uniqueKey ? fact("Unique key", h("code", {}, job.uniqueKey)) : null,
      job.scheduleId ? fact("Schedule", h("a", { href: "#/schedules" }, job.scheduleId),
        job.scheduledFor ? [" · fire of ", timeEl(job.scheduledFor)] : null) : null,
      chain ? fact("Chain", `step ${(chain.index ?? 0) + 1}${chain.size ? ` of ${chain.size}` : ""}`,
        chain.next && chain.next.id ? [" · next ", h("a", { href: jobHref(chain.next.id), class: "mono" },
          shortId(chain.next.id))] : null,
        chain.id && chain.id !== id ? [" · last ", h("a", { href: jobHref(chain.id), class: "mono" },
          shortId(chain.id))] : null) : null,
      job.expiresAt ? fact("Deadline", timeEl(job.expiresAt)) : null,
      job.expireAt ? fact("Kept until", timeEl(job.expireAt)) : null,
    );
  }

  function renderActions(job) {
    const key = `${job.state}:${Boolean(job.cancelRequested)}`;
    if (key === actionsKey) return;
    actionsKey = key;
    const buttons = [];
    if (FINISHED.has(job.state)) {
      const again = job.state === "succeeded";
      const retry = h("button", { type: "button", class: again ? "btn" : "btn btn-primary",
        "data-testid": "retry", title: "Queue this job again, now" }, again ? "Run again" : "Retry");
      retry.addEventListener("click", () => act(retry, "Job requeued", async () => {
        show(await api(`jobs/${encodeURIComponent(id)}/retry`, { method: "POST" }));
      }));
      buttons.push(retry);
    }
    if (ACTIVE.has(job.state) && !job.cancelRequested) {
      const cancel = h("button", { type: "button", class: "btn", "data-testid": "cancel" }, "Cancel");
      cancel.addEventListener("click", () => act(cancel, "Cancel requested", async () => {
        show(await api(`jobs/${encodeURIComponent(id)}/cancel`, { method: "POST" }));
      }));
      buttons.push(cancel);
    }
    if (job.state !== "running") buttons.push(confirmButton("Delete", { "data-testid": "delete", class: "btn btn-danger" },
      (button) => act(button, "Job deleted", async () => {
        await api(`jobs/${encodeURIComponent(id)}`, { method: "DELETE" });
        location.hash = "#/jobs";
      })));
    replace(actionsBox, buttons);
  }

  function renderLogs(job) {
    const stored = job.logs || [];
    pending = pending.filter((p) => !stored.some((l) => l.msg === p.msg &&
      Math.abs((parseTime(l.ts)?.getTime() ?? 0) - (parseTime(p.ts)?.getTime() ?? 0)) < 5000));
    const lines = [...stored, ...pending];
    const key = `${lines.length}:${lines.length ? lines[lines.length - 1].ts : ""}:${pending.length}`;
    if (logs.dataset.key === key) return;
    logs.dataset.key = key;
    const atBottom = logs.scrollHeight - logs.scrollTop - logs.clientHeight < 24;
    replace(logs, lines.length ? lines.map((line) => {
      const at = parseTime(line.ts);
      const level = String(line.level || "log");
      return h("li", { class: `log log-${level}`, "data-testid": "log-line" },
        h("span", { class: "log-ts", title: at ? at.toISOString() : "" }, at ? absolute(at).slice(11) : ""),
        h("span", { class: "log-level" }, level),
        h("span", { class: "log-msg" }, line.msg ?? ""));
    }) : h("li", { class: "log muted" }, "No log lines."));
    setText(logCount, lines.length ? `${lines.length} line${lines.length === 1 ? "" : "s"}` : "");
    if (atBottom) logs.scrollTop = logs.scrollHeight;
  }

  function renderProgress(percent, step, jobState) {
    updateProgress(progress, percent, null, jobState);
    setText(progress.querySelector(".progress-label"), percent === null ? "" : fmtPercent(percent));
    setText(root.querySelector("#job-step"), step || "");
  }

  function show(job) {
    doc = job;
    gone = false;
    banner.clear();
    root.dataset.state = job.state;
    state.className = `badge state-${job.state}`;
    state.dataset.state = job.state;
    setText(state, job.state);
    let percent = percentOf(job);
    let step = job.progress && job.progress.step;
    if (job.state === "running" && lastLive && lastLive.attempts === job.attempts &&
        lastLive.percent > (percent ?? -1)) {
      ({ percent, step } = lastLive); // an event ahead of the stored progress
    }
    if (job.state !== "running") lastLive = null;
    renderProgress(percent ?? (FINISHED.has(job.state) ? null : 0), step, job.state);
    progressCard.hidden = percent === null && FINISHED.has(job.state);
    renderFacts(job);
    renderActions(job);
    const data = json(job.data ?? null);
    setText(dataPre, data);
    const hasResult = job.state === "succeeded" && job.result !== undefined;
    resultCard.hidden = !hasResult;
    if (hasResult) setText(resultPre, json(job.result));
    const error = job.error;
    const cancelled = job.state === "cancelled";
    const failedish = Boolean(error || (job.failReason && job.state !== "succeeded" &&
      !(cancelled && job.failReason === "cancelled")));
    errorCard.hidden = !failedish;
    errorCard.classList.toggle("card-error", !cancelled && job.state !== "expired");
    if (failedish) {
      const title = error ? `${error.type || "Error"}: ${error.message ?? ""}` : "";
      setText(errorTitle, title || job.failReason);
      const sameReason = !job.failReason || !error || job.failReason === title;
      reason.hidden = sameReason;
      setText(reason, sameReason ? "" : job.failReason);
      traceBox.hidden = !(error && error.traceback);
      setText(trace, (error && error.traceback) || "");
      setText(errorCard.querySelector("h2"), job.state === "cancelled" ? "Cancelled"
        : job.state === "expired" ? "Expired"
          : ACTIVE.has(job.state) ? "Last error (will retry)" : "Error");
    }
    renderLogs(job);
  }

  async function refresh() {
    try {
      show(await api(`jobs/${encodeURIComponent(id)}`));
    } catch (error) {
      if (error.status === 404) {
        gone = true;
        banner.show(new Error(`no job ${id}: it may have expired or been deleted`));
        root.dataset.state = "missing";
        return;
      }
      banner.show(error);
      throw error;
    }
  }

  return {
    root, refresh,
    get every() {
      if (gone) return IDLE_JOB_REFRESH_MS * 2;
      return doc && ACTIVE.has(doc.state) ? ACTIVE_JOB_REFRESH_MS : IDLE_JOB_REFRESH_MS;
    },
    onEvent(name, body) {
      if (name !== "worker:notification" || body.sourceId !== id) return null;
      const type = String(body.type || "");
      if (type === "progress" && typeof body.percent === "number") {
        if (doc && ACTIVE.has(doc.state)) {
          const percent = Math.max(0, Math.min(100, body.percent));
          const attempts = (doc.attempts ?? 0) + (doc.state === "running" ? 0 : 1); // it started
          lastLive = { percent, step: body.step, attempts };
          renderProgress(percent, body.step, "running");
        }
        return null;
      }
      if (type.startsWith("log")) {
        pending.push({ ts: body.triggeredAt, level: body.level || type.split(":")[1] || "log",
          msg: body.message ?? "" });
        if (doc) renderLogs(doc);
        return null;
      }
      return "now"; // start, success, fail, cancel, expire, snooze: read the job again
    },
  };
}

// -- schedules ------------------------------------------------------------------------

function schedulesView() {
  const banner = errorBanner();
  const body = h("tbody");
  const count = h("span", { class: "muted", id: "schedule-count" });
  const columns = ["Name", "Task", "Trigger", "Next run", "Last job", "Last success", "Last failure", ""];
  const root = h("div", { class: "schedules", id: "schedules-view" },
    h("div", { class: "page-head" }, h("h1", {}, "Schedules"), count),
    banner.el,
    section(null, {}, h("table", { class: "table", id: "schedule-list", "data-testid": "schedule-list" },
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", {}, c)))), body)));

  function lastCell(last, withState) {
    if (!last) return h("td", {}, h("span", { class: "muted" }, "never"));
    const at = last.lastFinishedAt || last.scheduledFor || last.createdAt;
    return h("td", { title: last.failReason || "" },
      h("a", { href: jobHref(last._id), class: "mono" }, shortId(last._id)), " ",
      withState ? stateBadge(last.state, { class: `badge badge-sm state-${last.state}` }) : null, " ",
      timeEl(at));
  }

  function row(s) {
    const paused = Boolean(s.paused);
    const toggle = h("button", { type: "button", class: `btn btn-sm ${paused ? "btn-primary" : ""}`,
      "data-testid": paused ? "resume" : "pause" }, paused ? "Resume" : "Pause");
    toggle.addEventListener("click", () => act(toggle, `${s.name} ${paused ? "resumed" : "paused"}`,
      async () => {
        await api(`schedules/${encodeURIComponent(s.name)}/${paused ? "resume" : "pause"}`, { method: "POST" });
        await refresh();
      }));
    const remove = confirmButton("Remove", { "data-testid": "remove" }, (button) =>
      act(button, `${s.name} removed`, async () => {
        await api(`schedules/${encodeURIComponent(s.name)}`, { method: "DELETE" });
        await refresh();
      }));
    return h("tr", { "data-testid": "schedule-row", "data-name": s.name, "data-paused": String(paused) },
      h("td", { class: "mono strong" }, s.name,
        s.origin === "metadata" ? h("span", { class: "chip chip-muted", title: "from task metadata" }, "metadata") : null),
      h("td", { class: "mono" }, h("a", { href: href("/jobs", { task: s.task }) }, s.task)),
      h("td", {}, h("code", {}, s.trigger || ""),
        s.overlap && s.overlap !== "allow" ? [" ", h("span", { class: "chip chip-muted", title: "overlap policy" }, s.overlap)] : null),
      h("td", { "data-testid": "next-run" }, paused
        ? h("span", { class: "badge state-cancelled", "data-testid": "paused", title: s.pauseReason || "" },
          s.pauseReason ? "paused: a run failed" : "paused")
        : timeEl(s.nextRunAt)),
      lastCell(s.lastJob, true), lastCell(s.lastSuccess, false), lastCell(s.lastFailure, false),
      h("td", { class: "actions" }, toggle, remove));
  }

  async function refresh() {
    let list;
    try {
      list = await api("schedules");
    } catch (error) {
      banner.show(error);
      throw error;
    }
    banner.clear();
    setText(count, `${list.length} schedule${list.length === 1 ? "" : "s"}`);
    replace(body, list.length ? list.map(row) : emptyRow(columns.length,
      "No schedules. Add one with client.every(…), client.cron(…) or `qworker-manager schedules add`."));
  }

  return {
    root, refresh, every: REFRESH_MS,
    onEvent(name, body) {
      return name === "worker:notification" && MOVES.includes(body.type) ? "soon" : null;
    },
  };
}

// -- workflows ------------------------------------------------------------------------

function workflowHref(id) {
  return `#/workflows/${encodeURIComponent(id)}`;
}

function workflowsView() {
  const banner = errorBanner();
  const body = h("tbody");
  const count = h("span", { class: "muted", id: "workflow-count" });
  const columns = ["ID", "Name", "Kind", "State", "Progress", "Failed", "Created"];
  const root = h("div", { class: "workflows", id: "workflows-view" },
    h("div", { class: "page-head" }, h("h1", {}, "Workflows"), count),
    banner.el,
    section(null, {}, h("table", { class: "table", id: "workflow-list", "data-testid": "workflow-list" },
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", {}, c)))), body)));

  function row(w) {
    const { finished, total } = w.progress;
    const failed = (w.counts.failed || 0) + (w.counts.expired || 0);
    const link = workflowHref(idOf(w));
    const tr = h("tr", { "data-testid": "workflow-row", "data-workflow-id": idOf(w), class: "clickable" },
      h("td", { class: "mono" }, h("a", { href: link }, shortId(idOf(w)))),
      h("td", { class: "mono strong" }, w.name),
      h("td", {}, w.kind),
      h("td", {}, stateBadge(w.state)),
      h("td", {}, progressBar(total ? (100 * finished) / total : 0, `${finished}/${total}`, w.state)),
      h("td", { "data-testid": "workflow-failed" }, String(failed)),
      h("td", {}, timeEl(w.createdAt)));
    tr.addEventListener("click", (event) => {
      if (!event.target.closest("a")) location.hash = link;
    });
    return tr;
  }

  async function refresh() {
    let list;
    try {
      list = await api("workflows");
    } catch (error) {
      banner.show(error);
      throw error;
    }
    banner.clear();
    setText(count, `${list.length} workflow${list.length === 1 ? "" : "s"}`);
    replace(body, list.length ? list.map(row) : emptyRow(columns.length,
      "No workflows. Start one with client.group(…) or client.workflow(…)."));
  }

  return {
    root, refresh, every: REFRESH_MS,
    onEvent(name, body) {
      return name === "worker:notification" && MOVES.includes(body.type) ? "soon" : null;
    },
  };
}

// A group larger than this shows its jobs as a grid of cells, not one box each.
const GRID_FROM = 40;
const BOX = { w: 168, h: 40, gapX: 64, gapY: 14, cell: 12 };

// Columns by depth: a node one column right of its deepest dependency.
function layout(nodes) {
  const depth = new Map();
  for (const node of nodes) {
    const deps = node.deps.map((d) => depth.get(d) ?? 0);
    depth.set(node.node, node.waitsForGroup ? 1 : deps.length ? 1 + Math.max(...deps) : 0);
  }
  const columns = [];
  for (const node of nodes) {
    const d = depth.get(node.node);
    (columns[d] ||= []).push(node);
  }
  return columns;
}

function workflowGraph(info) {
  const grid = info.kind === "group" && info.nodes.length > GRID_FROM;
  const nodes = grid ? info.nodes.filter((n) => n.waitsForGroup) : info.nodes;
  const children = grid ? info.nodes.filter((n) => !n.waitsForGroup) : [];
  const columns = layout(nodes);
  const perRow = Math.floor(BOX.w / BOX.cell);
  const gridRows = Math.ceil(children.length / perRow);
  if (grid) columns[0] = [{ node: "jobs", grid: true }];
  const tallest = Math.max(...columns.map((c) => (c || []).length), 1);
  const gridHeight = gridRows * BOX.cell;
  const height = Math.max(tallest * (BOX.h + BOX.gapY), gridHeight + BOX.gapY) + BOX.gapY;
  const width = columns.length * (BOX.w + BOX.gapX);
  const graph = svg("svg", { class: "wf-graph", viewBox: `0 0 ${width} ${height}`, width, height,
    role: "img", "aria-label": `graph of ${info.name}`, "data-testid": "workflow-graph" });
  const at = new Map();
  columns.forEach((column, c) => (column || []).forEach((node, r) => {
    const tall = node.grid ? gridHeight : BOX.h;
    at.set(node.node, { x: c * (BOX.w + BOX.gapX) + 4, y: BOX.gapY + r * (BOX.h + BOX.gapY), h: tall });
  }));
  const edges = svg("g", { class: "wf-edges" });
  graph.append(edges);
  // A group's callback waits for every job of the group (drawn as one grid when large).
  const sourcesOf = (node) => (!node.waitsForGroup ? node.deps
    : grid ? ["jobs"] : info.nodes.filter((n) => !n.waitsForGroup).map((n) => n.node));
  for (const node of nodes) {
    const to = at.get(node.node);
    for (const dep of sourcesOf(node)) {
      const a = at.get(dep);
      if (!a || !to) continue;
      const x1 = a.x + BOX.w, y1 = a.y + a.h / 2, x2 = to.x, y2 = to.y + BOX.h / 2;
      const mid = (x1 + x2) / 2;
      const ignored = node.ignoreFailure.includes(dep) || (node.waitsForGroup && node.node === "on_complete");
      edges.append(svg("path", { d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}`,
        class: `wf-edge${ignored ? " wf-edge-lenient" : ""}` }));
    }
  }
  for (const node of nodes) graph.append(nodeBox(node, at.get(node.node)));
  if (grid) graph.append(cellGrid(children, at.get("jobs"), perRow));
  return graph;
}

function nodeBox(node, where) {
  const link = svg("a", { href: jobHref(node.id), class: `wf-node state-${node.state}`,
    "data-testid": "workflow-node", "data-node": node.node, "data-state": node.state });
  const title = svg("title", {});
  title.textContent = `${node.node} (${node.task}): ${node.state}${node.reason ? ` — ${node.reason}` : ""}`;
  const name = svg("text", { x: where.x + 10, y: where.y + 17, class: "wf-name" });
  name.textContent = preview(node.node, 22);
  const task = svg("text", { x: where.x + 10, y: where.y + 32, class: "wf-task" });
  task.textContent = `${preview(node.task, 16)} · ${node.state}`;
  link.append(title, svg("rect", { x: where.x, y: where.y, width: BOX.w, height: BOX.h, rx: 7 }), name, task);
  return link;
}

function cellGrid(children, where, perRow) {
  const group = svg("g", { class: "wf-grid", "data-testid": "workflow-grid" });
  children.forEach((child, n) => {
    const x = where.x + (n % perRow) * BOX.cell, y = where.y + Math.floor(n / perRow) * BOX.cell;
    const cell = svg("a", { href: jobHref(child.id), class: `wf-cell state-${child.state}`,
      "data-state": child.state });
    const title = svg("title", {});
    title.textContent = `job ${child.node}: ${child.state}${child.reason ? ` — ${child.reason}` : ""}`;
    cell.append(title, svg("rect", { x, y, width: BOX.cell - 2, height: BOX.cell - 2, rx: 2 }));
    group.append(cell);
  });
  return group;
}

function workflowView(id) {
  const banner = errorBanner();
  const head = h("div", { class: "page-head" });
  const counts = h("div", { class: "chips", "data-testid": "workflow-counts" });
  const canvas = h("div", { class: "wf-canvas" });
  const actions = h("div", { class: "actions" });
  const root = h("div", { class: "workflow", id: "workflow-detail", "data-testid": "workflow-detail",
    "data-workflow-id": id }, h("div", { class: "crumbs" }, h("a", { href: "#/workflows" }, "Workflows")),
    head, banner.el, section(null, {}, h("div", { class: "wf-toolbar" }, counts, actions), canvas));
  let info = null;
  let gone = false;

  function renderActions() {
    const cancel = confirmButton("Cancel workflow", { "data-testid": "workflow-cancel" }, (button) =>
      act(button, "workflow cancelled", async () => {
        await api(`workflows/${encodeURIComponent(id)}/cancel`, { method: "POST" });
        await refresh();
      }));
    const retry = h("button", { type: "button", class: "btn btn-sm btn-primary", "data-testid": "workflow-retry" },
      "Retry failed nodes");
    retry.addEventListener("click", () => act(retry, "failed nodes queued again", async () => {
      await api(`workflows/${encodeURIComponent(id)}/retry`, { method: "POST" });
      await refresh();
    }));
    const running = info.state === "running";
    replace(actions, running ? cancel : null, !running && info.state !== "succeeded" ? retry : null);
  }

  async function refresh() {
    try {
      info = await api(`workflows/${encodeURIComponent(id)}`);
    } catch (error) {
      if (error.status === 404) {
        gone = true;
        banner.show(new Error(`no workflow ${id}: it may have been deleted`));
        return;
      }
      banner.show(error);
      throw error;
    }
    banner.clear();
    root.dataset.state = info.state;
    const { finished, total } = info.progress;
    replace(head, h("h1", {}, `${info.kind} `, h("span", { class: "mono" }, info.name)),
      stateBadge(info.state, { "data-testid": "workflow-state" }),
      h("span", { class: "muted" }, ` ${finished} of ${total} finished`));
    replace(counts, STATES.filter((s) => info.counts[s]).map((s) =>
      h("span", { class: `chip state-${s}`, "data-state": s }, `${info.counts[s]} ${s}`)));
    renderActions();
    replace(canvas, workflowGraph(info));
  }

  return {
    root, refresh,
    get every() {
      if (gone) return IDLE_JOB_REFRESH_MS * 2;
      return info && info.state === "running" ? ACTIVE_JOB_REFRESH_MS : IDLE_JOB_REFRESH_MS;
    },
    onEvent(name, body) {
      return name === "worker:notification" && MOVES.includes(body.type) ? "soon" : null;
    },
  };
}

// -- the router: one view at a time, refreshed on a timer and on events ---------------

const app = {
  view: null,
  timer: null,
  soon: null,

  route() {
    // Filters change the hash with replaceState (no hashchange): a hashchange is a navigation.
    const { path, params } = currentRoute();
    let view;
    let nav;
    const match = path.match(/^\/jobs\/([^/]+)$/);
    if (match) [view, nav] = [jobView(match[1]), "jobs"];
    else if (path === "/jobs") [view, nav] = [jobsView(params), params.get("state") === "failed" ? "failed" : "jobs"];
    else if (path === "/failed") [view, nav] = [jobsView(params, { failed: true }), "failed"];
    else if (path === "/schedules") [view, nav] = [schedulesView(), "schedules"];
    else if (path === "/workflows") [view, nav] = [workflowsView(), "workflows"];
    else if (path.match(/^\/workflows\/[^/]+$/)) [view, nav] = [workflowView(path.split("/")[2]), "workflows"];
    else if (path === "/overview") [view, nav] = [overviewView(), "overview"];
    else {
      view = { root: h("div", { class: "card banner" }, "No such page. ", h("a", { href: "#/overview" }, "Overview")),
        refresh: async () => {}, every: 60000 };
      nav = "";
    }
    for (const a of document.querySelectorAll("#nav a")) {
      a.classList.toggle("active", a.dataset.nav === nav);
      if (a.dataset.nav === nav) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    document.title = `qworker · ${nav || "dashboard"}`;
    this.view = view;
    replace(document.getElementById("view"), view.root);
    window.scrollTo(0, 0);
    this.tick();
  },

  async tick() {
    const view = this.view;
    if (!view) return;
    if (view.busy) {
      view.again = true; // once the refresh under way is done
      return;
    }
    clearTimeout(this.timer);
    view.busy = true;
    try {
      do {
        view.again = false;
        try {
          await view.refresh();
        } catch {
          // shown by the view's banner; the next tick tries again
        }
      } while (view.again && view === this.view);
    } finally {
      view.busy = false;
    }
    if (view !== this.view) return; // the route changed meanwhile; its own tick runs
    refreshRelativeTimes();
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.tick(), document.hidden ? 15000 : view.every);
  },

  event(name, body) {
    if (!this.view || !this.view.onEvent) return;
    const want = this.view.onEvent(name, body);
    if (want === "now") this.tick();
    else if (want === "soon" && !this.soon) {
      this.soon = setTimeout(() => {
        this.soon = null;
        this.tick();
      }, 300);
    }
  },
};

async function refreshFailedCount() {
  try {
    const { total } = await api("jobs", { params: { state: "failed", limit: 1 } });
    const badge = document.getElementById("nav-failed-count");
    badge.hidden = !total;
    setText(badge, total > 999 ? "999+" : String(total));
  } catch {
    // the current view shows what is wrong
  }
}

async function start() {
  const linked = tokenFromLink();
  if (linked) await saveToken(linked);
  else token = sessionStorage.getItem(TOKEN_KEY) || "";
  window.addEventListener("hashchange", () => app.route());
  // A tab left in the background lets go of its event stream after a minute.
  let asleep = null;
  document.addEventListener("visibilitychange", () => {
    clearTimeout(asleep);
    if (document.hidden) {
      asleep = setTimeout(() => live.sleep(), 60000);
      return;
    }
    if (!live.source) live.connect();
    if (app.view) app.tick();
  });
  live.on((name, body) => app.event(name, body));
  live.render();
  app.route();
  live.connect();
  refreshFailedCount();
  setInterval(refreshFailedCount, 5000);
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
else start();
