//! Redis side of online features: [`push`] writes a [`FeatureTable`] under a bundle version, and
//! [`RedisFeatureStore`] is the server's pipelined reader.
//!
//! Layout: one hash per entity and key group (field = feature name, value = [`codec`] bytes),
//! key rendered from the group's pattern with the bundle version, expiring after the group's
//! TTL. After every pipeline succeeded, the push sets [`CURRENT_VERSION_KEY`]; a failed push
//! leaves it untouched, so servers keep reading the previous complete version.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::redis::{Pipeline, Value};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use super::codec;
use super::defs::{Entity, FeatureKind, FeatureRegistry, KeyGroup, StreamUpdate};
use super::redis_conn::{ConnOptions, RedisConn};
use super::{FeatureError, FeatureRow, FeatureTable, FeatureValue};

/// Key holding the version of the last complete push.
pub const CURRENT_VERSION_KEY: &str = "funnel:current_version";

/// Tuning for [`push`].
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// Entities per pipeline (each entity costs DEL + HSET + EXPIRE per key group).
    pub entities_per_pipeline: usize,
    /// Pipelines in flight at once on the multiplexed connection.
    pub max_in_flight: usize,
    /// Per-pipeline reply timeout; large pipelines need far more than a serving read.
    pub response_timeout: Duration,
    pub connection_timeout: Duration,
    /// Set [`Self::current_version_key`] to the pushed version at the end.
    pub set_current_version: bool,
    pub current_version_key: String,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            entities_per_pipeline: 1000,
            max_in_flight: 4,
            response_timeout: Duration::from_secs(30),
            connection_timeout: Duration::from_secs(5),
            set_current_version: true,
            current_version_key: CURRENT_VERSION_KEY.to_owned(),
        }
    }
}

/// What a [`push`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushStats {
    pub version: String,
    /// Hashes written (entities × key groups with at least one value).
    pub keys: u64,
    /// Hash fields written (= values).
    pub fields: u64,
    /// Encoded value bytes (excluding keys and field names).
    pub value_bytes: u64,
    pub pipelines: u64,
    pub elapsed_ms: u64,
    /// Whether the current-version key was set.
    pub current_version_set: bool,
}

/// Rejects versions that would make ambiguous or unreadable keys.
fn validate_version(version: &str) -> Result<(), FeatureError> {
    let bad = version.is_empty()
        || version.len() > 128
        || version
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '{' || c == '}');
    if bad {
        return Err(FeatureError::InvalidVersion(version.to_owned()));
    }
    Ok(())
}

/// Writes every batch feature of `table` to Redis under `version`, then (by default) sets the
/// current-version key. `registry` must be the table's registry (same hash). Re-pushing a
/// version is idempotent: each hash is deleted before it is rewritten.
pub async fn push(
    url: &str,
    registry: &FeatureRegistry,
    table: &FeatureTable,
    version: &str,
    opts: &PushOptions,
) -> Result<PushStats, FeatureError> {
    validate_version(version)?;
    if table.registry().hash() != registry.hash() {
        return Err(FeatureError::DefsMismatch {
            expected: registry.hash().to_owned(),
            found: table.registry().hash().to_owned(),
        });
    }
    let start = Instant::now();
    let conn = RedisConn::connect(
        url,
        &ConnOptions {
            response_timeout: Some(opts.response_timeout),
            connection_timeout: Some(opts.connection_timeout),
        },
    )
    .await?;

    let mut stats = PushStats {
        version: version.to_owned(),
        ..PushStats::default()
    };
    let per_pipeline = opts.entities_per_pipeline.max(1);
    let max_in_flight = opts.max_in_flight.max(1);
    // Dropping the set on an early return aborts the pipelines still in flight.
    let mut in_flight: JoinSet<Result<(), FeatureError>> = JoinSet::new();
    for entity in Entity::ALL {
        let groups: Vec<&KeyGroup> = registry
            .key_groups(entity)
            .filter(|g| g.kind == FeatureKind::Batch)
            .collect();
        if groups.is_empty() {
            continue;
        }
        let rows: Vec<_> = table.rows(entity).collect();
        for chunk in rows.chunks(per_pipeline) {
            let mut pipe = ::redis::pipe();
            for &(id, row) in chunk {
                for group in &groups {
                    add_hash_write(&mut pipe, &mut stats, registry, group, version, id, row);
                }
            }
            if pipe.is_empty() {
                continue;
            }
            while in_flight.len() >= max_in_flight {
                join_one(&mut in_flight).await?;
            }
            let conn = conn.clone();
            in_flight
                .spawn(async move { conn.query(&pipe, "push pipeline", None).await.map(|_| ()) });
            stats.pipelines += 1;
        }
    }
    while !in_flight.is_empty() {
        join_one(&mut in_flight).await?;
    }
    if opts.set_current_version {
        let mut set = ::redis::pipe();
        set.cmd("SET").arg(&opts.current_version_key).arg(version);
        conn.query(&set, "set current version", None).await?;
        stats.current_version_set = true;
    }
    stats.elapsed_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    tracing::info!(
        version,
        keys = stats.keys,
        fields = stats.fields,
        value_bytes = stats.value_bytes,
        pipelines = stats.pipelines,
        elapsed_ms = stats.elapsed_ms,
        "pushed online features to redis"
    );
    Ok(stats)
}

/// Appends DEL + HSET + EXPIRE for one entity's hash of `group`, if it has any value.
fn add_hash_write(
    pipe: &mut Pipeline,
    stats: &mut PushStats,
    registry: &FeatureRegistry,
    group: &KeyGroup,
    version: &str,
    id: u64,
    row: &[Option<super::FeatureValue>],
) {
    let mut hset = ::redis::cmd("HSET");
    let key = group.key.render(version, id);
    hset.arg(&key);
    let mut fields = 0u64;
    for &index in &group.features {
        let Some(value) = registry
            .slot(index)
            .and_then(|slot| row.get(slot))
            .and_then(Option::as_ref)
        else {
            continue;
        };
        let bytes = codec::encode(value);
        stats.value_bytes += bytes.len() as u64;
        hset.arg(&registry.defs()[index].name).arg(bytes);
        fields += 1;
    }
    if fields == 0 {
        return;
    }
    // DEL first so a re-push of the same version leaves no stale fields behind.
    pipe.cmd("DEL").arg(&key).ignore();
    pipe.add_command(hset).ignore();
    pipe.cmd("EXPIRE").arg(&key).arg(group.ttl_secs).ignore();
    stats.keys += 1;
    stats.fields += fields;
}

async fn join_one(set: &mut JoinSet<Result<(), FeatureError>>) -> Result<(), FeatureError> {
    match set.join_next().await {
        None | Some(Ok(Ok(()))) => Ok(()),
        Some(Ok(Err(e))) => Err(e),
        Some(Err(e)) => Err(FeatureError::Runtime(format!("push task failed: {e}"))),
    }
}

/// Runs `fut` to completion on a fresh current-thread tokio runtime, for synchronous callers
/// such as the index-builder. Errors (instead of panicking) when called from inside a runtime.
pub fn block_on<F: Future>(fut: F) -> Result<F::Output, FeatureError> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(FeatureError::Runtime(
            "block_on called inside an async runtime; await the async API instead".to_owned(),
        ));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| FeatureError::Runtime(e.to_string()))?;
    Ok(runtime.block_on(fut))
}

/// [`push`] for synchronous callers (see [`block_on`]).
pub fn push_blocking(
    url: &str,
    registry: &FeatureRegistry,
    table: &FeatureTable,
    version: &str,
    opts: &PushOptions,
) -> Result<PushStats, FeatureError> {
    block_on(push(url, registry, table, version, opts))?
}

/// Connection settings for [`RedisFeatureStore`].
#[derive(Debug, Clone)]
pub struct RedisStoreOptions {
    /// Reply timeout for one `get_many` pipeline; keep it within the request's latency budget.
    pub response_timeout: Option<Duration>,
    pub connection_timeout: Option<Duration>,
    pub current_version_key: String,
}

impl Default for RedisStoreOptions {
    fn default() -> Self {
        RedisStoreOptions {
            response_timeout: Some(Duration::from_millis(500)),
            connection_timeout: Some(Duration::from_secs(1)),
            current_version_key: CURRENT_VERSION_KEY.to_owned(),
        }
    }
}

struct Shared {
    conn: RedisConn,
    registry: FeatureRegistry,
    current_version_key: String,
}

/// The server's Redis reader: one connection shared by all requests (cheap to clone) — to one
/// server, re-established once per failed request if Redis dropped it, or to a cluster
/// ([`RedisConn`]).
///
/// Returns only what is stored: `None` for an entity with no hash (or an empty one); fields
/// unknown to the registry are ignored (written under newer defs), and fields whose bytes do
/// not decode are dropped with a warning so one bad value cannot fail a request. Callers
/// apply defaults with [`FeatureRegistry::value_or_default`].
#[derive(Clone)]
pub struct RedisFeatureStore {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RedisFeatureStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisFeatureStore")
            .field("defs_hash", &self.shared.registry.hash())
            .finish_non_exhaustive()
    }
}

impl RedisFeatureStore {
    /// Connects with [`RedisStoreOptions::default`].
    pub async fn connect(
        url: &str,
        registry: &FeatureRegistry,
    ) -> Result<RedisFeatureStore, FeatureError> {
        Self::connect_with(url, registry, &RedisStoreOptions::default()).await
    }

    pub async fn connect_with(
        url: &str,
        registry: &FeatureRegistry,
        opts: &RedisStoreOptions,
    ) -> Result<RedisFeatureStore, FeatureError> {
        let conn = RedisConn::connect(
            url,
            &ConnOptions {
                response_timeout: opts.response_timeout,
                connection_timeout: opts.connection_timeout,
            },
        )
        .await?;
        Ok(RedisFeatureStore {
            shared: Arc::new(Shared {
                conn,
                registry: registry.clone(),
                current_version_key: opts.current_version_key.clone(),
            }),
        })
    }

    pub fn registry(&self) -> &FeatureRegistry {
        &self.shared.registry
    }

    /// The version of the last complete push, if any.
    pub async fn current_version(&self) -> Result<Option<String>, FeatureError> {
        let mut pipe = ::redis::pipe();
        pipe.cmd("GET").arg(&self.shared.current_version_key);
        let context = "GET current version";
        let reply = self
            .query(&pipe, context)
            .await?
            .into_iter()
            .next()
            .unwrap_or(Value::Nil);
        match reply {
            Value::Nil => Ok(None),
            other => match value_bytes(other) {
                Some(b) => String::from_utf8(b)
                    .map(Some)
                    .map_err(|_| reply_err(context, "not UTF-8")),
                None => Err(reply_err(context, "not a string")),
            },
        }
    }

    /// Stored features of one entity under `version`.
    pub async fn get(
        &self,
        entity: Entity,
        id: u64,
        version: &str,
    ) -> Result<Option<FeatureRow>, FeatureError> {
        Ok(self
            .get_many(entity, &[id], version)
            .await?
            .into_iter()
            .next()
            .flatten())
    }

    /// Stored features of many entities under `version`, in the order of `ids`: one pipeline
    /// of one HGETALL per id and key group of `entity` (batch and streaming).
    pub async fn get_many(
        &self,
        entity: Entity,
        ids: &[u64],
        version: &str,
    ) -> Result<Vec<Option<FeatureRow>>, FeatureError> {
        validate_version(version)?;
        let registry = &self.shared.registry;
        // Counter groups are one key per time bucket, not per entity: read as top lists.
        let groups: Vec<(&KeyGroup, Option<StreamUpdate>)> = registry
            .key_groups(entity)
            .map(|g| (g, registry.defs()[g.features[0]].update))
            .filter(|(_, u)| !matches!(u, Some(StreamUpdate::Counter { .. })))
            .collect();
        if ids.is_empty() || groups.is_empty() {
            return Ok(vec![None; ids.len()]);
        }
        let now = unix_now_f64();
        let mut pipe = ::redis::pipe();
        for &id in ids {
            for (group, update) in &groups {
                let key = group.key.render(version, id);
                match update {
                    None => {
                        pipe.cmd("HGETALL").arg(key);
                    }
                    Some(StreamUpdate::Recent { max_len }) => {
                        pipe.cmd("LRANGE").arg(key).arg(0).arg(*max_len as i64 - 1);
                    }
                    Some(StreamUpdate::Seen { max_len }) => {
                        // Entries older than the feature's ttl are forgotten even before the
                        // next write trims them.
                        pipe.cmd("ZREVRANGEBYSCORE")
                            .arg(key)
                            .arg("+inf")
                            .arg(format!("({}", now - group.ttl_secs as f64))
                            .arg("LIMIT")
                            .arg(0)
                            .arg(*max_len);
                    }
                    Some(StreamUpdate::Counter { .. }) => {}
                }
            }
        }
        let context = "read features";
        let replies = self.query(&pipe, context).await?;
        if replies.len() != ids.len() * groups.len() {
            return Err(reply_err(
                context,
                &format!(
                    "{} replies for {} commands",
                    replies.len(),
                    ids.len() * groups.len()
                ),
            ));
        }
        let mut replies = replies.into_iter();
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            let mut row = FeatureRow::new();
            for (group, update) in &groups {
                let reply = replies.next().unwrap_or(Value::Nil);
                if update.is_some() {
                    let index = group.features[0];
                    let list = id_list(reply).map_err(|m| reply_err(context, &m))?;
                    if !list.is_empty() {
                        row.insert(registry.name_arc(index), FeatureValue::I64List(list));
                    }
                    continue;
                }
                let pairs = hash_pairs(reply).map_err(|m| reply_err(context, &m))?;
                for (field, bytes) in pairs {
                    // Unknown fields come from newer defs, or belong to another group: skip.
                    let Some(index) = std::str::from_utf8(&field)
                        .ok()
                        .and_then(|f| registry.index_of(f))
                        .filter(|i| group.features.contains(i))
                    else {
                        continue;
                    };
                    let def = &registry.defs()[index];
                    match codec::decode(&def.dtype, &bytes) {
                        Ok(value) => {
                            row.insert(registry.name_arc(index), value);
                        }
                        Err(e) => tracing::warn!(
                            feature = %def.name,
                            %entity,
                            id,
                            version,
                            error = %e,
                            "dropping undecodable feature value from redis"
                        ),
                    }
                }
            }
            out.push((!row.is_empty()).then_some(row));
        }
        Ok(out)
    }

    /// Runs `pipe`, reconnecting and retrying once if the connection was lost.
    pub(crate) async fn query(
        &self,
        pipe: &Pipeline,
        context: &str,
    ) -> Result<Vec<Value>, FeatureError> {
        self.query_within(pipe, context, None).await
    }

    /// [`Self::query`] with its own reply timeout (a write pipeline far larger than a read).
    pub(crate) async fn query_within(
        &self,
        pipe: &Pipeline,
        context: &str,
        reply_timeout: Option<Duration>,
    ) -> Result<Vec<Value>, FeatureError> {
        self.shared.conn.query(pipe, context, reply_timeout).await
    }

    /// Whether the store is a Redis Cluster (writes that must be atomic keep to one slot).
    pub fn is_cluster(&self) -> bool {
        self.shared.conn.is_cluster()
    }
}

pub(crate) fn reply_err(context: &str, message: &str) -> FeatureError {
    FeatureError::RedisReply {
        context: context.to_owned(),
        message: message.to_owned(),
    }
}

pub(crate) fn value_bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.into_bytes()),
        _ => None,
    }
}

/// Wall-clock unix time in seconds (streaming features are kept in ingest time).
pub(crate) fn unix_now_f64() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The ids of a LRANGE / ZRANGE reply, in order; members that are not integers (written by
/// something else) are skipped.
fn id_list(reply: Value) -> Result<Vec<i64>, String> {
    let items = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(items) | Value::Set(items) => items,
        Value::ServerError(e) => return Err(format!("server error: {e:?}")),
        _ => return Err("expected a list".to_owned()),
    };
    Ok(items
        .into_iter()
        .filter_map(value_bytes)
        .filter_map(|b| std::str::from_utf8(&b).ok()?.parse::<i64>().ok())
        .collect())
}

/// One hash field and its value, as raw bytes.
type FieldBytes = (Vec<u8>, Vec<u8>);

/// Field/value pairs of an HGETALL reply (RESP2 flat array or RESP3 map; nil = no hash).
fn hash_pairs(reply: Value) -> Result<Vec<FieldBytes>, String> {
    let pairs: Vec<(Value, Value)> = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Map(pairs) => pairs,
        Value::Array(items) => {
            if items.len() % 2 != 0 {
                return Err(format!(
                    "hash reply with an odd number ({}) of items",
                    items.len()
                ));
            }
            let mut it = items.into_iter();
            let mut pairs = Vec::new();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                pairs.push((k, v));
            }
            pairs
        }
        Value::ServerError(e) => return Err(format!("server error: {e:?}")),
        _ => return Err("expected a hash".to_owned()),
    };
    pairs
        .into_iter()
        .map(|(k, v)| match (value_bytes(k), value_bytes(v)) {
            (Some(k), Some(v)) => Ok((k, v)),
            _ => Err("hash field or value is not a string".to_owned()),
        })
        .collect()
}
