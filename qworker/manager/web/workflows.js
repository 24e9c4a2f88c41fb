// Groups, chords and DAGs: the list, and each one as a live graph of its nodes.

import { ACTIVE_JOB_REFRESH_MS, IDLE_JOB_REFRESH_MS, STATES, idOf, preview, shortId } from "./format.js";
import { errorBanner, h, progressBar, replace, section, stateBadge, svg, timeEl } from "./dom.js";
import { jobHref, workflowHref } from "./routes.js";
import { api } from "./api.js";
import { act, changeButton, confirmButton } from "./actions.js";
import { listView, onMoves } from "./listview.js";

function workflowRow(w) {
  const { finished, total } = w.progress;
  const failed = (w.counts.failed || 0) + (w.counts.expired || 0);
  const link = workflowHref(idOf(w));
  const tr = h("tr", { "data-testid": "workflow-row", "data-workflow-id": idOf(w), class: "clickable" },
    h("td", { class: "mono" }, h("a", { href: link }, shortId(idOf(w)))),
    h("td", { class: "mono strong" }, w.name),
    h("td", {}, w.kind),
    h("td", {}, stateBadge(w.state)),
    h("td", {}, progressBar(total ? (100 * finished) / total : 0, `${finished}/${total}`, w.state)),
    h("td", { "data-testid": "workflow-failed" }, String(failed)),
    h("td", {}, timeEl(w.createdAt)));
  tr.addEventListener("click", (event) => {
    if (!event.target.closest("a")) location.hash = link;
  });
  return tr;
}

export function workflowsView() {
  return listView({
    name: "workflow", title: "Workflows", load: () => api("workflows"), row: workflowRow,
    key: "data-workflow-id", columns: ["ID", "Name", "Kind", "State", "Progress", "Failed", "Created"],
    empty: "No workflows. Start one with client.group(…) or client.workflow(…).", onEvent: onMoves,
  });
}

// A group larger than this shows its jobs as a grid of cells, not one box each.
export const GRID_FROM = 40;
export const BOX = { w: 168, h: 40, gapX: 64, gapY: 14, cell: 12 };

// Columns by depth: a node one column right of its deepest dependency.
export function layout(nodes) {
  const depth = new Map();
  for (const node of nodes) {
    const deps = node.deps.map((d) => depth.get(d) ?? 0);
    depth.set(node.node, node.waitsForGroup ? 1 : deps.length ? 1 + Math.max(...deps) : 0);
  }
  const columns = [];
  for (const node of nodes) {
    const d = depth.get(node.node);
    (columns[d] ||= []).push(node);
  }
  return columns;
}

export function workflowGraph(info) {
  const grid = info.kind === "group" && info.nodes.length > GRID_FROM;
  const nodes = grid ? info.nodes.filter((n) => n.waitsForGroup) : info.nodes;
  const children = grid ? info.nodes.filter((n) => !n.waitsForGroup) : [];
  const columns = layout(nodes);
  const perRow = Math.floor(BOX.w / BOX.cell);
  const gridRows = Math.ceil(children.length / perRow);
  if (grid) columns[0] = [{ node: "jobs", grid: true }];
  const tallest = Math.max(...columns.map((c) => (c || []).length), 1);
  const gridHeight = gridRows * BOX.cell;
  const height = Math.max(tallest * (BOX.h + BOX.gapY), gridHeight + BOX.gapY) + BOX.gapY;
  const width = columns.length * (BOX.w + BOX.gapX);
  const graph = svg("svg", { class: "wf-graph", viewBox: `0 0 ${width} ${height}`, width, height,
    role: "img", "aria-label": `graph of ${info.name}`, "data-testid": "workflow-graph" });
  const at = new Map();
  columns.forEach((column, c) => (column || []).forEach((node, r) => {
    const tall = node.grid ? gridHeight : BOX.h;
    at.set(node.node, { x: c * (BOX.w + BOX.gapX) + 4, y: BOX.gapY + r * (BOX.h + BOX.gapY), h: tall });
  }));
  const edges = svg("g", { class: "wf-edges" });
  graph.append(edges);
  // A group's callback waits for every job of the group (drawn as one grid when large).
  const sourcesOf = (node) => (!node.waitsForGroup ? node.deps
    : grid ? ["jobs"] : info.nodes.filter((n) => !n.waitsForGroup).map((n) => n.node));
  for (const node of nodes) {
    const to = at.get(node.node);
    for (const dep of sourcesOf(node)) {
      const a = at.get(dep);
      if (!a || !to) continue;
      const x1 = a.x + BOX.w, y1 = a.y + a.h / 2, x2 = to.x, y2 = to.y + BOX.h / 2;
      const mid = (x1 + x2) / 2;
      const ignored = node.ignoreFailure.includes(dep) || (node.waitsForGroup && node.node === "on_complete");
      edges.append(svg("path", { d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}`,
        class: `wf-edge${ignored ? " wf-edge-lenient" : ""}` }));
    }
  }
  for (const node of nodes) graph.append(nodeBox(node, at.get(node.node)));
  if (grid) graph.append(cellGrid(children, at.get("jobs"), perRow));
  return graph;
}

export function nodeBox(node, where) {
  const link = svg("a", { href: jobHref(node.id), class: `wf-node state-${node.state}`,
    "data-testid": "workflow-node", "data-node": node.node, "data-state": node.state });
  const title = svg("title", {});
  title.textContent = `${node.node} (${node.task}): ${node.state}${node.reason ? ` — ${node.reason}` : ""}`;
  const name = svg("text", { x: where.x + 10, y: where.y + 17, class: "wf-name" });
  name.textContent = preview(node.node, 22);
  const task = svg("text", { x: where.x + 10, y: where.y + 32, class: "wf-task" });
  task.textContent = `${preview(node.task, 16)} · ${node.state}`;
  link.append(title, svg("rect", { x: where.x, y: where.y, width: BOX.w, height: BOX.h, rx: 7 }), name, task);
  return link;
}

export function cellGrid(children, where, perRow) {
  const group = svg("g", { class: "wf-grid", "data-testid": "workflow-grid" });
  children.forEach((child, n) => {
    const x = where.x + (n % perRow) * BOX.cell, y = where.y + Math.floor(n / perRow) * BOX.cell;
    const cell = svg("a", { href: jobHref(child.id), class: `wf-cell state-${child.state}`,
      "data-state": child.state });
    const title = svg("title", {});
    title.textContent = `job ${child.node}: ${child.state}${child.reason ? ` — ${child.reason}` : ""}`;
    cell.append(title, svg("rect", { x, y, width: BOX.cell - 2, height: BOX.cell - 2, rx: 2 }));
    group.append(cell);
  });
  return group;
}

export function workflowView(id) {
  const banner = errorBanner();
  const head = h("div", { class: "page-head" });
  const counts = h("div", { class: "chips", "data-testid": "workflow-counts" });
  const canvas = h("div", { class: "wf-canvas" });
  const actions = h("div", { class: "actions" });
  const root = h("div", { class: "workflow", id: "workflow-detail", "data-testid": "workflow-detail",
    "data-workflow-id": id }, h("div", { class: "crumbs" }, h("a", { href: "#/workflows" }, "Workflows")),
    head, banner.el, section(null, {}, h("div", { class: "wf-toolbar" }, counts, actions), canvas));
  let info = null;
  let gone = false;

  function renderActions() {
    const cancel = confirmButton("Cancel workflow", { "data-testid": "workflow-cancel" },
      "Its queued and waiting nodes are cancelled, and its running ones asked to stop.", (button) =>
      act(button, "workflow cancelled", async () => {
        await api(`workflows/${encodeURIComponent(id)}/cancel`, { method: "POST" });
        await refresh();
      }));
    const retry = changeButton("Retry failed nodes", { class: "btn btn-sm btn-primary", "data-testid": "workflow-retry" });
    retry.addEventListener("click", () => act(retry, "failed nodes queued again", async () => {
      await api(`workflows/${encodeURIComponent(id)}/retry`, { method: "POST" });
      await refresh();
    }));
    const running = info.state === "running";
    replace(actions, running ? cancel : null, !running && info.state !== "succeeded" ? retry : null);
  }

  async function refresh() {
    try {
      info = await api(`workflows/${encodeURIComponent(id)}`);
    } catch (error) {
      if (error.status === 404) {
        gone = true;
        banner.show(new Error(`no workflow ${id}: it may have been deleted`));
        return;
      }
      banner.show(error);
      throw error;
    }
    banner.clear();
    root.dataset.state = info.state;
    const { finished, total } = info.progress;
    replace(head, h("h1", {}, `${info.kind} `, h("span", { class: "mono" }, info.name)),
      stateBadge(info.state, { "data-testid": "workflow-state" }),
      h("span", { class: "muted" }, ` ${finished} of ${total} finished`));
    replace(counts, STATES.filter((s) => info.counts[s]).map((s) =>
      h("span", { class: `chip state-${s}`, "data-state": s }, `${info.counts[s]} ${s}`)));
    renderActions();
    replace(canvas, workflowGraph(info));
  }

  return {
    root, refresh,
    get every() {
      if (gone) return IDLE_JOB_REFRESH_MS * 2;
      return info && info.state === "running" ? ACTIVE_JOB_REFRESH_MS : IDLE_JOB_REFRESH_MS;
    },
    onEvent: onMoves,
  };
}
