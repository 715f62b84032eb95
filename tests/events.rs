//! `POST /v1/events` against a real server on loopback: events move the next recommendation
//! (CF and the ANN query take the new recent items, seen items are suppressed, trending moves)
//! with the in-process store and with a real redis-server; a bad event is rejected alone; a
//! retried `event_id` counts once; what was acknowledged is in the log the builder reads.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::redis::RedisServer;
use common::{item_ids, shared_bundle, test_config, TestServer};
use serde_json::{json, Value};

/// A user id the bundle has never seen.
const NEWCOMER: u64 = 990_001;

fn sources_of(v: &Value) -> HashSet<String> {
    v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|i| i["sources"].as_array().cloned().unwrap_or_default())
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect()
}

fn per_source(v: &Value, name: &str) -> u64 {
    v["explain"]["per_source"][name].as_u64().unwrap_or(0)
}

/// Popular items of the bundle to click on: the first few of a cold user's list.
async fn some_items(s: &TestServer, n: usize) -> Vec<u64> {
    let (st, v) = s.recommend(json!({"user_id": 1, "k": 40})).await;
    assert_eq!(st, 200, "{v}");
    item_ids(&v).into_iter().take(n).collect()
}

/// Recommends with `body` until `pred` holds (or 1 s passes, which fails the test).
async fn within_a_second(
    s: &TestServer,
    body: Value,
    pred: impl Fn(&Value) -> bool,
    what: &str,
) -> Value {
    let start = Instant::now();
    loop {
        let (st, v) = s.recommend(body.clone()).await;
        assert_eq!(st, 200, "{v}");
        if pred(&v) {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{what} not reflected within 1 s: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The shared behaviour, with either store.
async fn events_move_recommendations(s: &TestServer) {
    let clicked = some_items(s, 3).await;
    assert_eq!(clicked.len(), 3);

    // Before: a newcomer has no embedding and no history, so ANN and CF have no query.
    let (_, before) = s
        .recommend(json!({"user_id": NEWCOMER, "k": 30, "explain": true}))
        .await;
    assert_eq!(per_source(&before, "ann"), 0, "{before}");
    assert_eq!(per_source(&before, "cf"), 0, "{before}");

    let events: Vec<Value> = clicked
        .iter()
        .enumerate()
        .map(|(i, id)| json!({"user_id": NEWCOMER, "item_id": id, "type": "click", "event_id": format!("nc-{i}")}))
        .collect();
    let (st, r) = s.events(json!(events)).await;
    assert_eq!(st, 202, "{r}");
    assert_eq!(r["accepted"], 3, "{r}");
    assert_eq!(r["features_updated"], true, "{r}");

    // After: the clicks are the ANN and CF query, and the clicked items are not offered again.
    let after = within_a_second(
        s,
        json!({"user_id": NEWCOMER, "k": 30, "explain": true}),
        |v| per_source(v, "ann") > 0 && per_source(v, "cf") > 0,
        "recent items in the ANN and CF queries",
    )
    .await;
    let got: HashSet<u64> = item_ids(&after).into_iter().collect();
    assert!(clicked.iter().all(|c| !got.contains(c)), "{after}");
    let srcs = sources_of(&after);
    assert!(srcs.contains("cf") || srcs.contains("ann"), "{after}");

    // An impression marks an item seen: it is suppressed from then on.
    let (_, v) = s.recommend(json!({"user_id": NEWCOMER, "k": 30})).await;
    let shown = item_ids(&v)[0];
    let (st, r) = s
        .events(json!([{"user_id": NEWCOMER, "item_id": shown, "type": "impression"}]))
        .await;
    assert_eq!((st, r["accepted"].as_u64()), (202, Some(1)), "{r}");
    within_a_second(
        s,
        json!({"user_id": NEWCOMER, "k": 30}),
        |v| !item_ids(v).contains(&shown),
        "an impression's seen suppression",
    )
    .await;

    // Trending moves: a burst of purchases by many users on the build's least trending item.
    let bundle = s.engine.bundle();
    let (hot, category) = bundle
        .catalog
        .items
        .iter()
        .enumerate()
        .filter(|(_, it)| !it.flagged && !it.categories.is_empty())
        .min_by(|a, b| {
            let t = |i: usize| bundle.trending_score.get(i).copied().unwrap_or(0.0);
            t(a.0).total_cmp(&t(b.0)).then(b.0.cmp(&a.0))
        })
        .map(|(_, it)| {
            let c = it.categories[0] as usize;
            (it.id, bundle.catalog.categories[c].clone())
        })
        .expect("an item");
    // Narrowed to the item's category so that every candidate is served (k = 100).
    let body = json!({"user_id": NEWCOMER + 1, "k": 100, "explain": true,
                      "filters": {"categories_any": [category]}});
    let from_trending = |v: &Value| {
        v["items"].as_array().into_iter().flatten().any(|i| {
            i["item_id"] == hot
                && i["sources"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|x| x == "trending"))
        })
    };
    let (_, v) = s.recommend(body.clone()).await;
    assert!(!from_trending(&v), "{hot} already trending: {v}");
    let burst: Vec<Value> = (0..200)
        .map(|u| json!({"user_id": 500_000 + u, "item_id": hot, "type": "purchase"}))
        .collect();
    let (st, r) = s.events(json!(burst)).await;
    assert_eq!((st, r["accepted"].as_u64()), (202, Some(200)), "{r}");
    let moved = within_a_second(s, body, from_trending, "a trending burst").await;
    assert_eq!(moved["degradation"], "full", "{moved}");
}

/// Sends a POST /v1/events head declaring `len` body bytes and none of them; the status line's code.
async fn status_of_declared_body(s: &TestServer, len: usize) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = s.url("").trim_start_matches("http://").to_string();
    let mut conn = tokio::net::TcpStream::connect(&host)
        .await
        .expect("connect");
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.expect("write");
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
        .await
        .expect("an answer before the body")
        .expect("read");
    let line = String::from_utf8_lossy(&buf[..n]).to_string();
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {line:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_move_the_next_recommendation_in_process() {
    let s = TestServer::start(shared_bundle(), test_config(), None).await;
    events_move_recommendations(&s).await;
    let (_, ready) = s.get("/readyz").await;
    assert_eq!(ready["events"]["stream_store"], "memory", "{ready}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_move_the_next_recommendation_with_redis() {
    let redis = RedisServer::start();
    let s = TestServer::start(shared_bundle(), test_config(), Some(&redis.url())).await;
    events_move_recommendations(&s).await;
    // The state is in Redis, where every server instance reads it.
    let mut c = redis.conn();
    let recent: Vec<u64> = redis::cmd("LRANGE")
        .arg(format!("funnel:s:{{u:{NEWCOMER}}}:recent"))
        .arg(0)
        .arg(-1)
        .query(&mut c)
        .expect("lrange");
    assert_eq!(recent.len(), 3, "{recent:?}");
    let seen: u64 = redis::cmd("ZCARD")
        .arg(format!("funnel:s:{{u:{NEWCOMER}}}:seen"))
        .query(&mut c)
        .expect("zcard");
    assert_eq!(seen, 4);
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!("funnel:s:{{u:{NEWCOMER}}}:seen"))
        .query(&mut c)
        .expect("ttl");
    assert!(ttl > 0 && ttl <= 3 * 86_400, "{ttl}");
    let (_, ready) = s.get("/readyz").await;
    assert_eq!(ready["events"]["stream_store"], "redis", "{ready}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_events_are_rejected_alone_and_retries_count_once() {
    let cfg = test_config();
    let log_dir = std::path::PathBuf::from(&cfg.events.log_dir);
    let s = TestServer::start(shared_bundle(), cfg, None).await;
    let batch = json!([
        {"user_id": 7, "item_id": 1, "type": "click", "event_id": "a"},
        {"user_id": 7, "item_id": 2, "type": "teleport", "event_id": "b"},
        {"user_id": "seven", "item_id": 3, "type": "click"},
        {"user_id": 7, "item_id": 4, "type": "like", "weight": 1e9},
        {"user_id": 7, "item_id": 5, "type": "play", "timestamp": "2024-05-01T10:00:00Z", "event_id": "c"},
        {"user_id": 7, "item_id": 6, "type": "click", "event_id": "a"},
        {"user_id": 7, "item_id": 987_654_321, "type": "click", "event_id": "d"}
    ]);
    let (st, r) = s.events(batch.clone()).await;
    assert_eq!(st, 202, "{r}");
    assert_eq!(
        (r["accepted"].as_u64(), r["duplicates"].as_u64()),
        (Some(2), Some(1)),
        "{r}"
    );
    let rejected: Vec<u64> = r["rejected"]
        .as_array()
        .expect("rejected")
        .iter()
        .map(|e| e["index"].as_u64().unwrap_or(99))
        .collect();
    assert_eq!(rejected, vec![1, 2, 3, 6], "{r}");
    assert!(r["rejected"][0]["message"]
        .as_str()
        .is_some_and(|m| m.contains("teleport")));
    // An item the catalog does not hold is refused by its index: it would only cost counters.
    assert_eq!(r["rejected"][3]["code"], "unknown_item", "{r}");
    // The client retries the whole batch: nothing is counted twice.
    let (st, r) = s.events(batch).await;
    assert_eq!(st, 202);
    assert_eq!(
        (r["accepted"].as_u64(), r["duplicates"].as_u64()),
        (Some(0), Some(3)),
        "{r}"
    );
    // Batch-level errors fail the request as a whole, with a JSON error.
    let (st, r) = s.events(json!([])).await;
    assert_eq!((st, r["code"].as_str()), (422, Some("invalid_request")));
    let too_many: Vec<Value> = (0..1001)
        .map(|i| json!({"user_id": i, "item_id": 1, "type": "click"}))
        .collect();
    let (st, _) = s.events(json!(too_many)).await;
    assert_eq!(st, 422);
    let r = reqwest::Client::new()
        .post(s.url("/v1/events"))
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 400);
    // An over-limit body is refused from its declared length, before it is read. (Streaming the
    // whole body races the server's early answer: the client can hit a closed socket mid-write.)
    assert_eq!(status_of_declared_body(&s, (1 << 20) + 1).await, 413);

    let (_, ready) = s.get("/readyz").await;
    assert_eq!(ready["events"]["appended"], 2, "{ready}");
    assert_eq!(ready["events"]["duplicates"], 4, "{ready}");
    s.stop().await;

    // The log holds each accepted event once, and the builder reads it.
    let logged = funnel::events::log::read_all(&log_dir).expect("log");
    let ids: Vec<Option<&str>> = logged.iter().map(|e| e.event_id.as_deref()).collect();
    assert_eq!(ids, vec![Some("a"), Some("c")]);
    assert_eq!(logged[1].timestamp, 1_714_557_600);
    assert_eq!(logged[1].weight, 1.5);
    let rows = index_builder::ingest::read_interactions(&log_dir).expect("builder reads");
    assert_eq!(rows.len(), 2);
}
