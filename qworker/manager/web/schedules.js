// The recurring schedules: next run, last outcomes, pause, run now.

import { shortId } from "./format.js";
import { h, stateBadge, timeEl } from "./dom.js";
import { listView, onMoves } from "./listview.js";
import { href, jobHref } from "./routes.js";
import { api } from "./api.js";
import { act, changeButton, confirmButton } from "./actions.js";

function lastCell(last, withState) {
  if (!last) return h("td", {}, h("span", { class: "muted" }, "never"));
  const at = last.lastFinishedAt || last.scheduledFor || last.createdAt;
  return h("td", { title: last.failReason || "" },
    h("a", { href: jobHref(last._id), class: "mono" }, shortId(last._id)), " ",
    withState ? stateBadge(last.state, { class: `badge badge-sm state-${last.state}` }) : null, " ",
    timeEl(at));
}

function row(s, refresh) {
  const paused = Boolean(s.paused);
  const toggle = changeButton(paused ? "Resume" : "Pause", { class: `btn btn-sm ${paused ? "btn-primary" : ""}`,
    "data-testid": paused ? "resume" : "pause" });
  // Fires once now, as the trigger would (its overlap policy decides): a job, or why not.
  const runNow = changeButton("Run now", { "data-testid": "run-now", title: "Fire it once, now" });
  runNow.addEventListener("click", () => act(runNow, (fired) => fired.outcome === "buffered"
    ? `${s.name}: buffered, to start when its running job ends` : `${s.name}: job ${shortId(fired.jobId)} queued`,
  async () => {
    const fired = await api(`schedules/${encodeURIComponent(s.name)}/run`, { method: "POST" });
    await refresh();
    return fired;
  }));
  toggle.addEventListener("click", () => act(toggle, `${s.name} ${paused ? "resumed" : "paused"}`,
    async () => {
      await api(`schedules/${encodeURIComponent(s.name)}/${paused ? "resume" : "pause"}`, { method: "POST" });
      await refresh();
    }));
  const remove = confirmButton("Remove", { "data-testid": "remove" },
    `Schedule ${s.name} fires no more; the jobs it made are kept.`, (button) =>
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
    h("td", { class: "actions" }, runNow, toggle, remove));
}

export function schedulesView() {
  return listView({
    name: "schedule", title: "Schedules", load: () => api("schedules"), row, key: "data-name",
    columns: ["Name", "Task", "Trigger", "Next run", "Last job", "Last success", "Last failure", ""],
    empty: "No schedules. Add one with client.every(…), client.cron(…) or `qworker-manager schedules add`.",
    onEvent: onMoves,
  });
}
