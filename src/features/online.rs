//! The server's read side of online features: a user's features and per-item overrides, from
//! Redis (pipelined, through the multiplexed connection; hot item rows cached in moka with a TTL)
//! or from the bundle's embedded store. Values are decoded once into typed structs here so the
//! request path never touches feature names.

use std::collections::BTreeMap;
use std::time::Duration;

use super::streaming::{StreamUser, RECENT_FEATURE, SEEN_FEATURE};
use super::{Entity, FeatureError, FeatureRow, RedisFeatureStore};
use crate::ranking::input::ENGAGEMENT_FEATURES;

/// Whether a stored user embedding is one to serve: all-zero (never trained) or non-finite
/// vectors count as none. The builder encodes its training rows by the same rule.
pub fn usable_embedding(v: &[f32]) -> bool {
    v.iter().any(|x| *x != 0.0) && v.iter().all(|x| x.is_finite())
}

/// The user features the request path uses (absent features take their declared defaults).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserFeatures {
    /// None when absent or all zeros (the declared default: no embedding known).
    pub embedding: Option<Vec<f32>>,
    /// Item ids, newest first.
    pub recent_items: Vec<u64>,
    pub category_prefs: BTreeMap<String, f32>,
    pub history_len: u32,
    /// Unix time of the user's last interaction the build saw (None = unknown).
    pub last_active_at: Option<i64>,
    /// Nightly batch top-k item ids, best first.
    pub batch_recs: Vec<u64>,
    /// Streaming: items engaged with since the build, newest first (from event ingestion).
    pub stream_recent: Vec<u64>,
    /// Streaming: items recently shown or used, to be suppressed.
    pub seen: Vec<u64>,
}

impl UserFeatures {
    pub fn from_row(row: &FeatureRow) -> Self {
        let embedding = row
            .get("user_embedding")
            .and_then(|v| v.as_f32_slice())
            .filter(|v| usable_embedding(v))
            .map(<[f32]>::to_vec);
        let ids = |name: &str| -> Vec<u64> {
            row.get(name)
                .and_then(|v| v.as_i64_slice())
                .map(|s| s.iter().filter_map(|&i| u64::try_from(i).ok()).collect())
                .unwrap_or_default()
        };
        UserFeatures {
            embedding,
            recent_items: ids("recent_items"),
            category_prefs: row
                .get("category_prefs")
                .and_then(|v| v.as_f32_map())
                .cloned()
                .unwrap_or_default(),
            history_len: row
                .get("history_len")
                .and_then(|v| v.as_i64())
                .map(|n| n.clamp(0, u32::MAX as i64) as u32)
                .unwrap_or(0),
            // 0 is the declared default: unknown.
            last_active_at: row
                .get("last_active_at")
                .and_then(|v| v.as_i64())
                .filter(|&t| t > 0),
            batch_recs: ids("batch_recs"),
            stream_recent: ids(RECENT_FEATURE),
            seen: ids(SEEN_FEATURE),
        }
    }

    /// Whether the nightly build knew the user (anything beyond streamed events).
    pub fn from_build(&self) -> bool {
        self.embedding.is_some()
            || self.history_len > 0
            || !self.recent_items.is_empty()
            || !self.category_prefs.is_empty()
            || !self.batch_recs.is_empty()
    }

    /// Takes the in-process streaming state (the no-Redis mode).
    pub fn with_stream(mut self, s: StreamUser) -> Self {
        self.stream_recent = s.recent;
        self.seen = s.seen;
        self
    }
}

/// Online values of an item that override the bundle's (e.g. a policy flag set after the build).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ItemOverride {
    pub flagged: Option<bool>,
    pub promoted: Option<bool>,
    pub popularity: Option<f32>,
    pub trending: Option<f32>,
    pub published_at: Option<i64>,
    /// Per [`ENGAGEMENT_FEATURES`]: the item's decayed engagement rate.
    pub engagement: [Option<f32>; ENGAGEMENT_FEATURES.len()],
}

impl ItemOverride {
    pub fn from_row(row: &FeatureRow) -> Self {
        ItemOverride {
            flagged: row.get("flagged").and_then(|v| v.as_bool()),
            promoted: row.get("promoted").and_then(|v| v.as_bool()),
            popularity: row.get("popularity").and_then(|v| v.as_f32()),
            trending: row.get("trending").and_then(|v| v.as_f32()),
            published_at: row.get("published_at").and_then(|v| v.as_i64()),
            engagement: ENGAGEMENT_FEATURES.map(|n| row.get(n).and_then(|v| v.as_f32())),
        }
    }
}

/// Redis-backed online features for one bundle version.
pub struct RedisOnline {
    store: RedisFeatureStore,
    version: String,
    /// item id → its override (a default override for ids Redis has no row for).
    items: moka::sync::Cache<u64, ItemOverride>,
}

impl RedisOnline {
    /// Whether the store is a Redis Cluster (for `/readyz`).
    pub fn is_cluster(&self) -> bool {
        self.store.is_cluster()
    }

    pub fn new(
        store: RedisFeatureStore,
        version: &str,
        cache_ttl: Duration,
        capacity: u64,
    ) -> Self {
        RedisOnline {
            store,
            version: version.to_owned(),
            items: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(cache_ttl)
                .build(),
        }
    }

    pub async fn user(&self, id: u64) -> Result<Option<UserFeatures>, FeatureError> {
        Ok(self
            .store
            .get(Entity::User, id, &self.version)
            .await?
            .map(|row| UserFeatures::from_row(&row)))
    }

    /// Overrides for `ids` (same order): cached rows first, one pipeline for the misses. The flag
    /// says whether Redis was asked (false when the cache had every item).
    pub async fn items(&self, ids: &[u64]) -> Result<(Vec<ItemOverride>, bool), FeatureError> {
        let mut out: Vec<Option<ItemOverride>> = ids.iter().map(|id| self.items.get(id)).collect();
        let misses: Vec<u64> = ids
            .iter()
            .zip(&out)
            .filter(|(_, o)| o.is_none())
            .map(|(id, _)| *id)
            .collect();
        let asked = !misses.is_empty();
        if asked {
            let rows = self
                .store
                .get_many(Entity::Item, &misses, &self.version)
                .await?;
            let mut fetched = misses.iter().zip(rows).map(|(id, row)| {
                let o = row.as_ref().map(ItemOverride::from_row).unwrap_or_default();
                self.items.insert(*id, o);
                o
            });
            for slot in out.iter_mut().filter(|o| o.is_none()) {
                *slot = fetched.next();
            }
        }
        Ok((
            out.into_iter().map(Option::unwrap_or_default).collect(),
            asked,
        ))
    }

    /// Overrides from the cache alone (defaults where nothing is cached): while Redis is down.
    pub fn cached_only(&self, ids: &[u64]) -> Vec<ItemOverride> {
        ids.iter()
            .map(|id| self.items.get(id).unwrap_or_default())
            .collect()
    }

    /// Reachability check for `/readyz`.
    pub async fn ping(&self) -> Result<(), FeatureError> {
        self.store.current_version().await.map(|_| ())
    }

    pub fn cached_items(&self) -> u64 {
        self.items.entry_count()
    }

    /// Up to `limit` ids cached now: the hot set, to warm another version's cache with.
    pub fn cached_ids(&self, limit: usize) -> Vec<u64> {
        self.items.iter().take(limit).map(|(id, _)| *id).collect()
    }

    /// Reads `ids` into the cache, `chunk` per pipeline; returns how many it read.
    pub async fn prefetch(&self, ids: &[u64], chunk: usize) -> Result<usize, FeatureError> {
        let mut n = 0;
        for c in ids.chunks(chunk.max(1)) {
            self.items(c).await?;
            n += c.len();
        }
        Ok(n)
    }
}
