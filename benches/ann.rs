//! ANN search at 200K items: recall@100 against exact search and single-thread queries/s, for the
//! frozen HNSW graph (ours) and `hnsw_rs`'s own search over the very same graph, swept over
//! `ef_search`, the base-layer degree the frozen graph is re-pruned to, the walk's precision
//! (f32, or f16 with an f32 re-score), and `M` with `ANN_M`. Then criterion timings of one query
//! with the last degree and f16.
//!
//! ```sh
//! cargo bench --bench ann                      # 200K × 64 clustered unit vectors, M 16
//! ANN_M=8,16 ANN_EF=100,128,160,200 ANN_DEGREE=0,16,24 ANN_WALK=f16 cargo bench --bench ann
//! ANN_DATA=bundle cargo bench --bench ann      # the pipeline bench bundle's item embeddings
//! ```
//!
//! Data (`ANN_DATA=clustered`, default): 200K points in 64 dimensions drawn around 1,000 centres
//! (centres N(0, I), points centre + N(0, 0.75² I), then unit length); 1,000 queries drawn the
//! same way but not indexed. Graphs are built once per (data, M, ef_construction) with `hnsw_rs`
//! on all cores and cached under `target/ann-bench/`; the native `hnsw_rs` row appears on the run
//! that builds (set `ANN_REBUILD=1` to rebuild). Searches run on one thread.

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
    data: Vec<f32>,
    queries: Vec<f32>,
    metric: Metric,
    /// The served graph, for bundle data.
    prebuilt: Option<FrozenHnsw>,
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
            metric: Metric::Cosine,
            prebuilt: None,
        },
    }
}

/// The served graph of the pipeline bench's bundle (built by `cargo bench --bench pipeline`;
/// `FUNNEL_BENCH_BUNDLE=DIR` for another):
/// item embeddings searched by inner product as the server does; each query is the mean of three
/// random items' embeddings (what a session-only visitor searches with).
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
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut queries = Vec::with_capacity(1000 * dim);
    for _ in 0..1000 {
        let mut q = vec![0f32; dim];
        for _ in 0..3 {
            let i = rand::Rng::gen_range(&mut rng, 0..n);
            for (a, b) in q.iter_mut().zip(&b.item_embeddings[i * dim..(i + 1) * dim]) {
                *a += b / 3.0;
            }
        }
        queries.extend(q);
    }
    let graph = b.ann.as_ref().expect("bundle has an ANN index");
    Dataset {
        name: format!("bundle-{n}x{dim}"),
        dim,
        data: Vec::new(),
        queries,
        metric: Metric::InnerProduct,
        prebuilt: Some((**graph).clone()),
    }
}

fn cache_dir(ds: &Dataset, m: usize, efc: usize) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/ann-bench")
        .join(format!("{}-m{m}-efc{efc}", ds.name))
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
    let n = ds
        .prebuilt
        .as_ref()
        .map_or(ds.data.len() / ds.dim, |g| g.len());
    let queries: Vec<Vec<f32>> = ds.queries.chunks(ds.dim).map(|q| q.to_vec()).collect();
    println!(
        "ann: {} ({n} items, {} queries, k {K}, metric {:?}), one search thread",
        ds.name,
        queries.len(),
        ds.metric
    );
    let mut default_index: Option<FrozenHnsw> = None;
    let mut truth: Option<Vec<HashSet<u32>>> = None;
    let ms = if let Some(g) = &ds.prebuilt {
        vec![g.params().m]
    } else {
        ms
    };
    for &m in &ms {
        let params = HnswParams {
            m,
            ef_construction: efc,
            ef_search: 160,
            metric: ds.metric,
            // Cached as built; the sweep re-prunes copies.
            base_degree: 0,
            walk: WalkPrecision::F16,
        };
        let dir = cache_dir(&ds, m, efc);
        let cached = if let Some(g) = &ds.prebuilt {
            Some(g.clone())
        } else if rebuild {
            None
        } else {
            FrozenHnsw::load(&dir).ok()
        };
        let (mut idx, native) = match cached {
            Some(i) => (i, None),
            None => {
                let t0 = Instant::now();
                let (idx, native) = build(&ds, params);
                println!(
                    "  built M {m} ef_construction {efc} in {:.1} s",
                    t0.elapsed().as_secs_f64()
                );
                if let Err(e) = idx.save(&dir) {
                    eprintln!("  (not cached: {e})");
                }
                (idx, Some(native))
            }
        };
        let truth = truth.get_or_insert_with(|| {
            let t0 = Instant::now();
            let t: Vec<HashSet<u32>> = queries
                .par_iter()
                .map(|q| idx.exact_search(q, K).iter().map(|s| s.item).collect())
                .collect();
            println!(
                "  exact ground truth: {:.1} s on all cores",
                t0.elapsed().as_secs_f64()
            );
            t
        });
        println!(
            "  M {m}: {} levels, {:.0} MiB as built, kernel {}",
            idx.levels(),
            idx.memory_bytes() as f64 / (1 << 20) as f64,
            idx.kernel().name()
        );
        println!(
            "  {:<34} {:>6} {:>10} {:>10} {:>9}",
            "search", "ef", "recall@100", "queries/s", "µs/query"
        );
        let allow = |_: u32| true;
        // Every (degree, walk, ef) configuration, timed round-robin: one pass over the queries
        // per configuration per round, so drift on this shared machine hits them alike.
        let mut graphs: Vec<(usize, WalkPrecision, FrozenHnsw)> = Vec::new();
        for &deg in &degrees {
            let mut g = idx.clone();
            if deg > 0 {
                g.prune_base(deg);
            }
            for &walk in &walks {
                let mut gw = g.clone();
                gw.set_walk(walk);
                graphs.push((deg, walk, gw));
            }
        }
        let mut rows: Vec<(usize, usize, f64, Vec<f64>)> = Vec::new(); // (graph, ef, recall, q/s)
        for (gi, (_, _, g)) in graphs.iter_mut().enumerate() {
            for &ef in &efs {
                g.set_ef_search(ef);
                let r = recall(&queries, truth, |q| {
                    g.search(q, K, &allow).iter().map(|s| s.item).collect()
                });
                rows.push((gi, ef, r, Vec::new()));
            }
        }
        let rounds = env_usize("ANN_ROUNDS", 5);
        for _ in 0..rounds {
            for (gi, ef, _, rates) in rows.iter_mut() {
                let g = &mut graphs[*gi].2;
                g.set_ef_search(*ef);
                let t0 = Instant::now();
                for q in &queries {
                    black_box(g.search(q, K, &allow));
                }
                rates.push(queries.len() as f64 / t0.elapsed().as_secs_f64());
            }
        }
        for (gi, ef, r, rates) in rows.iter_mut() {
            let (deg, walk, _) = &graphs[*gi];
            rates.sort_by(f64::total_cmp);
            let qps = rates[rates.len() / 2];
            let label = if *deg == 0 && ds.prebuilt.is_some() {
                format!("bundle graph as built, {walk:?}")
            } else if *deg == 0 {
                format!("frozen M {m}, whole lists, {walk:?}")
            } else {
                format!("frozen M {m}, degree {deg}, {walk:?}")
            };
            println!(
                "  {label:<34} {ef:>6} {r:>10.4} {qps:>10.0} {:>9.1}   (q/s min {:.0} max {:.0})",
                1e6 / qps,
                rates[0],
                rates[rates.len() - 1]
            );
        }
        // The criterion runs and the options below use the last configuration (last degree, f16).
        if let Some(last) = graphs.pop() {
            idx = last.2;
        }
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
                    let (r, qps) = measure(&queries, truth, |q| {
                        idx.search(q, K, &allow).iter().map(|s| s.item).collect()
                    });
                    println!(
                        "  {:<28} {ef:>6} {r:>10.4} {qps:>10.0} {:>9.1}",
                        format!("frozen (M {m}, {})", k.name()),
                        1e6 / qps
                    );
                }
            }
            idx.set_kernel(best);
        }
        if let Some(native) = native {
            for &ef in &efs {
                let (r, qps) = measure(&queries, truth, |q| {
                    let mut v = q.to_vec();
                    normalize(&mut v);
                    native_query(&native, &v, ef)
                });
                println!(
                    "  {:<28} {ef:>6} {r:>10.4} {qps:>10.0} {:>9.1}",
                    format!("hnsw_rs search (M {m})"),
                    1e6 / qps
                );
            }
        }
        if m == ms[0] {
            default_index = Some(idx);
        }
    }
    let Some(mut idx) = default_index else {
        return;
    };
    let ef = env_usize("ANN_CRITERION_EF", 100);
    idx.set_ef_search(ef);
    let mut c = Criterion::default().sample_size(30).configure_from_args();
    let allow = |_: u32| true;
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

/// The search `hnsw_rs` itself offers over its graph (ids are row numbers).
fn native_query(h: &Hnsw<f32, DistDot>, q: &[f32], ef: usize) -> Vec<u32> {
    h.search(q, K, ef).iter().map(|n| n.d_id as u32).collect()
}

/// Builds with `hnsw_rs` over unit (cosine) or norm-augmented (inner product) rows, keeps the
/// native graph for comparison, and freezes it.
fn build(ds: &Dataset, params: HnswParams) -> (FrozenHnsw, Hnsw<'static, f32, DistDot>) {
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
    (frozen, h)
}
