//! The log formats of the real `funnel serve` process: `--log-format json` writes one JSON object
//! a line, and with `--log-spans` every line of a request — its span and each stage's — carries
//! the request's id, so a slow request can be followed stage by stage.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{build_bundle, free_port};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_request_id_on_every_stage() {
    let dir = tempfile::tempdir().expect("tmp");
    let bundle = build_bundle(dir.path());
    let port = free_port();
    let log = dir.path().join("server.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_funnel"))
        .args(["serve", "--log-format", "json", "--log-spans", "--bundle"])
        .arg(&bundle)
        .arg("--event-log")
        .arg(dir.path().join("events"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "funnel=info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawn funnel");
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !matches!(http.get(format!("{url}/healthz")).send().await, Ok(r) if r.status() == 200) {
        assert!(Instant::now() < deadline, "server did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = http
        .post(format!("{url}/v1/recommend"))
        .header("x-request-id", "trace-me-42")
        .json(&serde_json::json!({"user_id": 1, "k": 5}))
        .send()
        .await
        .expect("recommend");
    assert_eq!(r.status(), 200);
    // Span lines are written as the spans close, before the response is sent; give the
    // writer a moment all the same.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = child.kill();
    let _ = child.wait();

    let text = std::fs::read_to_string(&log).expect("read log");
    let mut lines = 0;
    let mut stages = std::collections::BTreeSet::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(v["timestamp"].is_string() && v["level"].is_string(), "{v}");
        let in_request = v["spans"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["request_id"] == "trace-me-42"))
            || v["span"]["request_id"] == "trace-me-42";
        if in_request {
            lines += 1;
            if let Some(name) = v["span"]["name"].as_str() {
                stages.insert(name.to_string());
            }
        }
    }
    assert!(lines >= 4, "{lines} lines of the request in:\n{text}");
    for s in ["request", "features", "retrieval", "rank"] {
        assert!(
            stages.contains(s),
            "no closed {s} span in {stages:?}:\n{text}"
        );
    }
}
