//! The engine on a real 6-node Redis Cluster (3 masters, 3 replicas, on loopback): the builder's
//! push, recommendations reading user and item features, events writing the streaming lists and
//! trending counters, and a master killed under load — requests stay 200, degrade to
//! `stale_features` while the slot has no master, and return to `full` once the replica is
//! promoted.

mod common;

use std::time::{Duration, Instant};

use redis::Commands;
use serde_json::json;

use common::{item_ids, test_config, users_with_batch, TestServer};
use funnel_testkit::redis_cluster::RedisCluster;

fn tmp(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("cluster-{name}-{}", std::process::id()))
}

/// Keys per master, from each master's own DBSIZE.
fn keys_per_master(cluster: &RedisCluster) -> Vec<i64> {
    cluster
        .nodes()
        .iter()
        .filter(|n| n.master && !n.failed)
        .map(|n| {
            let mut c = redis::Client::open(format!("redis://127.0.0.1:{}/", n.port))
                .unwrap()
                .get_connection()
                .unwrap();
            redis::cmd("DBSIZE").query::<i64>(&mut c).unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_recommend_and_events_on_a_cluster() {
    let cluster = RedisCluster::start();
    let url = cluster.url();
    // The builder's push (`index-builder build --redis redis+cluster://…`).
    let bundle = common::build_bundle_pushed(&tmp("serve"), &url);
    let mut conn = cluster.client();
    let version: String = conn.get("funnel:current_version").unwrap();
    let per_master = keys_per_master(&cluster);
    assert_eq!(per_master.len(), 3);
    assert!(
        per_master.iter().all(|&n| n > 100),
        "the push spreads over every master: {per_master:?}"
    );

    let s = TestServer::start(&bundle, test_config(), Some(&url)).await;
    let (_, ready) = s.get("/readyz").await;
    assert_eq!(ready["feature_store"]["kind"], "redis_cluster", "{ready}");
    assert_eq!(ready["feature_store"]["state"], "ok", "{ready}");
    let users = users_with_batch(&s, 12);
    for u in &users {
        let key = format!("funnel:{version}:{{u:{u}}}");
        let fields: Vec<String> = conn.hkeys(&key).unwrap();
        assert!(!fields.is_empty(), "{key} was pushed");
        let (st, v) = s
            .recommend(json!({"user_id": u, "k": 10, "explain": true}))
            .await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["degradation"], "full", "{v}");
        assert_eq!(item_ids(&v).len(), 10);
    }
    let m = s.engine.render_metrics();
    assert!(
        !m.lines()
            .any(|l| l.starts_with("funnel_redis_errors_total") && !l.ends_with(" 0")),
        "no Redis errors on the cluster:\n{}",
        m.lines()
            .filter(|l| l.contains("redis_errors"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Events: the user's recent and seen lists (one slot, one transaction) and the trending
    // counters land in the cluster, and the next answer reads them back (seen items are not
    // recommended again).
    let user = users[0];
    let (_, before) = s.recommend(json!({"user_id": user, "k": 10})).await;
    let shown = item_ids(&before);
    let events: Vec<_> = shown
        .iter()
        .take(5)
        .enumerate()
        .map(|(i, item)| {
            json!({"event_id": format!("c-{user}-{i}"), "user_id": user, "item_id": item,
                   "type": "click"})
        })
        .collect();
    let (st, r) = s.events(json!(events)).await;
    assert_eq!(st, 202, "{r}");
    assert_eq!(r["accepted"], 5, "{r}");
    let recent_key = format!("funnel:s:{{u:{user}}}:recent");
    let seen_key = format!("funnel:s:{{u:{user}}}:seen");
    let deadline = Instant::now() + Duration::from_secs(10);
    let recent: Vec<u64> = loop {
        let recent: Vec<u64> = conn.lrange(&recent_key, 0, -1).unwrap();
        if recent.len() == 5 || Instant::now() > deadline {
            break recent;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(recent.len(), 5, "{recent:?}");
    assert_eq!(conn.zcard::<_, i64>(&seen_key).unwrap(), 5);
    let trending: Vec<String> = redis::cmd("KEYS")
        .arg("funnel:s:{trending}:*")
        .query(&mut conn)
        .unwrap();
    assert!(!trending.is_empty(), "trending counters written");
    let (_, after) = s.recommend(json!({"user_id": user, "k": 10})).await;
    assert_eq!(after["degradation"], "full", "{after}");
    let again: Vec<u64> = item_ids(&after)
        .into_iter()
        .filter(|i| shown[..5].contains(i))
        .collect();
    assert!(again.is_empty(), "seen items {again:?} came back: {after}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_killed_under_load_fails_over() {
    let mut cluster = RedisCluster::start();
    let url = cluster.url();
    let bundle = common::build_bundle_pushed(&tmp("failover"), &url);
    let version: String = cluster.client().get("funnel:current_version").unwrap();
    let mut cfg = test_config();
    cfg.breaker.open_ms = 300;
    let s = std::sync::Arc::new(TestServer::start(&bundle, cfg, Some(&url)).await);
    let users = users_with_batch(&s, 30);
    let victim = cluster.master_of(&format!("funnel:{version}:{{u:{}}}", users[0]));
    // The users whose features live on the master that dies.
    let on_victim: Vec<u64> = users
        .iter()
        .copied()
        .filter(|u| cluster.master_of(&format!("funnel:{version}:{{u:{u}}}")) == victim)
        .collect();
    assert!(!on_victim.is_empty());

    // Load: two clients, one request each every 20 ms (about 100 req/s in all), users round
    // robin, every answer logged with its time.
    let started = Instant::now();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..2usize {
        let (s, stop, users) = (s.clone(), stop.clone(), users.clone());
        clients.push(tokio::spawn(async move {
            let mut log: Vec<(f64, u64, u16, String)> = Vec::new();
            let mut i = c;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let u = users[i % users.len()];
                i += 2;
                let (st, v) = s.recommend(json!({"user_id": u, "k": 10})).await;
                let level = v["degradation"].as_str().unwrap_or("").to_owned();
                log.push((started.elapsed().as_secs_f64(), u, st, level));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            log
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed_at = started.elapsed().as_secs_f64();
    cluster.kill(victim);
    // Promotion: the killed master's slots served by a live master again.
    let promoted = tokio::task::spawn_blocking({
        let deadline = Instant::now() + Duration::from_secs(30);
        move || {
            while Instant::now() < deadline {
                if cluster.healthy() {
                    return Some(cluster);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            None
        }
    })
    .await
    .unwrap();
    let promoted_at = started.elapsed().as_secs_f64();
    let cluster = promoted.expect("the replica was not promoted within 30 s");
    // Keep the load on until the victim's users are served in full again (at most 15 s).
    let mut back_at = None;
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut all_full = true;
        for u in &on_victim {
            let (st, v) = s.recommend(json!({"user_id": u, "k": 10})).await;
            assert_eq!(st, 200, "{v}");
            all_full &= v["degradation"] == "full";
        }
        if all_full {
            back_at = Some(started.elapsed().as_secs_f64());
            break;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut log = Vec::new();
    for c in clients {
        log.extend(c.await.unwrap());
    }
    let back_at = back_at.unwrap_or_else(|| {
        panic!("the victim's users were not served in full within 15 s of the promotion")
    });
    let bad: Vec<_> = log.iter().filter(|r| r.2 != 200).collect();
    assert!(
        bad.is_empty(),
        "non-200 answers during the failover: {bad:?}"
    );
    let during: Vec<_> = log
        .iter()
        .filter(|r| r.0 > killed_at && r.0 < promoted_at && on_victim.contains(&r.1))
        .collect();
    assert!(
        during.iter().any(|r| r.3 == "stale_features"),
        "the victim's users were not degraded to stale_features while its slots had no master: \
         {during:?}"
    );
    let after: Vec<_> = log.iter().filter(|r| r.0 > back_at).collect();
    assert!(!after.is_empty());
    assert!(
        after.iter().all(|r| r.3 == "full"),
        "degraded answers after recovery: {:?}",
        after.iter().filter(|r| r.3 != "full").collect::<Vec<_>>()
    );
    let levels = |from: f64, to: f64| {
        let mut m = std::collections::BTreeMap::<&str, usize>::new();
        for r in log.iter().filter(|r| r.0 >= from && r.0 < to) {
            *m.entry(r.3.as_str()).or_default() += 1;
        }
        m
    };
    eprintln!(
        "failover: {} requests, killed at {killed_at:.2} s, promoted at {promoted_at:.2} s \
         ({:.2} s), full again at {back_at:.2} s ({:.2} s after the promotion); before {:?}, \
         during {:?}, after {:?}",
        log.len(),
        promoted_at - killed_at,
        back_at - promoted_at,
        levels(0.0, killed_at),
        levels(killed_at, back_at),
        levels(back_at, f64::MAX),
    );
    drop(cluster);
}
