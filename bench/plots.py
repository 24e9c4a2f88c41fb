"""One PNG per figure of a bench/compare.py result (matplotlib, Agg backend)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes

COLOURS = {"qworker": "#2a7ab0", "celery": "#3c9b4a", "agenda": "#d9822b"}


def _caption(result: dict[str, Any]) -> str:
    m = result["machine"]
    return f"{result['server']} · {m['cores']} cores · Python {m['python']} · {result['when']}"


def _save(fig: Any, result: dict[str, Any], path: Path) -> Path:
    fig.text(0.01, 0.01, _caption(result), fontsize=7, color="#666")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _bars(ax: Axes, groups: list[str], series: dict[str, list[float]], unit: str) -> None:
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        colour = COLOURS.get(name.split()[0])
        bars = ax.bar(xs, values, width, label=name, color=colour, alpha=1 - 0.35 * (i % 2))
        ax.bar_label(bars, fmt="%g", fontsize=7, padding=2)
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    ax.set_ylabel(unit)
    ax.legend(fontsize=8)


def throughput(result: dict[str, Any], path: Path) -> Path:
    runs = result["throughput"]
    groups = sorted({(r["jobs"], r["workers"]) for r in runs})
    labels = [f"N={n:,}\n{k} worker{'s' if k > 1 else ''}" for n, k in groups]
    series: dict[str, list[float]] = {}
    for r in runs:
        values = series.setdefault(r["system"], [0.0] * len(groups))
        values[groups.index((r["jobs"], r["workers"]))] = r["jobs_per_second"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    _bars(ax, labels, series, "jobs/s (end to end)")
    partial = [
        f"{r['system']} N={r['jobs']:,} K={r['workers']}: {r['finished']:,} done"
        for r in runs
        if not r["complete"]
    ]
    title = "No-op jobs, enqueued while the workers wait (queue depth at start = N)"
    if partial:
        unfinished = "unfinished within the time limit: " + "; ".join(partial)
        title += "\n" + textwrap.fill(unfinished, 110)
    ax.set_title(title, fontsize=9)
    return _save(fig, result, path)


def enqueue(result: dict[str, Any], path: Path) -> Path:
    bulk = [
        r
        for r in result["throughput"]
        if r["workers"] == min(result["plan"]["workers"])
        and r["jobs"] == min(result["plan"]["jobs"])
    ]
    labels = [f"{r['system']}\nbulk, N={r['jobs']:,}\nworkers running" for r in bulk]
    labels += [f"{r['system']}\none at a time\nno worker" for r in result["enqueue_single"]]
    values = [r["enqueue_per_second"] for r in [*bulk, *result["enqueue_single"]]]
    systems = [r["system"] for r in [*bulk, *result["enqueue_single"]]]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    bars = ax.bar(range(len(values)), values, color=[COLOURS[s] for s in systems])
    ax.bar_label(bars, fmt="%g", fontsize=7, padding=2)
    ax.set_xticks(range(len(values)), labels, fontsize=7)
    ax.set_ylabel("jobs/s enqueued")
    ax.set_title(
        "Enqueue rate (Celery has no bulk publish: its bulk bar is one at a time)", fontsize=9
    )
    return _save(fig, result, path)


def latency(result: dict[str, Any], path: Path) -> Path:
    runs = result["latency"]
    labels = [f"{r['system']}\n{r['variant']}" for r in runs]
    series = {q: [r[f"{q}_ms"] for r in runs] for q in ("p50", "p95", "p99")}
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.27
    for i, (q, values) in enumerate(series.items()):
        xs = [x + (i - 1) * width for x in range(len(runs))]
        bars = ax.bar(xs, values, width, label=q, color=["#444", "#888", "#bbb"][i])
        ax.bar_label(bars, fmt="%g", fontsize=6, padding=1)
    ax.set_yscale("log")
    ax.set_xticks(range(len(runs)), labels, fontsize=7)
    ax.set_ylabel("ms, enqueue → start (log scale)")
    ax.set_title("Enqueue → start, one job at a time, one idle worker (queue depth 0)", fontsize=9)
    if "channel" in result:
        ax.axhline(
            result["channel"]["p50_ms"],
            color=COLOURS["qworker"],
            ls="--",
            lw=0.8,
            label="qworker channel p50",
        )
    ax.legend(fontsize=8)
    return _save(fig, result, path)


def ceiling(result: dict[str, Any], path: Path) -> Path:
    c = result["ceiling"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    labels = ["single-op\nceiling", "batched\nceiling"]
    values = [c["single_ceiling_jobs_per_second"], c["batched_ceiling_jobs_per_second"]]
    colours = ["#999", "#666"]
    for r in result["throughput"]:
        labels.append(f"{r['system']}\nN={r['jobs']:,} K={r['workers']}")
        values.append(r["jobs_per_second"])
        colours.append(COLOURS[r["system"]])
    bars = ax.bar(range(len(values)), values, color=colours)
    ax.bar_label(bars, fmt="%g", fontsize=6, padding=1)
    ax.set_xticks(range(len(values)), labels, fontsize=6)
    ax.set_ylabel("jobs/s")
    ax.set_title(
        "Throughput against the server's ceiling (1 / Σ 1/rate of insert, claim, complete)",
        fontsize=9,
    )
    return _save(fig, result, path)


def scheduler(result: dict[str, Any], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, style in (("scheduler_idle", ":"), ("scheduler", "-")):
        s = result.get(name)
        if not s:
            continue
        load = f"~{s['queue_depth_target']:,} queued" if s["queue_depth_target"] else "idle"
        for key, label in (
            ("fire_ms", "fire: createdAt - scheduledFor"),
            ("start_ms", "start: lastRunAt - scheduledFor"),
        ):
            values = sorted(s[key])
            if values:
                ys = [(i + 1) / len(values) for i in range(len(values))]
                ax.plot(values, ys, ls=style, label=f"{label} ({load})")
    s = result["scheduler"]
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlabel("ms late")
    ax.set_ylabel("fraction of fires")
    ax.set_title(
        f"{s['schedules']} schedules every {s['every_s']} s for {s['window_s']} s, "
        f"{s['workers']} worker",
        fontsize=9,
    )
    ax.legend(fontsize=7)
    return _save(fig, result, path)


def memory(result: dict[str, Any], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if "memory" in result:
        samples = result["memory"]["samples"]
        ax.plot(
            [s[0] for s in samples],
            [s[1] for s in samples],
            marker="o",
            color=COLOURS["qworker"],
            label="qworker worker, VmRSS",
        )
        ax.set_xlabel("jobs run")
    idle = {
        f"{r['system']} idle ({r['variant']})": r["idle_worker_rss_mb"] for r in result["latency"]
    }
    for label, mb in idle.items():
        ax.axhline(mb, ls=":", lw=0.9, color=COLOURS[label.split()[0]], label=f"{label}: {mb} MB")
    ax.axhline(60, color="red", lw=0.8, label="target: 60 MB")
    ax.set_ylim(bottom=0)
    ax.set_ylabel("MB resident")
    ax.set_title("Worker resident memory (one process)", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, result, path)


def depth(result: dict[str, Any], path: Path) -> Path:
    runs = result["depth"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    labels = [f"{r['queue_depth']:,}" for r in runs]
    bars = ax.bar(labels, [r["ms_per_job"] for r in runs], color=COLOURS["qworker"])
    ax.bar_label(bars, fmt="%g", fontsize=8)
    base = runs[0]["ms_per_job"]
    ax.axhline(1.5 * base, color="red", lw=0.8, label=f"target: 1.5x depth {labels[0]}")
    ax.set_xlabel("jobs waiting")
    ax.set_ylabel("ms per job (1 worker)")
    ax.set_title("qworker per-job cost against queue depth", fontsize=9)
    ax.legend(fontsize=8)
    return _save(fig, result, path)


def managed(result: dict[str, Any], path: Path) -> Path:
    runs = result["managed"]
    labels = [f"N={r['jobs']:,}\nK={r['workers']}" for r in runs]
    names = ("standalone", "standalone again", "managed", "standalone after")
    series = {name: [r["runs"][i]["jobs_per_second"] for r in runs] for i, name in enumerate(names)}
    fig, ax = plt.subplots(figsize=(8, 4.5))
    _bars(ax, labels, series, "jobs/s (end to end)")
    ax.set_title(
        "No-op jobs, standalone twice, then managed (notifications on), then standalone again,"
        "\none database of one server per group (queue depth at start = N)",
        fontsize=9,
    )
    return _save(fig, result, path)


def _panel(ax: Axes, title: str, labels: list[str], values: list[float], unit: str) -> None:
    bars = ax.bar(labels, values, color=COLOURS["qworker"])
    ax.bar_label(bars, fmt="%g", fontsize=7, padding=2)
    ax.set_title(title, fontsize=8)
    ax.set_ylabel(unit, fontsize=8)
    ax.tick_params(labelsize=7)


def capabilities(result: dict[str, Any], path: Path) -> Path:
    """One panel per capability measured: enqueue kinds, fan-in, limits, rate."""
    panels: list[tuple[str, list[str], list[float], str]] = []
    t, a = result.get("enqueue_transactional"), result.get("enqueue_async")
    if t:
        labels, values = (
            ["order + now", "in a transaction"],
            [
                t["plain_per_second"],
                t["transaction_per_second"],
            ],
        )
        if a:
            labels.append(f"AsyncClient ({a['in_flight']} in flight)")
            values.append(a["enqueue_per_second"])
        panels.append(("Enqueue, no worker running", labels, values, "per second"))
    for r in result.get("fan_in", []):
        values = [r["plain_ms_per_job"], r["group_ms_per_child"]]
        title = f"Fan-in, N={r['jobs']:,}, K={r['workers']}"
        panels.append((title, ["plain batch", "group + callback"], values, "ms per job"))
    for r in result.get("limit_overhead", []):
        ms = r["ms_per_job"]
        values = [ms["noop"], ms["noop_slotted"], ms["noop_metered"]]
        title = f"Claim overhead of a limit, N={r['jobs']:,}, K={r['workers']}"
        panels.append((title, ["unlimited", "slot", "rate"], values, "ms per job"))
    for r in result.get("rate_accuracy", []):
        values = [r["limit_per_second"], r["most_in_any_second"], r["kept_per_second"]]
        title = f"Rate limit, {r['jobs']} queued, K={r['workers']}"
        panels.append((title, ["limit", "most in a second", "kept"], values, "starts/s"))
    fig, axes = plt.subplots(
        (len(panels) + 2) // 3, 3, figsize=(12, 3.4 * ((len(panels) + 2) // 3)), squeeze=False
    )
    for ax, panel in zip(axes.flat, panels, strict=False):
        _panel(ax, *panel)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    return _save(fig, result, path)


def app(result: dict[str, Any], path: Path) -> Path:
    runs = result["app"]
    labels = [r["system"] for r in runs]
    fig, (rate, ms) = plt.subplots(1, 2, figsize=(10, 4))
    _panel(rate, "requests/s", labels, [r["requests_per_second"] for r in runs], "per second")
    series = {
        "request p50": [r["request_ms"]["p50"] for r in runs],
        "request p99": [r["request_ms"]["p99"] for r in runs],
        "enqueue→finish p50": [r["enqueue_to_finish_ms"]["p50"] for r in runs],
        "enqueue→finish p99": [r["enqueue_to_finish_ms"]["p99"] for r in runs],
    }
    _bars(ms, labels, series, "ms")
    r = runs[0]
    fig.suptitle(
        f"A FastAPI app: {r['http_clients']} HTTP clients, {r['requests']:,} requests, "
        f"{r['workers']} workers running the jobs",
        fontsize=9,
    )
    return _save(fig, result, path)


def plot_all(result: dict[str, Any], folder: Path, stem: str) -> list[Path]:
    made = []
    figures = {
        "throughput": throughput,
        "enqueue": enqueue,
        "latency": latency,
        "ceiling": ceiling,
        "scheduler": scheduler,
        "memory": memory,
        "depth": depth,
        "managed": managed,
        "app": app,
        "capabilities": capabilities,
    }
    for name, draw in figures.items():
        needs = {"enqueue": "throughput", "memory": "latency"}.get(name, name)
        if name == "capabilities":
            kinds = ("enqueue_transactional", "fan_in", "limit_overhead", "rate_accuracy")
            if any(result.get(kind) for kind in kinds):
                made.append(draw(result, folder / f"{stem}-{name}.png"))
        elif result.get(needs) and (name != "ceiling" or "ceiling" in result):
            made.append(draw(result, folder / f"{stem}-{name}.png"))
    return made
