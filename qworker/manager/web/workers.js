// The workers: each with its running jobs, and "stop gracefully" (as on SIGTERM: it
// claims no more, lets its running jobs finish within its grace, and exits).

import { idOf, percentOf, shortId } from "./format.js";
import { h, progressBar, timeEl } from "./dom.js";
import { listView } from "./listview.js";
import { href, jobHref } from "./routes.js";
import { api } from "./api.js";
import { act, changeButton, confirmDialog } from "./actions.js";

const JOBS_SHOWN = 5; // per worker; the rest are a link to the job list

function runningJobs(w) {
  const jobs = w.jobs || [];
  if (!jobs.length) return h("span", { class: "muted" }, w.live ? "idle" : "—");
  const more = (w.runningJobs ?? jobs.length) - Math.min(jobs.length, JOBS_SHOWN);
  return h("ul", { class: "running-jobs" }, jobs.slice(0, JOBS_SHOWN).map((job) =>
    h("li", { "data-testid": "worker-job", "data-job-id": job.id },
      h("a", { class: "mono", href: jobHref(job.id), title: job.id }, shortId(job.id)),
      h("span", { class: "mono" }, job.task),
      progressBar(percentOf(job) ?? 0, null, "running", { class: "progress progress-sm" }),
      timeEl(job.startedAt))),
  more > 0 ? h("li", {}, h("a", { href: href("/jobs", { worker: idOf(w), state: "running" }) },
    `and ${more} more`)) : null);
}

function stopCell(w, refresh) {
  const cell = h("td", { class: "actions" });
  if (!w.live) return cell; // stopped, lost or dead: nothing to ask
  if (w.stopRequestedAt) {
    cell.append(h("span", { class: "chip chip-muted", "data-testid": "worker-stopping" }, "stopping · asked "),
      timeEl(w.stopRequestedAt));
    return cell;
  }
  const stop = changeButton("Stop gracefully", { class: "btn btn-sm btn-danger", "data-testid": "stop-worker" });
  stop.addEventListener("click", () => act(stop, `${idOf(w)} asked to stop`, async () => {
    const running = w.runningJobs ?? 0;
    const yes = await confirmDialog({
      title: `Stop ${idOf(w)}?`,
      text: `It claims no more jobs, lets its ${running} running job${running === 1 ? "" : "s"} ` +
        "finish within its grace period, and exits. A supervisor that restarts it " +
        "(systemd's Restart=always, Kubernetes) starts it again.",
      confirm: "Stop gracefully",
      danger: true,
    });
    if (!yes) return false;
    await api(`workers/${encodeURIComponent(idOf(w))}/stop`, { method: "POST" });
    await refresh();
    return true;
  }));
  cell.append(stop);
  return cell;
}

function row(w, refresh) {
  const state = w.status || "unknown";
  return h("tr", { "data-testid": "worker-row", "data-worker-id": idOf(w), "data-state": state },
    h("td", { class: "mono strong" }, idOf(w)),
    h("td", {}, w.host || "—", w.pid ? h("span", { class: "muted" }, ` · pid ${w.pid}`) : null),
    h("td", {}, h("span", { class: `badge worker-${state}`, "data-testid": "worker-state" }, state),
      h("span", { class: "chip chip-muted" }, w.standalone ? "standalone" : "managed")),
    h("td", {}, (w.tasks || []).map((t) => h("a", { class: "chip", href: href("/jobs", { task: t }) }, t))),
    h("td", { "data-testid": "worker-jobs", "data-count": w.runningJobs ?? 0 }, runningJobs(w)),
    h("td", {}, timeEl(w.pingedAt)),
    stopCell(w, refresh));
}

export function workersView() {
  return listView({
    name: "worker", title: "Workers", load: () => api("workers"), row, key: "data-worker-id",
    columns: ["Worker", "Host", "State", "Tasks", "Running jobs", "Last ping", ""],
    empty: "No worker has been seen yet.",
    count: (list) => `${list.filter((w) => w.live).length} live of ${list.length}`,
    onEvent(name, body) {
      if (name !== "worker:notification") return "soon"; // workers come and go
      return body.type === "start" || body.type === "success" || body.type === "fail" ? "soon" : null;
    },
  });
}
