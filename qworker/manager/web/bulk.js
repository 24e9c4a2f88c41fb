// Bulk actions: over the jobs ticked in the list, or over every job the filter
// matches. Each is counted first (a dry run of the same request) and confirmed in a
// dialog that says how many jobs it changes; the manager applies it (Client.bulk),
// not the page.

import { h, setText } from "./dom.js";
import { api } from "./api.js";
import { act, changeButton, confirmDialog } from "./actions.js";

export const BULK_ACTIONS = {
  retry: { verb: "Retry", done: "requeued",
    rule: "finished jobs run again, now: failed, cancelled and expired ones, and succeeded ones too" },
  cancel: { verb: "Cancel", done: "cancelled",
    rule: "waiting and queued jobs are cancelled; running ones are asked to stop" },
  delete: { verb: "Delete", done: "deleted", rule: "every job but running ones is deleted for good" },
};

function jobs(n) {
  return `${n.toLocaleString("en")} job${n === 1 ? "" : "s"}`;
}

// What a filter holds, for the dialog: "state failed, data customer = acme".
export function describeFilter(filter) {
  const parts = Object.entries(filter).map(([key, value]) =>
    key === "data_value" ? null
      : key === "data_field" ? `data ${value}${filter.data_value ? ` = ${filter.data_value}` : " (set)"}`
        : `${key.replace("_", " ")} ${value}`);
  return parts.filter(Boolean).join(", ") || "no filter: every job";
}

// Counts, asks, applies: the outcome ({action, matched, changed}), or false if declined.
async function bulk(action, scope, what) {
  const { verb, rule } = BULK_ACTIONS[action];
  const counted = await api("jobs/bulk", { method: "POST", body: { action, ...scope, dry_run: true } });
  if (!counted.eligible) {
    throw new Error(`${verb}: none of the ${jobs(counted.matched)} can be (${rule})`);
  }
  const left = counted.matched - counted.eligible;
  const yes = await confirmDialog({
    title: `${verb} ${jobs(counted.eligible)}?`,
    text: `${jobs(counted.matched)} ${what}; ${counted.eligible.toLocaleString("en")} can be acted on ` +
      `(${rule})${left ? `, ${left.toLocaleString("en")} cannot` : ""}.`,
    confirm: `${verb} ${jobs(counted.eligible)}`,
    danger: action !== "retry",
  });
  if (!yes) return false;
  return api("jobs/bulk", { method: "POST", body: { action, ...scope } });
}

function done(outcome) {
  return `${jobs(outcome.changed)} ${BULK_ACTIONS[outcome.action].done}`;
}

// The bar over a job list: the ticked jobs (selected: a Set of ids the list keeps),
// and every job that matches (filter(): the list's filter). after(): the list again.
export function bulkBar({ actions, selected, filter, after }) {
  const count = h("span", { class: "bulk-count", "data-testid": "selected-count" });
  const matching = h("span", { class: "bulk-count", "data-testid": "matching-count" });
  const none = h("button", { type: "button", class: "btn btn-ghost btn-sm", "data-testid": "select-none" },
    "Clear selection");
  none.addEventListener("click", () => {
    selected.clear();
    after();
  });
  let total = 0;

  function button(action, which) {
    const { verb } = BULK_ACTIONS[action];
    const primary = action === "retry" && actions[0] === "retry" && actions.length === 2;
    const el = changeButton(which === "selected" ? verb : `${verb} all`, {
      class: `btn btn-sm${primary ? " btn-primary" : ""}${action === "delete" ? " btn-danger" : ""}`,
      "data-testid": `bulk-${which}-${action}`,
      title: `${verb} ${which === "selected" ? "the selected jobs" : "every job that matches the filter"}` });
    el.addEventListener("click", async () => {
      const [scope, what] = which === "selected" ? [{ ids: [...selected] }, "selected"]
        : [{ filter: filter() }, `match ${describeFilter(filter())}`];
      await act(el, done, async () => {
        const outcome = await bulk(action, scope, what);
        if (outcome) selected.clear();
        return outcome;
      });
      after();
    });
    return el;
  }

  const onSelected = actions.map((action) => button(action, "selected"));
  const onMatching = actions.map((action) => button(action, "matching"));
  const el = h("div", { class: "bulk-bar", "data-change": "", "data-testid": "bulk-bar",
    role: "toolbar", "aria-label": "bulk actions" },
  h("div", { class: "bulk-group" }, count, onSelected, none),
  h("div", { class: "bulk-group" }, matching, onMatching));

  // matched: how many the filter matches now (null: not known, the list did not load).
  function render(matched) {
    if (matched !== undefined) total = matched;
    setText(count, `${selected.size} selected`);
    count.dataset.count = String(selected.size);
    for (const b of onSelected) b.disabled = !selected.size;
    none.hidden = !selected.size;
    setText(matching, total === null ? "" : `${total.toLocaleString("en")} matching`);
    matching.dataset.count = String(total ?? "");
    for (const b of onMatching) b.disabled = !total;
  }
  render(null);
  return { el, render };
}
