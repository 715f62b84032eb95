//! Streaming features that event ingestion maintains (feature-defs entries with `update`): a
//! user's recent engagements, their seen set, and item counters in time buckets. This module
//! owns how accepted events change them and how the request path reads them back, in Redis
//! ([`redis`], shared by every server) or in process ([`memory`], the no-Redis mode).
//!
//! Times are the server's ingest clock (unix seconds as f64); an event's own timestamp only
//! decides whether it is recent enough to count at all.

pub mod memory;
pub mod redis;

use super::defs::{Entity, FeatureRegistry, KeyPattern, StreamUpdate};
use super::FeatureError;

pub use self::memory::MemoryStreams;
pub use self::redis::RedisStreams;

/// Feature names the request path reads (see `feature-defs/streaming.toml`).
pub const RECENT_FEATURE: &str = "stream_recent_items";
pub const SEEN_FEATURE: &str = "stream_seen_items";
pub const TRENDING_FEATURE: &str = "stream_trending";

/// What one accepted event contributes to the streaming features.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StreamEvent {
    pub user_id: u64,
    pub item_id: u64,
    /// > 0: an engagement (recent items, trending); 0: seen only (an impression).
    pub weight: f32,
    /// The event's own time (unix seconds): an event older than a feature's ttl (or a
    /// counter's window) does not move it, so a backfill cannot pass for live activity.
    pub at: i64,
}

impl StreamEvent {
    /// Whether the event is recent enough, at ingest time `now`, for a feature keeping `secs`.
    pub fn within(&self, now: f64, secs: u64) -> bool {
        self.at as f64 >= now - secs as f64
    }
}

/// A list feature's definition: its key, cap and lifetime.
#[derive(Debug, Clone)]
pub struct ListDef {
    pub key: KeyPattern,
    pub max_len: usize,
    pub ttl_secs: u64,
}

/// A counter feature's definition.
#[derive(Debug, Clone)]
pub struct CounterDef {
    pub key: KeyPattern,
    pub bucket_secs: u64,
    pub window_secs: u64,
    pub ttl_secs: u64,
}

impl CounterDef {
    pub fn bucket_of(&self, now: f64) -> u64 {
        (now.max(0.0) as u64) / self.bucket_secs.max(1)
    }

    /// Buckets in the window ending at `now`'s, newest first.
    pub fn buckets(&self, now: f64) -> impl Iterator<Item = u64> {
        let cur = self.bucket_of(now);
        let n = (self.window_secs / self.bucket_secs.max(1)).max(1);
        (0..n).map_while(move |a| cur.checked_sub(a))
    }
}

/// The streaming features the server maintains, resolved from the registry by name. A missing
/// or differently shaped definition disables that feature (logged at start).
#[derive(Debug, Clone, Default)]
pub struct StreamDefs {
    pub recent: Option<ListDef>,
    pub seen: Option<ListDef>,
    pub trending: Option<CounterDef>,
}

impl StreamDefs {
    pub fn from_registry(registry: &FeatureRegistry) -> StreamDefs {
        let list = |name: &str, want: &str| -> Option<ListDef> {
            let d = registry.get(name)?;
            match (d.entity, d.update) {
                (Entity::User, Some(StreamUpdate::Recent { max_len })) if want == "recent" => {
                    Some(ListDef {
                        key: d.key.clone(),
                        max_len,
                        ttl_secs: d.ttl_secs,
                    })
                }
                (Entity::User, Some(StreamUpdate::Seen { max_len })) if want == "seen" => {
                    Some(ListDef {
                        key: d.key.clone(),
                        max_len,
                        ttl_secs: d.ttl_secs,
                    })
                }
                _ => {
                    tracing::warn!(
                        feature = name,
                        "streaming feature is not a user `update = \"{want}\"` feature; ignored"
                    );
                    None
                }
            }
        };
        let trending = registry.get(TRENDING_FEATURE).and_then(|d| match d.update {
            Some(StreamUpdate::Counter {
                bucket_secs,
                window_secs,
            }) if d.entity == Entity::Item => Some(CounterDef {
                key: d.key.clone(),
                bucket_secs,
                window_secs,
                ttl_secs: d.ttl_secs,
            }),
            _ => {
                tracing::warn!(
                    feature = TRENDING_FEATURE,
                    "not an item `update = \"counter\"` feature; ignored"
                );
                None
            }
        });
        StreamDefs {
            recent: list(RECENT_FEATURE, "recent"),
            seen: list(SEEN_FEATURE, "seen"),
            trending,
        }
    }
}

/// A user's streaming state as the request path reads it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamUser {
    /// Newest first, distinct.
    pub recent: Vec<u64>,
    /// Newest first; only entries younger than the seen feature's ttl.
    pub seen: Vec<u64>,
}

/// Decay weight of a bucket `age` buckets old.
pub fn bucket_decay(age: u64, bucket_secs: u64, half_life_secs: f64) -> f64 {
    if half_life_secs <= 0.0 {
        return 1.0;
    }
    0.5f64.powf(age as f64 * bucket_secs as f64 / half_life_secs)
}

/// Where the streaming features live.
pub enum StreamStore {
    Memory(MemoryStreams),
    Redis(RedisStreams),
}

impl StreamStore {
    pub fn defs(&self) -> &StreamDefs {
        match self {
            StreamStore::Memory(m) => m.defs(),
            StreamStore::Redis(r) => r.defs(),
        }
    }

    /// Applies accepted events at ingest time `now`.
    pub async fn apply(&self, events: &[StreamEvent], now: f64) -> Result<(), FeatureError> {
        match self {
            StreamStore::Memory(m) => {
                m.apply(events, now);
                Ok(())
            }
            StreamStore::Redis(r) => r.apply(events, now).await,
        }
    }

    /// The trending counters' decayed top `top` items (id, score), best first.
    pub async fn trending(
        &self,
        now: f64,
        top: usize,
        half_life_secs: f64,
    ) -> Result<Vec<(u64, f64)>, FeatureError> {
        match self {
            // In process, the half-life is the store's own (fixed at start).
            StreamStore::Memory(m) => Ok(m.trending(now, top)),
            StreamStore::Redis(r) => r.trending(now, top, half_life_secs).await,
        }
    }
}

impl StreamStore {
    /// For the in-process store, a number that changes whenever the trending top may have
    /// (so a refresh with nothing new can be skipped); None for Redis, which other servers
    /// write too.
    pub fn trending_version(&self, now: f64) -> Option<u64> {
        match self {
            StreamStore::Memory(m) => Some(m.trending_version(now)),
            StreamStore::Redis(_) => None,
        }
    }
}

/// Sorts decayed scores best first (ties by id) and keeps `top`.
pub(crate) fn top_of(scores: impl IntoIterator<Item = (u64, f64)>, top: usize) -> Vec<(u64, f64)> {
    let mut v: Vec<(u64, f64)> = scores
        .into_iter()
        .filter(|(_, s)| s.is_finite() && *s > 0.0)
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    v.truncate(top);
    v
}
