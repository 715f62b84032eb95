//! The whole in-process request path (features → four sources → merge → rank → re-rank) on a
//! 200K-item synthetic bundle, embedded feature store, the default ranker ensemble.
//!
//! `cargo bench --bench pipeline` builds the bundle once into `target/bench-bundle-200k/` (a few
//! minutes; reused afterwards; `FUNNEL_BENCH_BUNDLE=DIR` points at another bundle), then prints
//! the per-request latency distribution over a realistic mix of users (p50/p90/p99 of 3,000
//! sequential requests, and per-stage medians), then a closed-loop load with and without the
//! latency controller, then runs criterion per request kind.

mod common;

use common::bundle_dir;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use criterion::Criterion;
use rand::{Rng, SeedableRng};

use funnel::api::{RecommendRequest, RequestContext, UserId, ValidRequest};
use funnel::bundle::Bundle;
use funnel::config::{Clock, EngineConfig};
use funnel::engine::Engine;
use funnel::features::FeatureRegistry;

struct Fixture {
    engine: Arc<Engine>,
    rt: tokio::runtime::Runtime,
    known: Vec<u64>,
    items: Vec<u64>,
}

fn request(user: UserId, session: Vec<u64>) -> RecommendRequest {
    RecommendRequest {
        user_id: user,
        k: 20,
        context: RequestContext {
            session_items: session,
            ..RequestContext::default()
        },
        exclude_items: Vec::new(),
        filters: Default::default(),
        explain: false,
        ranking: Default::default(),
        deadline_ms: None,
        arm: None,
    }
}

fn engine_with(cfg: EngineConfig) -> Arc<Engine> {
    let registry = FeatureRegistry::bundled().expect("defs");
    let b = Bundle::open(&bundle_dir(), &registry).expect("open bundle");
    Engine::new(b, cfg, None).expect("engine")
}

fn bench_config() -> EngineConfig {
    let mut cfg = EngineConfig::default();
    cfg.features.clock = Clock::Bundle;
    // Serving only: no event log.
    cfg.events.enabled = false;
    cfg
}

impl Fixture {
    fn new() -> Fixture {
        let registry = FeatureRegistry::bundled().expect("defs");
        let b = Bundle::open(&bundle_dir(), &registry).expect("open bundle");
        assert!(b.problems.is_empty(), "bundle problems: {:?}", b.problems);
        let known: Vec<u64> = b.batch_recs.keys().copied().collect();
        let items: Vec<u64> = b.catalog.items.iter().map(|i| i.id).collect();
        let engine = Engine::new(b, bench_config(), None).expect("engine");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        Fixture {
            engine,
            rt,
            known,
            items,
        }
    }

    /// 70 % known users, 20 % known users with a session, 10 % cold visitors with a session.
    fn mixed(&self, rng: &mut rand::rngs::StdRng) -> RecommendRequest {
        let session = |rng: &mut rand::rngs::StdRng| -> Vec<u64> {
            (0..3)
                .map(|_| self.items[rng.gen_range(0..self.items.len())])
                .collect()
        };
        let r: f64 = rng.gen();
        let user = UserId::Num(self.known[rng.gen_range(0..self.known.len())]);
        if r < 0.7 {
            request(user, Vec::new())
        } else if r < 0.9 {
            request(user, session(rng))
        } else {
            request(
                UserId::Str(format!("visitor-{}", rng.gen::<u32>())),
                session(rng),
            )
        }
    }

    fn run(&self, req: RecommendRequest) -> funnel::api::RecommendResponse {
        self.run_on(&self.engine, req)
    }

    fn run_on(
        &self,
        engine: &Arc<Engine>,
        req: RecommendRequest,
    ) -> funnel::api::RecommendResponse {
        let req = req.validate(&engine.config().server).expect("valid");
        self.rt
            .block_on(engine.recommend(req, "bench".into()))
            .expect("recommend")
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// The load tests' full pipeline (`loadtest/full-pipeline.toml`: quotas that overfill the
/// 500-candidate cap, all three rankers on every request), served in process.
fn full_pipeline_config() -> EngineConfig {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("loadtest/full-pipeline.toml");
    let mut cfg = EngineConfig::load(&path).expect("loadtest/full-pipeline.toml");
    cfg.features.clock = Clock::Bundle;
    cfg.events.enabled = false;
    cfg
}

fn distribution(f: &Fixture, engine: &Arc<Engine>, label: &str) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    for _ in 0..300 {
        f.run_on(engine, f.mixed(&mut rng)); // warm caches and the pool
    }
    let n = 3000;
    let mut wall = Vec::with_capacity(n);
    let mut stages: Vec<Vec<f64>> = (0..9).map(|_| Vec::with_capacity(n)).collect();
    let mut degraded = 0;
    let mut models = 0usize;
    for _ in 0..n {
        let mut req = f.mixed(&mut rng);
        req.explain = true;
        let t = Instant::now();
        let r = f.run_on(engine, req);
        wall.push(t.elapsed().as_secs_f64() * 1e3);
        let tm = &r.timings_ms;
        for (k, v) in [
            tm.features,
            tm.sources.get("ann").copied().unwrap_or(0.0),
            tm.sources.get("cf").copied().unwrap_or(0.0),
            tm.sources.get("content").copied().unwrap_or(0.0),
            tm.sources.get("trending").copied().unwrap_or(0.0),
            tm.merge,
            tm.item_features,
            tm.rank,
            tm.rerank,
        ]
        .into_iter()
        .enumerate()
        {
            stages[k].push(v);
        }
        if r.degradation != funnel::api::Degradation::Full {
            degraded += 1;
        }
        models += models_of(&r);
    }
    println!(
        "pipeline/mixed, {label} ({n} sequential requests, {} items): p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  max {:.3} ms  degraded {degraded}",
        f.items.len(),
        pct(&mut wall, 0.5),
        pct(&mut wall, 0.9),
        pct(&mut wall, 0.99),
        pct(&mut wall, 1.0),
    );
    let names = [
        "features",
        "ann",
        "cf",
        "content",
        "trending",
        "merge",
        "item_feat",
        "rank",
        "rerank",
    ];
    println!(
        "  {:<10} {:>8} {:>8} {:>8} {:>8}   (ms per request; sources overlap in time)",
        "stage", "p50", "p90", "p99", "max"
    );
    for (n, v) in names.iter().zip(stages.iter_mut()) {
        println!(
            "  {n:<10} {:>8.3} {:>8.3} {:>8.3} {:>8.3}",
            pct(v, 0.5),
            pct(v, 0.9),
            pct(v, 0.99),
            pct(v, 1.0)
        );
    }
    println!(
        "rankers per request (mean): {:.2}",
        models as f64 / n as f64
    );
}

fn models_of(r: &funnel::api::RecommendResponse) -> usize {
    r.explain
        .as_ref()
        .and_then(|e| e.ensemble.as_ref())
        .map_or(0, |e| {
            e.selected.iter().filter(|s| s.failed.is_none()).count()
        })
}

/// Closed-loop load: `clients` concurrent request loops for `secs` on `engine`. Returns
/// (p50 ms, p99 ms, requests/s, mean rankers per request, mean budget factor of the last
/// quarter of requests).
fn load(f: &Fixture, engine: &Arc<Engine>, clients: usize, secs: f64) -> [f64; 5] {
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    let limits = engine.config().server.clone();
    let reqs: Vec<Vec<ValidRequest>> = (0..clients)
        .map(|_| {
            (0..256)
                .map(|_| {
                    let mut r = f.mixed(&mut rng);
                    r.explain = true;
                    r.validate(&limits).expect("valid")
                })
                .collect()
        })
        .collect();
    let t0 = Instant::now();
    let stop = t0 + std::time::Duration::from_secs_f64(secs);
    let per_client: Vec<Vec<(f64, usize, f64)>> = f.rt.block_on(async {
        let tasks: Vec<_> = reqs
            .into_iter()
            .map(|rs| {
                let e = engine.clone();
                tokio::spawn(async move {
                    let mut out = Vec::new();
                    for r in rs.iter().cycle() {
                        if Instant::now() >= stop {
                            break;
                        }
                        let t = Instant::now();
                        let resp = e.recommend(r.clone(), "load".into()).await.expect("ok");
                        let factor = resp
                            .explain
                            .as_ref()
                            .and_then(|x| x.ensemble.as_ref())
                            .map_or(1.0, |x| x.budget_factor);
                        out.push((t.elapsed().as_secs_f64() * 1e3, models_of(&resp), factor));
                    }
                    out
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.push(t.await.expect("client"));
        }
        all
    });
    let elapsed = t0.elapsed().as_secs_f64();
    let all: Vec<(f64, usize, f64)> = per_client.into_iter().flatten().collect();
    let mut lat: Vec<f64> = all.iter().map(|x| x.0).collect();
    let n = all.len().max(1);
    let models = all.iter().map(|x| x.1).sum::<usize>() as f64 / n as f64;
    let tail = &all[all.len() * 3 / 4..];
    let factor = tail.iter().map(|x| x.2).sum::<f64>() / tail.len().max(1) as f64;
    [
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99),
        n as f64 / elapsed,
        models,
        factor,
    ]
}

/// The latency controller under load: the same closed-loop load without it, then with a p99
/// target below what the load produces uncontrolled.
fn controller_under_load(f: &Fixture) {
    let clients = 8;
    let secs = 8.0;
    let mut off = bench_config();
    off.ranking.controller.enabled = false;
    let e_off = engine_with(off);
    load(f, &e_off, clients, 1.0); // warm-up
    let a = load(f, &e_off, clients, secs);
    drop(e_off);
    let target = (a[1] * 0.6).max(1.0);
    let mut on = bench_config();
    on.ranking.controller.target_p99_ms = target;
    let e_on = engine_with(on);
    load(f, &e_on, clients, 1.0);
    let b = load(f, &e_on, clients, secs);
    let row = |name: &str, r: [f64; 5]| {
        println!(
            "  {name:<34} p50 {:>7.2} ms  p99 {:>7.2} ms  {:>6.0} req/s  rankers/request {:.2}  budget factor {:.3}",
            r[0], r[1], r[2], r[3], r[4]
        );
    };
    println!("controller under load ({clients} closed-loop clients, {secs} s each):");
    row("controller off", a);
    row(&format!("controller on, target p99 {target:.1} ms"), b);
}

/// What recording metrics and sampling rows for the skew monitor cost: the full pipeline with
/// both on (the defaults) and both off, interleaved round by round over the same requests so
/// that machine noise falls on both alike.
fn observability_overhead(f: &Fixture) {
    let off_cfg = || {
        let mut c = full_pipeline_config();
        c.monitor.metrics = false;
        c.monitor.enabled = false;
        c
    };
    let (on, off) = (engine_with(full_pipeline_config()), engine_with(off_cfg()));
    let reference = on
        .bundle()
        .rankers_manifest
        .as_ref()
        .is_some_and(|m| m.input_reference.is_some());
    let (mut t_on, mut t_off) = (Vec::new(), Vec::new());
    for round in 0..8u64 {
        for (engine, out) in [(&on, &mut t_on), (&off, &mut t_off)] {
            let mut rng = rand::rngs::StdRng::seed_from_u64(100 + round);
            for _ in 0..300 {
                let req = f.mixed(&mut rng);
                let t = Instant::now();
                f.run_on(engine, req);
                // The first round warms both engines.
                if round > 0 {
                    out.push(t.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
    }
    let (p50_on, p50_off) = (pct(&mut t_on, 0.5), pct(&mut t_off, 0.5));
    println!(
        "observability overhead (full pipeline, {} requests each, interleaved; skew reference in \
         the bundle: {reference}):\n  metrics + skew off p50 {p50_off:.3} ms, on p50 {p50_on:.3} ms, \
         ratio {:.3}",
        t_on.len(),
        p50_on / p50_off
    );
    let (_, rows) = on.skew().gauges();
    println!("  skew window after the run: {rows} rows");
}

fn main() {
    let f = Fixture::new();
    if std::env::var("FUNNEL_BENCH_ONLY").as_deref() == Ok("observe") {
        observability_overhead(&f);
        return;
    }
    observability_overhead(&f);
    distribution(&f, &f.engine, "default config");
    let full = engine_with(full_pipeline_config());
    distribution(&f, &full, "full pipeline (500 candidates, 3 rankers)");
    drop(full);
    controller_under_load(&f);
    let mut c = Criterion::default().sample_size(50).configure_from_args();
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    c.bench_function("pipeline/known_user", |b| {
        b.iter(|| {
            let u = f.known[rng.gen_range(0..f.known.len())];
            f.run(request(UserId::Num(u), Vec::new()))
        })
    });
    c.bench_function("pipeline/cold_with_session", |b| {
        b.iter(|| {
            let s: Vec<u64> = (0..3)
                .map(|_| f.items[rng.gen_range(0..f.items.len())])
                .collect();
            f.run(request(UserId::Str("visitor".into()), s))
        })
    });
    c.final_summary();
}
