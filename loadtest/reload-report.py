#!/usr/bin/env python3
"""The reload scenario's verdict: recommend latency in the seconds around each bundle swap
against the steady latency of the same run (target: p99 during swaps <= 2 x steady p99), and
that every swap was answered 200 with the version it was meant to serve.

  reload-report.py --swaps RUN.json.swaps --points RUN.json.points.csv [--readyz RUN.readyz.json]

--points is k6's CSV output (`--out csv=...`, K6_CSV_TIME_FORMAT=unix_milli); the client-side
`rec_latency` samples of the measured phase are used. A request is "during a swap" when it ended
between the admin call's start and one second after its answer. Exits 1 when a target fails.
"""
import argparse
import csv
import json
import sys

AFTER_S = 1.0  # a swap's window extends this long past the admin call's answer
RATIO = 2.0


def pct(values, q):
    if not values:
        return float("nan")
    v = sorted(values)
    k = (len(v) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--swaps", required=True)
    ap.add_argument("--points", required=True)
    ap.add_argument("--readyz")
    ap.add_argument("--usage", help="run.sh's server-usage.csv (t_s, rss_kb, cpu_s)")
    a = ap.parse_args()
    swaps = [json.loads(l) for l in open(a.swaps) if l.strip()]
    samples = []  # (end time s, latency ms)
    with open(a.points, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("metric_name") != "rec_latency":
                continue
            ts = float(row["timestamp"])
            if ts > 1e11:  # unix_milli
                ts /= 1000.0
            samples.append((ts, float(row["metric_value"])))
    windows = [(s["t_start"], s["t_end"] + AFTER_S) for s in swaps]
    margin = [(s["t_start"] - 1.0, s["t_end"] + AFTER_S + 1.0) for s in swaps]
    during = [ms for t, ms in samples if any(lo <= t <= hi for lo, hi in windows)]
    steady = [ms for t, ms in samples if not any(lo <= t <= hi for lo, hi in margin)]
    ok = True
    print()
    print("bundle swaps under load (client-side recommend latency, ms)")
    print(f"{'action':<9} {'status':>6} {'result':<9} {'version':<32} {'load ms':>8} {'call ms':>8} {'reqs':>5} {'p50':>7} {'p99':>7}")
    for s, (lo, hi) in zip(swaps, windows):
        ans = s.get("answer") or {}
        if not isinstance(ans, dict):
            ans = {}
        w = [ms for t, ms in samples if lo <= t <= hi]
        good = s.get("status") == 200 and ans.get("result") == "swapped"
        ok &= good
        print(
            f"{s['action']:<9} {s.get('status', 0):>6} {str(ans.get('result', ans.get('code', '-'))):<9} "
            f"{str(ans.get('version', '-')):<32} {ans.get('load_ms', float('nan')):>8.1f} "
            f"{(s['t_end'] - s['t_start']) * 1e3:>8.1f} {len(w):>5} {pct(w, 0.5):>7.2f} {pct(w, 0.99):>7.2f}"
        )
    p99_d, p99_s = pct(during, 0.99), pct(steady, 0.99)
    ratio = p99_d / p99_s if steady and during else float("nan")
    print(f"during swaps: {len(during)} requests, p50 {pct(during, 0.5):.2f}, p99 {p99_d:.2f}")
    print(f"steady:       {len(steady)} requests, p50 {pct(steady, 0.5):.2f}, p99 {p99_s:.2f}")
    target = ratio <= RATIO
    print(f"p99 during swaps / steady p99 = {ratio:.2f} (target <= {RATIO}) {'ok' if target else 'FAILED'}")
    if not all(s.get("status") == 200 for s in swaps):
        print("a swap was not answered 200: FAILED")
    ok &= target
    if a.usage and swaps:
        try:
            rows = [(float(r["t_s"]), int(r["rss_kb"])) for r in csv.DictReader(open(a.usage))]
            first = swaps[0]["t_start"]
            one = [kb for t, kb in rows if t < first]
            two = [kb for t, kb in rows if t > swaps[0]["t_end"] + 2]
            if one and two:
                print(f"server RSS: {one[-1] / 1024:.0f} MiB with one version loaded (just before the first swap), "
                      f"{max(two) / 1024:.0f} MiB at most with two (after it): {max(two) / one[-1]:.2f}x (target <= 2.2x)")
        except (OSError, ValueError, KeyError) as e:
            print(f"server usage: unreadable ({e})")
    if a.readyz:
        try:
            r = json.load(open(a.readyz))
            v = r.get("versions") or {}
            print(f"/readyz after the run: serving {v.get('serving')}, pinned {v.get('pinned')}, "
                  f"loaded {v.get('loaded')}, swaps {v.get('swaps')}, refused {v.get('refused')}")
        except (OSError, ValueError) as e:
            print(f"/readyz: unreadable ({e})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
