//! `GET /dashboard` in a real headless Chromium against a real server on loopback: after real
//! traffic the page's charts hold data (asserted on the DOM Chromium dumps), the "try a user"
//! form draws the stage waterfall, and a screenshot is saved as a CI artifact
//! (`<target>/artifacts/dashboard.png`). Also the page's two targets: it loads within 1 s, and
//! polling `/metrics` does not grow the server's memory.
//!
//! Needs Debian's `chromium` (`apt-get install chromium`; `.ci/run` installs it). Without it the
//! test fails rather than skips, so that CI cannot pass without having looked at the page.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use common::{shared_bundle, test_config, users_with_batch, TestServer};

/// Debian's Chromium: `/usr/bin/chromium`, else `chromium` (or `chromium-browser`) on PATH.
fn chromium() -> PathBuf {
    let fixed = Path::new("/usr/bin/chromium");
    if fixed.is_file() {
        return fixed.to_path_buf();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser"] {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "the dashboard test needs a headless Chromium and found none (no /usr/bin/chromium, no \
         chromium on PATH): install Debian's chromium with \
         `apt-get install -y --no-install-recommends chromium` (bash .ci/run does)"
    );
}

/// `<target>/artifacts`: the target directory is the parent of CARGO_TARGET_TMPDIR, which
/// follows CARGO_TARGET_DIR.
fn artifacts_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tmp.parent().unwrap_or(tmp).join("artifacts");
    std::fs::create_dir_all(&dir).expect("create artifacts dir");
    dir
}

/// Runs headless Chromium on `url` with `extra` flags; its stdout. `budget_ms` of virtual time
/// lets the page's timers (the scrapes at load, after 1 s, then every 2 s) run before the dump.
async fn run_chromium(url: &str, budget_ms: u64, extra: &[String]) -> String {
    let profile = common::fresh_dir("chromium-profile");
    std::fs::create_dir_all(&profile).expect("profile dir");
    let mut cmd = tokio::process::Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .arg(format!("--virtual-time-budget={budget_ms}"))
    .args(extra)
    .arg(url)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let child = cmd.spawn().expect("spawn chromium");
    let out = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
        .await
        .expect("chromium did not finish within 90 s")
        .expect("chromium output");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "chromium failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of attribute `attr` on the element with `id` in a serialised DOM.
fn attr(dom: &str, id: &str, attr: &str) -> Option<String> {
    let at = dom.find(&format!(" id=\"{id}\""))?;
    let start = dom[..at].rfind('<')?;
    let end = at + dom[at..].find('>')?;
    let tag = &dom[start..end];
    let key = format!(" {attr}=\"");
    let v = tag.find(&key)? + key.len();
    let len = tag[v..].find('"')?;
    Some(tag[v..v + len].to_string())
}

fn num(dom: &str, id: &str, name: &str) -> u64 {
    attr(dom, id, name)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("#{id} has no numeric {name} in the dumped DOM"))
}

/// The resident set of this process (which hosts the server), in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// Real traffic: known users (some with explain), a few cold users, a bad request and events.
async fn traffic(s: &TestServer, users: &[u64]) {
    for (i, u) in users.iter().cycle().take(54).enumerate() {
        let (st, v) = s
            .recommend(json!({"user_id": u, "k": 10, "explain": i % 3 == 0}))
            .await;
        assert_eq!(st, 200, "{v}");
    }
    for i in 0..6 {
        let (st, v) = s
            .recommend(json!({"user_id": format!("dash-cold-{i}"), "k": 10}))
            .await;
        assert_eq!(st, 200, "{v}");
    }
    let (st, _) = s.recommend(json!({"user_id": users[0], "k": 0})).await;
    assert_eq!(st, 422);
    let events: Vec<_> = users
        .iter()
        .take(5)
        .enumerate()
        .map(|(i, u)| json!({"user_id": u, "item_id": 1 + i as u64, "type": "click"}))
        .collect();
    let (st, r) = s.events(json!(events)).await;
    assert_eq!(st, 202, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_headless_chromium() {
    // Fail before the bundle build when there is no browser to run.
    chromium();
    let s = TestServer::start(shared_bundle(), test_config(), None).await;
    let users = users_with_batch(&s, 20);
    assert!(!users.is_empty(), "the test bundle has no known users");
    traffic(&s, &users).await;

    // The page: served from the binary, within 1 s on loopback, with its headers.
    let client = reqwest::Client::new();
    let t = Instant::now();
    let r = client
        .get(s.url("/dashboard"))
        .send()
        .await
        .expect("GET /dashboard");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.text().await.expect("dashboard body");
    let load = t.elapsed();
    println!(
        "GET /dashboard: {status}, {} bytes in {:.2} ms",
        body.len(),
        load.as_secs_f64() * 1e3
    );
    assert_eq!(status, 200);
    assert!(load < Duration::from_secs(1), "page took {load:?}");
    let header = |h: &str| {
        headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(header("content-type"), "text/html; charset=utf-8");
    assert_eq!(header("cache-control"), "no-cache");
    assert!(
        header("content-security-policy").starts_with("default-src 'self'"),
        "{}",
        header("content-security-policy")
    );
    // Self-contained: no URL but the SVG namespace, nothing loaded from elsewhere.
    let without_ns = body.replace("http://www.w3.org/2000/svg", "");
    for outside in ["http://", "https://", "src=", "url(", "@import"] {
        assert!(
            !without_ns.contains(outside),
            "the page refers to {outside}"
        );
    }

    // The page's data source answers, and polling it does not grow the server's memory.
    let (st, metrics) = {
        let r = client.get(s.url("/metrics")).send().await.expect("metrics");
        (r.status().as_u16(), r.text().await.expect("metrics body"))
    };
    assert_eq!(st, 200, "GET /metrics: {metrics}");
    assert!(metrics.contains("funnel_stage_duration_seconds_bucket"));
    for _ in 0..20 {
        let _ = client.get(s.url("/metrics")).send().await.expect("metrics");
    }
    let before = rss_kib();
    for _ in 0..200 {
        let r = client.get(s.url("/metrics")).send().await.expect("metrics");
        assert_eq!(r.status().as_u16(), 200);
        let _ = r.bytes().await.expect("metrics body");
    }
    let after = rss_kib();
    println!("RSS over 200 scrapes of /metrics: {before} KiB -> {after} KiB");
    assert!(
        after <= before + 8 * 1024,
        "polling /metrics grew RSS from {before} KiB to {after} KiB"
    );

    // Traffic while the browser watches, so that the page's windows hold requests.
    let stop = Arc::new(AtomicBool::new(false));
    let background = {
        let (stop, url, users) = (stop.clone(), s.url("/v1/recommend"), users.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let u = users[i % users.len()];
                let _ = client
                    .post(&url)
                    .json(&json!({"user_id": u, "k": 10}))
                    .send()
                    .await;
                i += 1;
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        })
    };

    // The charts, rendered with data, and the form driven by `?user=`.
    let user = users[0];
    let url = s.url(&format!("/dashboard?user={user}&k=10"));
    let dom = run_chromium(
        &url,
        7_000,
        &[
            "--dump-dom".to_string(),
            "--window-size=1280,1600".to_string(),
        ],
    )
    .await;
    assert!(dom.contains("id=\"chart-stage-latency\""), "{dom}");
    assert_eq!(
        attr(&dom, "status", "data-state").as_deref(),
        Some("ok"),
        "the page's scrapes failed: {}",
        attr(&dom, "status", "title").unwrap_or_default()
    );
    assert!(
        num(&dom, "status", "data-scrapes") >= 2,
        "fewer than 2 scrapes"
    );
    let stages = num(&dom, "chart-stage-latency", "data-points");
    assert!(stages >= 3, "stage latency chart has {stages} stages");
    let stage_names = attr(&dom, "chart-stage-latency", "data-stages").unwrap_or_default();
    assert!(stage_names.contains("total"), "{stage_names}");
    assert!(num(&dom, "chart-request-rate", "data-points") >= 1);
    assert!(num(&dom, "chart-latency-history", "data-points") >= 1);
    assert!(num(&dom, "chart-degradation", "data-points") >= 1);
    assert!(num(&dom, "chart-degradation", "data-total") >= 1);
    assert!(num(&dom, "chart-ensemble", "data-points") >= 1);
    assert!(
        num(&dom, "breakers", "data-count") >= 1,
        "no breaker listed"
    );
    assert!(dom.contains("id=\"skew\""), "no skew panel");
    // The form ran on load: one waterfall bar per stage, one row per item.
    assert_eq!(
        attr(&dom, "try-result", "data-state").as_deref(),
        Some("ok"),
        "try-a-user: {}",
        attr(&dom, "try-result", "title").unwrap_or_default()
    );
    let bars = num(&dom, "waterfall", "data-bars");
    assert!(bars >= 3, "waterfall has {bars} bars");
    assert_eq!(num(&dom, "items-table", "data-rows"), 10);
    println!(
        "dashboard DOM: {stages} stages ({stage_names}), {} rate points, {bars} waterfall bars, \
         {} breakers",
        num(&dom, "chart-request-rate", "data-points"),
        num(&dom, "breakers", "data-count")
    );

    // The screenshot: a CI artifact, and the README's picture.
    let png = artifacts_dir().join("dashboard.png");
    let _ = std::fs::remove_file(&png);
    // As tall as the page, so that the picture has no empty band below it.
    let shot = [
        format!("--screenshot={}", png.display()),
        "--window-size=1280,1380".to_string(),
    ];
    run_chromium(&url, 7_000, &shot).await;
    let bytes = std::fs::read(&png).expect("screenshot written");
    assert!(bytes.starts_with(b"\x89PNG"), "not a PNG");
    assert!(bytes.len() > 20_000, "screenshot is {} bytes", bytes.len());
    println!("screenshot: {} ({} bytes)", png.display(), bytes.len());

    stop.store(true, Ordering::Relaxed);
    let _ = background.await;
    s.stop().await;
}
