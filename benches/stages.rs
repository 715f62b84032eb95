//! Each stage of the request path in isolation on the 200K-item bench bundle (the one
//! `benches/pipeline.rs` builds and caches in `target/bench-bundle-200k/`; `FUNNEL_BENCH_BUNDLE=DIR`
//! points at another): the four candidate sources, merge, the row encoder, each ranker at 100 /
//! 500 / 1000 candidates, the per-request ensemble plan, the re-rank rules, and candle's CPU
//! matrix multiply.
//!
//! `cargo bench --bench stages` first prints a table (medians of `Instant` timings): candle's
//! matmul throughput on ranker-shaped and square matrices, and per ranker at 500 candidates its
//! FLOPs per call (from the layer shapes in the bundle's `rankers.json`), its time, and its share
//! of the measured matmul throughput. Then criterion runs each stage.
//!
//! Threads: candle's CPU matmul hands work to the `gemm` crate with `Parallelism::Rayon(n)`, n =
//! `RAYON_NUM_THREADS` or the number of CPUs, read on every call; gemm splits a product over the
//! global rayon pool when its blocked work exceeds 48·48·256 multiply-adds, which the MLP's and
//! DCN's hidden and cross layers do at 500 rows (the `n × 1` output layers do not). This bench forces the global pool up at the machine's
//! width, then sets `RAYON_NUM_THREADS=1` so that every criterion measurement is single-threaded;
//! the table shows the rankers and the matmuls both ways. The sources, merge, encode, selection and
//! re-rank are single-threaded code.
//!
//! Requests: 128 prepared the way `benches/pipeline.rs` mixes them (70 % known users, 20 % with a
//! 3-item session, 10 % cold visitors with a session), query states from
//! `pipeline::query::query_state`. Merge gives fewer than 500 candidates whenever the sources
//! overlap, so the encode / rank / re-rank batches are topped up to exactly 500 (1000) with other
//! requests' candidates. Rows come from the engine's own encoder (`ranking::encode::encode_rows`).

mod common;

use common::bundle_dir;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use criterion::{black_box, BatchSize, BenchmarkId, Criterion};
use rand::{Rng, SeedableRng};

use funnel::bundle::Bundle;
use funnel::config::EngineConfig;
use funnel::features::online::UserFeatures;
use funnel::features::{Entity, FeatureRegistry};
use funnel::merge::{merge, Candidate};
use funnel::pipeline::item_features::ItemView;
use funnel::pipeline::query::{query_state, QueryState};
use funnel::ranking::encode::{encode_rows, RankUser};
use funnel::ranking::ensemble::segment_for;
use funnel::ranking::input::{DeviceKind, INPUT_DIM};
use funnel::ranking::registry::{score_with, PlanRequest, Registry};
use funnel::ranking::{Arch, RankerSpec};
use funnel::rerank::{apply_all, ItemFilter, Origin, Ranked, RerankContext, RerankRule};
use funnel::sources::ann::AnnSource;
use funnel::sources::cf::CfSource;
use funnel::sources::content::ContentSource;
use funnel::sources::trending::TrendingSource;
use funnel::sources::{CandidateSource, RetrievalQuery, ScoredItem, SourceId};
use funnel::ItemIdx;

/// Prepared requests the benches rotate through.
const N_QUERIES: usize = 128;
/// Repeats per row of the printed table (median taken).
const TABLE_REPEATS: usize = 50;

/// candle's matmul thread count: `Some(n)` sets `RAYON_NUM_THREADS` (read by candle on every
/// matmul), `None` restores what the process started with.
fn candle_threads(n: Option<usize>, original: &Option<String>) {
    match (n, original) {
        (Some(n), _) => std::env::set_var("RAYON_NUM_THREADS", n.to_string()),
        (None, Some(v)) => std::env::set_var("RAYON_NUM_THREADS", v),
        (None, None) => std::env::remove_var("RAYON_NUM_THREADS"),
    }
}

/// One prepared request: the sources' query states (trending runs with the user-less one, as in
/// the engine) and the ranker's user signals.
struct Req {
    q: QueryState,
    early: QueryState,
    user: RankUser,
    segment: u8,
}

struct Fixture {
    bundle: Bundle,
    /// (id, source, quota), in `SourceId::ALL` order.
    sources: Vec<(SourceId, Box<dyn CandidateSource>, usize)>,
    registry: Registry,
    specs: Vec<RankerSpec>,
    reqs: Vec<Req>,
    /// Per request: the four sources' outputs.
    outputs: Vec<Vec<(SourceId, Vec<ScoredItem>)>>,
    /// Per request: merged candidates.
    merged: Vec<Vec<Candidate>>,
    /// Known users' requests (with an embedding) and their candidates topped up to 500: the
    /// encode, rank and re-rank benches rotate through these.
    sets: Vec<(usize, Vec<Candidate>)>,
    rules: Vec<Box<dyn RerankRule>>,
    cfg: EngineConfig,
    now: i64,
    /// Rank slots, as the engine sizes them (`server.cpu_threads` = 0: one per CPU); computed
    /// once, as the engine does (`available_parallelism` reads cgroup files).
    workers: usize,
}

/// Ranker input rows as the engine encodes them, with no online overrides (embedded store).
fn encode(bundle: &Bundle, user: &RankUser, cands: &[Candidate]) -> Vec<f32> {
    let mut rows = Vec::new();
    encode_rows(
        &bundle.item_table(),
        user,
        cands,
        &HashMap::new(),
        &mut rows,
    );
    rows
}

impl Fixture {
    fn new() -> Fixture {
        let registry_defs = FeatureRegistry::bundled().expect("defs");
        let t = Instant::now();
        let mut bundle = Bundle::open(&bundle_dir(), &registry_defs).expect("open bundle");
        assert!(
            bundle.problems.is_empty(),
            "bundle problems: {:?}",
            bundle.problems
        );
        eprintln!("bundle opened in {:.1} s", t.elapsed().as_secs_f64());
        let mut cfg = EngineConfig::default();
        cfg.events.enabled = false;
        let quotas = cfg.retrieval.quotas.clone();
        let ann = bundle.ann.take().expect("ann");
        let cf = bundle.cf.take().expect("cf");
        let content = bundle.content.take().expect("content");
        let trending = bundle.trending.take().expect("trending");
        let sources: Vec<(SourceId, Box<dyn CandidateSource>, usize)> = vec![
            (SourceId::Ann, Box::new(AnnSource::new(ann)), quotas.ann),
            (SourceId::Cf, Box::new(CfSource::new(cf)), quotas.cf),
            (
                SourceId::Content,
                Box::new(ContentSource::new(content)),
                quotas.content,
            ),
            (
                SourceId::Trending,
                Box::new(TrendingSource::new(trending)),
                quotas.trending,
            ),
        ];
        let specs = bundle
            .rankers_manifest
            .as_ref()
            .map(|m| m.rankers.clone())
            .unwrap_or_default();
        let registry = Registry::new(
            std::mem::take(&mut bundle.rankers),
            bundle.rankers_manifest.as_ref(),
            cfg.ranking.model.as_deref(),
            cfg.breaker,
        )
        .expect("registry");
        // `Clock::Bundle`: the build's cutoff is "now".
        let now = bundle
            .manifest
            .info
            .get("cutoff")
            .and_then(|v| v.as_i64())
            .unwrap_or_else(|| chrono::Utc::now().timestamp());

        // Requests: pipeline.rs's mix — 70 % known users, 20 % known users with a 3-item session,
        // 10 % cold visitors with a session.
        let mut known: Vec<u64> = bundle.batch_recs.keys().copied().collect();
        known.sort_unstable();
        let n_items = bundle.catalog.len();
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let blend = cfg.retrieval.session_blend;
        let mut reqs = Vec::with_capacity(N_QUERIES);
        for _ in 0..N_QUERIES {
            let r: f64 = rng.gen();
            let session: Vec<ItemIdx> = if r < 0.7 {
                Vec::new()
            } else {
                (0..3)
                    .map(|_| rng.gen_range(0..n_items) as ItemIdx)
                    .collect()
            };
            let features: Option<UserFeatures> = if r < 0.9 {
                let id = known[rng.gen_range(0..known.len())];
                bundle
                    .features
                    .as_ref()
                    .and_then(|s| s.get(Entity::User, id))
                    .map(UserFeatures::from_row)
            } else {
                None
            };
            let early = query_state(&bundle, None, &session, &[], ItemFilter::default(), blend);
            let q = query_state(
                &bundle,
                features.as_ref(),
                &session,
                &[],
                ItemFilter::default(),
                blend,
            );
            let history_len = features.as_ref().map_or(0, |f| f.history_len);
            let user = RankUser::from_features(
                &bundle.catalog,
                &bundle.category_prior,
                features.as_ref(),
                DeviceKind::Unknown,
                !session.is_empty(),
                now,
                &q.recent,
            );
            reqs.push(Req {
                q,
                early,
                user,
                segment: segment_for(history_len, None),
            });
        }
        let mut fx = Fixture {
            bundle,
            sources,
            registry,
            specs,
            reqs,
            outputs: Vec::new(),
            merged: Vec::new(),
            sets: Vec::new(),
            rules: cfg.rerank.build(),
            cfg,
            now,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
        };
        fx.outputs = (0..N_QUERIES).map(|k| fx.retrieve_all(k)).collect();
        fx.merged = fx.outputs.iter().map(|o| merge(o, &fx.cfg.merge)).collect();
        let cap = fx.cfg.merge.max_candidates;
        fx.sets = (0..N_QUERIES)
            .filter(|&k| fx.reqs[k].user.embedding.is_some())
            .map(|k| (k, fx.candidates(k, cap)))
            .collect();
        assert!(!fx.sets.is_empty(), "no known user among the requests");
        assert!(
            fx.sets.iter().all(|(_, c)| c.len() == cap),
            "could not top the candidate sets up to {cap}"
        );
        fx
    }

    fn retrieve(&self, s: usize, k: usize) -> Vec<ScoredItem> {
        let (id, src, quota) = &self.sources[s];
        let req = &self.reqs[k];
        let q = if *id == SourceId::Trending {
            &req.early
        } else {
            &req.q
        };
        let allow = |i: ItemIdx| q.allows(&self.bundle, i);
        let rq = RetrievalQuery {
            embedding: q.embedding.as_deref(),
            recent_items: &q.recent,
            category_prefs: &q.prefs,
            allow: &allow,
        };
        src.retrieve(&rq, *quota).expect("retrieve")
    }

    fn retrieve_all(&self, k: usize) -> Vec<(SourceId, Vec<ScoredItem>)> {
        (0..self.sources.len())
            .map(|s| (self.sources[s].0, self.retrieve(s, k)))
            .collect()
    }

    /// Request `k`'s merged candidates, topped up to exactly `n` with the next requests'
    /// candidates: merge gives fewer than 500 whenever the sources overlap (their quotas sum to
    /// exactly 500), so a 500- or 1000-candidate batch needs items from elsewhere.
    fn candidates(&self, k: usize, n: usize) -> Vec<Candidate> {
        let mut out: Vec<Candidate> = self.merged[k].iter().take(n).cloned().collect();
        let mut have: HashSet<ItemIdx> = out.iter().map(|c| c.item).collect();
        for j in 1..N_QUERIES {
            for c in &self.merged[(k + j) % N_QUERIES] {
                if out.len() >= n {
                    return out;
                }
                if have.insert(c.item) {
                    out.push(c.clone());
                }
            }
        }
        out
    }

    /// `n` encoded rows: the first known user's candidates, topped up to `n`.
    fn rows(&self, n: usize) -> Vec<f32> {
        let k = self.sets[0].0;
        let rows = encode(&self.bundle, &self.reqs[k].user, &self.candidates(k, n));
        assert_eq!(rows.len(), n * INPUT_DIM, "not enough candidates");
        rows
    }

    fn plan_request(&self, segment: u8, candidates: usize) -> PlanRequest<'_> {
        // As `Engine::recommend` at the start of a fresh request: the rank slice capped by
        // `budget.rank_ms`, less the predicted encoding time, controller factor 1.
        let rc = &self.cfg.ranking;
        let remaining = self.cfg.budget.total_ms as f64;
        let slice_ms = (remaining - rc.reserve_ms as f64)
            .min(self.cfg.budget.rank_ms as f64)
            .max(0.0);
        let encode_ms = self.registry.encode_cost.predict_ms(candidates);
        PlanRequest {
            candidates,
            segment,
            budget_ms: (slice_ms - encode_ms).max(0.0),
            workers: self.workers,
            max_models: rc.max_models,
            min_diversity: rc.min_diversity,
            only: None,
            max_nodes: rc.max_search_nodes,
            mode: rc.selection,
        }
    }
}

/// Median wall time of each job; the jobs run round-robin, `reps` rounds after 3 warm-up rounds.
fn medians(reps: usize, jobs: &mut [Box<dyn FnMut() + '_>]) -> Vec<Duration> {
    for _ in 0..3 {
        jobs.iter_mut().for_each(|f| f());
    }
    let mut t: Vec<Vec<Duration>> = vec![Vec::with_capacity(reps); jobs.len()];
    for _ in 0..reps {
        for (j, f) in jobs.iter_mut().enumerate() {
            let s = Instant::now();
            f();
            t[j].push(s.elapsed());
        }
    }
    t.into_iter()
        .map(|mut v| {
            v.sort();
            v[v.len() / 2]
        })
        .collect()
}

/// Median wall time of `f` over `reps` runs (after 3 warm-up runs).
fn median(reps: usize, mut f: impl FnMut()) -> Duration {
    for _ in 0..3 {
        f();
    }
    let mut t: Vec<Duration> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed()
        })
        .collect();
    t.sort();
    t[t.len() / 2]
}

/// FLOPs of one forward pass over `n` rows, from the spec's layer shapes (the `Dense` layers
/// multiply by Wᵀ and add the bias through a `(n×1)(1×out)` matmul and an add; DCN's cross layer
/// adds `x0 ⊙ p + x_l`; ReLU counted as one op). Standardisation (2 per input value) included.
/// Returns (total FLOPs, of which in matmuls against weights).
fn ranker_flops(spec: &RankerSpec, n: usize) -> (f64, f64) {
    let n = n as f64;
    let mut weights = 0.0; // multiply-adds per row against weight matrices
    let mut other = 2.0 * spec.input_dim as f64; // standardisation
    let mut dense = |i: usize, o: usize, bias: bool, other: &mut f64| {
        weights += (i * o) as f64;
        if bias {
            *other += 3.0 * o as f64; // 1·bᵀ matmul (2 per output) + add
        }
    };
    let d = spec.input_dim;
    match spec.arch {
        Arch::Logistic => dense(d, 1, true, &mut other),
        Arch::Mlp => {
            let mut dim = d;
            for &h in &spec.hidden {
                dense(dim, h, true, &mut other);
                other += h as f64;
                dim = h;
            }
            dense(dim, 1, true, &mut other);
        }
        Arch::Dcn => {
            for _ in 0..spec.cross_layers {
                if spec.cross_rank == 0 || spec.cross_rank >= d {
                    dense(d, d, true, &mut other);
                } else {
                    dense(d, spec.cross_rank, false, &mut other);
                    dense(spec.cross_rank, d, true, &mut other);
                }
                other += 2.0 * d as f64;
            }
            let mut dim = d;
            for &h in &spec.hidden {
                dense(dim, h, true, &mut other);
                other += h as f64;
                dim = h;
            }
            dense(d + dim, 1, true, &mut other);
        }
        Arch::Fm => {
            let v = funnel::ranking::models::fm::view().len();
            let k = spec.hidden.first().copied().unwrap_or(8);
            dense(v, 1, true, &mut other);
            dense(v, k, false, &mut other); // x·V
            dense(v, k, false, &mut other); // x²·V²
            other += (v + 3 * k) as f64; // squares and the pair sum
        }
        Arch::Seq => {
            use funnel::ranking::input::SEQ_LEN;
            let a = spec.hidden.first().copied().unwrap_or(16);
            let h = spec.hidden.get(1).copied().unwrap_or(32);
            let c = funnel::ranking::models::seq::context_view().len();
            for _ in 0..SEQ_LEN {
                dense(2, a, true, &mut other); // attention hidden
                dense(a, 1, true, &mut other); // attention logit
                dense(2, a, true, &mut other); // value
                other += 4.0 * a as f64; // ReLUs, weighting, pooling
            }
            other += 3.0 * SEQ_LEN as f64; // softmax
            dense(a + c, h, true, &mut other);
            dense(h, 1, true, &mut other);
        }
    }
    let mm = 2.0 * weights * n;
    (mm + other * n, mm)
}

fn layer_shapes(spec: &RankerSpec) -> String {
    let d = spec.input_dim;
    let tower = |from: usize| {
        let mut s = format!("{from}");
        for h in &spec.hidden {
            s += &format!("→{h}");
        }
        s
    };
    match spec.arch {
        Arch::Logistic => format!("{d}→1"),
        Arch::Mlp => format!("{}→1", tower(d)),
        Arch::Dcn => format!(
            "{}×cross({d}→{r}→{d}) ∥ deep {}; out {}→1",
            spec.cross_layers,
            tower(d),
            d + spec.hidden.last().copied().unwrap_or(d),
            r = spec.cross_rank
        ),
        Arch::Fm => format!(
            "FM over {} columns, rank {}",
            funnel::ranking::models::fm::view().len(),
            spec.hidden.first().copied().unwrap_or(0)
        ),
        Arch::Seq => format!(
            "target attention over {} recent items ({}), head {}→1",
            funnel::ranking::input::SEQ_LEN,
            tower(2),
            spec.hidden.get(1).copied().unwrap_or(0)
        ),
    }
}

/// A deterministic `rows × cols` f32 tensor.
fn filled(rows: usize, cols: usize, seed: u64) -> Tensor {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let v: Vec<f32> = (0..rows * cols).map(|_| rng.gen_range(-1.0..1.0)).collect();
    Tensor::from_vec(v, (rows, cols), &Device::Cpu).expect("tensor")
}

/// (label, m, n, k, lhs, rhs): ranker-shaped products with the weight transposed as `Dense`
/// does, and a square one.
fn matmul_cases() -> Vec<(String, usize, usize, usize, Tensor, Tensor)> {
    let mut v = Vec::new();
    for (m, k, n) in [
        (500, INPUT_DIM, 128),
        (500, 128, 64),
        (1000, INPUT_DIM, 128),
    ] {
        v.push((
            format!("{m}x{k}_x_{n}x{k}T"),
            m,
            n,
            k,
            filled(m, k, 1),
            filled(n, k, 2).t().expect("t"),
        ));
    }
    v.push((
        "512x512_x_512x512".to_string(),
        512,
        512,
        512,
        filled(512, 512, 3),
        filled(512, 512, 4),
    ));
    v
}

fn table(fx: &Fixture, original_threads: &Option<String>) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let widths = [1, cpus];
    let cases = matmul_cases();
    let rows = fx.rows(500);
    let models: Vec<(&funnel::ranking::registry::ModelEntry, &RankerSpec)> = fx
        .registry
        .entries()
        .iter()
        .filter_map(|e| fx.specs.iter().find(|s| s.id == e.id()).map(|s| (e, s)))
        .collect();
    // Per thread count: the matmul cases and the rankers, timed round-robin so that a noisy
    // neighbour on the shared machine slows them alike.
    let mut mm_t = vec![[Duration::ZERO; 2]; cases.len()];
    let mut rk_t = vec![[Duration::ZERO; 2]; models.len()];
    for (w, &threads) in widths.iter().enumerate() {
        candle_threads(Some(threads), original_threads);
        let mut jobs: Vec<Box<dyn FnMut() + '_>> = Vec::new();
        for (_, _, _, _, a, b) in &cases {
            jobs.push(Box::new(move || {
                black_box(a.matmul(b).expect("matmul"));
            }));
        }
        for (e, _) in &models {
            let rows = &rows;
            jobs.push(Box::new(move || {
                black_box(score_with(&*e.ranker, rows, 500).expect("score"));
            }));
        }
        let t = medians(TABLE_REPEATS, &mut jobs);
        for (i, d) in t.iter().enumerate() {
            if i < cases.len() {
                mm_t[i][w] = *d;
            } else {
                rk_t[i - cases.len()][w] = *d;
            }
        }
    }

    println!(
        "\n== candle CPU matmul (f32; median of {TABLE_REPEATS}, round-robin with the rankers; \
         GFLOP/s = 2·m·n·k / time) =="
    );
    println!(
        "{:<24} {:>12} {:>10} {:>12} {:>10}",
        "shape",
        "1 thread µs",
        "GFLOP/s",
        format!("{cpus} threads µs"),
        "GFLOP/s"
    );
    let mut peak = [0.0f64; 2];
    for ((label, m, n, k, _, _), t) in cases.iter().zip(&mm_t) {
        let flops = 2.0 * (m * n * k) as f64;
        let mut row = format!("{label:<24}");
        for w in 0..2 {
            let g = flops / t[w].as_secs_f64() / 1e9;
            peak[w] = peak[w].max(g);
            row += &format!(" {:>12.1} {:>10.1}", t[w].as_secs_f64() * 1e6, g);
        }
        println!("{row}");
    }
    println!(
        "measured matmul peak (best shape): {:.1} GFLOP/s on 1 thread, {:.1} GFLOP/s on {cpus} \
         threads",
        peak[0], peak[1]
    );

    println!(
        "\n== rankers at 500 candidates (score(): standardise + forward + sigmoid; median of \
         {TABLE_REPEATS}) =="
    );
    println!(
        "{:<12} {:<52} {:>9} {:>8} {:>9} {:>8} {:>9} {:>9} {:>8}",
        "model",
        "layers",
        "MFLOP",
        "mm %",
        "1T µs",
        "GFLOP/s",
        "of 1T pk",
        format!("{cpus}T µs"),
        "of pk"
    );
    for ((e, spec), t) in models.iter().zip(&rk_t) {
        let (flops, mm) = ranker_flops(spec, 500);
        let g1 = flops / t[0].as_secs_f64() / 1e9;
        let g2 = flops / t[1].as_secs_f64() / 1e9;
        println!(
            "{:<12} {:<52} {:>9.2} {:>7.0}% {:>9.1} {:>8.2} {:>8.1}% {:>9.1} {:>7.1}%",
            e.id(),
            layer_shapes(spec),
            flops / 1e6,
            100.0 * mm / flops,
            t[0].as_secs_f64() * 1e6,
            g1,
            100.0 * g1 / peak[0],
            t[1].as_secs_f64() * 1e6,
            100.0 * g2 / peak[1],
        );
    }
    println!(
        "(MFLOP: per call, from the layer shapes in rankers.json; mm %: share in weight matmuls)"
    );
    let (k, cands) = &fx.sets[0];
    let enc = median(TABLE_REPEATS, || {
        black_box(encode(&fx.bundle, &fx.reqs[*k].user, cands));
    });
    println!(
        "encode 500 rows: {:.1} µs  ({} floats per row)",
        enc.as_secs_f64() * 1e6,
        INPUT_DIM
    );

    // What the selector does with this registry under the default budget, per segment.
    println!("\n== ensemble plan (500 candidates, default budget, controller factor 1) ==");
    for e in fx.registry.entries() {
        println!(
            "  {:<12} cost model at 500: {:.3} ms",
            e.id(),
            e.cost.predict_ms(500)
        );
    }
    for seg in 0..3u8 {
        let req = fx.plan_request(seg, 500);
        let plan = fx.registry.plan(&req);
        let members: Vec<&str> = plan
            .members
            .iter()
            .map(|m| fx.registry.entries()[m.index].id())
            .collect();
        println!(
            "  segment {:<6} budget {:.2} ms → {:?} (predicted {:.3} ms, {} search nodes)",
            Registry::segment_name(seg),
            plan.budget_ms,
            members,
            plan.predicted_ms,
            plan.nodes
        );
    }

    let mut sizes: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for o in &fx.outputs {
        for (id, v) in o {
            sizes.entry(id.name()).or_default().push(v.len());
        }
    }
    let mut merged: Vec<usize> = fx.merged.iter().map(Vec::len).collect();
    merged.sort_unstable();
    let mean = |v: &[usize]| v.iter().sum::<usize>() as f64 / v.len().max(1) as f64;
    let per: Vec<String> = sizes
        .iter()
        .map(|(k, v)| format!("{k} {:.0}", mean(v)))
        .collect();
    println!(
        "\nrequests: {N_QUERIES} prepared ({} known users with an embedding); mean items per \
         source: {}; merged candidates mean {:.0}, min {}, median {}, max {} (encode / rank / \
         re-rank batches are topped up to exactly 500 from other requests)\n",
        fx.sets.len(),
        per.join(", "),
        mean(&merged),
        merged[0],
        merged[merged.len() / 2],
        merged[merged.len() - 1],
    );
}

fn main() {
    let original_threads = std::env::var("RAYON_NUM_THREADS").ok();
    // Bring rayon's global pool up at its normal width before any thread-count override, so
    // the multi-threaded table rows can use it.
    let pool = rayon::current_num_threads();
    let fx = Fixture::new();
    eprintln!("rayon global pool: {pool} threads");
    table(&fx, &original_threads);

    // Everything below: candle single-threaded.
    candle_threads(Some(1), &original_threads);
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(700))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
        .configure_from_args();

    {
        let mut g = c.benchmark_group("source");
        for s in 0..fx.sources.len() {
            let (id, _, quota) = &fx.sources[s];
            let mut k = 0;
            g.bench_function(BenchmarkId::new(id.name(), quota), |b| {
                b.iter(|| {
                    k = (k + 1) % N_QUERIES;
                    black_box(fx.retrieve(s, k))
                })
            });
        }
        g.finish();
    }
    {
        let mut g = c.benchmark_group("merge");
        let mut k = 0;
        g.bench_function("4_sources_to_500", |b| {
            b.iter(|| {
                k = (k + 1) % N_QUERIES;
                black_box(merge(&fx.outputs[k], &fx.cfg.merge))
            })
        });
        g.finish();
    }
    {
        let mut g = c.benchmark_group("encode");
        let mut j = 0;
        g.bench_function("500", |b| {
            b.iter(|| {
                j = (j + 1) % fx.sets.len();
                let (k, cands) = &fx.sets[j];
                black_box(encode(&fx.bundle, &fx.reqs[*k].user, cands))
            })
        });
        g.finish();
    }
    {
        let rows = fx.rows(1000);
        let mut g = c.benchmark_group("rank");
        for e in fx.registry.entries() {
            for n in [100, 500, 1000] {
                let r = &rows[..n * INPUT_DIM];
                g.bench_function(BenchmarkId::new(e.id(), n), |b| {
                    b.iter(|| black_box(score_with(&*e.ranker, r, n).expect("score")))
                });
            }
        }
        g.finish();
    }
    {
        let mut g = c.benchmark_group("select");
        let mut k = 0;
        g.bench_function("plan_3_models_500", |b| {
            b.iter(|| {
                k = (k + 1) % N_QUERIES;
                let req = fx.plan_request(fx.reqs[k].segment, 500);
                black_box(fx.registry.plan(&req))
            })
        });
        g.finish();
    }
    {
        // Ranked lists as the engine hands them to re-rank: the preferred model's scores over
        // 500 merged candidates, sorted best first.
        let model = &fx.registry.entries()[0];
        let lists: Vec<(usize, Vec<Ranked>)> = fx
            .sets
            .iter()
            .map(|(k, cands)| {
                let k = *k;
                let rows = encode(&fx.bundle, &fx.reqs[k].user, cands);
                let s = score_with(&*model.ranker, &rows, cands.len()).expect("score");
                let mut l: Vec<Ranked> = cands
                    .iter()
                    .zip(&s)
                    .map(|(c, &s)| Ranked::new(c.item, s, c.source_mask, Origin::Retrieval))
                    .collect();
                l.sort_by(|a, b| b.score.total_cmp(&a.score));
                (k, l)
            })
            .collect();
        let overrides = HashMap::new();
        let view = ItemView {
            bundle: &fx.bundle,
            overrides: &overrides,
        };
        let cap = fx.cfg.rerank.active_cap();
        let mut g = c.benchmark_group("rerank");
        let mut j = 0;
        g.bench_function("all_rules_500_k20", |b| {
            b.iter_batched(
                || {
                    j = (j + 1) % lists.len();
                    lists[j].clone()
                },
                |(k, mut list)| {
                    let q = &fx.reqs[k].q;
                    let ctx = RerankContext {
                        items: &view,
                        seen: &q.seen,
                        filter: &q.filter,
                        now: fx.now,
                        category_cap: cap,
                    };
                    apply_all(&fx.rules, &ctx, &mut list);
                    list.truncate(20);
                    list
                },
                BatchSize::SmallInput,
            )
        });
        g.finish();
    }
    {
        let mut g = c.benchmark_group("matmul_1thread");
        for (label, m, n, k, a, b) in matmul_cases() {
            g.throughput(criterion::Throughput::Elements((2 * m * n * k) as u64));
            g.bench_function(label, |bch| {
                bch.iter(|| black_box(a.matmul(&b).expect("matmul")))
            });
        }
        g.finish();
    }
    c.final_summary();
}
