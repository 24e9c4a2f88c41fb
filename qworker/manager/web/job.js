// One job: its state, progress, data, result, error and log, live.

import { ACTIVE, ACTIVE_JOB_REFRESH_MS, FINISHED, IDLE_JOB_REFRESH_MS, absolute, fmtPercent, json, parseTime, percentOf, ranFor, shortId, workerOf } from "./format.js";
import { errorBanner, h, progressBar, replace, section, setText, stateBadge, timeEl, updateProgress } from "./dom.js";
import { href, jobHref } from "./routes.js";
import { api } from "./api.js";
import { act, changeButton, confirmButton } from "./actions.js";

// -- one job ------------------------------------------------------------------------

export function jobView(id) {
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
      const retry = changeButton(again ? "Run again" : "Retry", { class: again ? "btn" : "btn btn-primary",
        "data-testid": "retry", title: "Queue this job again, now" });
      retry.addEventListener("click", () => act(retry, "Job requeued", async () => {
        show(await api(`jobs/${encodeURIComponent(id)}/retry`, { method: "POST" }));
      }));
      buttons.push(retry);
    }
    if (ACTIVE.has(job.state) && !job.cancelRequested) {
      const cancel = changeButton("Cancel", { class: "btn", "data-testid": "cancel" });
      cancel.addEventListener("click", () => act(cancel, "Cancel requested", async () => {
        show(await api(`jobs/${encodeURIComponent(id)}/cancel`, { method: "POST" }));
      }));
      buttons.push(cancel);
    }
    if (job.state !== "running") buttons.push(confirmButton("Delete", { "data-testid": "delete", class: "btn btn-danger" },
      `Job ${shortId(id)} and its log are deleted for good.`,
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
