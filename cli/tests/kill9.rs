//! Durability of acknowledged events: the real `funnel serve` process takes event batches from
//! concurrent clients, is killed with SIGKILL mid-stream, and the log must hold every event it
//! acknowledged, once. A restarted server on the same log recovers it (torn tail cut) and
//! treats the clients' retries of acknowledged events as duplicates.

mod common;

use common::{build_bundle, free_port};

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    url: String,
}

impl Server {
    async fn start(bundle: &Path, log: &Path) -> Server {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_funnel"))
            .args(["serve", "--bundle"])
            .arg(bundle)
            .arg("--event-log")
            .arg(log)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn funnel");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = reqwest::get(format!("{url}/healthz")).await {
                if r.status().is_success() {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "server did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Server { child, url }
    }

    fn kill9(&mut self) {
        // Child::kill sends SIGKILL on Unix: no destructor, no flush, no end-of-stream marker.
        self.child.kill().expect("kill");
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn batch(client: usize, n: usize, size: usize) -> serde_json::Value {
    let events: Vec<serde_json::Value> = (0..size)
        .map(|i| {
            serde_json::json!({
                "user_id": client * 1000 + i % 50,
                "item_id": 1 + (n * size + i) % 400,
                "type": "click",
                "event_id": format!("c{client}-b{n}-e{i}"),
            })
        })
        .collect();
    serde_json::json!({ "events": events })
}

fn ids_of(body: &serde_json::Value) -> Vec<String> {
    body["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["event_id"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_kill_9() {
    let dir = tempfile::tempdir().expect("tmp");
    let bundle = tokio::task::spawn_blocking({
        let d = dir.path().to_path_buf();
        move || build_bundle(&d)
    })
    .await
    .expect("build");
    let log = dir.path().join("events");
    let mut server = Server::start(&bundle, &log).await;

    // Four clients post batches of 100 until the server dies under them.
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut clients = Vec::new();
    for c in 0..4 {
        let (url, acked) = (server.url.clone(), acked.clone());
        clients.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            for n in 0.. {
                let body = batch(c, n, 100);
                match http
                    .post(format!("{url}/v1/events"))
                    .json(&body)
                    .send()
                    .await
                {
                    Ok(r) if r.status().as_u16() == 202 => {
                        let v: serde_json::Value = r.json().await.unwrap_or_default();
                        assert_eq!(v["accepted"], 100, "{v}");
                        acked.lock().expect("lock").extend(ids_of(&body));
                    }
                    // The kill: connection refused or reset.
                    _ => break,
                }
            }
        }));
    }
    // Kill once a good number of batches are in, while requests are in flight.
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.lock().expect("lock").len() < 3_000 {
        assert!(Instant::now() < deadline, "too slow to acknowledge");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill9();
    for c in clients {
        c.await.expect("client");
    }
    let acked: Vec<String> = acked.lock().expect("lock").clone();

    // Every acknowledged event is in the log, exactly once.
    let logged = funnel::events::log::read_all(&log).expect("read log");
    let mut seen = HashSet::new();
    for e in &logged {
        let id = e.event_id.clone().expect("id");
        assert!(seen.insert(id.clone()), "{id} logged twice");
    }
    let missing: Vec<&String> = acked.iter().filter(|id| !seen.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged events lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(3)]
    );
    assert!(logged.len() >= acked.len());

    // A new server on the same log: it recovers the ids, so retrying everything that was
    // acknowledged counts nothing twice.
    let server = Server::start(&bundle, &log).await;
    let http = reqwest::Client::new();
    let (mut dups, mut accepted) = (0, 0);
    for chunk in acked.chunks(500) {
        let events: Vec<serde_json::Value> = chunk
            .iter()
            .map(|id| serde_json::json!({"user_id": 1, "item_id": 1, "type": "click", "event_id": id}))
            .collect();
        let r = http
            .post(format!("{}/v1/events", server.url))
            .json(&serde_json::json!({ "events": events }))
            .send()
            .await
            .expect("retry");
        assert_eq!(r.status().as_u16(), 202);
        let v: serde_json::Value = r.json().await.expect("json");
        dups += v["duplicates"].as_u64().unwrap_or(0);
        accepted += v["accepted"].as_u64().unwrap_or(0);
    }
    assert_eq!((dups as usize, accepted), (acked.len(), 0));
    drop(server);
    let after = funnel::events::log::read_all(&log).expect("read log");
    assert_eq!(after.len(), logged.len(), "retries were not appended");
}
