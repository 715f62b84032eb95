//! The HTTP surface end to end: a real bundle, a real server on loopback, the embedded store and a
//! real redis-server on an ephemeral port.

mod common;

use std::collections::{HashMap, HashSet};

use serde_json::json;

use common::{item_ids, shared_bundle, test_config, TestServer};
use funnel::features::online::UserFeatures;
use funnel::features::Entity;

/// Users with online features (history), in id order.
fn known_users(s: &TestServer, n: usize) -> Vec<u64> {
    let mut ids = s.engine.bundle().user_ids.clone();
    ids.sort_unstable();
    ids.into_iter()
        .filter(|u| user_features(s, *u).is_some_and(|f| f.history_len > 0))
        .take(n)
        .collect()
}

fn user_features(s: &TestServer, u: u64) -> Option<UserFeatures> {
    s.engine
        .bundle()
        .features
        .as_ref()
        .and_then(|f| f.get(Entity::User, u))
        .map(UserFeatures::from_row)
}

fn catalog_item(s: &TestServer, id: u64) -> funnel::catalog::Item {
    let c = &s.engine.bundle().catalog;
    c.get(c.idx(id).expect("known item")).expect("item").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_funnel_with_embedded_store() {
    let s = TestServer::start(shared_bundle(), test_config(), None).await;
    let (st, ready) = s.get("/readyz").await;
    assert_eq!(st, 200);
    assert_eq!(ready["feature_store"]["kind"], "embedded");
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(s.get("/healthz").await.0, 200);

    let mut multi_source_seen = 0;
    for u in known_users(&s, 25) {
        let (st, v) = s
            .recommend(json!({"user_id": u.to_string(), "k": 20, "explain": true}))
            .await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["degradation"], "full", "{v}");
        assert!(v["request_id"].as_str().is_some_and(|r| !r.is_empty()));
        assert_eq!(
            v["bundle_version"],
            s.engine.bundle().manifest.version.as_str()
        );
        let items = item_ids(&v);
        assert_eq!(items.len(), 20, "{v}");
        assert_eq!(items.iter().collect::<HashSet<_>>().len(), 20, "unique");
        // Every stage ran and reported its time.
        let t = &v["timings_ms"];
        for key in ["features", "merge", "rank", "rerank", "total"] {
            assert!(t[key].as_f64().is_some(), "timing {key} missing: {t}");
        }
        for src in ["ann", "cf", "content", "trending"] {
            assert!(
                t["sources"][src].as_f64().is_some_and(|x| x > 0.0),
                "{src}: {t}"
            );
        }
        assert!(v["explain"]["ranker"].as_str().is_some(), "{v}");
        // Never a seen or flagged item.
        let seen: HashSet<u64> = user_features(&s, u)
            .map(|f| f.recent_items.into_iter().collect())
            .unwrap_or_default();
        for it in v["items"].as_array().expect("items") {
            let id = it["item_id"].as_u64().expect("id");
            assert!(!seen.contains(&id), "user {u} was served seen item {id}");
            assert!(!catalog_item(&s, id).flagged, "flagged item {id} served");
            let sources: Vec<&str> = it["sources"]
                .as_array()
                .expect("sources")
                .iter()
                .filter_map(|x| x.as_str())
                .collect();
            assert!(!sources.is_empty());
            let reasons: Vec<&str> = it["reasons"]
                .as_array()
                .expect("explain adds reasons")
                .iter()
                .filter_map(|x| x.as_str())
                .collect();
            if sources.len() >= 2 {
                multi_source_seen += 1;
                assert!(reasons.contains(&"multi_source"));
            }
        }
        // The category cap holds in the top 10 (the synthetic catalog has 20 categories).
        let mut counts: HashMap<u32, usize> = HashMap::new();
        for id in items.iter().take(10) {
            for c in catalog_item(&s, *id).categories {
                *counts.entry(c).or_default() += 1;
            }
        }
        assert!(counts.values().all(|&n| n <= 3), "user {u}: {counts:?}");
    }
    assert!(
        multi_source_seen > 0,
        "no item found by two sources in 25 users"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusions_filters_and_cold_start() {
    let s = TestServer::start(shared_bundle(), test_config(), None).await;
    let u = known_users(&s, 1)[0];
    let (_, first) = s.recommend(json!({"user_id": u, "k": 10})).await;
    let excluded = item_ids(&first);
    let (st, v) = s
        .recommend(json!({"user_id": u, "k": 10, "exclude_items": excluded}))
        .await;
    assert_eq!(st, 200);
    let again = item_ids(&v);
    assert_eq!(again.len(), 10);
    assert!(
        again.iter().all(|i| !excluded.contains(i)),
        "excluded item served"
    );

    // Filters: only one category; k of them when the catalog has k.
    let b = s.engine.bundle();
    let cat = b.catalog.categories[3].clone();
    let cat_idx = b.catalog.category_idx(&cat).expect("category");
    let in_cat = b
        .catalog
        .items
        .iter()
        .filter(|i| i.categories.contains(&cat_idx) && !i.flagged)
        .count();
    assert!(in_cat > 60, "fixture: category {cat} has {in_cat} items");
    let (st, v) = s
        .recommend(json!({"user_id": u, "k": 50, "filters": {"categories_any": [cat]}}))
        .await;
    assert_eq!(st, 200, "{v}");
    let got = item_ids(&v);
    assert_eq!(got.len(), 50, "{v}");
    assert!(got
        .iter()
        .all(|i| catalog_item(&s, *i).categories.contains(&cat_idx)));

    // A very narrow filter: a category, minus a creator, published after a date.
    let cutoff = b.manifest.info["cutoff"].as_i64().expect("cutoff");
    let after = cutoff - 60 * 86_400;
    let creator = catalog_item(&s, got[0]).creator_id;
    let (st, v) = s
        .recommend(json!({"user_id": u, "k": 100, "filters": {
            "categories_any": [cat], "creators_none": [creator], "published_after": after
        }}))
        .await;
    assert_eq!(st, 200, "{v}");
    let allowed = b
        .catalog
        .items
        .iter()
        .filter(|i| {
            i.categories.contains(&cat_idx)
                && i.creator_id != creator
                && i.published_at > after
                && !i.flagged
        })
        .count();
    let got = item_ids(&v);
    for id in &got {
        let it = catalog_item(&s, *id);
        assert!(it.categories.contains(&cat_idx) && it.creator_id != creator);
        assert!(it.published_at > after);
    }
    // Every matching item the user has not seen is eligible; the list is as full as it can be.
    let seen = user_features(&s, u)
        .map(|f| f.recent_items.len())
        .unwrap_or(0);
    assert!(
        got.len() >= allowed.saturating_sub(seen).min(100),
        "{} of {allowed}",
        got.len()
    );

    // categories_none removes a category entirely.
    let (_, v) = s
        .recommend(json!({"user_id": u, "k": 30, "filters": {"categories_none": [cat]}}))
        .await;
    assert!(item_ids(&v)
        .iter()
        .all(|i| !catalog_item(&s, *i).categories.contains(&cat_idx)));

    // Cold start: an unknown user gets k items, popular and trending ones.
    for k in [1, 20, 100] {
        let (st, v) = s.recommend(json!({"user_id": "someone-new", "k": k})).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(item_ids(&v).len(), k, "cold k={k}");
        assert_eq!(v["degradation"], "full");
    }
    // With a session, the cold list follows the session and never repeats it.
    let session: Vec<u64> = b.catalog.items.iter().take(3).map(|i| i.id).collect();
    let (_, cold) = s.recommend(json!({"user_id": "anon", "k": 20})).await;
    let (st, with_session) = s
        .recommend(json!({"user_id": "anon", "k": 20, "context": {"session_items": session, "device": "mobile"}}))
        .await;
    assert_eq!(st, 200);
    let ws = item_ids(&with_session);
    assert_eq!(ws.len(), 20);
    assert!(ws.iter().all(|i| !session.contains(i)));
    assert_ne!(ws, item_ids(&cold), "session items changed nothing");
    let srcs: HashSet<String> = with_session["items"]
        .as_array()
        .expect("items")
        .iter()
        .flat_map(|i| i["sources"].as_array().cloned().unwrap_or_default())
        .filter_map(|x| x.as_str().map(str::to_owned))
        .collect();
    assert!(
        srcs.contains("ann") || srcs.contains("cf"),
        "session did not drive ANN or CF: {srcs:?}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_its_status_and_a_json_error() {
    let s = TestServer::start(shared_bundle(), test_config(), None).await;
    let cases: Vec<(Vec<u8>, u16)> =
        vec![
        (b"{\"user_id\": ".to_vec(), 400),
        (b"\xff\xfe".to_vec(), 400),
        (b"[]".to_vec(), 422),
        (br#"{"k": 5}"#.to_vec(), 422),
        (br#"{"user_id": ""}"#.to_vec(), 422),
        (br#"{"user_id": "1", "k": 0}"#.to_vec(), 422),
        (br#"{"user_id": "1", "k": 1000}"#.to_vec(), 422),
        (br#"{"user_id": "1", "k": "ten"}"#.to_vec(), 422),
        (br#"{"user_id": "1", "filters": {"categories_any": ["no-such-genre"]}}"#.to_vec(), 422),
        (br#"{"user_id": "1", "filters": {"published_after": "soon"}}"#.to_vec(), 422),
        (br#"{"user_id": "1", "surprise": true}"#.to_vec(), 422),
        (
            json!({"user_id": "1", "context": {"session_items": (0..500).collect::<Vec<u64>>()}})
                .to_string()
                .into_bytes(),
            422,
        ),
        (vec![b' '; 70 * 1024], 413),
    ];
    for (body, want) in cases {
        let shown = String::from_utf8_lossy(&body[..body.len().min(60)]).to_string();
        let (st, v) = s.post_raw(body).await;
        assert_eq!(st, want, "{shown}: {v}");
        assert!(v["code"].as_str().is_some_and(|c| !c.is_empty()), "{v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    }
    let (st, v) = s.get("/v1/nothing").await;
    assert_eq!((st, v["code"].as_str()), (404, Some("not_found")));
    let (st, v) = s.get("/v1/recommend").await;
    assert_eq!((st, v["code"].as_str()), (405, Some("method_not_allowed")));
    // The server is still fine.
    let (st, _) = s.recommend(json!({"user_id": 1})).await;
    assert_eq!(st, 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_features_overrides_and_fallback() {
    let redis = common::redis::RedisServer::start();
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("server-redis-{}", std::process::id()));
    let url = redis.url();
    let bundle = common::build_bundle_pushed(&dir, &url);
    let mut cfg = test_config();
    cfg.features.item_cache_ttl_s = 1;
    let s = TestServer::start(&bundle, cfg, Some(&url)).await;
    let (_, ready) = s.get("/readyz").await;
    assert_eq!(ready["feature_store"]["kind"], "redis", "{ready}");
    assert_eq!(ready["feature_store"]["state"], "ok", "{ready}");

    let users = known_users(&s, 5);
    let (st, v) = s
        .recommend(json!({"user_id": users[0], "k": 10, "explain": true}))
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["degradation"], "full", "{v}");
    assert!(v["explain"]["user_known"].as_bool().unwrap_or(false), "{v}");
    assert!(v["timings_ms"]["features"]
        .as_f64()
        .is_some_and(|x| x > 0.0));

    // A policy flag set online (after the build) takes effect without a rebuild, once the item's
    // cached features expire (1 s here): flag the second user's would-be top item.
    let (_, probe) = {
        let plain = TestServer::start(&bundle, test_config(), None).await;
        let r = plain.recommend(json!({"user_id": users[1], "k": 10})).await;
        plain.stop().await;
        r
    };
    let top = item_ids(&probe)[0];
    let version = &s.engine.bundle().manifest.version;
    let mut conn = redis.conn();
    let flagged = funnel::features::codec::encode(&funnel::features::FeatureValue::Bool(true));
    let _: () = ::redis::cmd("HSET")
        .arg(format!("funnel:{version}:{{i:{top}}}"))
        .arg("flagged")
        .arg(flagged)
        .query(&mut conn)
        .expect("HSET");
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let (st, v) = s.recommend(json!({"user_id": users[1], "k": 10})).await;
    assert_eq!(st, 200);
    assert!(
        !item_ids(&v).contains(&top),
        "online-flagged item {top} served"
    );

    // Redis gone: still 200, from the bundle's features, and the response says so.
    drop(redis);
    for u in &users {
        let (st, v) = s.recommend(json!({"user_id": u, "k": 10})).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["degradation"], "stale_features", "{v}");
        assert_eq!(item_ids(&v).len(), 10);
    }
    let (_, ready) = s.get("/readyz").await;
    assert_eq!(ready["status"], "degraded", "{ready}");
    s.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_guard_the_routes() {
    let mut cfg = test_config();
    cfg.auth.recommend_keys = vec!["rk-0123456789abcdef".into(), "rk-second-0123456789".into()];
    cfg.auth.events_keys = vec!["ek-0123456789abcdef".into()];
    let s = TestServer::start(shared_bundle(), cfg, None).await;
    let http = reqwest::Client::new();
    let send = |path: &'static str, key: Option<&'static str>, body: serde_json::Value| {
        let mut r = http.post(s.url(path)).json(&body);
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        async move {
            let r = r.send().await.expect("send");
            let st = r.status().as_u16();
            (st, r.json::<serde_json::Value>().await.expect("JSON body"))
        }
    };
    let rec = json!({"user_id": "1", "k": 5});
    let item = catalog_item(&s, 1).id;
    let ev = json!({"events": [{"user_id": 1, "item_id": item, "type": "click"}]});
    for (path, key, body, want) in [
        ("/v1/recommend", None, &rec, 401),
        ("/v1/recommend", Some("rk-0123456789abcdeX"), &rec, 401),
        ("/v1/recommend", Some("ek-0123456789abcdef"), &rec, 401),
        ("/v1/recommend", Some("rk-0123456789abcdef"), &rec, 200),
        ("/v1/recommend", Some("rk-second-0123456789"), &rec, 200),
        ("/v1/events", None, &ev, 401),
        ("/v1/events", Some("rk-0123456789abcdef"), &ev, 401),
        ("/v1/events", Some("ek-0123456789abcdef"), &ev, 202),
    ] {
        let (st, v) = send(path, key, body.clone()).await;
        assert_eq!(st, want, "{path} {key:?}: {v}");
        if want == 401 {
            assert_eq!(v["code"], "unauthorized", "{v}");
            assert!(v["message"].as_str().is_some_and(|m| !m.contains("abcdef")));
        }
    }
    // Probes stay open.
    assert_eq!(s.get("/healthz").await.0, 200);
    assert_eq!(s.get("/readyz").await.0, 200);
    s.stop().await;
}
