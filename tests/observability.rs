//! What an operator sees: `/metrics` scraped after real traffic and parsed, the JSON log format,
//! and the training–serving skew monitor over a real Redis whose features were shifted on purpose.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;

use common::{build_bundle_held_out, shared_bundle, test_config, users_with_batch, TestServer};
use funnel::features::codec::{decode, encode};
use funnel::features::{Dtype, FeatureValue};

/// One sample of the text format: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus/OpenMetrics text format strictly: every line is a comment (`# HELP`,
/// `# TYPE`, `# UNIT`, `# EOF`) or `name{k="v",…} value`; every sample's family has a TYPE.
fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut typed: BTreeSet<String> = BTreeSet::new();
    let mut out = Vec::new();
    assert!(text.trim_end().ends_with("# EOF"), "no # EOF at the end");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            match parts.next() {
                Some("TYPE") => {
                    typed.insert(parts.next().expect("TYPE name").to_string());
                }
                Some("HELP") | Some("UNIT") => {}
                Some("EOF") => {}
                other => panic!("unknown comment {other:?} in {line:?}"),
            }
            continue;
        }
        assert!(!line.trim().is_empty(), "empty line in the exposition");
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("labels close");
                let mut labels = BTreeMap::new();
                for pair in body.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once("=\"").expect("label k=\"v\"");
                    labels.insert(k.to_string(), v.trim_end_matches('"').to_string());
                }
                (name.to_string(), labels)
            }
        };
        let family = typed
            .iter()
            .find(|f| {
                name == **f
                    || ["_total", "_bucket", "_sum", "_count", "_info"]
                        .iter()
                        .any(|s| name.strip_suffix(s) == Some(f.as_str()))
            })
            .unwrap_or_else(|| panic!("sample {name} has no # TYPE"));
        assert!(!family.is_empty());
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// The value of `name` with exactly these labels (others ignored when `partial`).
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

async fn scrape(s: &TestServer) -> (String, Vec<Sample>) {
    let r = reqwest::get(s.url("/metrics")).await.expect("scrape");
    assert_eq!(r.status(), 200);
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    let text = r.text().await.expect("body");
    let samples = parse_exposition(&text);
    (text, samples)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_real_traffic() {
    let s = TestServer::start(shared_bundle(), test_config(), None).await;
    let users = users_with_batch(&s, 20);
    for &u in &users {
        let (st, v) = s.recommend(json!({"user_id": u, "k": 10})).await;
        assert_eq!(st, 200, "{v}");
    }
    // A cold user, a bad request, an unknown route.
    assert_eq!(s.recommend(json!({"user_id": "nobody-x"})).await.0, 200);
    assert_eq!(s.recommend(json!({"user_id": 1, "k": 0})).await.0, 422);
    assert_eq!(
        reqwest::get(s.url("/nope")).await.expect("get").status(),
        404
    );
    let item = s.engine.bundle().catalog.items[0].id;
    let ev = json!([
        {"user_id": users[0], "item_id": item, "type": "click", "event_id": "e-1"},
        {"user_id": users[0], "item_id": item, "type": "click", "event_id": "e-1"},
        {"user_id": users[0], "item_id": 999_999_999u64, "type": "click"},
    ]);
    let (st, v) = s.events(ev).await;
    assert_eq!(st, 202, "{v}");

    let (text, m) = scrape(&s).await;
    let answered = 21.0;
    let get = |name: &str, labels: &[(&str, &str)]| {
        value(&m, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in\n{text}"))
    };
    assert_eq!(
        get(
            "funnel_http_requests_total",
            &[("route", "/v1/recommend"), ("status", "200")]
        ),
        answered
    );
    assert_eq!(
        get(
            "funnel_http_requests_total",
            &[("route", "/v1/recommend"), ("status", "422")]
        ),
        1.0
    );
    assert_eq!(
        get(
            "funnel_http_requests_total",
            &[("route", "other"), ("status", "404")]
        ),
        1.0
    );
    assert_eq!(
        get(
            "funnel_http_request_duration_seconds_count",
            &[("route", "/v1/recommend")]
        ),
        22.0
    );
    for stage in [
        "features",
        "retrieval",
        "merge",
        "fallback",
        "item_features",
        "rank",
        "rerank",
        "response",
        "total",
    ] {
        assert_eq!(
            get("funnel_stage_duration_seconds_count", &[("stage", stage)]),
            answered,
            "{stage}"
        );
        // Cumulative buckets: +Inf holds every observation.
        assert_eq!(
            get(
                "funnel_stage_duration_seconds_bucket",
                &[("stage", stage), ("le", "+Inf")]
            ),
            answered
        );
    }
    let by_level: f64 = m
        .iter()
        .filter(|x| x.name == "funnel_responses_total")
        .map(|x| x.value)
        .sum();
    assert_eq!(by_level, answered);
    assert!(get("funnel_responses_total", &[("degradation", "full")]) >= 20.0);
    assert!(get("funnel_source_candidates_count", &[("source", "ann")]) >= 20.0);
    assert!(get("funnel_source_duration_seconds_count", &[("source", "cf")]) >= 20.0);
    assert_eq!(get("funnel_ensemble_members_count", &[]), answered);
    // Known users are ranked by at least one model each.
    assert!(get("funnel_ensemble_members_sum", &[]) >= 20.0);
    let model_runs: f64 = m
        .iter()
        .filter(|x| x.name == "funnel_model_duration_seconds_count")
        .map(|x| x.value)
        .sum();
    assert!(model_runs >= 20.0, "{model_runs}");
    assert_eq!(get("funnel_events_total", &[("outcome", "accepted")]), 1.0);
    assert_eq!(get("funnel_events_total", &[("outcome", "duplicate")]), 1.0);
    assert_eq!(get("funnel_events_total", &[("outcome", "rejected")]), 1.0);
    assert!(get("funnel_event_log_sync_seconds_count", &[]) >= 1.0);
    let version = s.engine.bundle().manifest.version.clone();
    assert_eq!(get("funnel_bundle_info", &[("version", &version)]), 1.0);
    assert_eq!(
        get("funnel_breaker_state", &[("breaker", "source.ann")]),
        0.0
    );
    // No Redis, no Redis errors counted.
    assert!(value(&m, "funnel_redis_errors_total", &[("kind", "error")]).is_none());
    // The skew monitor exports every ranker input.
    let psi = m.iter().filter(|x| x.name == "funnel_skew_psi").count();
    assert_eq!(psi, funnel::ranking::input::INPUT_DIM, "{text}");

    // Scrapes count themselves (after the fact): a second scrape sees the first.
    let (_, m2) = scrape(&s).await;
    assert!(
        value(
            &m2,
            "funnel_http_requests_total",
            &[("route", "/metrics"), ("status", "200")]
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    s.stop().await;
}

/// Multiplies an f32 or i64 field of every hash matching `pattern` by `factor`; returns how many
/// keys changed.
fn scale_field(
    conn: &mut redis::Connection,
    pattern: &str,
    field: &str,
    dtype: &Dtype,
    factor: f64,
) -> usize {
    let keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query(conn).expect("KEYS");
    let mut changed = 0;
    for k in keys {
        let raw: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(&k)
            .arg(field)
            .query(conn)
            .expect("HGET");
        let Some(raw) = raw else { continue };
        let v = match decode(dtype, &raw).expect("decode") {
            FeatureValue::F32(x) => FeatureValue::F32((f64::from(x) * factor) as f32),
            FeatureValue::I64(x) => FeatureValue::I64((x as f64 * factor).round() as i64),
            other => panic!("not a number: {other:?}"),
        };
        let _: () = redis::cmd("HSET")
            .arg(&k)
            .arg(field)
            .arg(encode(&v))
            .query(conn)
            .expect("HSET");
        changed += 1;
    }
    changed
}

/// Each held-out user once, asked at the time they came back (their first held-out event), as
/// real traffic asks: returns `/readyz`'s skew.
async fn skew_after_traffic(s: &TestServer, asks: &[(u64, i64)]) -> serde_json::Value {
    for &(u, at) in asks {
        let body = json!({"user_id": u, "k": 10, "context": {"timestamp": at}});
        let (st, v) = s.recommend(body).await;
        assert_eq!(st, 200, "{v}");
    }
    let (st, ready) = s.get("/readyz").await;
    assert_eq!(st, 200);
    let top: Vec<String> = ready["skew"]["top"]
        .as_array()
        .map(|a| {
            a.iter()
                .take(4)
                .map(|f| format!("{} {:.3}", f["feature"], f["psi"].as_f64().unwrap_or(0.0)))
                .collect()
        })
        .unwrap_or_default();
    eprintln!("skew after {} requests: top PSI {top:?}", asks.len());
    ready["skew"].clone()
}

/// The bundle's held-out users that it knows, with the time of their first held-out event.
fn returning_users(s: &TestServer, n: usize) -> Vec<(u64, i64)> {
    let b = s.engine.bundle();
    let path = b.dir.join(funnel::layout::HOLDOUT);
    let mut t = funnel::table::Table::read(&path).expect("holdout.arrow");
    let users = t.take_u64("user_id").expect("user_id");
    let times = t.take_i64("ts").expect("ts");
    let mut first: BTreeMap<u64, i64> = BTreeMap::new();
    for (u, ts) in users.into_iter().zip(times) {
        let at = first.entry(u).or_insert(ts);
        *at = (*at).min(ts);
    }
    let known = |u: &u64| {
        b.features
            .as_ref()
            .is_some_and(|f| f.get(funnel::features::Entity::User, *u).is_some())
    };
    first
        .into_iter()
        .filter(|(u, _)| known(u))
        .take(n)
        .collect()
}

fn alarms(skew: &serde_json::Value) -> BTreeSet<String> {
    skew["alarms"]
        .as_array()
        .expect("alarms")
        .iter()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skew_monitor_flags_exactly_the_shifted_features() {
    let redis = common::redis::RedisServer::start();
    let url = redis.url();
    let dir = common::fresh_dir("skew");
    let bundle = {
        let (dir, url) = (dir.clone(), url.clone());
        let holdout = Some(index_builder::split::Holdout::Temporal(0.2));
        std::thread::spawn(move || build_bundle_held_out(&dir, Some(url), holdout, |_| {}))
            .join()
            .expect("build thread")
    };
    let mut cfg = test_config();
    cfg.monitor.sample_every = 1;
    cfg.monitor.min_requests = 60;

    // Nothing shifted: returning users at the time they return look like training.
    let s = TestServer::start(&bundle, cfg.clone(), Some(&url)).await;
    let asks = returning_users(&s, 150);
    assert!(asks.len() >= 100, "{} returning users", asks.len());
    let version = s.engine.bundle().manifest.version.clone();
    let skew = skew_after_traffic(&s, &asks).await;
    assert_eq!(skew["status"], "ok", "{skew:#}");
    assert!(alarms(&skew).is_empty(), "{skew:#}");
    assert!(skew["rows"].as_u64().unwrap_or(0) > 1000, "{skew:#}");
    s.stop().await;

    // Items' popularity ×50 and users' history length ×50, in Redis only.
    let mut conn = redis.conn();
    let items = scale_field(
        &mut conn,
        &format!("funnel:{version}:{{i:*"),
        "popularity",
        &Dtype::F32,
        50.0,
    );
    let users_changed = scale_field(
        &mut conn,
        &format!("funnel:{version}:{{u:*"),
        "history_len",
        &Dtype::I64,
        50.0,
    );
    assert!(
        items > 100 && users_changed > 100,
        "{items} {users_changed}"
    );

    let s = TestServer::start(&bundle, cfg, Some(&url)).await;
    let skew = skew_after_traffic(&s, &asks).await;
    assert_eq!(skew["status"], "alarm", "{skew:#}");
    let expected: BTreeSet<String> = ["log_popularity", "log_history_len"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(alarms(&skew), expected, "{skew:#}");
    // The same in /metrics.
    let (_, m) = scrape(&s).await;
    for f in &expected {
        assert_eq!(
            value(&m, "funnel_skew_alarm", &[("feature", f)]),
            Some(1.0),
            "{f}"
        );
    }
    let raised = m
        .iter()
        .filter(|x| x.name == "funnel_skew_alarm" && x.value == 1.0)
        .count();
    assert_eq!(raised, expected.len());
    s.stop().await;
}
