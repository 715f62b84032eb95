//! ANN search: recall@100 against exact inner product and single-thread queries/s, for the
//! frozen HNSW graph (ours) and `hnsw_rs`'s own search over the very same graph, swept over
//! `ef_search`, the base-layer degree the frozen graph is re-pruned to, the walk's precision
//! (f32, or f16 with an f32 re-score), `M` (`ANN_M`) and the metric (`ANN_METRICS`); built with
//! `--features faiss`, also Funnel's FAISS backend (`ANN_FAISS` factories). Then criterion
//! timings of one query with the last configuration (`ANN_CRITERION=0` skips them).
//!
//! ```sh
//! cargo bench --bench ann                      # 200K × 64 clustered unit vectors, M 16
//! ANN_M=8,16 ANN_EF=100,128,160,200 ANN_DEGREE=0,16,24 ANN_WALK=f16 cargo bench --bench ann
//! ANN_DATA=bundle FUNNEL_BENCH_BUNDLE=DIR cargo bench --bench ann --features faiss
//! python3 benches/ann_compare.py               # the same run, then hnswlib and faiss on its data
//! ```
//!
//! Data (`ANN_DATA=clustered`, default): 200K points in 64 dimensions drawn around 1,000 centres
//! (centres N(0, I), points centre + N(0, 0.75² I), then unit length); 1,000 queries drawn the
//! same way but not indexed. `ANN_DATA=bundle`: the bundle's raw item embeddings (what the
//! server's graph indexes) and up to `ANN_QUERIES` (1,000) of its users' embeddings as queries
//! (what the server searches with); the bundle's own served graph is a row too. Truth: the exact
//! top 100 by inner product. Graphs are built once per (data, metric, M, ef_construction) with
//! `hnsw_rs` on all cores and cached under `target/ann-bench/`; the native `hnsw_rs` row appears
//! on the run that builds (`ANN_REBUILD=1` rebuilds). Searches run on one thread, every
//! configuration timed round-robin (`ANN_ROUNDS`, 5; the median round). `ANN_EXPORT=DIR` writes
//! the vectors, queries, truth and this run's rows for `benches/ann_compare.py`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use criterion::{black_box, Criterion};
use hnsw_rs::prelude::{DistDot, Hnsw};
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use rayon::prelude::*;

use funnel::sources::ann::hnsw::{FrozenHnsw, HnswParams, Metric, WalkPrecision};
use funnel::sources::ann::kernels::Kernel;
use funnel::sources::ann::{normalize, AnnIndex};

const K: usize = 100;

fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    match std::env::var(name) {
        Ok(s) => s.split(',').filter_map(|x| x.trim().parse().ok()).collect(),
        Err(_) => default.to_vec(),
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// `n` unit vectors around `centres` Gaussian centres.
fn clustered(n: usize, dim: usize, centres: usize, sigma: f32, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let unit = Normal::new(0.0f32, 1.0).expect("normal");
    let c: Vec<f32> = {
        // Centres come from their own stream so that queries share them with the data.
        let mut crng = rand::rngs::StdRng::seed_from_u64(4242);
        (0..centres * dim).map(|_| unit.sample(&mut crng)).collect()
    };
    let noise = Normal::new(0.0f32, sigma).expect("normal");
    let mut out = Vec::with_capacity(n * dim);
    for _ in 0..n {
        let ci = rand::Rng::gen_range(&mut rng, 0..centres);
        let start = out.len();
        for d in 0..dim {
            out.push(c[ci * dim + d] + noise.sample(&mut rng));
        }
        normalize(&mut out[start..]);
    }
    out
}

struct Dataset {
    name: String,
    dim: usize,
    /// Row-major item vectors as the builder hands them to the index (raw for bundle data).
    data: Vec<f32>,
    queries: Vec<f32>,
    /// The graphs to build and compare, in order (the last one gets the criterion runs).
    metrics: Vec<Metric>,
    /// The graph the bundle serves, measured as it is, for bundle data.
    prebuilt: Option<FrozenHnsw>,
}

fn metric_list(default: &[Metric]) -> Vec<Metric> {
    match std::env::var("ANN_METRICS") {
        Ok(s) => s
            .split(',')
            .filter_map(|m| match m.trim() {
                "inner_product" => Some(Metric::InnerProduct),
                "inner_product_augmented" => Some(Metric::InnerProductAugmented),
                "cosine" => Some(Metric::Cosine),
                _ => None,
            })
            .collect(),
        Err(_) => default.to_vec(),
    }
}

fn dataset() -> Dataset {
    let n = env_usize("ANN_N", 200_000);
    let dim = 64;
    match std::env::var("ANN_DATA").as_deref() {
        Ok("bundle") => bundle_dataset(),
        _ => Dataset {
            name: format!("clustered-{n}x{dim}"),
            dim,
            data: clustered(n, dim, 1000, 0.75, 1),
            queries: clustered(1000, dim, 1000, 0.75, 2),
            metrics: metric_list(&[Metric::Cosine]),
            prebuilt: None,
        },
    }
}

/// A bundle's item embeddings, queried with its users' embeddings (what the server searches
/// with for a known user), top k by exact inner product as the truth. The bundle is the
/// pipeline bench's (`cargo bench --bench pipeline`) unless `FUNNEL_BENCH_BUNDLE=DIR` names
/// another. Up to `ANN_QUERIES` (1,000) users with a usable embedding, drawn at random.
fn bundle_dataset() -> Dataset {
    let root = std::env::var("FUNNEL_BENCH_BUNDLE").map_or_else(
        |_| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-bundle-200k/bundle"),
        PathBuf::from,
    );
    let registry = funnel::features::FeatureRegistry::bundled().expect("defs");
    let b = funnel::bundle::Bundle::open(&root, &registry)
        .expect("run `cargo bench --bench pipeline` first to build target/bench-bundle-200k");
    let dim = b.dim;
    let n = b.item_embeddings.len() / dim;
    let store = b.features.as_ref().expect("bundle has embedded features");
    let mut users = b.user_ids.clone();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    rand::seq::SliceRandom::shuffle(users.as_mut_slice(), &mut rng);
    let want = env_usize("ANN_QUERIES", 1000);
    let mut queries = Vec::with_capacity(want * dim);
    for u in users {
        if queries.len() >= want * dim {
            break;
        }
        let emb = store
            .get(funnel::features::Entity::User, u)
            .and_then(|row| row.get("user_embedding"))
            .and_then(|v| v.as_f32_slice())
            .filter(|v| v.len() == dim && funnel::features::online::usable_embedding(v));
        if let Some(e) = emb {
            queries.extend_from_slice(e);
        }
    }
    let zero = b
        .item_embeddings
        .chunks(dim)
        .filter(|v| v.iter().all(|x| *x == 0.0))
        .count();
    println!(
        "  bundle {}: {zero} of {n} item vectors are zero",
        root.display()
    );
    Dataset {
        name: format!("bundle-{n}x{dim}-{}", b.manifest.version),
        dim,
        data: b.item_embeddings.clone(),
        queries,
        metrics: metric_list(&[Metric::InnerProductAugmented, Metric::InnerProduct]),
        prebuilt: b.ann.as_ref().map(|g| (**g).clone()),
    }
}

fn metric_name(m: Metric) -> &'static str {
    match m {
        Metric::InnerProduct => "inner_product",
        Metric::InnerProductAugmented => "inner_product_augmented",
        Metric::Cosine => "cosine",
    }
}

fn cache_dir(ds: &Dataset, metric: Metric, m: usize, efc: usize) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/ann-bench")
        .join(format!("{}-{}-m{m}-efc{efc}", ds.name, metric_name(metric)))
}

/// Top-K item rows by exact inner product (the clustered data is unit length, so this is cosine
/// there), on all cores.
fn exact_truth(ds: &Dataset, queries: &[Vec<f32>]) -> Vec<Vec<u32>> {
    queries
        .par_iter()
        .map(|q| {
            let mut s: Vec<(f32, u32)> = ds
                .data
                .chunks(ds.dim)
                .enumerate()
                .map(|(i, v)| (funnel::sources::ann::dot(q, v), i as u32))
                .collect();
            let nth = K.min(s.len() - 1);
            s.select_nth_unstable_by(nth, |a, b| b.0.total_cmp(&a.0));
            s.truncate(K);
            s.sort_by(|a, b| b.0.total_cmp(&a.0));
            s.into_iter().map(|x| x.1).collect()
        })
        .collect()
}

/// Recall@K of `search` over the queries.
fn recall(
    queries: &[Vec<f32>],
    truth: &[HashSet<u32>],
    mut search: impl FnMut(&[f32]) -> Vec<u32>,
) -> f64 {
    let sum: f64 = queries
        .iter()
        .zip(truth)
        .map(|(q, t)| funnel::evaluation::recall_at(&search(q), t, K))
        .sum();
    sum / queries.len() as f64
}

/// Single-thread queries/s (median of three passes) and recall@K of `search`.
fn measure(
    queries: &[Vec<f32>],
    truth: &[HashSet<u32>],
    mut search: impl FnMut(&[f32]) -> Vec<u32>,
) -> (f64, f64) {
    let recall = recall(queries, truth, &mut search);
    let mut rates: Vec<f64> = (0..3)
        .map(|_| {
            let t0 = Instant::now();
            for q in queries {
                black_box(search(q));
            }
            queries.len() as f64 / t0.elapsed().as_secs_f64()
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    (recall, rates[1])
}

fn main() {
    let ms = env_list("ANN_M", &[16]);
    let efc = env_usize("ANN_EFC", 200);
    let efs = env_list("ANN_EF", &[100, 128, 160, 200]);
    // Base-layer degrees to re-prune to (0 = hnsw_rs's whole 2·M lists); the last is the one
    // the criterion runs use.
    let degrees = env_list("ANN_DEGREE", &[0, 16, 24]);
    let walks: Vec<WalkPrecision> = match std::env::var("ANN_WALK").as_deref() {
        Ok("f32") => vec![WalkPrecision::F32],
        Ok("f16") => vec![WalkPrecision::F16],
        // f16 last: the criterion runs use the last configuration.
        _ => vec![WalkPrecision::F32, WalkPrecision::F16],
    };
    let rebuild = std::env::var("ANN_REBUILD").is_ok_and(|v| v == "1");
    let ds = dataset();
    let n = ds.data.len() / ds.dim;
    let queries: Vec<Vec<f32>> = ds.queries.chunks(ds.dim).map(|q| q.to_vec()).collect();
    println!(
        "ann: {} ({n} items, {} queries, k {K}), one search thread",
        ds.name,
        queries.len(),
    );
    let t0 = Instant::now();
    let truth_lists = exact_truth(&ds, &queries);
    let truth: Vec<HashSet<u32>> = truth_lists
        .iter()
        .map(|t| t.iter().copied().collect())
        .collect();
    println!(
        "  exact ground truth (inner product): {:.1} s on all cores",
        t0.elapsed().as_secs_f64()
    );
    // Every graph configuration to compare: (label, graph).
    let mut graphs: Vec<(String, FrozenHnsw)> = Vec::new();
    let mut natives: Vec<(usize, Hnsw<'static, f32, DistDot>)> = Vec::new();
    if let Some(g) = &ds.prebuilt {
        let p = g.params();
        graphs.push((
            format!(
                "served: {} deg {} {:?}",
                metric_name(p.metric),
                p.base_degree,
                p.walk
            ),
            g.clone(),
        ));
    }
    for &metric in &ds.metrics {
        for &m in &ms {
            let params = HnswParams {
                m,
                ef_construction: efc,
                ef_search: 160,
                metric,
                // Cached as built; the sweep re-prunes copies.
                base_degree: 0,
                walk: WalkPrecision::F16,
            };
            let dir = cache_dir(&ds, metric, m, efc);
            let cached = if rebuild {
                None
            } else {
                FrozenHnsw::load(&dir).ok()
            };
            let idx = match cached {
                Some(i) => i,
                None => {
                    let t0 = Instant::now();
                    let (idx, native) = build(&ds, params);
                    println!(
                        "  built {} M {m} ef_construction {efc} in {:.1} s",
                        metric_name(metric),
                        t0.elapsed().as_secs_f64()
                    );
                    if let Err(e) = idx.save(&dir) {
                        eprintln!("  (not cached: {e})");
                    }
                    if let Some(h) = native {
                        natives.push((m, h));
                    }
                    idx
                }
            };
            println!(
                "  {} M {m}: {} levels, {:.0} MiB as built, kernel {}",
                metric_name(metric),
                idx.levels(),
                idx.memory_bytes() as f64 / (1 << 20) as f64,
                idx.kernel().name()
            );
            for &deg in &degrees {
                let mut g = idx.clone();
                if deg > 0 {
                    g.prune_base(deg);
                }
                for &walk in &walks {
                    let mut gw = g.clone();
                    gw.set_walk(walk);
                    let lists = if deg == 0 {
                        "whole lists".to_string()
                    } else {
                        format!("deg {deg}")
                    };
                    graphs.push((
                        format!("{} M {m} {lists} {walk:?}", metric_name(metric)),
                        gw,
                    ));
                }
            }
        }
    }
    println!(
        "  {:<44} {:>6} {:>10} {:>10} {:>9}",
        "search", "ef", "recall@100", "queries/s", "µs/query"
    );
    let allow = |_: u32| true;
    // Every (graph, ef) configuration, timed round-robin: one pass over the queries per
    // configuration per round, so drift on this shared machine hits them alike.
    let mut rows: Vec<(usize, usize, f64, Vec<f64>)> = Vec::new(); // (graph, ef, recall, q/s)
    for (gi, (_, g)) in graphs.iter_mut().enumerate() {
        for &ef in &efs {
            g.set_ef_search(ef);
            let r = recall(&queries, &truth, |q| {
                g.search(q, K, &allow).iter().map(|s| s.item).collect()
            });
            rows.push((gi, ef, r, Vec::new()));
        }
    }
    let rounds = env_usize("ANN_ROUNDS", 5);
    for _ in 0..rounds {
        for (gi, ef, _, rates) in rows.iter_mut() {
            let g = &mut graphs[*gi].1;
            g.set_ef_search(*ef);
            let t0 = Instant::now();
            for q in &queries {
                black_box(g.search(q, K, &allow));
            }
            rates.push(queries.len() as f64 / t0.elapsed().as_secs_f64());
        }
    }
    let mut exported: Vec<String> = Vec::new();
    for (gi, ef, r, rates) in rows.iter_mut() {
        rates.sort_by(f64::total_cmp);
        let qps = rates[rates.len() / 2];
        let label = &graphs[*gi].0;
        println!(
            "  {label:<44} {ef:>6} {r:>10.4} {qps:>10.0} {:>9.1}   (q/s min {:.0} max {:.0})",
            1e6 / qps,
            rates[0],
            rates[rates.len() - 1]
        );
        exported.push(format!(
            "{{\"index\": \"funnel {label}\", \"param\": \"ef {ef}\", \"recall\": {r:.4}, \"qps\": {qps:.0}}}"
        ));
    }
    #[cfg(feature = "faiss")]
    for (label, param, r, qps) in faiss_rows(&ds, &queries, &truth, rounds) {
        println!(
            "  {label:<44} {param:>6} {r:>10.4} {qps:>10.0} {:>9.1}",
            1e6 / qps
        );
        exported.push(format!(
            "{{\"index\": \"{label}\", \"param\": \"{param}\", \"recall\": {r:.4}, \"qps\": {qps:.0}}}"
        ));
    }
    // The criterion runs and the options below use the last configuration.
    let Some((_, mut idx)) = graphs.pop() else {
        return;
    };
    drop(graphs);
    if std::env::var("ANN_HOT").is_ok_and(|v| v == "1") {
        // Each query searched right after itself: the cache-hot cost, against the cold one.
        idx.set_ef_search(efs[0]);
        let mut hot = Vec::with_capacity(queries.len());
        for q in &queries {
            black_box(idx.search(q, K, &allow));
            let t = Instant::now();
            black_box(idx.search(q, K, &allow));
            hot.push(t.elapsed().as_secs_f64() * 1e6);
        }
        hot.sort_by(f64::total_cmp);
        println!(
            "  cache-hot repeat at ef {}: median {:.1} µs/query",
            efs[0],
            hot[hot.len() / 2]
        );
    }
    if std::env::var("ANN_KERNELS").is_ok_and(|v| v == "1") {
        let best = idx.kernel();
        for k in [Kernel::Avx2Fma, Kernel::Portable] {
            if k != best && idx.set_kernel(k) {
                let ef = efs[efs.len() / 2]; // the middle of the ef list
                idx.set_ef_search(ef);
                let (r, qps) = measure(&queries, &truth, |q| {
                    idx.search(q, K, &allow).iter().map(|s| s.item).collect()
                });
                println!(
                    "  {:<44} {ef:>6} {r:>10.4} {qps:>10.0} {:>9.1}",
                    format!("last graph, {} kernel", k.name()),
                    1e6 / qps
                );
            }
        }
        idx.set_kernel(best);
    }
    for (m, native) in &natives {
        for &ef in &efs {
            let (r, qps) = measure(&queries, &truth, |q| {
                let mut v = q.to_vec();
                normalize(&mut v);
                native_query(native, &v, ef)
            });
            println!(
                "  {:<44} {ef:>6} {r:>10.4} {qps:>10.0} {:>9.1}",
                format!("hnsw_rs search (M {m})"),
                1e6 / qps
            );
        }
    }
    if let Ok(dir) = std::env::var("ANN_EXPORT") {
        export(Path::new(&dir), &ds, &queries, &truth_lists, &exported).expect("write ANN_EXPORT");
    }
    if std::env::var("ANN_CRITERION").is_ok_and(|v| v == "0") {
        return;
    }
    let ef = env_usize("ANN_CRITERION_EF", 100);
    idx.set_ef_search(ef);
    let mut c = Criterion::default().sample_size(30).configure_from_args();
    let mut i = 0usize;
    c.bench_function(&format!("ann/frozen/k100_ef{ef}"), |b| {
        b.iter(|| {
            i = (i + 1) % queries.len();
            idx.search(&queries[i], K, &allow)
        })
    });
    c.bench_function("ann/exact/k100", |b| {
        b.iter(|| {
            i = (i + 1) % queries.len();
            idx.exact_search(&queries[i], K)
        })
    });
    c.final_summary();
}

/// Writes what benches/ann_compare.py times other libraries on: the item vectors and queries
/// (little-endian f32, row-major), the exact top K (u32), their shapes, and this run's rows.
fn export(
    dir: &Path,
    ds: &Dataset,
    queries: &[Vec<f32>],
    truth: &[Vec<u32>],
    rows: &[String],
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let f32s =
        |v: &mut dyn Iterator<Item = f32>| -> Vec<u8> { v.flat_map(|x| x.to_le_bytes()).collect() };
    std::fs::write(dir.join("items.f32"), f32s(&mut ds.data.iter().copied()))?;
    std::fs::write(
        dir.join("queries.f32"),
        f32s(&mut queries.iter().flatten().copied()),
    )?;
    let t: Vec<u8> = truth
        .iter()
        .flat_map(|l| {
            let mut l = l.clone();
            l.resize(K, u32::MAX);
            l
        })
        .flat_map(|x| x.to_le_bytes())
        .collect();
    std::fs::write(dir.join("truth.u32"), t)?;
    std::fs::write(
        dir.join("meta.json"),
        format!(
            "{{\"name\": \"{}\", \"n\": {}, \"dim\": {}, \"queries\": {}, \"k\": {K}, \"funnel\": [{}]}}\n",
            ds.name,
            ds.data.len() / ds.dim,
            ds.dim,
            queries.len(),
            rows.join(", ")
        ),
    )
}

/// Funnel's FAISS backend (`--features faiss`) through the same `AnnIndex` search the server
/// calls: each `ANN_FAISS` factory (`;`-separated; default `HNSW32,Flat;IVF1024,Flat`) built
/// by inner product on all cores, searched on one thread over `ANN_FAISS_EF` (efSearch, for
/// HNSW kinds) or `ANN_FAISS_NPROBE` (nprobe, for IVF kinds). Median of `rounds` passes.
#[cfg(feature = "faiss")]
fn faiss_rows(
    ds: &Dataset,
    queries: &[Vec<f32>],
    truth: &[HashSet<u32>],
    rounds: usize,
) -> Vec<(String, String, f64, f64)> {
    use funnel::sources::ann::faiss::FaissIndex;
    let factories =
        std::env::var("ANN_FAISS").unwrap_or_else(|_| "HNSW32,Flat;IVF1024,Flat".into());
    let allow = |_: u32| true;
    let mut out = Vec::new();
    for factory in factories
        .split(';')
        .map(str::trim)
        .filter(|f| !f.is_empty())
    {
        let t0 = Instant::now();
        let mut idx = match FaissIndex::build(&ds.data, ds.dim, factory) {
            Ok(i) => i,
            Err(e) => {
                eprintln!("  faiss {factory}: {e}");
                continue;
            }
        };
        println!(
            "  built faiss {factory} in {:.1} s",
            t0.elapsed().as_secs_f64()
        );
        let (name, values) = if factory.starts_with("IVF") {
            ("nprobe", env_list("ANN_FAISS_NPROBE", &[16, 32, 64]))
        } else if factory.starts_with("HNSW") {
            ("efSearch", env_list("ANN_FAISS_EF", &[64, 128, 256]))
        } else {
            ("", vec![0])
        };
        // FAISS searches on one thread, like every other row.
        funnel::sources::ann::faiss::set_threads(1);
        for v in values {
            if !name.is_empty() && idx.set_param(name, v as f64).is_err() {
                continue;
            }
            let r = recall(queries, truth, |q| {
                idx.search(q, K, &allow).iter().map(|s| s.item).collect()
            });
            let mut rates: Vec<f64> = (0..rounds.max(1))
                .map(|_| {
                    let t0 = Instant::now();
                    for q in queries {
                        black_box(idx.search(q, K, &allow));
                    }
                    queries.len() as f64 / t0.elapsed().as_secs_f64()
                })
                .collect();
            rates.sort_by(f64::total_cmp);
            let param = if name.is_empty() {
                "—".to_string()
            } else {
                format!("{name} {v}")
            };
            out.push((
                format!("funnel faiss backend {factory}"),
                param,
                r,
                rates[rates.len() / 2],
            ));
        }
        funnel::sources::ann::faiss::set_threads(0);
    }
    out
}

/// The search `hnsw_rs` itself offers over its graph (ids are row numbers).
fn native_query(h: &Hnsw<f32, DistDot>, q: &[f32], ef: usize) -> Vec<u32> {
    h.search(q, K, ef).iter().map(|n| n.d_id as u32).collect()
}

/// Builds the frozen graph as the index-builder does (`FrozenHnsw::build`); for cosine on unit
/// data it builds with `hnsw_rs`'s own `DistDot` instead and keeps that native graph, so its
/// search can be timed over the very same graph.
fn build(ds: &Dataset, params: HnswParams) -> (FrozenHnsw, Option<Hnsw<'static, f32, DistDot>>) {
    if params.metric != Metric::Cosine {
        let g = FrozenHnsw::build(ds.data.clone(), ds.dim, params).expect("build");
        return (g, None);
    }
    let n = ds.data.len() / ds.dim;
    let h: Hnsw<f32, DistDot> = Hnsw::new(params.m, n, 16, params.ef_construction, DistDot {});
    let rows: Vec<(&[f32], usize)> = ds
        .data
        .chunks(ds.dim)
        .enumerate()
        .map(|(i, v)| (v, i))
        .collect();
    h.parallel_insert_slice(&rows);
    let frozen = FrozenHnsw::freeze(&h, ds.data.clone(), ds.dim, params).expect("freeze");
    (frozen, Some(h))
}
