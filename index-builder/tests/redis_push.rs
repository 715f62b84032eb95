//! Pushing online features to a REAL `redis-server` (started per test on an ephemeral loopback
//! port, never 6379) and reading them back through the server's own `RedisFeatureStore`.

use std::collections::BTreeMap;
mod common;
use common::redis::{free_port, RedisServer};

use funnel::features::{block_on, FeatureRow};
use index_builder::online::{
    push_to_redis_blocking, push_to_redis_blocking_with, verify_redis_blocking, Entity,
    FeatureError, FeatureRegistry, FeatureTable, FeatureValue, PushOptions, RedisFeatureStore,
};

fn registry() -> FeatureRegistry {
    FeatureRegistry::bundled().unwrap()
}

/// Users 1..=users with every user feature; items 1..=items with every item feature except
/// that odd items lack `trending`.
fn table(reg: &FeatureRegistry, users: u64, items: u64) -> FeatureTable {
    let mut t = FeatureTable::new(reg);
    for id in 1..=users {
        let emb: Vec<f32> = (0..64).map(|i| (id as f32) * 0.01 + i as f32).collect();
        t.insert(
            Entity::User,
            id,
            "user_embedding",
            FeatureValue::F32Vec(emb),
        )
        .unwrap();
        let recent: Vec<i64> = (0..(id % 7) as i64).map(|k| 1000 - k).collect();
        t.insert(
            Entity::User,
            id,
            "recent_items",
            FeatureValue::I64List(recent),
        )
        .unwrap();
        let prefs = BTreeMap::from([("news".to_string(), 0.5), (format!("c{}", id % 3), -1.25)]);
        t.insert(
            Entity::User,
            id,
            "category_prefs",
            FeatureValue::F32Map(prefs),
        )
        .unwrap();
        t.insert(
            Entity::User,
            id,
            "history_len",
            FeatureValue::I64(id as i64),
        )
        .unwrap();
        t.insert(
            Entity::User,
            id,
            "last_active_at",
            FeatureValue::Timestamp(1_700_000_000 + id as i64),
        )
        .unwrap();
    }
    for id in 1..=items {
        t.insert(
            Entity::Item,
            id,
            "popularity",
            FeatureValue::F32(id as f32 / 3.0),
        )
        .unwrap();
        if id % 2 == 0 {
            t.insert(Entity::Item, id, "trending", FeatureValue::F32(f32::NAN))
                .unwrap();
        }
        t.insert(
            Entity::Item,
            id,
            "published_at",
            FeatureValue::Timestamp(1_600_000_000),
        )
        .unwrap();
        let cats = vec!["news".to_string(), "ünïcödé ✓".to_string(), String::new()];
        t.insert(
            Entity::Item,
            id,
            "categories",
            FeatureValue::StringList(cats),
        )
        .unwrap();
        t.insert(
            Entity::Item,
            id,
            "creator_id",
            FeatureValue::I64(-(id as i64)),
        )
        .unwrap();
        t.insert(Entity::Item, id, "flagged", FeatureValue::Bool(id % 5 == 0))
            .unwrap();
        t.insert(Entity::Item, id, "promoted", FeatureValue::Bool(false))
            .unwrap();
    }
    t
}

fn read(
    url: &str,
    reg: &FeatureRegistry,
    entity: Entity,
    ids: &[u64],
    version: &str,
) -> Result<Vec<Option<FeatureRow>>, FeatureError> {
    block_on(async {
        let store = RedisFeatureStore::connect(url, reg).await?;
        store.get_many(entity, ids, version).await
    })
    .unwrap()
}

fn assert_row_matches(t: &FeatureTable, entity: Entity, id: u64, row: &FeatureRow) {
    let expected: Vec<_> = t.row(entity, id).unwrap().collect();
    assert_eq!(row.len(), expected.len(), "{entity} {id}: {row:?}");
    for (def, value) in expected {
        let got = &row[def.name.as_str()];
        assert!(
            got.same_as(value),
            "{entity} {id} {}: {got:?} != {value:?}",
            def.name
        );
    }
}

#[test]
fn push_then_read_back_through_the_server_path() {
    let redis = RedisServer::start();
    let reg = registry();
    let t = table(&reg, 1500, 2500);
    let opts = PushOptions {
        entities_per_pipeline: 400,
        ..PushOptions::default()
    };
    let stats = push_to_redis_blocking_with(&redis.url(), &reg, &t, "v1", &opts).unwrap();
    assert_eq!(stats.keys, 1500 + 2500);
    assert_eq!(stats.fields as usize, t.len());
    assert_eq!(stats.pipelines, 4 + 7);
    assert!(stats.current_version_set && stats.value_bytes > 0);

    // Every value reads back exactly, in request order, through one pipelined call per entity.
    for (entity, n) in [(Entity::User, 1500u64), (Entity::Item, 2500)] {
        let ids: Vec<u64> = (1..=n).rev().collect();
        let rows = read(&redis.url(), &reg, entity, &ids, "v1").unwrap();
        assert_eq!(rows.len(), ids.len());
        for (id, row) in ids.iter().zip(&rows) {
            assert_row_matches(&t, entity, *id, row.as_ref().unwrap());
        }
    }
    // Odd items lack `trending`: the store returns what is stored, the caller applies defaults.
    let row = read(&redis.url(), &reg, Entity::Item, &[3], "v1")
        .unwrap()
        .pop()
        .unwrap();
    assert!(row.as_ref().unwrap().get("trending").is_none());
    assert_eq!(
        reg.value_or_default(row.as_ref(), "trending"),
        Some(&FeatureValue::F32(0.0))
    );

    // Unknown ids, ids of the other entity and other versions find nothing.
    let rows = read(&redis.url(), &reg, Entity::User, &[1501, 0, u64::MAX], "v1").unwrap();
    assert!(rows.iter().all(Option::is_none));
    let rows = read(&redis.url(), &reg, Entity::Item, &[1, 2, 3], "v0").unwrap();
    assert!(rows.iter().all(Option::is_none));
    assert!(read(&redis.url(), &reg, Entity::Item, &[], "v1")
        .unwrap()
        .is_empty());

    // Keys: version-scoped hashes with the group's TTL; current version set without expiry.
    let mut conn = redis.conn();
    for key in ["funnel:v1:{u:1}", "funnel:v1:{i:2500}"] {
        let ttl: i64 = redis::cmd("TTL").arg(key).query(&mut conn).unwrap();
        assert!(ttl > 0 && ttl <= 36 * 3600, "{key}: ttl {ttl}");
        let kind: String = redis::cmd("TYPE").arg(key).query(&mut conn).unwrap();
        assert_eq!(kind, "hash");
    }
    // Scalars are readable with redis-cli.
    let history: String = redis::cmd("HGET")
        .arg("funnel:v1:{u:42}")
        .arg("history_len")
        .query(&mut conn)
        .unwrap();
    assert_eq!(history, "42");
    let current: String = redis::cmd("GET")
        .arg("funnel:current_version")
        .query(&mut conn)
        .unwrap();
    assert_eq!(current, "v1");
    let ttl: i64 = redis::cmd("TTL")
        .arg("funnel:current_version")
        .query(&mut conn)
        .unwrap();
    assert_eq!(ttl, -1);
    let version = block_on(async {
        RedisFeatureStore::connect(&redis.url(), &reg)
            .await?
            .current_version()
            .await
    })
    .unwrap()
    .unwrap();
    assert_eq!(version.as_deref(), Some("v1"));

    let report = verify_redis_blocking(&redis.url(), &reg, &t, "v1", 100).unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert!(report.checked >= 200 && report.checked <= 220, "{report:?}");
    let report = verify_redis_blocking(&redis.url(), &reg, &t, "v0", 10).unwrap();
    assert_eq!(report.mismatched, report.checked);
}

#[test]
fn next_version_keeps_the_previous_one_and_repush_leaves_no_stale_fields() {
    let redis = RedisServer::start();
    let reg = registry();
    let v1 = table(&reg, 5, 5);
    push_to_redis_blocking(&redis.url(), &reg, &v1, "2024-01-01").unwrap();

    let mut v2 = table(&reg, 5, 5);
    v2.insert(Entity::Item, 1, "popularity", FeatureValue::F32(99.0))
        .unwrap();
    push_to_redis_blocking(&redis.url(), &reg, &v2, "2024-01-02").unwrap();
    let mut conn = redis.conn();
    let current: String = redis::cmd("GET")
        .arg("funnel:current_version")
        .query(&mut conn)
        .unwrap();
    assert_eq!(current, "2024-01-02");
    // The old version stays readable (servers still on it) until its TTL expires.
    let old = read(&redis.url(), &reg, Entity::Item, &[1], "2024-01-01").unwrap();
    assert_eq!(
        old[0].as_ref().unwrap()["popularity"],
        FeatureValue::F32(1.0 / 3.0)
    );
    let new = read(&redis.url(), &reg, Entity::Item, &[1], "2024-01-02").unwrap();
    assert_eq!(
        new[0].as_ref().unwrap()["popularity"],
        FeatureValue::F32(99.0)
    );

    // Re-pushing a version rewrites whole hashes: a value dropped from the table disappears.
    let mut sparse = FeatureTable::new(&reg);
    sparse
        .insert(Entity::Item, 1, "flagged", FeatureValue::Bool(true))
        .unwrap();
    push_to_redis_blocking(&redis.url(), &reg, &sparse, "2024-01-02").unwrap();
    let row = read(&redis.url(), &reg, Entity::Item, &[1], "2024-01-02")
        .unwrap()
        .pop()
        .unwrap()
        .unwrap();
    assert_eq!(row.len(), 1);
    assert_eq!(row["flagged"], FeatureValue::Bool(true));
}

#[test]
fn shared_key_expires_after_the_smallest_ttl() {
    let redis = RedisServer::start();
    let defs = r#"
[[feature]]
name = "a"
entity = "user"
dtype = "i64"
default = 0
ttl = 100
kind = "batch"
key = "t:{version}:{id}"
description = "a"
owner = "o"

[[feature]]
name = "b"
entity = "user"
dtype = "string"
default = ""
ttl = "50s"
kind = "batch"
key = "t:{version}:{id}"
description = "b"
owner = "o"

[[feature]]
name = "c"
entity = "user"
dtype = "bool"
default = false
ttl = "2h"
kind = "batch"
key = "t2:{version}:{id}"
description = "c, in its own hash"
owner = "o"

[[feature]]
name = "live"
entity = "user"
dtype = "i64"
default = 0
ttl = 60
kind = "streaming"
key = "rt:{id}"
description = "written by a stream processor"
owner = "o"
"#;
    let reg = FeatureRegistry::from_toml_strs(&[("t.toml", defs)]).unwrap();
    let mut t = FeatureTable::new(&reg);
    t.insert(Entity::User, 7, "a", FeatureValue::I64(1))
        .unwrap();
    t.insert(Entity::User, 7, "b", FeatureValue::String("x".into()))
        .unwrap();
    t.insert(Entity::User, 7, "c", FeatureValue::Bool(true))
        .unwrap();
    let stats = push_to_redis_blocking(&redis.url(), &reg, &t, "v").unwrap();
    assert_eq!((stats.keys, stats.fields), (2, 3));

    let mut conn = redis.conn();
    let ttl: i64 = redis::cmd("TTL").arg("t:v:7").query(&mut conn).unwrap();
    assert!(ttl > 0 && ttl <= 50, "ttl {ttl}");
    let ttl: i64 = redis::cmd("TTL").arg("t2:v:7").query(&mut conn).unwrap();
    assert!(ttl > 50 && ttl <= 7200, "ttl {ttl}");

    // A stream processor's hash (unversioned key) is read in the same call.
    let _: () = redis::cmd("HSET")
        .arg("rt:7")
        .arg("live")
        .arg("12")
        .query(&mut conn)
        .unwrap();
    let row = read(&redis.url(), &reg, Entity::User, &[7], "v")
        .unwrap()
        .pop()
        .unwrap()
        .unwrap();
    assert_eq!(row.len(), 4);
    assert_eq!(row["live"], FeatureValue::I64(12));
    assert_eq!(row["b"], FeatureValue::String("x".into()));
    // The builder never writes streaming features.
    assert!(t
        .insert(Entity::User, 7, "live", FeatureValue::I64(1))
        .is_err());
}

#[test]
fn bad_data_in_redis_never_fails_a_request_or_panics() {
    let redis = RedisServer::start();
    let reg = registry();
    let t = table(&reg, 3, 3);
    push_to_redis_blocking(&redis.url(), &reg, &t, "v1").unwrap();
    let mut conn = redis.conn();
    // Undecodable value, a field unknown to these defs, a field of another entity.
    let _: () = redis::cmd("HSET")
        .arg("funnel:v1:{i:1}")
        .arg("popularity")
        .arg("not-a-number")
        .arg("from_newer_defs")
        .arg("1")
        .arg("history_len")
        .arg("5")
        .arg(b"\xff\xfe".as_slice())
        .arg("binary field name")
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg("funnel:v1:{u:1}")
        .arg("user_embedding")
        .arg(vec![0u8; 12])
        .query(&mut conn)
        .unwrap();
    let rows = read(&redis.url(), &reg, Entity::Item, &[1, 2], "v1").unwrap();
    let row1 = rows[0].as_ref().unwrap();
    assert!(!row1.contains_key("popularity") && !row1.contains_key("history_len"));
    assert_eq!(row1.len(), t.row(Entity::Item, 1).unwrap().count() - 1);
    assert_row_matches(&t, Entity::Item, 2, rows[1].as_ref().unwrap());
    let user = read(&redis.url(), &reg, Entity::User, &[1], "v1")
        .unwrap()
        .pop()
        .unwrap()
        .unwrap();
    assert!(!user.contains_key("user_embedding"), "wrong dim is dropped");

    // The builder's verification catches what the server would silently default.
    let report = verify_redis_blocking(&redis.url(), &reg, &t, "v1", 100).unwrap();
    assert_eq!((report.checked, report.mismatched), (6, 2), "{report:?}");
    assert!(
        report
            .examples
            .iter()
            .any(|e| e.starts_with("item 1: popularity")),
        "{report:?}"
    );

    // A key of the wrong Redis type is an error, not a panic.
    let _: () = redis::cmd("SET")
        .arg("funnel:v1:{i:3}")
        .arg("x")
        .query(&mut conn)
        .unwrap();
    let err = read(&redis.url(), &reg, Entity::Item, &[3], "v1").unwrap_err();
    assert!(err.to_string().contains("redis"), "{err}");
}

#[test]
fn reader_reconnects_after_redis_restarts() {
    let mut redis = RedisServer::start();
    let reg = registry();
    let t = table(&reg, 2, 2);
    push_to_redis_blocking(&redis.url(), &reg, &t, "v1").unwrap();
    let url = redis.url();
    block_on(async {
        let store = RedisFeatureStore::connect(&url, &reg).await.unwrap();
        assert!(store.get(Entity::User, 1, "v1").await.unwrap().is_some());
        // Restart on the same port (blocking is fine: nothing else runs on this runtime).
        redis.restart();
        // The first request after the restart reconnects transparently and succeeds (the new
        // server is empty).
        let row = store.get(Entity::User, 1, "v1").await.unwrap();
        assert!(row.is_none());
        assert!(store.current_version().await.unwrap().is_none());
    })
    .unwrap();
}

#[test]
fn failed_or_invalid_pushes_leave_the_current_version_alone() {
    let redis = RedisServer::start();
    let reg = registry();
    let t = table(&reg, 2, 2);
    push_to_redis_blocking(&redis.url(), &reg, &t, "good").unwrap();

    for version in ["", "has space", "a{id}", "new\nline"] {
        let err = push_to_redis_blocking(&redis.url(), &reg, &t, version).unwrap_err();
        assert!(matches!(err, FeatureError::InvalidVersion(_)), "{err}");
    }
    // A table built under other defs is refused before anything is written.
    let other_defs = FeatureRegistry::from_toml_strs(&[(
        "o.toml",
        "[[feature]]\nname = \"z\"\nentity = \"item\"\ndtype = \"i64\"\ndefault = 0\nttl = 60\nkind = \"batch\"\nkey = \"z:{version}:{id}\"\ndescription = \"z\"\nowner = \"o\"\n",
    )])
    .unwrap();
    let err = push_to_redis_blocking(&redis.url(), &other_defs, &t, "bad").unwrap_err();
    assert!(matches!(err, FeatureError::DefsMismatch { .. }), "{err}");

    // Nothing listens on a fresh ephemeral port.
    let dead = format!("redis://127.0.0.1:{}/", free_port());
    let err = push_to_redis_blocking(&dead, &reg, &t, "bad").unwrap_err();
    assert!(matches!(err, FeatureError::Redis { .. }), "{err}");
    assert!(push_to_redis_blocking("not a url", &reg, &t, "bad").is_err());

    let mut conn = redis.conn();
    let current: String = redis::cmd("GET")
        .arg("funnel:current_version")
        .query(&mut conn)
        .unwrap();
    assert_eq!(current, "good");
    let keys: Vec<String> = redis::cmd("KEYS").arg("*bad*").query(&mut conn).unwrap();
    assert!(keys.is_empty(), "{keys:?}");
}
