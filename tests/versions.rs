//! Bundle versions at run time, on a real server over a bundle root with two real builds: hot
//! reload (by `POST /admin/reload` and by the `CURRENT` poller) while requests run, rollback to
//! the previous version's exact lists, pins, a corrupt version refused while the old one
//! serves, and the admin token (missing, wrong, right; no token configured = no routes).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use common::{item_ids, test_config, TestServer};
use funnel::features::FeatureRegistry;
use index_builder::build::{run, BuildArgs};
use index_builder::config::BuildConfig;
use index_builder::synth::{self, SynthConfig};

const TOKEN: &str = "admin-token-for-tests-0001";

/// Publishes a build of synthetic data (`seed`) into the bundle root `root`; returns its version.
fn publish(dir: &Path, root: &Path, seed: u64) -> String {
    let data = synth::generate(&SynthConfig::new(600, 2_000, 30_000, seed));
    let files = synth::write(&data, &dir.join(format!("data-{seed}"))).expect("synth write");
    let mut cfg = BuildConfig::default();
    cfg.rankers.epochs = 4;
    cfg.als.iterations = 4;
    let out = run(BuildArgs {
        interactions: files.interactions,
        items: Some(files.items),
        out: root.to_path_buf(),
        holdout: None,
        redis: None,
        config: cfg,
        registry: FeatureRegistry::bundled().expect("feature defs"),
        quiet: true,
        seed,
    })
    .expect("build bundle");
    out.version
}

/// Points `CURRENT` at `version` the way a build publishes (write a temp file, rename).
fn set_current(root: &Path, version: &str) {
    let tmp = root.join(".CURRENT.tmp");
    std::fs::write(&tmp, format!("{version}\n")).expect("write");
    std::fs::rename(&tmp, root.join("CURRENT")).expect("rename");
}

/// Two published versions, built once for this binary: (root, older, newer).
fn two_versions() -> &'static (PathBuf, String, String) {
    static V: std::sync::OnceLock<(PathBuf, String, String)> = std::sync::OnceLock::new();
    V.get_or_init(|| {
        let dir = common::fresh_dir("versions");
        let root = dir.join("bundle");
        let a = publish(&dir, &root, 7);
        let b = publish(&dir, &root, 8);
        assert!(a < b, "versions sort by build time");
        (root, a, b)
    })
}

/// A copy of the bundle root holding `versions` (each test moves CURRENT on its own copy).
fn root_copy(versions: &[&str], current: &str) -> PathBuf {
    let (root, _, _) = two_versions();
    let to = common::fresh_dir("root").join("bundle");
    for v in versions {
        common::copy_version(&root.join(v), &to.join(v));
    }
    set_current(&to, current);
    to
}

fn cfg(poll_ms: u64, tokens: bool) -> funnel::config::EngineConfig {
    let mut c = test_config();
    c.versions.poll_ms = poll_ms;
    if tokens {
        c.auth.admin_tokens = vec![TOKEN.to_string()];
    }
    c
}

async fn admin(
    s: &TestServer,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let c = reqwest::Client::new();
    let mut r = match method {
        "GET" => c.get(s.url(path)),
        _ => c.post(s.url(path)),
    };
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.expect("send");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("JSON body"))
}

fn users(s: &TestServer) -> Vec<u64> {
    let mut u: Vec<u64> = s.engine.bundle().user_ids.clone();
    u.sort_unstable();
    u.truncate(20);
    u
}

/// Each user's list and the version that answered.
async fn lists(s: &TestServer, users: &[u64]) -> Vec<(String, Vec<u64>)> {
    let mut out = Vec::new();
    for &u in users {
        let (st, v) = s.recommend(json!({"user_id": u, "k": 10})).await;
        assert_eq!(st, 200, "{v}");
        out.push((
            v["bundle_version"].as_str().unwrap_or("").to_string(),
            item_ids(&v),
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reload_rollback_and_pin_under_traffic() {
    let (_, a, b) = two_versions();
    let root = root_copy(&[a, b], a);
    let s = TestServer::start_root(&root, cfg(0, true)).await;
    let users = users(&s);
    let on_a = lists(&s, &users).await;
    assert!(on_a.iter().all(|(v, _)| v == a));

    // Requests run throughout the changes below; every one must be answered whole by one of
    // the two versions.
    let url = s.url("/v1/recommend");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for w in 0..4u64 {
        let (url, stop, users) = (url.clone(), stop.clone(), users.clone());
        load.push(tokio::spawn(async move {
            let c = reqwest::Client::new();
            let mut seen = Vec::new();
            let mut i = w as usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let u = users[i % users.len()];
                i += 1;
                let r = c
                    .post(&url)
                    .json(&json!({"user_id": u, "k": 10}))
                    .send()
                    .await
                    .expect("send");
                let st = r.status().as_u16();
                let v: Value = r.json().await.expect("JSON");
                seen.push((
                    st,
                    v["bundle_version"].as_str().unwrap_or("").to_string(),
                    v["items"].as_array().map_or(0, |a| a.len()),
                ));
            }
            seen
        }));
    }

    set_current(&root, b);
    let (st, v) = admin(&s, "POST", "/admin/reload", Some(TOKEN), None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["result"], "swapped");
    assert_eq!(v["version"], b.as_str());
    assert_eq!(v["previous"], a.as_str());
    let on_b = lists(&s, &users).await;
    assert!(on_b.iter().all(|(v, _)| v == b), "{on_b:?}");
    assert_ne!(on_a, on_b);
    // Asked again: nothing to do.
    let (st, v) = admin(&s, "POST", "/admin/reload", Some(TOKEN), None).await;
    assert_eq!((st, v["result"].as_str()), (200, Some("unchanged")));

    // Rollback: the previous version's exact lists, pinned.
    let (st, v) = admin(&s, "POST", "/admin/rollback", Some(TOKEN), None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["version"], a.as_str());
    assert_eq!(v["pinned"], true);
    assert_eq!(
        v["load_ms"].as_f64().map(|x| x < 1_000.0),
        Some(true),
        "kept loaded: {v}"
    );
    assert_eq!(lists(&s, &users).await, on_a);
    // Nothing before the oldest version.
    let (st, v) = admin(&s, "POST", "/admin/rollback", Some(TOKEN), None).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (404, Some("version_not_found")),
        "{v}"
    );

    // Pin the newer one by name; an unknown or hostile name is not found.
    let (st, v) = admin(
        &s,
        "POST",
        "/admin/pin",
        Some(TOKEN),
        Some(json!({"version": b})),
    )
    .await;
    assert_eq!((st, v["version"].as_str()), (200, Some(b.as_str())), "{v}");
    assert_eq!(lists(&s, &users).await, on_b);
    for bad in ["nope", "../bundle", ".", ""] {
        let (st, v) = admin(
            &s,
            "POST",
            "/admin/pin",
            Some(TOKEN),
            Some(json!({"version": bad})),
        )
        .await;
        assert_eq!(
            (st, v["code"].as_str()),
            (404, Some("version_not_found")),
            "{bad}: {v}"
        );
    }
    let (st, v) = admin(&s, "POST", "/admin/pin", Some(TOKEN), Some(json!({"v": 1}))).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (422, Some("invalid_request")),
        "{v}"
    );

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut answered = 0;
    for t in load {
        for (st, version, n) in t.await.expect("load task") {
            assert_eq!(st, 200);
            assert!(version == *a || version == *b, "answered by {version:?}");
            assert_eq!(n, 10, "a whole list");
            answered += 1;
        }
    }
    assert!(answered > 20, "traffic ran during the swaps ({answered})");

    let (st, v) = admin(&s, "GET", "/admin/versions", Some(TOKEN), None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["state"]["serving"], b.as_str());
    assert_eq!(v["state"]["pinned"], b.as_str());
    assert_eq!(v["state"]["loaded"].as_array().map(|l| l.len()), Some(2));
    let published: Vec<&str> = v["published"]
        .as_array()
        .expect("published")
        .iter()
        .filter_map(|p| p["version"].as_str())
        .collect();
    assert_eq!(published, vec![a.as_str(), b.as_str()]);
    let text = reqwest::get(s.url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        text.contains(&format!("funnel_bundle_info{{version=\"{b}\"}} 1")),
        "{text}"
    );
    assert!(!text.contains(&format!("funnel_bundle_info{{version=\"{a}\"}}")));
    assert!(
        text.contains("funnel_bundle_reloads_total{result=\"swapped\"} 3"),
        "{text}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poller_follows_current_and_refuses_a_corrupt_version() {
    let (_, a, b) = two_versions();
    let root = root_copy(&[a, b], a);
    // A third version: b's files under a later name, with one artifact damaged.
    let c = format!("{b}-corrupt");
    let cdir = common::copy_version(&root.join(b), &root.join(&c));
    let mpath = cdir.join("manifest.json");
    let mut m: Value =
        serde_json::from_slice(&std::fs::read(&mpath).expect("manifest")).expect("json");
    m["version"] = json!(c);
    std::fs::write(&mpath, serde_json::to_vec(&m).expect("json")).expect("write");
    let victim = m["files"]
        .as_object()
        .expect("files")
        .keys()
        .find(|k| k.starts_with("rankers/"))
        .expect("a ranker file")
        .clone();
    let vpath = cdir.join(&victim);
    let mut bytes = std::fs::read(&vpath).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&vpath, bytes).expect("write");

    let s = TestServer::start_root(&root, cfg(200, true)).await;
    let user = users(&s)[0];
    set_current(&root, b);
    let swapped = wait_for(&s, |r| r["versions"]["serving"] == b.as_str()).await;
    assert_eq!(
        swapped["versions"]["last_change"]["action"], "watch",
        "{swapped}"
    );
    let (_, v) = s.recommend(json!({"user_id": user})).await;
    assert_eq!(v["bundle_version"], b.as_str());

    set_current(&root, &c);
    let refused = wait_for(&s, |r| r["versions"]["refused"] == 1).await;
    let last = &refused["versions"]["last_change"];
    assert_eq!(last["result"], "refused", "{refused}");
    assert!(
        last["error"].as_str().unwrap_or("").contains(&victim),
        "{last}"
    );
    assert_eq!(refused["versions"]["serving"], b.as_str());
    let (st, v) = s.recommend(json!({"user_id": user})).await;
    assert_eq!(
        (st, v["bundle_version"].as_str()),
        (200, Some(b.as_str())),
        "the old version serves"
    );
    // Asked explicitly: refused again, with the reason, and nothing changes.
    let (st, v) = admin(&s, "POST", "/admin/reload", Some(TOKEN), None).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (422, Some("version_refused")),
        "{v}"
    );
    let (_, v) = s.recommend(json!({"user_id": user})).await;
    assert_eq!(v["bundle_version"], b.as_str());
    s.stop().await;
}

/// `/readyz` once `done` holds (within 60 s).
async fn wait_for(s: &TestServer, done: impl Fn(&Value) -> bool) -> Value {
    let t = std::time::Instant::now();
    loop {
        let (_, r) = s.get("/readyz").await;
        if done(&r) {
            return r;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "timed out: {r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_needs_its_token() {
    let (_, a, b) = two_versions();
    let root = root_copy(&[a, b], b);
    // No token configured: the routes do not exist.
    let s = TestServer::start_root(&root, cfg(0, false)).await;
    for (m, p) in [
        ("GET", "/admin/versions"),
        ("POST", "/admin/reload"),
        ("POST", "/admin/rollback"),
    ] {
        let (st, v) = admin(&s, m, p, Some(TOKEN), None).await;
        assert_eq!(
            (st, v["code"].as_str()),
            (404, Some("not_found")),
            "{p}: {v}"
        );
    }
    s.stop().await;

    let s = TestServer::start_root(&root, cfg(0, true)).await;
    for (m, p) in [
        ("GET", "/admin/versions"),
        ("POST", "/admin/reload"),
        ("POST", "/admin/rollback"),
        ("POST", "/admin/pin"),
    ] {
        let (st, v) = admin(&s, m, p, None, None).await;
        assert_eq!(
            (st, v["code"].as_str()),
            (401, Some("unauthorized")),
            "{p}: {v}"
        );
        let (st, v) = admin(&s, m, p, Some("admin-token-for-tests-0002"), None).await;
        assert_eq!(
            (st, v["code"].as_str()),
            (401, Some("unauthorized")),
            "{p}: {v}"
        );
        assert!(!v.to_string().contains("0002"), "the token is not echoed");
    }
    let (st, v) = admin(&s, "POST", "/admin/rollback", Some(TOKEN), None).await;
    assert_eq!((st, v["version"].as_str()), (200, Some(a.as_str())), "{v}");
    s.stop().await;

    // A server on a version directory serves it fixed.
    let s = TestServer::start(&root.join(a), cfg(0, true), None).await;
    let (st, v) = admin(&s, "POST", "/admin/reload", Some(TOKEN), None).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (409, Some("versions_fixed")),
        "{v}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn experiment_arm_serves_its_own_version() {
    let (_, a, b) = two_versions();
    let root = root_copy(&[a, b], b);
    let mut c = cfg(0, true);
    c.versions.keep_loaded = 1;
    c.experiment = Some(funnel::config::ExperimentConfig {
        name: "versions".into(),
        salt: None,
        arms: vec![
            funnel::config::ArmConfig {
                name: "yesterday".into(),
                share: 0.5,
                shadow: false,
                bundle_version: Some(a.clone()),
                ranking: None,
                quotas: None,
                rerank: None,
            },
            funnel::config::ArmConfig {
                name: "today".into(),
                share: 0.5,
                shadow: false,
                bundle_version: None,
                ranking: None,
                quotas: None,
                rerank: None,
            },
        ],
    });
    let s = TestServer::start_root(&root, c).await;
    for u in users(&s) {
        let (st, v) = s.recommend(json!({"user_id": u})).await;
        assert_eq!(st, 200, "{v}");
        let want = match v["experiment"]["arm"].as_str() {
            Some("yesterday") => a,
            Some("today") => b,
            other => panic!("arm {other:?}"),
        };
        assert_eq!(v["bundle_version"], want.as_str(), "{v}");
    }
    // Held by the arm: loaded beside the served one although keep_loaded is 1.
    let (_, r) = s.get("/readyz").await;
    assert_eq!(
        r["versions"]["loaded"].as_array().map(|l| l.len()),
        Some(2),
        "{r}"
    );
    s.stop().await;
}
