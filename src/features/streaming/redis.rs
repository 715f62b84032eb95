//! Streaming features in Redis, shared by every server instance. A batch is aggregated first
//! (per user, per item and bucket), then written as one transaction per user (a user's keys
//! share a cluster hash tag) and one for the counter; on one server they all go out in one
//! pipeline:
//!
//! * recent (LIST): `LREM` each item, `LPUSH` them oldest → newest, `LTRIM` to `max_len`, `EXPIRE`;
//! * seen (ZSET scored by ingest time): `ZADD`, `ZREMRANGEBYSCORE` past the ttl,
//!   `ZREMRANGEBYRANK` down to `max_len`, `EXPIRE`;
//! * counter (ZSET per bucket): `ZINCRBY` per item, `EXPIRE` per bucket key.
//!
//! Users' lists are read in the same pipeline as their batch features
//! ([`crate::features::RedisFeatureStore::get_many`]); the counter is read here as a top list.

use std::collections::{BTreeMap, HashMap};

use ::redis::Value;

use super::{bucket_decay, top_of, StreamDefs, StreamEvent};
use crate::features::redis::{reply_err, value_bytes};
use crate::features::{FeatureError, RedisFeatureStore};

pub struct RedisStreams {
    store: RedisFeatureStore,
    defs: StreamDefs,
    /// Reply timeout of a batch's write pipeline.
    write_timeout: std::time::Duration,
    /// Members read per bucket for the top list (the top list is exact when no item outside a
    /// bucket's top `per_bucket` matters, which holds for bursts).
    per_bucket: usize,
}

impl RedisStreams {
    pub fn new(
        store: RedisFeatureStore,
        defs: StreamDefs,
        per_bucket: usize,
        write_timeout: std::time::Duration,
    ) -> Self {
        RedisStreams {
            store,
            defs,
            write_timeout,
            per_bucket: per_bucket.max(1),
        }
    }

    pub fn defs(&self) -> &StreamDefs {
        &self.defs
    }

    pub async fn apply(&self, events: &[StreamEvent], now: f64) -> Result<(), FeatureError> {
        if events.is_empty() {
            return Ok(());
        }
        // Per user, in arrival order: engaged items (recent) and every item (seen).
        let mut users: BTreeMap<u64, (Vec<u64>, Vec<u64>)> = BTreeMap::new();
        let mut counts: HashMap<u64, f64> = HashMap::new();
        let ttl = |d: &Option<super::ListDef>| d.as_ref().map_or(0, |d| d.ttl_secs);
        let (recent_ttl, seen_ttl) = (ttl(&self.defs.recent), ttl(&self.defs.seen));
        let window = self.defs.trending.as_ref().map_or(0, |c| c.window_secs);
        for e in events {
            let u = users.entry(e.user_id).or_default();
            if e.weight > 0.0 && e.within(now, recent_ttl) {
                u.0.push(e.item_id);
            }
            if e.weight > 0.0 && e.within(now, window) {
                *counts.entry(e.item_id).or_default() += f64::from(e.weight);
            }
            if e.within(now, seen_ttl) {
                u.1.push(e.item_id);
            }
        }
        // One transaction per user: two batches of one user cannot interleave their LREM /
        // LPUSH. A user's keys share a hash tag, so each transaction keeps to one cluster slot.
        let mut units: Vec<Vec<::redis::Cmd>> = Vec::with_capacity(users.len() + 1);
        for (&user, (engaged, all)) in &users {
            let mut unit = Vec::new();
            if let (Some(d), false) = (&self.defs.recent, engaged.is_empty()) {
                let key = d.key.render("", user);
                // Distinct, keeping each item's newest position; pushed oldest first so the
                // newest ends at the head.
                let mut newest: Vec<u64> = Vec::with_capacity(engaged.len());
                for &i in engaged.iter().rev() {
                    if !newest.contains(&i) {
                        newest.push(i);
                    }
                }
                newest.truncate(d.max_len);
                for &i in &newest {
                    unit.push(cmd4("LREM", &key, 0, i));
                }
                let mut push = ::redis::cmd("LPUSH");
                push.arg(&key);
                for &i in newest.iter().rev() {
                    push.arg(i);
                }
                unit.push(push);
                unit.push(cmd4("LTRIM", &key, 0, d.max_len as i64 - 1));
                unit.push(cmd3("EXPIRE", &key, d.ttl_secs));
            }
            if let (Some(d), false) = (&self.defs.seen, all.is_empty()) {
                let key = d.key.render("", user);
                let mut add = ::redis::cmd("ZADD");
                add.arg(&key);
                for &i in all {
                    add.arg(now).arg(i);
                }
                unit.push(add);
                let oldest = format!("({}", now - d.ttl_secs as f64);
                unit.push(cmd4("ZREMRANGEBYSCORE", &key, "-inf", oldest));
                unit.push(cmd4("ZREMRANGEBYRANK", &key, 0, -(d.max_len as i64) - 1));
                unit.push(cmd3("EXPIRE", &key, d.ttl_secs));
            }
            if !unit.is_empty() {
                units.push(unit);
            }
        }
        if let (Some(c), false) = (&self.defs.trending, counts.is_empty()) {
            let key = c.key.render("", c.bucket_of(now));
            let mut unit: Vec<::redis::Cmd> = counts
                .iter()
                .map(|(&item, &w)| cmd4("ZINCRBY", &key, w, item))
                .collect();
            unit.push(cmd3("EXPIRE", &key, c.ttl_secs));
            units.push(unit);
        }
        if units.is_empty() {
            return Ok(());
        }
        let atomic = |cmds: Vec<::redis::Cmd>| {
            let mut pipe = ::redis::pipe();
            pipe.atomic();
            for c in cmds {
                pipe.add_command(c).ignore();
            }
            pipe
        };
        if !self.store.is_cluster() {
            // One server: the whole batch in one round trip.
            let pipe = atomic(units.into_iter().flatten().collect());
            return self
                .store
                .query_within(&pipe, "apply events", Some(self.write_timeout))
                .await
                .map(|_| ());
        }
        // A cluster: each unit on its slot's master, all at once.
        let mut running = tokio::task::JoinSet::new();
        for unit in units {
            let (store, pipe, t) = (self.store.clone(), atomic(unit), self.write_timeout);
            running.spawn(async move {
                store
                    .query_within(&pipe, "apply events", Some(t))
                    .await
                    .map(|_| ())
            });
        }
        let mut result = Ok(());
        while let Some(done) = running.join_next().await {
            let done = done
                .map_err(|e| FeatureError::Runtime(format!("apply task failed: {e}")))
                .and_then(|r| r);
            if result.is_ok() {
                result = done;
            }
        }
        result
    }

    pub async fn trending(
        &self,
        now: f64,
        top: usize,
        half_life_secs: f64,
    ) -> Result<Vec<(u64, f64)>, FeatureError> {
        let Some(c) = &self.defs.trending else {
            return Ok(Vec::new());
        };
        let cur = c.bucket_of(now);
        let buckets: Vec<u64> = c.buckets(now).collect();
        let mut pipe = ::redis::pipe();
        for &b in &buckets {
            pipe.cmd("ZREVRANGE")
                .arg(c.key.render("", b))
                .arg(0)
                .arg(self.per_bucket as i64 - 1)
                .arg("WITHSCORES");
        }
        let context = "read trending";
        let replies = self.store.query(&pipe, context).await?;
        let mut acc: HashMap<u64, f64> = HashMap::new();
        for (&b, reply) in buckets.iter().zip(replies) {
            let w = bucket_decay(cur - b, c.bucket_secs, half_life_secs);
            for (item, n) in scored_members(reply).map_err(|m| reply_err(context, &m))? {
                *acc.entry(item).or_default() += w * n;
            }
        }
        Ok(top_of(acc, top))
    }
}

/// `NAME key arg`, the start of most commands here.
fn cmd3(name: &str, key: &str, arg: impl ::redis::ToRedisArgs) -> ::redis::Cmd {
    let mut c = ::redis::cmd(name);
    c.arg(key).arg(arg);
    c
}

/// `NAME key a b`.
fn cmd4(
    name: &str,
    key: &str,
    a: impl ::redis::ToRedisArgs,
    b: impl ::redis::ToRedisArgs,
) -> ::redis::Cmd {
    let mut c = cmd3(name, key, a);
    c.arg(b);
    c
}

/// (member, score) pairs of a `WITHSCORES` reply (RESP2 flat or RESP3 pairs); members that are
/// not integer ids are skipped.
fn scored_members(reply: Value) -> Result<Vec<(u64, f64)>, String> {
    let num = |v: Value| -> Option<String> {
        match v {
            Value::Double(d) => Some(d.to_string()),
            other => value_bytes(other).and_then(|b| String::from_utf8(b).ok()),
        }
    };
    let items = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(items) => items,
        Value::ServerError(e) => return Err(format!("server error: {e:?}")),
        _ => return Err("expected an array".to_owned()),
    };
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut flat = Vec::new();
    for v in items {
        match v {
            // RESP3: each entry is a [member, score] pair.
            Value::Array(pair) if pair.len() == 2 => flat.extend(pair),
            other => flat.push(other),
        }
    }
    let mut it = flat.into_iter();
    while let (Some(m), Some(s)) = (it.next(), it.next()) {
        let (Some(m), Some(s)) = (num(m), num(s)) else {
            continue;
        };
        if let (Ok(id), Ok(score)) = (m.parse::<u64>(), s.parse::<f64>()) {
            out.push((id, score));
        }
    }
    Ok(out)
}
