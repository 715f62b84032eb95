//! The whole in-process request path (features → four sources → merge → rank → re-rank) on a
//! 200K-item synthetic bundle, embedded feature store, one ranker.
//!
//! `cargo bench --bench pipeline` builds the bundle once into `target/bench-bundle-200k/` (a few
//! minutes; reused afterwards; `FUNNEL_BENCH_BUNDLE=DIR` points at another bundle), then prints
//! the per-request latency distribution over a realistic mix of users (p50/p90/p99 of 3,000
//! sequential requests, and per-stage medians), then runs criterion per request kind.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use criterion::Criterion;
use rand::{Rng, SeedableRng};

use funnel::bundle::Bundle;
use funnel::config::{Clock, EngineConfig};
use funnel::engine::api::{RecommendRequest, RequestContext, UserId};
use funnel::engine::Engine;
use funnel::features::FeatureRegistry;
use index_builder::build::{run, BuildArgs};
use index_builder::config::BuildConfig;
use index_builder::synth::{self, SynthConfig};

const USERS: usize = 50_000;
const ITEMS: usize = 200_000;
const INTERACTIONS: usize = 1_500_000;

fn bundle_dir() -> PathBuf {
    if let Ok(d) = std::env::var("FUNNEL_BENCH_BUNDLE") {
        return PathBuf::from(d);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-bundle-200k");
    let bundle = root.join("bundle");
    if bundle.join("CURRENT").exists() {
        return bundle;
    }
    eprintln!(
        "building the 200K-item bench bundle into {} …",
        root.display()
    );
    let data = synth::generate(&SynthConfig::new(USERS, ITEMS, INTERACTIONS, 11));
    let files = synth::write(&data, &root.join("data")).expect("synth");
    drop(data);
    run(BuildArgs {
        interactions: files.interactions,
        items: Some(files.items),
        out: bundle.clone(),
        holdout: None,
        redis: None,
        config: BuildConfig::default(),
        registry: FeatureRegistry::bundled().expect("defs"),
        quiet: true,
        seed: 11,
    })
    .expect("build bench bundle");
    bundle
}

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
    }
}

impl Fixture {
    fn new() -> Fixture {
        let registry = FeatureRegistry::bundled().expect("defs");
        let b = Bundle::open(&bundle_dir(), &registry).expect("open bundle");
        assert!(b.problems.is_empty(), "bundle problems: {:?}", b.problems);
        let known: Vec<u64> = b.batch_recs.keys().copied().collect();
        let items: Vec<u64> = b.catalog.items.iter().map(|i| i.id).collect();
        let mut cfg = EngineConfig::default();
        cfg.features.clock = Clock::Bundle;
        let engine = Engine::new(b, cfg, None).expect("engine");
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

    fn run(&self, req: RecommendRequest) -> funnel::engine::api::RecommendResponse {
        self.rt
            .block_on(self.engine.recommend(req, "bench".into()))
            .expect("recommend")
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn distribution(f: &Fixture) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    for _ in 0..300 {
        f.run(f.mixed(&mut rng)); // warm caches and the pool
    }
    let n = 3000;
    let mut wall = Vec::with_capacity(n);
    let mut stages: Vec<Vec<f64>> = (0..9).map(|_| Vec::with_capacity(n)).collect();
    let mut degraded = 0;
    for _ in 0..n {
        let req = f.mixed(&mut rng);
        let t = Instant::now();
        let r = f.run(req);
        wall.push(t.elapsed().as_secs_f64() * 1e3);
        let tm = &r.timings_ms;
        for (k, v) in [
            tm.features,
            tm.sources.ann,
            tm.sources.cf,
            tm.sources.content,
            tm.sources.trending,
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
        if r.degradation != funnel::engine::api::Degradation::Full {
            degraded += 1;
        }
    }
    println!(
        "pipeline/mixed ({n} sequential requests, {} items): p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  max {:.3} ms  degraded {degraded}",
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
    let medians: Vec<String> = names
        .iter()
        .zip(stages.iter_mut())
        .map(|(n, v)| format!("{n} {:.3}", pct(v, 0.5)))
        .collect();
    println!("stage medians (ms): {}", medians.join("  "));
}

fn main() {
    let f = Fixture::new();
    distribution(&f);
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
