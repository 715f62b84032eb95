//! Fault injection into real parts: redis-server killed and restarted, Redis slowed by a loopback
//! proxy, index files missing, a ranker that panics or hangs, every source gone. Each test checks
//! the degradation level the response reports and that no request overran its deadline by more
//! than a small tolerance.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{copy_version, item_ids, shared_bundle, test_config, users_with_batch, TestServer};
use funnel::bundle::Bundle;
use funnel::engine::Engine;
use funnel::features::FeatureRegistry;
use funnel::ranking::{Arch, RankError, Ranker};

/// The deadline (200 ms) plus slack for HTTP and a loaded 2-core test machine.
const MAX_MS: f64 = 200.0 + 150.0;

fn tmp(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("faults-{name}-{}", std::process::id()))
}

async fn expect_level(s: &TestServer, body: serde_json::Value, level: &str) -> serde_json::Value {
    let (st, v, ms) = s.timed(body).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["degradation"], level, "{v}");
    assert!(ms < MAX_MS, "request took {ms:.1} ms");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_then_restarted() {
    let mut redis = common::redis::RedisServer::start_persistent();
    let dir = tmp("kill");
    let url = redis.url();
    let bundle = common::build_bundle_pushed(&dir, &url);
    let mut cfg = test_config();
    cfg.breaker.open_ms = 300;
    let s = TestServer::start(&bundle, cfg, Some(&url)).await;
    let users = users_with_batch(&s, 10);
    for u in &users {
        expect_level(&s, json!({"user_id": u, "k": 10}), "full").await;
    }
    redis.kill();
    for round in 0..3 {
        for u in &users {
            let v = expect_level(&s, json!({"user_id": u, "k": 10}), "stale_features").await;
            assert_eq!(item_ids(&v).len(), 10, "round {round}");
        }
    }
    let (_, ready) = s.get("/readyz").await;
    assert_eq!(ready["status"], "degraded", "{ready}");
    assert!(
        ready["feature_store"]["state"]
            .as_str()
            .is_some_and(|x| x.starts_with("unreachable")),
        "{ready}"
    );
    assert_eq!(ready["breakers"]["redis"]["state"], "open", "{ready}");

    redis.restart();
    let back = Instant::now();
    loop {
        let (st, v, ms) = s.timed(json!({"user_id": users[0], "k": 10})).await;
        assert_eq!(st, 200);
        assert!(ms < MAX_MS, "request took {ms:.1} ms");
        if v["degradation"] == "full" {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "not back to full 5 s after the restart: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A loopback TCP proxy whose upstream→client direction waits `delay_ms` before each chunk.
async fn latency_proxy(upstream: u16, delay_ms: Arc<AtomicU64>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let delay = delay_ms.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                });
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let d = delay.load(Ordering::Relaxed);
                    if d > 0 {
                        tokio::time::sleep(Duration::from_millis(d)).await;
                    }
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                up.abort();
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_redis_stays_within_the_deadline() {
    let redis = common::redis::RedisServer::start();
    let dir = tmp("slow");
    let url = redis.url();
    let bundle = common::build_bundle_pushed(&dir, &url);
    let delay = Arc::new(AtomicU64::new(0));
    let port = latency_proxy(redis.port, delay.clone()).await;
    let s = TestServer::start(
        &bundle,
        test_config(),
        Some(&format!("redis://127.0.0.1:{port}/")),
    )
    .await;
    let users = users_with_batch(&s, 8);
    expect_level(&s, json!({"user_id": users[0], "k": 10}), "full").await;
    delay.store(300, Ordering::Relaxed);
    for round in 0..3 {
        for u in &users {
            let v = expect_level(&s, json!({"user_id": u, "k": 10}), "stale_features").await;
            assert_eq!(item_ids(&v).len(), 10, "round {round}");
        }
    }
    s.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_corrupt_ann_index_degrades_readiness_only() {
    for (case, break_it) in [
        (
            "missing",
            (|d: &Path| std::fs::remove_file(d.join("ann/graph.arrow")))
                as fn(&Path) -> std::io::Result<()>,
        ),
        ("corrupt", |d: &Path| {
            std::fs::write(d.join("ann/graph.arrow"), b"not an arrow file")
        }),
    ] {
        let dir = copy_version(shared_bundle(), &tmp(&format!("ann-{case}")));
        break_it(&dir).expect("break the index");
        let s = TestServer::start(&dir, test_config(), None).await;
        let (_, ready) = s.get("/readyz").await;
        assert_eq!(ready["status"], "degraded", "{case}: {ready}");
        assert!(
            ready["components"]["source.ann"]
                .as_str()
                .is_some_and(|x| x.starts_with("unavailable")),
            "{case}: {ready}"
        );
        for u in users_with_batch(&s, 5) {
            let v = expect_level(&s, json!({"user_id": u, "k": 20, "explain": true}), "full").await;
            assert_eq!(item_ids(&v).len(), 20);
            assert!(v["explain"]["source_problems"]["ann"].is_string(), "{v}");
            for it in v["items"].as_array().expect("items") {
                assert!(!it["sources"]
                    .as_array()
                    .expect("sources")
                    .contains(&json!("ann")));
            }
        }
        s.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A ranker that panics, or sleeps far past the rank slice, on every real request. It passes
/// the load-time warm-up (all-zero rows): a model that breaks only on live inputs.
struct Faulty {
    id: &'static str,
    hang: Option<Duration>,
}

impl Ranker for Faulty {
    fn id(&self) -> &str {
        self.id
    }
    fn arch(&self) -> Arch {
        Arch::Logistic
    }
    fn score(&self, rows: &[f32], n: usize) -> Result<Vec<f32>, RankError> {
        if rows.iter().all(|&x| x == 0.0) {
            return Ok(vec![0.5; n]);
        }
        match self.hang {
            Some(d) => {
                std::thread::sleep(d);
                Ok(vec![0.0; n])
            }
            None => panic!("injected ranker panic"),
        }
    }
}

async fn with_faulty_ranker(faulty: Faulty) -> TestServer {
    let registry = FeatureRegistry::bundled().expect("defs");
    let mut b = Bundle::open(shared_bundle(), &registry).expect("bundle");
    let id = faulty.id;
    b.rankers.insert(0, (id.to_string(), Box::new(faulty)));
    let mut cfg = test_config();
    cfg.ranking.model = Some(id.to_string());
    cfg.breaker.open_ms = 60_000; // stays open for the test
                                  // These tests isolate the breakers. A panic in a debug build with RUST_BACKTRACE=1 spends
                                  // hundreds of ms printing its backtrace, and the latency controller would then (rightly)
                                  // shrink the ranking budget until no model fits, before the breaker has seen 3 failures.
    cfg.ranking.controller.enabled = false;
    TestServer::serve(Engine::new(b, cfg, None).expect("engine")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_ranker_is_dropped_and_its_breaker_opens() {
    let s = with_faulty_ranker(Faulty {
        id: "boom",
        hang: None,
    })
    .await;
    let users = users_with_batch(&s, 8);
    let mut levels = Vec::new();
    for u in &users {
        let (st, v, ms) = s
            .timed(json!({"user_id": u, "k": 10, "explain": true}))
            .await;
        assert_eq!(st, 200, "{v}");
        assert!(ms < MAX_MS);
        assert_eq!(item_ids(&v).len(), 10);
        levels.push(v["degradation"].as_str().unwrap_or("").to_string());
    }
    // The first failures serve retrieval order; once the breaker opens, the next model serves.
    assert_eq!(levels[0], "simple_ranking", "{levels:?}");
    assert_eq!(
        levels.last().map(String::as_str),
        Some("full"),
        "{levels:?}"
    );
    let (_, ready) = s.get("/readyz").await;
    assert_eq!(ready["breakers"]["ranker.boom"]["state"], "open", "{ready}");
    let (_, v) = s
        .recommend(json!({"user_id": users[0], "k": 5, "explain": true}))
        .await;
    assert_ne!(v["explain"]["ranker"], "boom", "{v}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_ranker_cannot_break_the_deadline() {
    let s = with_faulty_ranker(Faulty {
        id: "stuck",
        hang: Some(Duration::from_millis(400)),
    })
    .await;
    let users = users_with_batch(&s, 6);
    for u in users.iter().take(3) {
        expect_level(&s, json!({"user_id": u, "k": 10}), "simple_ranking").await;
    }
    let (_, ready) = s.get("/readyz").await;
    assert_eq!(
        ready["breakers"]["ranker.stuck"]["state"], "open",
        "{ready}"
    );
    // Once the stuck calls drain from the rank pool, another model serves in full.
    let t = Instant::now();
    loop {
        let (st, v, ms) = s.timed(json!({"user_id": users[4], "k": 10})).await;
        assert_eq!(st, 200);
        assert!(ms < MAX_MS, "request took {ms:.1} ms");
        if v["degradation"] == "full" {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "{v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_sources_fall_back_to_batch_then_popularity() {
    let dir = copy_version(shared_bundle(), &tmp("nosources"));
    for f in [
        "ann/graph.arrow",
        "cf/neighbors.arrow",
        "content/category_items.arrow",
        "trending.arrow",
    ] {
        std::fs::remove_file(dir.join(f)).expect("remove");
    }
    let s = TestServer::start(&dir, test_config(), None).await;
    let (_, ready) = s.get("/readyz").await;
    assert_eq!(ready["status"], "degraded");
    for u in users_with_batch(&s, 5) {
        let v = expect_level(&s, json!({"user_id": u, "k": 10}), "batch").await;
        let got = item_ids(&v);
        assert_eq!(got.len(), 10);
        let batch = &s.engine.bundle().batch_recs[&u];
        assert!(got.iter().filter(|i| batch.contains(i)).count() >= 5, "{v}");
    }
    let v = expect_level(
        &s,
        json!({"user_id": "nobody-at-all", "k": 10}),
        "popularity",
    )
    .await;
    assert_eq!(item_ids(&v).len(), 10);
    s.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
