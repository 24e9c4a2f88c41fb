// The qworker dashboard: plain ES module, no build step, no dependencies.
//
// Views are picked by the URL's hash (#/overview, #/jobs?state=failed, #/jobs/ID,
// #/failed, #/workers, #/tasks, #/schedules, #/workflows, #/workflows/ID). Each view refreshes itself every few seconds and also
// listens to the manager's server-sent events (/api/events) for live updates.
// Everything shown is inserted as text nodes: job data is user input.

import { h, refreshRelativeTimes, replace, setText } from "./dom.js";
import { currentRoute } from "./routes.js";
import { api, live, loadAccess, loadToken } from "./api.js";
import { overviewView } from "./overview.js";
import { jobsView } from "./jobs.js";
import { jobView } from "./job.js";
import { schedulesView } from "./schedules.js";
import { workflowView, workflowsView } from "./workflows.js";
import { workersView } from "./workers.js";
import { tasksView } from "./tasks.js";

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
    else if (path === "/workers") [view, nav] = [workersView(), "workers"];
    else if (path === "/tasks") [view, nav] = [tasksView(), "tasks"];
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
  await loadToken();
  await loadAccess().catch(() => {}); // unknown: every control shows, the manager decides
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
