#!/usr/bin/env python3
"""Funnel's ANN against hnswlib (space "ip") and faiss on the same vectors, in one run.

Runs `cargo bench --bench ann` with ANN_EXPORT so the Rust bench measures Funnel's graphs (and,
built with `--features faiss`, its FAISS backend) and writes the very vectors, queries and exact
inner-product top k it measured against; then builds and times hnswlib and faiss on those files,
one search thread, k = 100, and prints one table with each row's queries/s as a ratio of
hnswlib's at the nearest recall.

    python3 benches/ann_compare.py                       # the pipeline bench's 200K bundle
    FUNNEL_BENCH_BUNDLE=DIR python3 benches/ann_compare.py
    python3 benches/ann_compare.py --skip-rust --export target/ann-compare/export

Its pinned requirements (benches/ann_compare.requirements.txt) are installed into a virtual
environment under target/ann-compare/venv on first use; the script re-runs itself there.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "target" / "ann-compare"
VENV = WORK / "venv"
REQS = Path(__file__).resolve().parent / "ann_compare.requirements.txt"


def ensure_venv():
    """Re-executes this script inside the venv that holds the pinned requirements."""
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    py = VENV / "bin" / "python"
    stamp = VENV / "requirements.txt"
    if not py.exists() or not stamp.exists() or stamp.read_text() != REQS.read_text():
        print(f"installing {REQS.name} into {VENV}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "-r", str(REQS)], check=True)
        stamp.write_text(REQS.read_text())
    os.execv(str(py), [str(py), __file__, *sys.argv[1:]])


def run_rust(export: Path, features: str):
    env = dict(os.environ)
    env.setdefault("ANN_DATA", "bundle")
    env.setdefault("ANN_CRITERION", "0")
    env["ANN_EXPORT"] = str(export)
    cmd = ["cargo", "bench", "--bench", "ann"]
    if features:
        cmd += ["--features", features]
    print("$ " + " ".join(f"{k}={env[k]}" for k in ("ANN_DATA", "ANN_EXPORT")) + " " + " ".join(cmd),
          flush=True)
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)


def load(export: Path):
    import numpy as np

    meta = json.loads((export / "meta.json").read_text())
    n, dim, nq, k = meta["n"], meta["dim"], meta["queries"], meta["k"]
    items = np.fromfile(export / "items.f32", dtype="<f4").reshape(n, dim)
    queries = np.fromfile(export / "queries.f32", dtype="<f4").reshape(nq, dim)
    truth = np.fromfile(export / "truth.u32", dtype="<u4").reshape(nq, k)
    return meta, np.ascontiguousarray(items), np.ascontiguousarray(queries), truth


def recall(found, truth):
    k = truth.shape[1]
    total = 0.0
    for f, t in zip(found, truth):
        t = set(int(x) for x in t if x != 0xFFFFFFFF)
        total += len(t.intersection(int(x) for x in f[:k] if x >= 0)) / max(1, min(k, len(t)))
    return total / len(truth)


def timed(search, queries, rounds):
    """Median queries/s over `rounds` passes, one query per call, and the last pass's results."""
    rates, out = [], None
    for _ in range(rounds):
        t0 = time.perf_counter()
        out = [search(q) for q in queries]
        rates.append(len(queries) / (time.perf_counter() - t0))
    rates.sort()
    return rates[len(rates) // 2], out


def bench_hnswlib(items, queries, truth, k, efs, rounds, m, efc):
    import hnswlib

    t0 = time.perf_counter()
    index = hnswlib.Index(space="ip", dim=items.shape[1])
    index.init_index(max_elements=items.shape[0], M=m, ef_construction=efc, random_seed=100)
    index.set_num_threads(os.cpu_count() or 1)
    index.add_items(items, list(range(items.shape[0])))
    print(f"  hnswlib ip M {m} ef_construction {efc}: built in {time.perf_counter() - t0:.1f} s",
          flush=True)
    index.set_num_threads(1)
    rows = []
    for ef in efs:
        index.set_ef(max(ef, k))
        qps, out = timed(lambda q: index.knn_query(q, k=k)[0][0], queries, rounds)
        rows.append({"index": f"hnswlib ip M {m} efc {efc}", "param": f"ef {ef}",
                     "recall": recall(out, truth), "qps": qps})
    return rows


def bench_faiss(items, queries, truth, k, rounds, specs):
    import faiss

    faiss.omp_set_num_threads(os.cpu_count() or 1)
    rows = []
    for factory, pname, values in specs:
        t0 = time.perf_counter()
        index = faiss.index_factory(items.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
        if not index.is_trained:
            index.train(items)
        index.add(items)
        print(f"  faiss {factory}: built in {time.perf_counter() - t0:.1f} s", flush=True)
        faiss.omp_set_num_threads(1)
        space = faiss.ParameterSpace()
        for v in values or [None]:
            if pname:
                space.set_index_parameter(index, pname, v)
            qps, out = timed(lambda q: index.search(q.reshape(1, -1), k)[1][0], queries, rounds)
            rows.append({"index": f"faiss {factory} (ip)",
                         "param": f"{pname} {v}" if pname else "—",
                         "recall": recall(out, truth), "qps": qps})
        faiss.omp_set_num_threads(os.cpu_count() or 1)
    return rows


def ratio_to(rows, base):
    """Each row's q/s over the base rows' q/s at the nearest recall (linear between points)."""
    pts = sorted((r["recall"], r["qps"]) for r in base)
    if not pts:
        return [None] * len(rows)
    out = []
    for r in rows:
        x = r["recall"]
        if x <= pts[0][0]:
            q = pts[0][1]
        elif x >= pts[-1][0]:
            q = pts[-1][1]
        else:
            for (r0, q0), (r1, q1) in zip(pts, pts[1:]):
                if r0 <= x <= r1:
                    q = q0 + (q1 - q0) * (x - r0) / (r1 - r0) if r1 > r0 else q0
                    break
        out.append(r["qps"] / q)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--export", default=str(WORK / "export"), help="exported vectors directory")
    ap.add_argument("--skip-rust", action="store_true", help="reuse an earlier export")
    ap.add_argument("--features", default="", help="cargo features for the Rust bench, e.g. faiss")
    ap.add_argument("--ef", default="100,200,400", help="hnswlib ef values")
    ap.add_argument("--nprobe", default="16,32,64", help="faiss IVF nprobe values")
    ap.add_argument("--hnsw-ef", default="64,128,256", help="faiss HNSW efSearch values")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--exact", action="store_true", help="also time faiss's exact FlatIP scan")
    ap.add_argument("--json", default=str(WORK / "table.json"), help="where the table goes")
    args = ap.parse_args()
    ensure_venv()
    export = Path(args.export)
    if not args.skip_rust:
        run_rust(export, args.features)
    meta, items, queries, truth = load(export)
    k = meta["k"]
    print(f"\n{meta['name']}: {meta['n']} items × {meta['dim']}, {meta['queries']} queries, "
          f"k {k}, one search thread", flush=True)
    ints = lambda s: [int(x) for x in s.split(",") if x]
    hn = bench_hnswlib(items, queries, truth, k, ints(args.ef), args.rounds, 16, 200)
    specs = [("HNSW32,Flat", "efSearch", ints(args.hnsw_ef)),
             ("IVF1024,Flat", "nprobe", ints(args.nprobe))]
    if args.exact:
        specs.append(("Flat", None, None))
    fa = bench_faiss(items, queries, truth, k, args.rounds, specs)
    rows = meta["funnel"] + hn + fa
    ratios = ratio_to(rows, hn)
    print(f"\n| index (1 thread, k = {k}) | ef / nprobe | recall@{k} | queries/s | "
          "× hnswlib q/s at that recall |")
    print("|---|---:|---:|---:|---:|")
    for r, x in zip(rows, ratios):
        print(f"| {r['index']} | {r['param']} | {r['recall']:.4f} | {r['qps']:,.0f} | "
              f"{'—' if x is None else f'{x:.2f}'} |")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"meta": {k_: v for k_, v in meta.items()
                                                    if k_ != "funnel"}, "rows": rows}, indent=1))
    print(f"\n(table also in {args.json})")


if __name__ == "__main__":
    main()
