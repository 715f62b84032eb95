#!/usr/bin/env python3
"""Tables from the k6 summaries that loadtest/lib/funnel.js writes (handleSummary JSON).

  report.py [--usage CSV] SUMMARY.json...          one table per run
  report.py --ramp [--out FILE] [--usage CSV] STEP.json...   one row per rate, then stage p50/p99
  report.py --step-ok STEP.json                    exit 0 when the step held its thresholds and
                                                   dropped at most 1 % of its iterations

Each SUMMARY.json may have a SUMMARY.json.server sidecar (server CPU seconds and RSS before and
after, written by run.sh) and the run a CSV of RSS samples (--usage).
"""

import argparse
import csv
import json
import math
import os
import sys

REC = "http_req_duration{scenario:main,endpoint:recommend}"
FAILED = "http_req_failed{scenario:main}"
CHECKS = "checks{scenario:main}"
DROPPED = "dropped_iterations{scenario:main}"
REC_REQS = "http_reqs{scenario:main,endpoint:recommend}"

STAGES = [
    ("features", "stage_features"),
    ("item_features", "stage_item_features"),
    ("ann", "stage_ann"),
    ("cf", "stage_cf"),
    ("content", "stage_content"),
    ("trending", "stage_trending"),
    ("sources (slowest)", "stage_sources_max"),
    ("merge", "stage_merge"),
    ("rank", "stage_rank"),
    ("rerank", "stage_rerank"),
]
LEVELS = ["stale_features", "simple_ranking", "batch", "popularity"]


def load(path):
    with open(path) as f:
        data = json.load(f)
    side = path + ".server"
    data["_server"] = None
    if os.path.exists(side):
        with open(side) as f:
            data["_server"] = json.load(f)
    data["_path"] = path
    return data


def values(data, name):
    m = data["metrics"].get(name)
    return m["values"] if m else {}


def stat(data, name, key, default=math.nan):
    return values(data, name).get(key, default)


def count(data, name):
    return values(data, name).get("count", 0)


def fmt(v, digits=2):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.{digits}f}"


def pct(v):
    return "-" if v is None or math.isnan(v) else f"{100 * v:.2f} %"


def thresholds(data):
    """[(metric, expression, ok)] without the always-true ones that only keep sub-metrics."""
    out = []
    for name, m in data["metrics"].items():
        for expr, r in (m.get("thresholds") or {}).items():
            if not expr.endswith(">=0"):
                out.append((name, expr, r.get("ok", False)))
    return out


def server_usage(data):
    s = data.get("_server")
    if not s:
        return None
    wall = s["t_end"] - s["t_start"]
    cpu = s["cpu_s_end"] - s["cpu_s_start"]
    reqs = count(data, "http_reqs")
    return {
        "cpu_cores": cpu / wall if wall > 0 else math.nan,
        "cpu_ms_per_req": 1000 * cpu / reqs if reqs else math.nan,
        "rss_mib_start": s["rss_kb_start"] / 1024,
        "rss_mib_end": s["rss_kb_end"] / 1024,
    }


def rss_series(path):
    if not path or not os.path.exists(path):
        return None
    with open(path) as f:
        rows = [r for r in csv.DictReader(f) if r.get("rss_kb") not in (None, "", "0")]
    if not rows:
        return None
    rss = [int(r["rss_kb"]) / 1024 for r in rows]
    return {"first": rss[0], "last": rss[-1], "max": max(rss), "samples": len(rss)}


def row(label, data, metric, width=32):
    v = values(data, metric)
    if not v:
        return None
    cells = [fmt(v.get(k, math.nan)) for k in ("med", "p(90)", "p(95)", "p(99)", "max")]
    return f"  {label:<{width}}" + "".join(f"{c:>9}" for c in cells) + f"{int(v.get('count', 0)):>9}"


def summarise(data):
    """The numbers a ramp row and the combined JSON keep."""
    meta = data.get("funnel", {})
    reqs = count(data, REC_REQS)
    dur = meta.get("duration_s") or math.nan
    out = {
        "rate": meta.get("rate"),
        "achieved_rps": reqs / dur if dur else math.nan,
        "requests": reqs,
        "latency_ms": {k: stat(data, REC, k) for k in ("med", "p(90)", "p(95)", "p(99)", "max")},
        "error_rate": stat(data, FAILED, "rate", 0.0),
        "degraded_rate": stat(data, "degraded", "rate", 0.0),
        "shed_rate": stat(data, "shed", "rate", 0.0),
        "dropped_iterations": count(data, DROPPED),
        "stages_ms": {
            label: {"p50": stat(data, metric, "med"), "p99": stat(data, metric, "p(99)")}
            for label, metric in STAGES + [("server total", "server_total"), ("http+queue", "http_overhead")]
        },
        "thresholds_ok": all(ok for _, _, ok in thresholds(data)),
        "server": server_usage(data),
        "rankers_per_request": stat(data, "rankers_per_request", "avg"),
        "summary": os.path.basename(data["_path"]),
    }
    return out


def broken(data):
    """What a step broke: the failed thresholds' short names, and 'dropped' past 1 %."""
    out = []
    for name, expr, ok in thresholds(data):
        if not ok:
            out.append(expr.split("<")[0] if name.startswith("http_req_duration") else name.split("{")[0])
    meta = data.get("funnel", {})
    expected = (meta.get("rate") or 0) * (meta.get("duration_s") or 0)
    if count(data, DROPPED) > 0.01 * expected:
        out.append("dropped")
    return out


def step_ok(data):
    return not broken(data)


def report_one(data, usage_csv):
    meta = data.get("funnel", {})
    s = summarise(data)
    lines = []
    size = meta.get("bundle_size") or "?"
    lines.append(
        f"Funnel k6 '{meta.get('scenario')}': {meta.get('rate')} req/s for {fmt(meta.get('duration_s'))} s"
        f" (after {fmt(meta.get('warmup_s'))} s of warm-up), bundle {size}"
        f" ({meta.get('users')} users, {meta.get('items')} items), k={meta.get('k')}"
    )
    mix = meta.get("mix", {})
    lines.append(
        f"traffic: {100 * (1 - mix.get('session', 0) - mix.get('cold', 0)):.0f} % known users"
        f" (Zipf s={mix.get('zipf_s')}), {100 * mix.get('session', 0):.0f} % known + session items,"
        f" {100 * mix.get('cold', 0):.0f} % cold visitors + session items;"
        f" {100 * mix.get('events', 0):.0f} % also POST /v1/events"
    )
    lines.append(
        f"recommend requests (measured): {s['requests']}, achieved {fmt(s['achieved_rps'])} req/s,"
        f" dropped iterations {s['dropped_iterations']}"
    )
    lines.append("")
    hdr = f"  {'ms':<32}" + "".join(f"{h:>9}" for h in ("p50", "p90", "p95", "p99", "max", "n"))
    lines.append(hdr)
    body = [
        ("latency (client, recommend)", REC),
        ("  answered 200", "rec_latency"),
        ("  known users", "rec_latency{user_kind:known}"),
        ("  known + session", "rec_latency{user_kind:session}"),
        ("  cold visitors", "rec_latency{user_kind:cold}"),
        ("server total (timings_ms)", "server_total"),
    ]
    body += [(f"  {label}", metric) for label, metric in STAGES]
    body += [
        ("http + queueing (client-server)", "http_overhead"),
        ("POST /v1/events (client)", "events_latency"),
        ("shed: 503 overloaded (client)", "shed_latency"),
    ]
    for label, metric in body:
        r = row(label, data, metric)
        if r:
            lines.append(r)
    if values(data, "rankers_per_request"):
        lines.append(row("rankers per request (count)", data, "rankers_per_request"))
        lines.append(row("candidates (count)", data, "candidates"))
    lines.append("")
    levels = ", ".join(f"{lv} {int(count(data, 'degradation_' + lv))}" for lv in LEVELS)
    lines.append(f"errors (HTTP, measured): {pct(s['error_rate'])}; checks passed: {pct(stat(data, CHECKS, 'rate'))}")
    lines.append(f"degraded (not 'full'): {pct(s['degraded_rate'])} ({levels})")
    if values(data, "shed"):
        lines.append(
            f"shed (503 overloaded + Retry-After): {pct(stat(data, 'shed', 'rate', 0.0))} of recommend"
            f" requests; malformed 503s {int(count(data, 'shed_malformed'))}"
        )
    lines.append(
        f"short lists (< k items): {pct(stat(data, 'short_list', 'rate', 0.0))};"
        f" events sent {int(count(data, 'events_sent'))}, rejected {int(count(data, 'events_rejected'))}"
    )
    u = s["server"]
    rss = rss_series(usage_csv)
    if u:
        extra = f", RSS {fmt(u['rss_mib_start'])} -> {fmt(u['rss_mib_end'])} MiB"
        if rss:
            extra += f" (max {fmt(rss['max'])} MiB over {rss['samples']} samples)"
        lines.append(
            f"server: {fmt(u['cpu_cores'])} cores busy on average over the k6 run,"
            f" {fmt(u['cpu_ms_per_req'])} ms CPU per HTTP request{extra}"
        )
    lines.append("")
    th = thresholds(data)
    lines.append("thresholds: " + ("all passed" if all(ok for *_, ok in th) else "BROKEN"))
    for name, expr, ok in th:
        lines.append(f"  {'ok    ' if ok else 'FAILED'} {name}: {expr}")
    return "\n".join(lines)


def report_ramp(steps, out, usage_csv):
    rows = [summarise(d) for d in steps]
    p99_limit = next((d.get("funnel", {}).get("thresholds", {}).get("p99_ms") for d in steps), None)
    held = [r for r, d in zip(rows, steps) if step_ok(d)]
    best = max((r["rate"] for r in held), default=None)
    meta = steps[0].get("funnel", {}) if steps else {}
    lines = [
        f"Funnel k6 ramp: constant-arrival-rate steps of {fmt(meta.get('duration_s'))} s"
        f" (+{fmt(meta.get('warmup_s'))} s warm-up each), bundle {meta.get('bundle_size')}"
        f" ({meta.get('users')} users, {meta.get('items')} items), k={meta.get('k')};"
        f" a step holds when p95 < {meta.get('thresholds', {}).get('p95_ms')} ms,"
        f" p99 < {p99_limit} ms, errors < {100 * meta.get('thresholds', {}).get('error_rate', 0):g} %,"
        f" dropped <= 1 %",
        "",
        f"{'rate':>6}{'achieved':>10}{'requests':>10}{'p50':>8}{'p90':>8}{'p95':>8}{'p99':>8}{'max':>8}"
        f"{'errors':>9}{'degraded':>10}{'dropped':>9}{'cores':>7}{'cpu/req':>9}{'models':>8}  verdict",
    ]
    for r, d in zip(rows, steps):
        lat = r["latency_ms"]
        u = r["server"] or {}
        lines.append(
            f"{r['rate']:>6}{fmt(r['achieved_rps']):>10}{r['requests']:>10}"
            + "".join(f"{fmt(lat[k]):>8}" for k in ("med", "p(90)", "p(95)", "p(99)", "max"))
            + f"{pct(r['error_rate']):>9}{pct(r['degraded_rate']):>10}{int(r['dropped_iterations']):>9}"
            + f"{fmt(u.get('cpu_cores', math.nan)):>7}{fmt(u.get('cpu_ms_per_req', math.nan)):>9}"
            + f"{fmt(r['rankers_per_request']):>8}"
            + f"  {'holds' if step_ok(d) else 'BROKEN: ' + ', '.join(broken(d))}"
        )
    lines.append("")
    lines.append("stage p50 / p99 (ms) per rate")
    labels = [l for l, _ in STAGES] + ["server total", "http+queue"]
    short = {"item_features": "item_feat", "sources (slowest)": "src max", "server total": "total"}
    lines.append(f"{'rate':>6}" + "".join(f"{short.get(l, l):>13}" for l in labels))
    for r in rows:
        cells = [f"{fmt(r['stages_ms'][l]['p50'])}/{fmt(r['stages_ms'][l]['p99'])}" for l in labels]
        lines.append(f"{r['rate']:>6}" + "".join(f"{c:>13}" for c in cells))
    lines.append("")
    if best is None:
        lines.append("no step held its thresholds")
    else:
        lines.append(f"highest rate that held (p99 < {p99_limit} ms, errors < 0.1 %): {best} req/s")
    rss = rss_series(usage_csv)
    if rss:
        lines.append(f"server RSS: {fmt(rss['first'])} -> {fmt(rss['last'])} MiB (max {fmt(rss['max'])})")
    if out:
        with open(out, "w") as f:
            json.dump({"scenario": "ramp", "highest_rate_held": best, "steps": rows}, f, indent=1, default=str)
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ramp", action="store_true")
    ap.add_argument("--step-ok", action="store_true")
    ap.add_argument("--out")
    ap.add_argument("--usage")
    ap.add_argument("summaries", nargs="+")
    a = ap.parse_args()
    steps = [load(p) for p in a.summaries]
    if a.step_ok:
        sys.exit(0 if all(step_ok(d) for d in steps) else 1)
    if a.ramp:
        print(report_ramp(steps, a.out, a.usage))
    else:
        print("\n\n".join(report_one(d, a.usage) for d in steps))


if __name__ == "__main__":
    main()
