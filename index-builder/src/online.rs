//! Builder-side glue for online features: pushing to Redis, and checking the push through the
//! server's own read path. The schema, codec and stores themselves live in `funnel::features`,
//! shared with the server.

pub use funnel::features::{
    Entity, FeatureError, FeatureRegistry, FeatureStats, FeatureTable, FeatureValue, PushOptions,
    PushStats, RedisFeatureStore,
};
use serde::{Deserialize, Serialize};

/// Pushes every batch feature of `table` to Redis under `version` with default
/// [`PushOptions`] (1000 entities per pipeline), then sets `funnel:current_version`.
pub fn push_to_redis_blocking(
    url: &str,
    registry: &FeatureRegistry,
    table: &FeatureTable,
    version: &str,
) -> Result<PushStats, FeatureError> {
    push_to_redis_blocking_with(url, registry, table, version, &PushOptions::default())
}

pub fn push_to_redis_blocking_with(
    url: &str,
    registry: &FeatureRegistry,
    table: &FeatureTable,
    version: &str,
    opts: &PushOptions,
) -> Result<PushStats, FeatureError> {
    funnel::features::push_blocking(url, registry, table, version, opts)
}

/// Result of [`verify_redis_blocking`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Entities read back.
    pub checked: u64,
    /// Entities whose Redis features differ from the table.
    pub mismatched: u64,
    /// Up to [`MAX_EXAMPLES`] human-readable differences.
    pub examples: Vec<String>,
}

/// Cap on [`VerifyReport::examples`].
pub const MAX_EXAMPLES: usize = 10;

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.mismatched == 0
    }
}

/// Reads back up to `sample_per_entity` evenly spaced users and items with
/// [`RedisFeatureStore`] (exactly what the server does) and compares them with `table`, so a
/// key, codec or version mix-up fails the build instead of serving defaults.
pub fn verify_redis_blocking(
    url: &str,
    registry: &FeatureRegistry,
    table: &FeatureTable,
    version: &str,
    sample_per_entity: usize,
) -> Result<VerifyReport, FeatureError> {
    funnel::features::block_on(verify(url, registry, table, version, sample_per_entity))?
}

async fn verify(
    url: &str,
    registry: &FeatureRegistry,
    table: &FeatureTable,
    version: &str,
    sample_per_entity: usize,
) -> Result<VerifyReport, FeatureError> {
    const READ_CHUNK: usize = 500;
    let store = RedisFeatureStore::connect(url, registry).await?;
    let mut report = VerifyReport::default();
    for entity in Entity::ALL {
        let count = table.entity_count(entity);
        if count == 0 || sample_per_entity == 0 {
            continue;
        }
        let stride = count.div_ceil(sample_per_entity).max(1);
        let ids: Vec<u64> = table.ids(entity).step_by(stride).collect();
        for chunk in ids.chunks(READ_CHUNK) {
            let rows = store.get_many(entity, chunk, version).await?;
            for (&id, got) in chunk.iter().zip(rows) {
                report.checked += 1;
                let mut diffs = Vec::new();
                for def in registry.for_entity(entity) {
                    let want = table.get(entity, id, &def.name);
                    let have = got.as_ref().and_then(|r| r.get(def.name.as_str()));
                    let same = match (want, have) {
                        (Some(w), Some(h)) => w.same_as(h),
                        (None, None) => true,
                        // Streaming features are not in the table; Redis may hold them.
                        (None, Some(_)) => def.kind != funnel::features::FeatureKind::Batch,
                        (Some(_), None) => false,
                    };
                    if !same {
                        diffs.push(format!("{}: table {want:?}, redis {have:?}", def.name));
                    }
                }
                if !diffs.is_empty() {
                    report.mismatched += 1;
                    if report.examples.len() < MAX_EXAMPLES {
                        report.examples.push(format!(
                            "{entity} {id}: {}",
                            truncate(&diffs.join("; "), 300)
                        ));
                    }
                }
            }
        }
    }
    Ok(report)
}

fn truncate(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max_chars).collect();
    out.push('…');
    out
}
