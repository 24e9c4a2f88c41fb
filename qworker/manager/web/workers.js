// The workers: each with its running jobs, and "stop gracefully" (as on SIGTERM: it
// claims no more, lets its running jobs finish within its grace, and exits).

import { REFRESH_MS, idOf, percentOf, shortId } from "./format.js";
import { emptyRow, errorBanner, h, progressBar, replaceRows, section, setText, timeEl } from "./dom.js";
import { href, jobHref } from "./routes.js";
import { api } from "./api.js";
import { act, changeButton, confirmDialog } from "./actions.js";

const JOBS_SHOWN = 5; // per worker; the rest are a link to the job list

export function workersView() {
  const banner = errorBanner();
  const body = h("tbody");
  const count = h("span", { class: "muted", id: "worker-count" });
  const columns = ["Worker", "Host", "State", "Tasks", "Running jobs", "Last ping", ""];
  const root = h("div", { class: "workers", id: "workers-view" },
    h("div", { class: "page-head" }, h("h1", {}, "Workers"), count),
    banner.el,
    section(null, {}, h("table", { class: "table", id: "worker-list", "data-testid": "worker-list" },
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", {}, c)))), body)));

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

  function stopCell(w) {
    const cell = h("td", { class: "actions" });
    if (w.stopRequestedAt) {
      cell.append(h("span", { class: "chip chip-muted", "data-testid": "worker-stopping" }, "stopping · asked "),
        timeEl(w.stopRequestedAt));
      return cell;
    }
    if (!w.live) return cell;
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

  function row(w) {
    const state = w.status || "unknown";
    return h("tr", { "data-testid": "worker-row", "data-worker-id": idOf(w), "data-state": state },
      h("td", { class: "mono strong" }, idOf(w)),
      h("td", {}, w.host || "—", w.pid ? h("span", { class: "muted" }, ` · pid ${w.pid}`) : null),
      h("td", {}, h("span", { class: `badge worker-${state}`, "data-testid": "worker-state" }, state),
        h("span", { class: "chip chip-muted" }, w.standalone ? "standalone" : "managed")),
      h("td", {}, (w.tasks || []).map((t) => h("a", { class: "chip", href: href("/jobs", { task: t }) }, t))),
      h("td", { "data-testid": "worker-jobs", "data-count": w.runningJobs ?? 0 }, runningJobs(w)),
      h("td", {}, timeEl(w.pingedAt)),
      stopCell(w));
  }

  async function refresh() {
    let list;
    try {
      list = await api("workers");
    } catch (error) {
      banner.show(error);
      throw error;
    }
    banner.clear();
    const live = list.filter((w) => w.live).length;
    setText(count, `${live} live of ${list.length}`);
    replaceRows(body, list.length ? list.map(row)
      : emptyRow(columns.length, "No worker has been seen yet."), "data-worker-id");
  }

  return {
    root, refresh, every: REFRESH_MS,
    onEvent(name, body) {
      if (name !== "worker:notification") return "soon"; // workers come and go
      return body.type === "start" || body.type === "success" || body.type === "fail" ? "soon" : null;
    },
  };
}
