// Small SVG charts of a task's last hour: jobs finished per bucket (succeeded stacked
// on failed), and the enqueue-to-start wait's p50 and p95. Drawn from GET /api/charts.

import { fmtDuration } from "./format.js";
import { svg } from "./dom.js";

const W = 360;
const H = 84;
const PAD = { top: 14, bottom: 16, left: 4, right: 4 };

function sum(values) {
  return values.reduce((total, v) => total + (v || 0), 0);
}

function frame(label) {
  const el = svg("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": label });
  const title = svg("title", {});
  title.textContent = label;
  el.append(title);
  return el;
}

function axis(el, top, minutes) {
  const note = (x, y, text, anchor) => {
    const t = svg("text", { x, y, class: "chart-note", "text-anchor": anchor });
    t.textContent = text;
    el.append(t);
  };
  note(PAD.left, 10, top, "start");
  note(PAD.left, H - 3, `${minutes} min ago`, "start");
  note(W - PAD.right, H - 3, "now", "end");
  el.append(svg("line", { x1: PAD.left, x2: W - PAD.right, y1: H - PAD.bottom, y2: H - PAD.bottom,
    class: "chart-axis" }));
}

// Bars per bucket: succeeded over failed; a bucket's tooltip gives both.
export function throughputChart(chart, bucketSeconds) {
  const n = chart.succeeded.length;
  const peak = Math.max(1, ...chart.succeeded.map((s, i) => s + chart.failed[i]));
  const done = sum(chart.succeeded);
  const failed = sum(chart.failed);
  const el = frame(`${done.toLocaleString("en")} succeeded and ${failed.toLocaleString("en")} failed in the last ` +
    `${Math.round((n * bucketSeconds) / 60)} minutes`);
  const step = (W - PAD.left - PAD.right) / n;
  const scale = (H - PAD.top - PAD.bottom) / peak;
  for (let i = 0; i < n; i += 1) {
    const [ok, bad] = [chart.succeeded[i], chart.failed[i]];
    if (!ok && !bad) continue;
    const x = PAD.left + i * step;
    const bar = svg("g", { class: "chart-bar" });
    const tip = svg("title", {});
    tip.textContent = `${ok} succeeded, ${bad} failed`;
    bar.append(tip);
    const base = H - PAD.bottom;
    if (ok) bar.append(svg("rect", { x, y: base - ok * scale, width: Math.max(1, step - 1), height: ok * scale, class: "chart-ok" }));
    if (bad) bar.append(svg("rect", { x, y: base - (ok + bad) * scale, width: Math.max(1, step - 1), height: bad * scale, class: "chart-bad" }));
    el.append(bar);
  }
  const per = bucketSeconds === 60 ? "minute" : fmtDuration(bucketSeconds);
  axis(el, done + failed ? `${peak.toLocaleString("en")} per ${per}` : "no job finished",
    Math.round((n * bucketSeconds) / 60));
  return el;
}

// Two lines, p50 and p95 of the wait, broken where a bucket ran no job.
export function waitChart(chart, bucketSeconds) {
  const n = chart.waitP95.length;
  const worst = chart.waitP95.filter((v) => v !== null);
  const highest = Math.max(0, ...worst);
  const peak = highest || 0.001; // every wait 0: a flat line at the bottom
  const el = frame(worst.length ? `wait before start: p95 up to ${fmtDuration(highest)}` : "no job started");
  const step = (W - PAD.left - PAD.right) / n;
  const y = (v) => H - PAD.bottom - (v / peak) * (H - PAD.top - PAD.bottom);
  for (const [values, cls] of [[chart.waitP50, "chart-p50"], [chart.waitP95, "chart-p95"]]) {
    let points = [];
    const flush = () => {
      if (points.length === 1) {
        const [x, py] = points[0].split(",");
        el.append(svg("circle", { cx: x, cy: py, r: 2, class: cls }));
      } else if (points.length) {
        el.append(svg("polyline", { points: points.join(" "), fill: "none", class: cls }));
      }
      points = [];
    };
    values.forEach((v, i) => {
      if (v === null) flush();
      else points.push(`${(PAD.left + (i + 0.5) * step).toFixed(1)},${y(v).toFixed(1)}`);
    });
    flush();
  }
  axis(el, worst.length ? fmtDuration(highest) : "no wait measured", Math.round((n * bucketSeconds) / 60));
  return el;
}

export function totals(chart) {
  const waits = chart.waitP95.filter((v) => v !== null);
  return { succeeded: sum(chart.succeeded), failed: sum(chart.failed),
    worstP95: waits.length ? Math.max(...waits) : null };
}
