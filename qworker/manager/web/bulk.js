// Bulk actions: over the selected jobs, or over every job the filter matches. Each is
// counted first (a dry run of the same request) and confirmed in a dialog that says
// how many jobs it changes; the manager applies it (Client.bulk), not the page.

import { api } from "./api.js";
import { confirmDialog } from "./actions.js";

export const BULK_ACTIONS = {
  retry: { verb: "Retry", done: "requeued", rule: "finished jobs are queued again, now" },
  cancel: { verb: "Cancel", done: "cancelled",
    rule: "waiting and queued jobs are cancelled; running ones are asked to stop" },
  delete: { verb: "Delete", done: "deleted", rule: "every job but running ones is deleted" },
};

function jobs(n) {
  return `${n} job${n === 1 ? "" : "s"}`;
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
export async function bulk(action, scope, what) {
  const { verb, rule } = BULK_ACTIONS[action];
  const counted = await api("jobs/bulk", { method: "POST", body: { action, ...scope, dry_run: true } });
  if (!counted.eligible) {
    throw new Error(`none of the ${jobs(counted.matched)} ${what} can be: ${rule}`);
  }
  const left = counted.matched - counted.eligible;
  const yes = await confirmDialog({
    title: `${verb} ${jobs(counted.eligible)}?`,
    text: `${jobs(counted.matched)} ${what}; ${counted.eligible} can be acted on (${rule})` +
      `${left ? `, ${left} cannot` : ""}.`,
    confirm: `${verb} ${jobs(counted.eligible)}`,
    danger: action !== "retry",
  });
  if (!yes) return false;
  return api("jobs/bulk", { method: "POST", body: { action, ...scope } });
}

export function bulkDone(outcome) {
  return `${jobs(outcome.changed)} ${BULK_ACTIONS[outcome.action].done}`;
}
