//! The ranker ensemble over HTTP: per-request selection under the remaining time, combination
//! strategies and confidence in the response, a member that panics, and the latency controller.
//! Real bundle, real candle models (wrapped to make their cost controllable), real server.

mod common;

use std::time::Duration;

use serde_json::json;

use common::{item_ids, shared_bundle, test_config, users_with_batch as users, TestServer};
use funnel::bundle::Bundle;
use funnel::config::EngineConfig;
use funnel::engine::Engine;
use funnel::features::FeatureRegistry;
use funnel::ranking::ensemble::{EnsembleManifest, SegmentStats};
use funnel::ranking::{Arch, RankError, Ranker};

/// A real model that also sleeps `extra` per call (a heavier model, as the cost model sees it).
struct Slow {
    inner: Box<dyn Ranker>,
    extra: Duration,
}

impl Ranker for Slow {
    fn id(&self) -> &str {
        self.inner.id()
    }
    fn arch(&self) -> Arch {
        self.inner.arch()
    }
    fn score(&self, rows: &[f32], n: usize) -> Result<Vec<f32>, RankError> {
        std::thread::sleep(self.extra);
        self.inner.score(rows, n)
    }
}

/// Wraps every model of `b` in [`Slow`] with `ms` of extra time per call.
fn slow_down(b: &mut Bundle, ms: u64) {
    b.rankers = std::mem::take(&mut b.rankers)
        .into_iter()
        .map(|(id, r)| {
            let slow: Box<dyn Ranker> = Box::new(Slow {
                inner: r,
                extra: Duration::from_millis(ms),
            });
            (id, slow)
        })
        .collect();
}

/// Panics on live inputs; passes the load-time warm-up (all-zero rows).
struct Boom;

const BOOM: &str = "injected ranker panic";

/// Keeps the injected panics off stderr: with RUST_BACKTRACE set, symbolising each backtrace
/// in a debug build takes longer than the rank slice on a busy machine (a real model's panic
/// is rare; these are on purpose). Every other panic goes to the default hook.
fn quiet_injected_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<&str>() != Some(&BOOM) {
                default(info);
            }
        }));
    });
}

impl Ranker for Boom {
    fn id(&self) -> &str {
        "boom"
    }
    fn arch(&self) -> Arch {
        Arch::Dcn
    }
    fn score(&self, rows: &[f32], n: usize) -> Result<Vec<f32>, RankError> {
        if rows.iter().all(|&x| x == 0.0) {
            return Ok(vec![0.5; n]);
        }
        std::panic::panic_any(BOOM);
    }
}

/// An estimator section in which every model is equally good and pairwise correlation is 0.5,
/// with a strong diversity weight: the best subset is always the largest one that fits.
fn flat_ensemble(ids: &[String]) -> EnsembleManifest {
    let n = ids.len();
    let corr: Vec<Vec<f64>> = (0..n)
        .map(|i| (0..n).map(|j| if i == j { 1.0 } else { 0.5 }).collect())
        .collect();
    EnsembleManifest {
        models: ids.to_vec(),
        lambda: 1.0,
        segments: vec![SegmentStats {
            segment: None,
            name: "all".into(),
            examples: 1,
            quality: vec![Some(0.5); n],
            correlation: corr,
        }],
        ..EnsembleManifest::default()
    }
}

fn open_bundle() -> Bundle {
    let registry = FeatureRegistry::bundled().expect("defs");
    Bundle::open(shared_bundle(), &registry).expect("bundle")
}

fn flatten(b: &mut Bundle) {
    let ids: Vec<String> = b.rankers.iter().map(|(id, _)| id.clone()).collect();
    if let Some(m) = b.rankers_manifest.as_mut() {
        m.ensemble = Some(flat_ensemble(&ids));
    }
}

fn cfg_two_workers() -> EngineConfig {
    let mut cfg = test_config();
    cfg.server.cpu_threads = 2;
    cfg.ranking.controller.enabled = false;
    cfg
}

fn selected(v: &serde_json::Value) -> Vec<String> {
    v["explain"]["ensemble"]["selected"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["model_id"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensemble_explains_itself_and_strategies_are_selectable() {
    let s = TestServer::start(shared_bundle(), test_config(), None).await;
    let u = users(&s, 3);
    let n_models = s
        .engine
        .bundle()
        .rankers_manifest
        .as_ref()
        .map_or(0, |m| m.rankers.len());
    assert!(n_models >= 3, "the test bundle trains every architecture");
    for strategy in ["mean", "weighted", "rank_avg", "borda", "stacking"] {
        let (st, v) = s
            .recommend(json!({"user_id": u[0], "k": 10, "explain": true,
                              "ranking": {"strategy": strategy}}))
            .await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["degradation"], "full", "{v}");
        let ens = &v["explain"]["ensemble"];
        let sel = selected(&v);
        // Stacking has a meta-learner for every subset of two or more of the bundle's models;
        // one model alone is scored as is (reported as weighted).
        if sel.len() > 1 || strategy != "stacking" {
            assert_eq!(ens["strategy"], strategy, "{ens}");
        }
        assert!(!sel.is_empty(), "{ens}");
        assert!(ens["budget_ms"].as_f64().unwrap() > 0.0);
        assert_eq!(ens["exhaustive"], true);
        let listed = sel.len() + ens["skipped"].as_array().map_or(0, Vec::len);
        assert_eq!(
            listed, n_models,
            "every model is selected or skipped: {ens}"
        );
        for it in v["items"].as_array().unwrap() {
            let c = it["confidence"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&c), "{it}");
            if it["sources"]
                .as_array()
                .is_some_and(|s| !s.iter().any(|x| x == "popularity" || x == "batch"))
            {
                let ms = it["model_scores"].as_object().expect("model_scores");
                assert_eq!(ms.len(), sel.len(), "{it}");
            }
        }
        assert_eq!(item_ids(&v).len(), 10);
    }
    // Restricting the models and the size per request.
    let one = s
        .engine
        .bundle()
        .rankers_manifest
        .as_ref()
        .expect("manifest")
        .rankers[0]
        .id
        .clone();
    let (_, v) = s
        .recommend(json!({"user_id": u[1], "k": 5, "explain": true,
                          "ranking": {"models": [one], "max_models": 1}}))
        .await;
    assert_eq!(selected(&v), vec![one.clone()], "{v}");
    assert!(v["items"][0]["confidence"].as_f64().is_some());
    // A fixed ensemble: every model runs (the budget is ample), whatever the estimator thinks.
    let (st, v) = s
        .recommend(json!({"user_id": u[1], "k": 5, "explain": true,
                          "ranking": {"selection": "all"}}))
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(selected(&v).len(), n_models.min(3), "{v}");
    assert_eq!(v["degradation"], "full", "{v}");
    // Without explain: confidence stays, model scores and explain go.
    let (_, v) = s.recommend(json!({"user_id": u[2], "k": 5})).await;
    assert!(v["items"][0]["confidence"].is_number(), "{v}");
    assert!(v["items"][0].get("model_scores").is_none());
    // Bad overrides are 422s that name the field.
    for bad in [
        json!({"user_id": 1, "ranking": {"strategy": "vote"}}),
        json!({"user_id": 1, "ranking": {"max_models": 0}}),
        json!({"user_id": 1, "ranking": {"models": []}}),
        json!({"user_id": 1, "ranking": {"speed": 1}}),
        json!({"user_id": 1, "ranking": {"selection": "some"}}),
        json!({"user_id": 1, "deadline_ms": 0}),
    ] {
        let (st, v) = s.recommend(bad.clone()).await;
        assert_eq!(st, 422, "{bad} -> {v}");
        assert_eq!(v["code"], "invalid_request");
    }
    let (_, ready) = s.get("/readyz").await;
    let models = ready["ranking"]["models"]
        .as_object()
        .expect("ranking.models");
    assert_eq!(models.len(), n_models, "{ready}");
    for m in models.values() {
        assert!(m["cost_ms_at_500"].as_f64().unwrap() > 0.0, "{m}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shrinking_deadline_selects_fewer_models_and_is_kept() {
    let mut b = open_bundle();
    flatten(&mut b);
    // Each model costs ~25 ms more than it computes: five on two workers predict ~75 ms.
    slow_down(&mut b, 25);
    let n_models = b.rankers.len();
    assert!(n_models >= 5, "the builder trains five or more members");
    let mut cfg = cfg_two_workers();
    cfg.ranking.max_models = n_models;
    let s = TestServer::serve(Engine::new(b, cfg, None).expect("engine")).await;
    let u = users(&s, 1)[0];
    let mut counts = Vec::new();
    for deadline in [200u64, 90, 40, 5] {
        let (st, v, wall) = s
            .timed(json!({"user_id": u, "k": 10, "explain": true, "deadline_ms": deadline}))
            .await;
        assert_eq!(st, 200, "{v}");
        let total = v["timings_ms"]["total"].as_f64().unwrap();
        // The server keeps the deadline (the reserve covers re-rank and the response); the
        // client's wall time adds HTTP on a loaded test machine.
        assert!(
            total <= deadline as f64 + 8.0,
            "{deadline} ms deadline took {total} ms: {v}"
        );
        assert!(wall < deadline as f64 + 150.0, "{wall}");
        let ens = &v["explain"]["ensemble"];
        let n = selected(&v).len();
        if n == 0 {
            assert_eq!(v["degradation"], "simple_ranking", "{v}");
            assert!(
                ens["skipped"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|s| s["reason"] == "budget"),
                "{ens}"
            );
        } else {
            let predicted = ens["predicted_ms"].as_f64().unwrap();
            assert!(
                predicted <= ens["budget_ms"].as_f64().unwrap() + 1e-6,
                "{ens}"
            );
        }
        counts.push(n);
    }
    assert_eq!(
        counts[0], n_models,
        "a roomy deadline runs them all: {counts:?}"
    );
    assert!(counts.windows(2).all(|w| w[1] <= w[0]), "{counts:?}");
    assert_eq!(counts[3], 0, "nothing fits 5 ms: {counts:?}");
    assert!(counts[2] < counts[0], "{counts:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_member_is_dropped_and_its_breaker_opens() {
    quiet_injected_panics();
    let mut b = open_bundle();
    // Boom joins with the first model's spec under its own id.
    if let Some(m) = b.rankers_manifest.as_mut() {
        let mut spec = m.rankers[0].clone();
        spec.id = "boom".into();
        spec.arch = Arch::Dcn;
        m.rankers.push(spec);
    }
    b.rankers.push(("boom".into(), Box::new(Boom)));
    flatten(&mut b);
    let mut cfg = cfg_two_workers();
    // Every member fits (the flat ensemble always prefers the largest subset).
    cfg.ranking.max_models = b.rankers.len();
    cfg.breaker.open_ms = 60_000;
    let s = TestServer::serve(Engine::new(b, cfg, None).expect("engine")).await;
    let u = users(&s, 6);
    let mut boom_states = Vec::new();
    for user in &u {
        let (st, v) = s
            .recommend(json!({"user_id": user, "k": 10, "explain": true}))
            .await;
        assert_eq!(st, 200, "{v}");
        // The other members carry the request: no degradation.
        assert_eq!(v["degradation"], "full", "{v}");
        let ens = &v["explain"]["ensemble"];
        let in_sel = ens["selected"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["model_id"] == "boom")
            .map(|m| m["failed"].as_str().unwrap_or("ok").to_string());
        let in_skip = ens["skipped"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["model_id"] == "boom")
            .map(|m| m["reason"].as_str().unwrap_or("").to_string());
        boom_states.push(in_sel.or(in_skip).unwrap_or_default());
        for it in v["items"].as_array().unwrap() {
            if let Some(ms) = it["model_scores"].as_object() {
                assert!(!ms.contains_key("boom"), "{it}");
            }
        }
        assert!(!v["explain"]["ranker"].as_str().unwrap().contains("boom"));
    }
    // Three failures (the breaker's threshold), then skipped as unhealthy.
    assert_eq!(
        &boom_states[..3],
        ["panicked", "panicked", "panicked"],
        "{boom_states:?}"
    );
    assert!(
        boom_states[3..].iter().all(|s| s == "unhealthy"),
        "{boom_states:?}"
    );
    let (_, ready) = s.get("/readyz").await;
    assert_eq!(ready["breakers"]["ranker.boom"]["state"], "open", "{ready}");
    assert_eq!(ready["breakers"]["ranker.boom"]["failures"], 3, "{ready}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_latency_controller_shrinks_the_budget_when_p99_is_over_target() {
    let mut b = open_bundle();
    flatten(&mut b);
    slow_down(&mut b, 15);
    let mut cfg = cfg_two_workers();
    cfg.ranking.controller.enabled = true;
    // A p99 target no request can meet: the controller must cut the budget until no model fits.
    cfg.ranking.controller.target_p99_ms = 1.0;
    cfg.ranking.controller.window = 10;
    cfg.ranking.controller.update_ms = 1;
    let s = TestServer::serve(Engine::new(b, cfg, None).expect("engine")).await;
    let u = users(&s, 1)[0];
    let mut first = None;
    // The lowest factor and the fewest models seen: once no model fits, requests get fast
    // enough (well under a millisecond) that the controller may recover a step, so the last
    // request alone says little.
    let (mut f_min, mut n_min) = (f64::MAX, usize::MAX);
    for _ in 0..30 {
        let (st, v) = s
            .recommend(json!({"user_id": u, "k": 10, "explain": true}))
            .await;
        assert_eq!(st, 200);
        let n = selected(&v).len();
        let f = v["explain"]["ensemble"]["budget_factor"].as_f64().unwrap();
        first.get_or_insert((n, f));
        f_min = f_min.min(f);
        n_min = n_min.min(n);
    }
    let (n0, f0) = first.unwrap();
    assert_eq!(f0, 1.0);
    assert!(n0 >= 2, "{n0}");
    assert!(f_min < 0.1, "factor {f_min}");
    assert!(n_min < n0, "{n0} -> {n_min}");
    let (_, ready) = s.get("/readyz").await;
    assert!(ready["ranking"]["controller_adjustments"].as_u64().unwrap() > 0);
    s.stop().await;
}
