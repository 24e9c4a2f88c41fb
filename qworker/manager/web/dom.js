// Building the page: text nodes only (job data is user input), and the pieces views share.

import { absolute, fmtPercent, parseTime, relative } from "./format.js";

// -- DOM helpers: text only, never HTML ------------------------------------

export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (key === "class") {
      el.className = value;
    } else if (key === "value") {
      el.value = value;
    } else if (key === "style" && typeof value === "object") {
      Object.assign(el.style, value);
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function replace(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

// Replaces a container's rows (or cards) and keeps the keyboard's focus on the same
// control of the same row (key: the attribute that names a row), since views redraw
// every few seconds: the control of the same test id, else the same n-th of its tag.
export function replaceRows(body, rows, key) {
  const focused = document.activeElement;
  const row = focused && body.contains(focused) ? focused.closest(`[${key}]`) : null;
  const id = row && row.getAttribute(key);
  const testid = focused && focused.dataset.testid;
  const nth = row ? [...row.querySelectorAll(focused.tagName)].indexOf(focused) : -1;
  replace(body, rows);
  if (id === null || id === undefined) return;
  const again = body.querySelector(`[${key}="${CSS.escape(id)}"]`);
  if (!again) return;
  const control = (testid && again.querySelector(`[data-testid="${CSS.escape(testid)}"]`)) ||
    again.querySelectorAll(focused.tagName)[nth] || again.querySelector("button, a, input");
  if (control) control.focus();
}

export function setText(el, text) {
  const value = text === null || text === undefined ? "" : String(text);
  if (el.textContent !== value) el.textContent = value;
}

export function svg(tag, attrs) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, String(value));
  return el;
}


export function timeEl(value, empty = "—") {
  const date = parseTime(value);
  if (!date) return h("span", { class: "muted" }, empty);
  return h("time", { datetime: date.toISOString(), title: absolute(date), "data-rel": "" },
    relative(date));
}

export function refreshRelativeTimes() {
  const now = Date.now();
  for (const el of document.querySelectorAll("time[data-rel]")) {
    setText(el, relative(new Date(el.getAttribute("datetime")), now));
  }
}

export function stateBadge(state, extra = {}) {
  return h("span", { class: `badge state-${state || "unknown"}`, "data-state": state, ...extra },
    state || "unknown");
}

// -- shared pieces ------------------------------------------------------------------

export function section(title, props, ...children) {
  // A wide table scrolls inside its card on a narrow screen.
  const wrapped = children.map((child) =>
    child instanceof HTMLTableElement ? h("div", { class: "table-wrap" }, child) : child);
  return h("section", { class: "card", ...props },
    title ? h("header", { class: "card-head" }, h("h2", {}, title)) : null, ...wrapped);
}

export function emptyRow(columns, text) {
  return h("tr", { class: "empty" }, h("td", { colspan: columns }, text));
}

export function errorBanner() {
  const el = h("div", { class: "banner banner-error", "data-testid": "view-error", hidden: true });
  return {
    el,
    show(error) {
      el.hidden = false;
      setText(el, `Could not load: ${error.message || error}`);
    },
    clear() {
      el.hidden = true;
    },
  };
}

export function progressBar(percent, step, state, props = {}) {
  const bar = h("div", { class: "bar" });
  const label = h("span", { class: "progress-label" });
  const el = h("div", { class: "progress", role: "progressbar", "aria-valuemin": 0,
    "aria-valuemax": 100, ...props }, bar, label);
  updateProgress(el, percent, step, state);
  return el;
}

export function updateProgress(el, percent, step, state) {
  const value = percent === null || percent === undefined ? 0 : percent;
  el.dataset.percent = String(Math.round(value * 10) / 10);
  el.dataset.state = state || "";
  el.setAttribute("aria-valuenow", String(value));
  el.querySelector(".bar").style.width = `${value}%`;
  const label = percent === null || percent === undefined ? "" : fmtPercent(value);
  setText(el.querySelector(".progress-label"), [label, step].filter(Boolean).join(" · "));
}
