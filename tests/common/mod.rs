//! Shared fixtures of the server tests: a real bundle built by the index-builder library from
//! synthetic data, and a real HTTP server on a loopback port.
#![allow(dead_code)] // each test binary uses its own subset

#[allow(unused_imports)] // not every test binary starts a redis-server
pub use funnel_testkit::redis;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use funnel::bundle::Bundle;
use funnel::config::{Clock, EngineConfig};
use funnel::engine::deploy::Deployment;
use funnel::engine::{connect_redis, Engine};
use funnel::features::FeatureRegistry;
use index_builder::build::{run, BuildArgs};
use index_builder::config::BuildConfig;
use index_builder::synth::{self, SynthConfig};

/// A small synthetic bundle in `dir` (optionally pushing its online features to `redis`).
pub fn build_bundle(dir: &Path, redis: Option<String>) -> PathBuf {
    build_bundle_with(dir, redis, |_| {})
}

/// [`build_bundle`] with the test's own changes to the build config.
pub fn build_bundle_with(
    dir: &Path,
    redis: Option<String>,
    edit: impl FnOnce(&mut BuildConfig),
) -> PathBuf {
    build_bundle_held_out(dir, redis, None, edit)
}

/// [`build_bundle_with`] keeping `holdout` out of the build (written to the bundle's
/// `holdout.arrow`, as `index-builder build --holdout` does).
pub fn build_bundle_held_out(
    dir: &Path,
    redis: Option<String>,
    holdout: Option<index_builder::split::Holdout>,
    edit: impl FnOnce(&mut BuildConfig),
) -> PathBuf {
    let _ = std::fs::remove_dir_all(dir);
    let data = synth::generate(&SynthConfig::new(600, 2_000, 30_000, 7));
    let files = synth::write(&data, &dir.join("data")).expect("synth write");
    let out = dir.join("bundle");
    let mut cfg = BuildConfig::default();
    cfg.rankers.epochs = 8;
    cfg.als.iterations = 6;
    edit(&mut cfg);
    run(BuildArgs {
        interactions: files.interactions,
        items: Some(files.items),
        out: out.clone(),
        holdout,
        redis,
        config: cfg,
        registry: FeatureRegistry::bundled().expect("feature defs"),
        quiet: true,
        seed: 7,
    })
    .expect("build bundle");
    out
}

/// A bundle whose online features are pushed to the Redis at `url`. Callable from async tests:
/// the builder's push runs its own runtime, so it builds on a plain thread.
pub fn build_bundle_pushed(dir: &Path, url: &str) -> PathBuf {
    let (dir, url) = (dir.to_path_buf(), url.to_string());
    std::thread::spawn(move || build_bundle(&dir, Some(url)))
        .join()
        .expect("build thread")
}

/// The bundle shared by the tests of one binary, built once.
pub fn shared_bundle() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("server-tests-{}", std::process::id()));
        build_bundle(&dir, None)
    })
}

pub fn test_config() -> EngineConfig {
    let mut cfg = EngineConfig::default();
    // Synthetic data is historical; the wall clock would make every item years old.
    cfg.features.clock = Clock::Bundle;
    cfg.server.listen = "127.0.0.1:0".into();
    // Unoptimised test builds share two cores with other tests: give ranking most of the
    // 200 ms budget so that only injected faults, not a busy machine, trip its slice.
    cfg.budget.rank_ms = 150;
    // Each server its own event log (a directory takes one writer).
    cfg.events.log_dir = fresh_dir("events").display().to_string();
    cfg
}

/// A new, empty directory under the target's temp dir, unique within this test binary.
pub fn fresh_dir(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A live server on a loopback port, stopped on drop.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The engine it started with (a reload may serve another since: see `deploy`).
    pub engine: Arc<Engine>,
    pub deploy: Arc<Deployment>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(bundle: &Path, cfg: EngineConfig, redis: Option<&str>) -> TestServer {
        let registry = FeatureRegistry::bundled().expect("feature defs");
        let b = Bundle::open(bundle, &registry).expect("open bundle");
        let store = match redis {
            Some(url) => Some(connect_redis(url, &registry, &cfg).await.expect("redis")),
            None => None,
        };
        let engine = Engine::new(b, cfg, store).expect("engine");
        Self::serve(engine).await
    }

    /// Serves the bundle root `root` as `funnel serve` does: following its `CURRENT`, with
    /// rollback and pins.
    pub async fn start_root(root: &Path, cfg: EngineConfig) -> TestServer {
        let registry = FeatureRegistry::bundled().expect("feature defs");
        let b = Bundle::open(root, &registry).expect("open bundle");
        let engine = Engine::new(b, cfg.clone(), None).expect("engine");
        let deploy = Deployment::new(engine, Some(root.to_path_buf()), Some(registry), cfg);
        Self::serve_deploy(deploy).await
    }

    /// Serves an engine built by the test (e.g. with an injected faulty ranker).
    pub async fn serve(engine: Arc<Engine>) -> TestServer {
        Self::serve_deploy(Deployment::fixed(engine)).await
    }

    pub async fn serve_deploy(deploy: Arc<Deployment>) -> TestServer {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let engine = deploy.current();
        let d = deploy.clone();
        let task = tokio::spawn(async move {
            funnel::server::serve_deployment(
                d,
                "127.0.0.1:0".parse().expect("addr"),
                move |a| {
                    let _ = bound_tx.send(a);
                },
                async {
                    let _ = stopped.await;
                },
            )
            .await
            .expect("serve");
        });
        let addr = tokio::task::spawn_blocking(move || bound_rx.recv().expect("bound"))
            .await
            .expect("join");
        TestServer {
            addr,
            engine,
            deploy,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POSTs `{"events": events}` to /v1/events; returns (status, JSON body).
    pub async fn events(&self, events: serde_json::Value) -> (u16, serde_json::Value) {
        let r = reqwest::Client::new()
            .post(self.url("/v1/events"))
            .json(&serde_json::json!({ "events": events }))
            .send()
            .await
            .expect("send");
        let status = r.status().as_u16();
        (status, r.json().await.expect("JSON body"))
    }

    /// POSTs a JSON body to /v1/recommend; returns (status, JSON body).
    pub async fn recommend(&self, body: serde_json::Value) -> (u16, serde_json::Value) {
        self.post_raw(body.to_string().into_bytes()).await
    }

    /// Like [`Self::recommend`], also returning the client-side wall time in ms.
    pub async fn timed(&self, body: serde_json::Value) -> (u16, serde_json::Value, f64) {
        let t = std::time::Instant::now();
        let (st, v) = self.recommend(body).await;
        (st, v, t.elapsed().as_secs_f64() * 1e3)
    }

    pub async fn post_raw(&self, body: Vec<u8>) -> (u16, serde_json::Value) {
        let r = reqwest::Client::new()
            .post(self.url("/v1/recommend"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("send");
        let status = r.status().as_u16();
        let v = r.json::<serde_json::Value>().await.expect("JSON body");
        (status, v)
    }

    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let r = reqwest::get(self.url(path)).await.expect("get");
        let status = r.status().as_u16();
        (status, r.json().await.expect("JSON body"))
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// The first `n` users (by id) that have batch recommendations: known, active users.
pub fn users_with_batch(s: &TestServer, n: usize) -> Vec<u64> {
    let mut u: Vec<u64> = s.engine.bundle().batch_recs.keys().copied().collect();
    u.sort_unstable();
    u.truncate(n);
    u
}

/// Item ids of a response, in order.
pub fn item_ids(v: &serde_json::Value) -> Vec<u64> {
    v["items"]
        .as_array()
        .map(|a| a.iter().filter_map(|i| i["item_id"].as_u64()).collect())
        .unwrap_or_default()
}

/// Copies a bundle's current version directory to `to` (for tests that break components).
pub fn copy_version(bundle: &Path, to: &Path) -> PathBuf {
    let src = funnel::bundle::resolve_version_dir(bundle).expect("version dir");
    fn copy(a: &Path, b: &Path) {
        std::fs::create_dir_all(b).expect("mkdir");
        for e in std::fs::read_dir(a).expect("read_dir").flatten() {
            let p = e.path();
            let q = b.join(e.file_name());
            if p.is_dir() {
                copy(&p, &q);
            } else {
                std::fs::copy(&p, &q).expect("copy");
            }
        }
    }
    let _ = std::fs::remove_dir_all(to);
    copy(&src, to);
    to.to_path_buf()
}
