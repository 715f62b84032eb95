//! Admission control over real HTTP: past the in-flight limit and the queue, `/v1/recommend`
//! answers 503 `overloaded` with `Retry-After` at once; queued requests are served; health,
//! readiness and metrics are never shed.

mod common;

use std::time::Instant;

use serde_json::json;

use common::{shared_bundle, test_config, TestServer};

async fn burst(s: &TestServer, n: usize) -> Vec<(u16, Option<String>, serde_json::Value, f64)> {
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for i in 0..n {
        let (client, url) = (client.clone(), s.url("/v1/recommend"));
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = client
                .post(url)
                .json(&json!({"user_id": 1 + i % 50, "k": 20}))
                .send()
                .await
                .expect("send");
            let status = r.status().as_u16();
            let retry = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body: serde_json::Value = r.json().await.expect("JSON body");
            (status, retry, body, t.elapsed().as_secs_f64() * 1e3)
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_capacity_is_503_with_retry_after() {
    let mut cfg = test_config();
    cfg.admission.max_in_flight = 1;
    cfg.admission.max_queue = 0;
    cfg.admission.retry_after_s = 2;
    let s = TestServer::start(shared_bundle(), cfg, None).await;
    // Health, readiness and metrics probes while the burst runs: never shed.
    let probes = {
        let (client, base) = (reqwest::Client::new(), s.url(""));
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..20 {
                for path in ["/healthz", "/readyz", "/metrics"] {
                    let r = client.get(format!("{base}{path}")).send().await.unwrap();
                    statuses.push((path, r.status().as_u16()));
                }
            }
            statuses
        })
    };
    let answers = burst(&s, 60).await;
    let probes = probes.await.unwrap();
    assert!(
        probes.iter().all(|(_, st)| *st == 200),
        "probes shed: {probes:?}"
    );
    let ok = answers.iter().filter(|a| a.0 == 200).count();
    let shed: Vec<_> = answers.iter().filter(|a| a.0 == 503).collect();
    assert_eq!(ok + shed.len(), answers.len(), "only 200 or 503");
    assert!(ok >= 1, "the admitted requests are served");
    assert!(!shed.is_empty(), "60 at once past a limit of 1 sheds some");
    for (_, retry, body, _) in &shed {
        assert_eq!(retry.as_deref(), Some("2"), "{body}");
        assert_eq!(body["code"], "overloaded", "{body}");
        assert!(body["message"]
            .as_str()
            .is_some_and(|m| m.contains("retry after 2 s")));
    }
    let metrics = s.engine.render_metrics();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("funnel_admission_shed_total{reason=\"queue_full\"}"))
        .unwrap_or_else(|| panic!("no shed counter:\n{metrics}"));
    assert_eq!(
        line.rsplit(' ').next().unwrap().parse::<usize>().unwrap(),
        shed.len(),
        "{line}"
    );
    assert!(
        metrics.contains(&format!(
            "funnel_http_requests_total{{route=\"/v1/recommend\",status=\"503\"}} {}",
            shed.len()
        )),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_requests_are_served() {
    let mut cfg = test_config();
    cfg.admission.max_in_flight = 1;
    cfg.admission.max_queue = 64;
    // Long enough for 30 requests served one at a time by an unoptimised build.
    cfg.admission.queue_timeout_ms = 30_000;
    let s = TestServer::start(shared_bundle(), cfg, None).await;
    let answers = burst(&s, 30).await;
    assert!(
        answers.iter().all(|a| a.0 == 200),
        "{:?}",
        answers
            .iter()
            .filter(|a| a.0 != 200)
            .map(|a| &a.2)
            .collect::<Vec<_>>()
    );
    let metrics = s.engine.render_metrics();
    assert!(
        !metrics.contains("funnel_admission_shed_total{"),
        "nothing shed:\n{metrics}"
    );
    // The queue empties and every slot is given back.
    assert!(metrics.contains("funnel_admission_queued 0"), "{metrics}");
    assert!(
        metrics.contains("funnel_admission_in_flight 0"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_can_be_turned_off() {
    let mut cfg = test_config();
    cfg.admission.enabled = false;
    cfg.admission.max_in_flight = 1;
    cfg.admission.max_queue = 0;
    let s = TestServer::start(shared_bundle(), cfg, None).await;
    let answers = burst(&s, 20).await;
    assert!(answers.iter().all(|a| a.0 == 200));
}
