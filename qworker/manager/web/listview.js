// A view that is one table of things from one API call: a heading with a count, an
// error banner, and rows redrawn on every refresh (the focus kept on its control).

import { MOVES, REFRESH_MS } from "./format.js";
import { emptyRow, errorBanner, h, replaceRows, section, setText } from "./dom.js";

// What most views want of the event stream: a job that moved, read the view again soon.
export function onMoves(name, body) {
  return name === "worker:notification" && MOVES.includes(body.type) ? "soon" : null;
}

function plural(n, noun) {
  return `${n} ${noun}${n === 1 ? "" : "s"}`;
}

// name: the thing listed ("schedule"): ids are `${name}s-view`, `${name}-list`,
// `${name}-count`. load() returns the items; row(item, refresh) draws one, and key
// names the row attribute that identifies it. after: what follows the table.
export function listView({ name, title, columns, load, row, key, empty, count, after = [], onEvent }) {
  const banner = errorBanner();
  const body = h("tbody");
  const counter = h("span", { class: "muted", id: `${name}-count` });
  const root = h("div", { class: `${name}s`, id: `${name}s-view` },
    h("div", { class: "page-head" }, h("h1", {}, title), counter),
    banner.el,
    section(null, {}, h("table", { class: "table", id: `${name}-list`, "data-testid": `${name}-list` },
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", {}, c)))), body)),
    after);

  async function refresh() {
    let list;
    try {
      list = await load();
    } catch (error) {
      banner.show(error);
      throw error;
    }
    banner.clear();
    setText(counter, count ? count(list) : plural(list.length, name));
    replaceRows(body, list.length ? list.map((item) => row(item, refresh)) : emptyRow(columns.length, empty), key);
  }

  return { root, refresh, every: REFRESH_MS, onEvent };
}
