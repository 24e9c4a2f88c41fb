"""The table that bench/compare.py prints (and that docs/benchmarks.md copies)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

PEERS = ("celery", "agenda")


def _ratio(ours: float | None, theirs: float | None) -> str:
    if not ours or not theirs:
        return "-"
    return f"{ours / theirs:.2f}x"


def _row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def rows(result: dict[str, Any]) -> list[str]:
    """Markdown rows: every figure with its queue depth and worker count."""
    out = [
        _row(
            "figure",
            "queue depth",
            "workers",
            "qworker",
            "Celery",
            "Agenda",
            "qworker/Celery",
            "qworker/Agenda",
        ),
        _row(*["---"] * 8),
    ]
    tp = result["throughput"]
    for jobs, workers in sorted({(r["jobs"], r["workers"]) for r in tp}):
        runs = {r["system"]: r for r in tp if (r["jobs"], r["workers"]) == (jobs, workers)}

        def cell(name: str, key: str, runs: dict[str, Any] = runs) -> str:
            r = runs.get(name)
            if r is None:
                return "-"
            if r["complete"]:
                return f"{r[key]:,}"
            enqueued = r.get("enqueued", r["jobs"])
            if key == "enqueue_per_second":
                if enqueued >= r["jobs"]:
                    return f"{r[key]:,}"
                return f"{r[key]:,} ({enqueued:,} of {r['jobs']:,} in {r['enqueue_seconds']:.0f} s)"
            short = "" if enqueued >= r["jobs"] else f", {enqueued:,} enqueued"
            return f"{r[key]:,} ({r['finished']:,} of {r['jobs']:,} in {r['seconds']:.0f} s{short})"

        def ratio(peer: str, key: str, runs: dict[str, Any] = runs) -> str:
            return _ratio(runs.get("qworker", {}).get(key), runs.get(peer, {}).get(key))

        for key, label in (
            ("jobs_per_second", "throughput, jobs/s"),
            ("enqueue_per_second", "enqueue (bulk), jobs/s"),
        ):
            out.append(
                _row(
                    f"{label}, N={jobs:,}",
                    f"{jobs:,} at start",
                    workers,
                    cell("qworker", key),
                    cell("celery", key),
                    cell("agenda", key),
                    ratio("celery", key),
                    ratio("agenda", key),
                )
            )
    single = {r["system"]: r["enqueue_per_second"] for r in result["enqueue_single"]}
    if single:
        out.append(
            _row(
                "enqueue one at a time, jobs/s",
                "0 → " + str(result["enqueue_single"][0]["jobs"]),
                "0",
                *(single.get(s, "-") for s in ("qworker", *PEERS)),
                *(_ratio(single.get("qworker"), single.get(p)) for p in PEERS),
            )
        )
    lat = result["latency"]
    q = next((r for r in lat if r["system"] == "qworker"), None)
    for r in lat:
        if r["system"] == "qworker":
            continue
        for key in ("p50_ms", "p95_ms", "p99_ms"):
            cells = {"celery": "-", "agenda": "-", r["system"]: r[key]}
            out.append(
                _row(
                    f"enqueue→start {key[:3]} ms, {r['system']} {r['variant']}",
                    0,
                    1,
                    q[key] if q else "-",
                    cells["celery"],
                    cells["agenda"],
                    *(
                        _ratio(q[key] if q else None, r[key]) if p == r["system"] else "-"
                        for p in PEERS
                    ),
                )
            )
    for r in lat:
        if r["system"] == "qworker":
            out.append(
                _row(
                    "idle worker RSS, MB",
                    0,
                    1,
                    r["idle_worker_rss_mb"],
                    *(
                        next((x["idle_worker_rss_mb"] for x in lat if x["system"] == p), "-")
                        for p in PEERS
                    ),
                    "",
                    "",
                )
            )
    return out


def _stream_rows(result: dict[str, Any]) -> list[str]:
    """The change-stream wake-up path: its own latency, the enqueues around it."""
    out = []
    stream = result.get("stream_latency")
    if stream:
        q = next((r for r in result["latency"] if r["system"] == "qworker"), None)
        against = (
            f"; qworker's enqueue→start is {q['p50_ms'] / stream['p50_ms']:.2f}x it" if q else ""
        )
        shown = f"p50 {stream['p50_ms']} ms, p95 {stream['p95_ms']} ms{against}"
        out.append(_row("insert into jobs → change-stream event", 0, "1 watcher", shown))
    watched = result.get("enqueue_watched")
    if watched:
        out.append(
            _row(
                "Client.now one at a time, an idle worker watching",
                f"0 → {watched['jobs']}",
                watched["workers"],
                f"{watched['enqueue_per_second']:,}/s",
            )
        )
    a = result.get("enqueue_async")
    if a:
        out.append(
            _row(
                f"AsyncClient.now, {a['in_flight']} in flight",
                f"0 → {a['jobs']:,}",
                0,
                f"{a['enqueue_per_second']:,}/s",
            )
        )
    t = result.get("enqueue_transactional")
    if t:
        out.append(
            _row(
                f"an order and Client.now per request, plain / in one transaction "
                f"(medians of {t['rounds']})",
                f"0 → {t['jobs']:,}",
                0,
                f"{t['plain_per_second']:,} / {t['transaction_per_second']:,} per second: "
                f"{t['transaction_vs_plain']}x",
            )
        )
    for r in result.get("watcher_cost", {}).get("rows", []):
        out.append(
            _row(
                f"insert_one into jobs, {r['watchers']} watchers ({r['pipeline']}, "
                f"max_await_time_ms {r['max_await_time_ms']})",
                f"0 → {r['queue_depth_at_end']}",
                0,
                f"{r['inserts_per_second']:,}/s",
            )
        )
    return out


def _workflow_rows(result: dict[str, Any]) -> list[str]:
    """A group's fan-in against plain jobs, and the callback's wait after the last child."""
    out = []
    for r in result.get("fan_in", []):
        out.append(
            _row(
                f"group of {r['jobs']:,}: ms per child vs per plain job",
                f"{r['jobs']:,} at start",
                r["workers"],
                f"{r['group_ms_per_child']} vs {r['plain_ms_per_job']} ms: "
                f"{r['cost_per_child_vs_plain']}x; last child → callback "
                f"{r['last_child_to_callback_ms']} ms",
            )
        )
    gaps = result.get("callback_gaps")
    if gaps:
        q = next((r for r in result["latency"] if r["system"] == "qworker"), None)
        against = f"; {gaps['p50_ms'] / q['p50_ms']:.2f}x enqueue→start p50" if q else ""
        out.append(
            _row(
                f"last child → callback start, {gaps['groups']} groups of {gaps['children']}",
                f"{gaps['children']} per group",
                gaps["workers"],
                f"p50 {gaps['p50_ms']} ms, p95 {gaps['p95_ms']} ms{against}",
            )
        )
    return out


def _limit_rows(result: dict[str, Any]) -> list[str]:
    """A limited task's claim overhead, and an unlimited task beside a limited one."""
    out = []
    for r in result.get("limit_overhead", []):
        ms = r["ms_per_job"]
        out.append(
            _row(
                "ms per job: unlimited / a slot per job / a start counted per job, "
                f"medians of {r['rounds']}",
                f"{r['jobs']:,} at start",
                r["workers"],
                f"{ms['noop']} / {ms['noop_slotted']} / {ms['noop_metered']} ms: "
                f"{r['slot_vs_unlimited']}x, {r['rate_vs_unlimited']}x",
            )
        )
    for r in result.get("limited_neighbour", []):
        out.append(
            _row(
                f"no-op jobs/s alone vs beside a task at its limit, medians of {r['rounds']} "
                f"({r['capped_backlog_at_start']} capped queued)",
                f"{r['jobs']:,} at start",
                r["workers"],
                f"{r['alone_jobs_per_second']} vs {r['beside_jobs_per_second']}/s: "
                f"{r['beside_vs_alone']}x",
            )
        )
    for r in result.get("rate_accuracy", []):
        out.append(
            _row(
                f"a backlog under a rate limit of {r['limit_per_second']}/s: most starts in "
                "any second, rate kept",
                f"{r['jobs']:,} at start",
                r["workers"],
                f"{r['most_in_any_second']} in a second; {r['kept_per_second']}/s kept "
                f"({r['kept_vs_limit']}x the limit)",
            )
        )
    return out


def _app_rows(result: dict[str, Any]) -> list[str]:
    """The FastAPI app under load: one row per system."""
    out = []
    for r in result.get("app", []):
        req, span = r["request_ms"], r["enqueue_to_finish_ms"]
        out.append(
            _row(
                f"{r['system']} FastAPI app, {r['http_clients']} HTTP clients, "
                f"{r['requests']:,} requests",
                "-",
                r["workers"],
                f"{r['requests_per_second']} requests/s, request p50 {req['p50']} ms p99 "
                f"{req['p99']} ms, enqueue→finish p50 {span['p50']} ms p99 {span['p99']} ms; "
                f"{r['answered_200']:,} answered, {r['ran_once']:,} ran once, "
                f"{r['ran_more_than_once']} more than once, {r['never_ran']} never",
            )
        )
    return out


def _managed_rows(result: dict[str, Any]) -> list[str]:
    """A managed fleet against a standalone one, and what the channel costs per job."""
    out = []
    for r in result.get("managed", []):
        rates = " / ".join(f"{run['jobs_per_second']}" for run in r["runs"])
        out.append(
            _row(
                "jobs/s standalone twice / managed / standalone after, one database",
                f"{r['jobs']:,} at start",
                r["workers"],
                f"{rates}: second {r['second_over_first']}x the first, managed "
                f"{r['managed_over_standalone']}x the second, after "
                f"{r['after_over_before']}x; channel {r['channel_documents_per_job']} "
                f"documents, {r['channel_bytes_per_job']} bytes, {r['channel_ms_per_job']} ms "
                "per job",
            )
        )
    return out


def extra_rows(result: dict[str, Any]) -> list[str]:
    """qworker's own figures: the ceiling, channel, depth, scheduler, memory."""
    out = [_row("figure", "queue depth", "workers", "result"), _row(*["---"] * 4)]
    c = result.get("ceiling")
    if c:
        rates = ", ".join(f"{k} {v:,}/s" for k, v in c["per_second"].items())
        out.append(_row("server, one client", "-", "-", rates))
        single, batched = c["single_ceiling_jobs_per_second"], c["batched_ceiling_jobs_per_second"]
        out.append(
            _row("ceiling: single ops / batched ops", "-", "-", f"{single:,} / {batched:,} jobs/s")
        )
        for r in result["throughput"]:
            out.append(
                _row(
                    f"{r['system']} N={r['jobs']:,} as a fraction of the ceilings",
                    f"{r['jobs']:,} at start",
                    r["workers"],
                    f"{r['jobs_per_second'] / single:.0%} of single, "
                    f"{r['jobs_per_second'] / batched:.0%} of batched",
                )
            )
    if "channel" in result:
        ch = result["channel"]
        out.append(
            _row(
                "qworker channel publish→receive",
                "-",
                "-",
                f"p50 {ch['p50_ms']} ms, p95 {ch['p95_ms']} ms",
            )
        )
    out += _stream_rows(result)
    out += _workflow_rows(result)
    out += _limit_rows(result)
    out += _managed_rows(result)
    out += _app_rows(result)
    for d in result.get("depth", []):
        out.append(
            _row(
                "qworker per-job cost (concurrency 8)",
                f"{d['queue_depth']:,}",
                d["workers"],
                f"{d['ms_per_job']} ms",
            )
        )
    for name in ("scheduler_idle", "scheduler"):
        s = result.get(name)
        if not s:
            continue
        depth = (
            f"~{s['queue_depth_target']:,} (seen {s['queue_depth_seen'][0]}"
            f"-{s['queue_depth_seen'][1]})"
            if s["queue_depth_target"]
            else "0 (idle)"
        )
        for key in ("fire_late", "start_late"):
            if s[key]:
                out.append(
                    _row(
                        f"schedule {key.replace('_', ' ')} ({s['fires']} of {s['expected_fires']} "
                        f"fires: {s['schedules']} schedules every {s['every_s']} s)",
                        depth,
                        s["workers"],
                        f"p50 {s[key]['p50_ms']} ms, p99 {s[key]['p99_ms']} ms, "
                        f"max {s[key]['max_ms']} ms",
                    )
                )
    m = result.get("memory")
    if m:
        out.append(
            _row(
                f"worker RSS over {m['jobs']:,} jobs",
                m["queue_depth"],
                1,
                f"idle {m['idle_rss_mb']} MB, after 10,000 {m['rss_after_10000_mb']} MB, "
                f"after {m['jobs']:,} {m['final_rss_mb']} MB "
                f"(+{m['growth_after_10000_mb']} MB), "
                f"idle again {m.get('idle_after_rss_mb', '-')} MB; "
                f"{m['seconds']:.0f} s",
            )
        )
    return out


def report(result: dict[str, Any], path: Path) -> None:
    m = result["machine"]
    v = result["versions"]
    print(
        f"\n{result['server']} (reports MongoDB {result['server_version']}), {m['cores']} "
        f"cores, Python {m['python']}, load before {result['load_before']['loadavg']}"
    )
    print(", ".join(f"{k} {val}" for k, val in v.items()))
    print()
    print("\n".join(rows(result)))
    print()
    print("\n".join(extra_rows(result)))
    for error in result.get("errors", []):
        print(f"FAILED: {error['figure']}: {error['error']}")
    for name in result.get("plots", []):
        print("plot:", name)
    print(f"\nwritten to {path} in {result['seconds']} s")


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Several runs as one: lists are joined, other figures taken from the first run having them."""
    merged: dict[str, Any] = {"runs": []}
    for result in results:
        merged["runs"].append({k: result.get(k) for k in ("when", "command", "load_before")})
        for key, value in result.items():
            if isinstance(value, list) and key != "plots":
                merged.setdefault(key, []).extend(value)
            elif key not in merged or merged[key] in (None, {}, []):
                merged[key] = value
    merged["seconds"] = sum(int(r.get("seconds", 0)) for r in results)
    return merged


if __name__ == "__main__":
    # python bench/report.py RESULT.json [MORE.json ...] [--plots]: the table again; several
    # results (of runs on the same machine) are merged, and --plots draws the merged figures.
    files = [Path(a) for a in sys.argv[1:] if a != "--plots"]
    result = merge([json.loads(f.read_text()) for f in files])
    if "--plots" in sys.argv:
        from plots import plot_all

        stem = f"{files[0].stem}-merged"
        result["plots"] = [str(p) for p in plot_all(result, files[0].parent, stem)]
    report(result, files[0])
