//! Event ingestion throughput over real HTTP with Redis: the real server (axum on loopback, the
//! event log with fsync = always, streaming features in a throwaway redis-server) takes
//! `POST /v1/events` batches from concurrent clients for a fixed time; then every event is
//! counted back — in the log (each acknowledged event_id exactly once) and in Redis (the
//! trending counters' total weight equals the acknowledged weight).
//!
//! `cargo bench --bench ingest [-- --secs 10 --clients 8 --batch 500]`. Client and server share
//! the machine's cores, as k6 would; request bodies are serialised before the clock starts.

use funnel_testkit::redis as redis_server;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use funnel::bundle::Bundle;
use funnel::config::{Clock, EngineConfig};
use funnel::engine::{connect_redis, Engine};
use funnel::features::FeatureRegistry;
use index_builder::build::{run, BuildArgs};
use index_builder::config::BuildConfig;
use index_builder::synth::{self, SynthConfig};

const USERS: u64 = 100_000;
const ITEMS: u64 = 10_000;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn bundle_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-ingest-bundle");
    let bundle = root.join("bundle");
    if bundle.join("CURRENT").exists() {
        return bundle;
    }
    let data = synth::generate(&SynthConfig::new(5_000, ITEMS as usize, 100_000, 3));
    let files = synth::write(&data, &root.join("data")).expect("synth");
    let mut cfg = BuildConfig::default();
    cfg.rankers.epochs = 2;
    run(BuildArgs {
        interactions: files.interactions,
        items: Some(files.items),
        out: bundle.clone(),
        holdout: None,
        redis: None,
        config: cfg,
        registry: FeatureRegistry::bundled().expect("defs"),
        quiet: true,
        seed: 3,
    })
    .expect("build bench bundle");
    bundle
}

/// A pre-serialised batch, its event count and its total weight (clicks weigh 1).
struct Body {
    bytes: Vec<u8>,
    events: u64,
    clicks: u64,
}

fn bodies(client: u64, count: usize, batch: usize) -> Vec<Body> {
    let mut rng: u64 = 0x9E37_79B9_7F4A_7C15 ^ client;
    let mut next = move || {
        // xorshift: deterministic, cheap, good enough for ids.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    (0..count)
        .map(|b| {
            let events: Vec<serde_json::Value> = (0..batch)
                .map(|i| {
                    // Zipf-ish: half the traffic on the first 5% of users and items.
                    let r = next();
                    let user = if r % 2 == 0 {
                        r % (USERS / 20)
                    } else {
                        r % USERS
                    };
                    let r = next();
                    let item = 1 + if r % 2 == 0 {
                        r % (ITEMS / 20)
                    } else {
                        r % ITEMS
                    };
                    serde_json::json!({
                        "user_id": user,
                        "item_id": item,
                        "type": if i % 4 == 0 { "impression" } else { "click" },
                        "event_id": format!("c{client}-b{b}-{i}"),
                    })
                })
                .collect();
            Body {
                bytes: serde_json::to_vec(&serde_json::json!({ "events": events })).expect("json"),
                events: batch as u64,
                clicks: (0..batch).filter(|i| i % 4 != 0).count() as u64,
            }
        })
        .collect()
}

fn main() {
    let secs = arg("--secs", 10);
    let clients = arg("--clients", 8);
    let batch = arg("--batch", 500) as usize;
    let bundle = bundle_dir();
    let redis = redis_server::RedisServer::start();
    let log_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-ingest-log");
    let _ = std::fs::remove_dir_all(&log_dir);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // Enough bodies that no client repeats one (a repeat would be a duplicate, not new work).
    let per_client = (60_000 * secs as usize / batch / clients as usize).max(50);
    let all: Vec<Vec<Body>> = (0..clients).map(|c| bodies(c, per_client, batch)).collect();

    rt.block_on(async move {
        let registry = FeatureRegistry::bundled().expect("defs");
        let mut cfg = EngineConfig::default();
        cfg.features.clock = Clock::Bundle;
        cfg.events.log_dir = log_dir.display().to_string();
        let store = connect_redis(&redis.url(), &registry, &cfg)
            .await
            .expect("redis");
        let b = Bundle::open(&bundle, &registry).expect("bundle");
        let engine = Engine::new(b, cfg, Some(store)).expect("engine");
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let e2 = engine.clone();
        let server = tokio::spawn(async move {
            funnel::server::serve(
                e2,
                "127.0.0.1:0".parse().expect("addr"),
                move |a| {
                    let _ = tx.send(a);
                },
                async {
                    let _ = stop_rx.await;
                },
            )
            .await
            .expect("serve")
        });
        let addr = tokio::task::spawn_blocking(move || rx.recv().expect("bound"))
            .await
            .expect("join");
        let url = format!("http://{addr}/v1/events");

        let acked = Arc::new(AtomicU64::new(0));
        let acked_weight = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let latencies = Arc::new(std::sync::Mutex::new(Vec::<f64>::new()));
        let start = Instant::now();
        let until = start + Duration::from_secs(secs);
        let mut tasks = Vec::new();
        for bodies in all {
            let (url, acked, w, failed, lat) = (
                url.clone(),
                acked.clone(),
                acked_weight.clone(),
                failed.clone(),
                latencies.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let http = reqwest::Client::new();
                for body in bodies {
                    if Instant::now() >= until {
                        break;
                    }
                    let t = Instant::now();
                    let r = http
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body.bytes)
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status().as_u16() == 202 => {
                            let v: serde_json::Value = r.json().await.unwrap_or_default();
                            let n = v["accepted"].as_u64().unwrap_or(0);
                            assert_eq!(n, body.events, "{v}");
                            assert_eq!(v["features_updated"], true, "{v}");
                            acked.fetch_add(n, Ordering::Relaxed);
                            w.fetch_add(body.clicks, Ordering::Relaxed);
                            lat.lock()
                                .expect("lock")
                                .push(t.elapsed().as_secs_f64() * 1e3);
                        }
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
        for t in tasks {
            t.await.expect("client");
        }
        let elapsed = start.elapsed().as_secs_f64();
        let acked = acked.load(Ordering::Relaxed);
        let _ = stop_tx.send(());
        let _ = server.await;
        drop(engine);
        // Let the writer thread close the log.
        tokio::time::sleep(Duration::from_millis(200)).await;

        let logged = funnel::events::log::read_all(&log_dir).expect("log");
        let distinct: std::collections::HashSet<&str> = logged
            .iter()
            .filter_map(|e| e.event_id.as_deref())
            .collect();
        let mut c = redis.conn();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("funnel:s:{trending}:*")
            .query(&mut c)
            .expect("keys");
        let mut trending_total = 0.0;
        for k in keys {
            let v: Vec<(String, f64)> = redis::cmd("ZRANGE")
                .arg(&k)
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .query(&mut c)
                .expect("zrange");
            trending_total += v.iter().map(|(_, s)| s).sum::<f64>();
        }
        let mut lat = latencies.lock().expect("lock").clone();
        lat.sort_by(f64::total_cmp);
        let q = |p: f64| lat.get(((lat.len() as f64 - 1.0) * p) as usize).copied().unwrap_or(0.0);
        println!(
            "ingest: {clients} clients × batches of {batch} for {elapsed:.1} s, fsync=always, redis"
        );
        println!(
            "  acknowledged {acked} events = {:.0} events/s ({} failed requests)",
            acked as f64 / elapsed,
            failed.load(Ordering::Relaxed)
        );
        println!(
            "  request latency ms: p50 {:.1}  p90 {:.1}  p99 {:.1}",
            q(0.5),
            q(0.9),
            q(0.99)
        );
        println!(
            "  counted back: log {} events ({} distinct ids), redis trending weight {:.0} (expected {:.0})",
            logged.len(),
            distinct.len(),
            trending_total,
            acked_weight.load(Ordering::Relaxed) as f64
        );
        let lost = acked as i64 - distinct.len() as i64;
        assert_eq!(logged.len(), distinct.len(), "an event was logged twice");
        assert!(lost <= 0, "{lost} acknowledged events missing from the log");
        assert!(
            (trending_total - acked_weight.load(Ordering::Relaxed) as f64).abs() < 0.5,
            "redis counters disagree with what was acknowledged"
        );
        println!("  no event lost: every acknowledged event is in the log once and in redis");
    });
}
