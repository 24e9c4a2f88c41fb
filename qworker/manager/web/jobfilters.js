// The job list's filters and sort order. Their names are the API's (GET /api/jobs),
// and they live in the URL, so a shared link opens the same list.

import { PAGE_SIZES, STATES } from "./format.js";
import { h } from "./dom.js";

// Text fields: [name, placeholder, suggestions].
const TEXT_FILTERS = [
  ["task", "task", "task-names"],
  ["worker", "worker", "worker-names"],
  ["text", "text in description"],
  ["error", "text in the error"],
  ["data_field", "data field"],
  ["data_value", "its value"],
];
// Time bounds: an ISO time, or a duration ago ("1 hour"); the manager reads both.
const TIME_FILTERS = [
  ["since", "created after"],
  ["until", "created before"],
  ["finished_since", "finished after"],
  ["finished_until", "finished before"],
];
const TIME_CHOICES = ["5 minutes", "1 hour", "24 hours", "7 days"];
const SORTS = [
  ["created:desc", "newest first"],
  ["created:asc", "oldest first"],
  ["finished:desc", "finished last first"],
  ["finished:asc", "finished first first"],
  ["duration:desc", "longest run first"],
  ["duration:asc", "shortest run first"],
];
const DEFAULT_SORT = SORTS[0][0];
const DEFAULT_LIMIT = 50;

// A value a link gave that the page does not offer is kept, as an option of its own, and
// sent: the manager takes it (a page size of 30) or says what is wrong with it.
function choose(select, value, label = value) {
  if (value && ![...select.options].some((o) => o.value === value)) {
    select.append(h("option", { value }, label));
  }
  select.value = value;
}

function testId(name) {
  return `filter-${name.replaceAll("_", "-")}`;
}

// The form, built from the URL's parameters; onChange runs after each change, typing
// included (debounced).
export function jobFilters(params, { failed, onChange }) {
  const fields = new Map();
  const state = h("select", { id: "filter-state", "aria-label": "state", "data-testid": "filter-state" },
    h("option", { value: "" }, "any state"), STATES.map((s) => h("option", { value: s }, s)));
  choose(state, failed ? "failed" : params.get("state") || "");
  if (!failed) fields.set("state", state);
  for (const [name, placeholder, list] of TEXT_FILTERS) {
    fields.set(name, h("input", { id: testId(name), "aria-label": placeholder, placeholder, list,
      value: params.get(name) || "", "data-testid": testId(name), spellcheck: "false",
      type: name === "text" || name === "error" ? "search" : "text" }));
  }
  for (const [name, label] of TIME_FILTERS) {
    fields.set(name, h("input", { id: testId(name), class: "time-filter", "aria-label": label,
      placeholder: label, list: "time-choices", value: params.get(name) || "",
      "data-testid": testId(name), spellcheck: "false", title: "an ISO time, or a duration ago: 1 hour" }));
  }
  const sort = h("select", { id: "sort", "aria-label": "sort", "data-testid": "sort" },
    SORTS.map(([value, label]) => h("option", { value }, label)));
  choose(sort, `${params.get("sort") || "created"}:${params.get("order") || "desc"}`);
  const size = h("select", { id: "page-size", "aria-label": "jobs per page", "data-testid": "page-size" },
    PAGE_SIZES.map((n) => h("option", { value: String(n) }, `${n} / page`)));
  choose(size, params.get("limit") || String(DEFAULT_LIMIT), `${params.get("limit")} / page`);
  const clear = h("button", { type: "button", class: "btn btn-ghost", "data-testid": "filter-clear" }, "Clear");

  let typing = null;
  const changed = () => {
    clearTimeout(typing);
    onChange();
  };
  for (const el of [...fields.values(), sort, size]) {
    if (el.tagName === "SELECT") el.addEventListener("change", changed);
    else {
      el.addEventListener("input", () => {
        clearTimeout(typing);
        typing = setTimeout(changed, 350);
      });
      el.addEventListener("change", changed);
    }
  }
  clear.addEventListener("click", () => {
    for (const el of fields.values()) el.value = "";
    changed();
  });

  const lists = [h("datalist", { id: "task-names" }), h("datalist", { id: "worker-names" }),
    h("datalist", { id: "time-choices" }, TIME_CHOICES.map((c) => h("option", { value: c })))];
  const pick = (names) => names.filter((n) => fields.has(n)).map((n) => fields.get(n));
  const what = ["state", ...TEXT_FILTERS.map(([n]) => n)];
  const when = TIME_FILTERS.map(([n]) => n);
  const form = h("form", { class: "filters", id: "job-filters", role: "search",
    onsubmit: (e) => e.preventDefault() },
  h("div", { class: "filter-row" }, pick(what), clear),
  h("div", { class: "filter-row" }, pick(when),
    h("label", { class: "sort-label" }, "Sort ", sort)),
  lists);

  return {
    form, size, lists: { task: lists[0], worker: lists[1] },
    // The filters given, by API name ({} is every job); the failed view's state is fixed.
    filter() {
      const found = failed ? { state: "failed" } : {};
      for (const [name, el] of fields) if (el.value.trim()) found[name] = el.value.trim();
      return found;
    },
    order() {
      const [by, order] = sort.value.split(":");
      return { sort: by, order };
    },
    limit() {
      return Number(size.value) || size.value; // a bad one goes to the manager, which says so
    },
    // What the URL holds: the filters, and the sort and page size when not the default.
    linked() {
      const given = this.filter();
      if (failed) delete given.state;
      const [by, order] = sort.value === DEFAULT_SORT ? ["", ""] : sort.value.split(":");
      return { ...given, sort: by, order, limit: this.limit() === DEFAULT_LIMIT ? "" : this.limit() };
    },
  };
}
