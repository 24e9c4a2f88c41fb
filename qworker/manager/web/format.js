// What the dashboard shows, and how: states, durations, times, ids.

export const STATES = ["waiting", "queued", "running", "succeeded", "failed", "cancelled", "expired"];
export const ACTIVE = new Set(["waiting", "queued", "running"]);
export const FINISHED = new Set(["succeeded", "failed", "cancelled", "expired"]);
// What an operator retries; a succeeded job can be run again from its own page.
export const RETRYABLE = new Set(["failed", "cancelled", "expired"]);
// Notifications of a job that moved (the rest are progress and log lines).
export const MOVES = ["start", "success", "fail", "cancel", "expire", "snooze"];

export const PAGE_SIZES = [25, 50, 100];
export const REFRESH_MS = 2500; // every view, so it is right even without notifications
export const ACTIVE_JOB_REFRESH_MS = 1500; // a job that runs: standalone workers send no events
export const IDLE_JOB_REFRESH_MS = 4000;

// -- formatting --------------------------------------------------------------

export function parseTime(value) {
  if (!value) return null;
  // The API sends ISO 8601 with an offset; a naive one is UTC.
  const text = /[zZ]|[+-]\d\d:?\d\d$/.test(value) ? value : `${value}Z`;
  const date = new Date(text);
  return Number.isNaN(date.getTime()) ? null : date;
}

export function absolute(date) {
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ` +
    `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
}

export function relative(date, now = Date.now()) {
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


export function json(value) {
  return JSON.stringify(value, null, 2);
}

export function preview(value, max = 80) {
  if (value === null || value === undefined) return "";
  const text = typeof value === "string" ? value : JSON.stringify(value);
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

export function idOf(doc) {
  return String(doc._id ?? doc.id ?? "");
}

export function shortId(id) {
  return id ? String(id).slice(-8) : "";
}

export function percentOf(doc) {
  const p = doc && doc.progress;
  if (doc && doc.state === "succeeded") return 100;
  if (!p || typeof p.percent !== "number") return null;
  return Math.max(0, Math.min(100, p.percent));
}

export function fmtDuration(seconds) {
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${Math.round(seconds * 10) / 10} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} min`;
}

// How long the last run took, or has been running.
export function ranFor(job) {
  const start = parseTime(job.lastRunAt);
  if (!start) return "";
  const end = job.state === "running" ? new Date() : parseTime(job.lastFinishedAt);
  if (!end || end < start) return "";
  return fmtDuration((end.getTime() - start.getTime()) / 1000);
}

export function fmtPercent(value) {
  return `${Math.round(value * 10) / 10}%`;
}

export function fmtRate(perSecond) {
  if (!perSecond) return "0";
  if (perSecond >= 100) return perSecond.toFixed(0);
  if (perSecond >= 1) return perSecond.toFixed(1);
  return perSecond.toFixed(2);
}

export function workerOf(doc) {
  return doc.lockedBy || doc.workerId || doc.worker || doc.lastWorker || "";
}
