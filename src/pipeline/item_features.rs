//! The item-feature stage: online overrides of the candidates' item features (flags,
//! promotion, popularity, trending, publish time) from Redis through its cache, and the
//! item-facts view later stages read (the bundle's catalog with the overrides on top).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::breaker::Breaker;
use crate::bundle::Bundle;
use crate::features::online::{ItemOverride, RedisOnline};
use crate::merge::Candidate;
use crate::observe::metrics::{Metrics, RedisFailure};
use crate::rerank::{ItemFacts, ItemFactsSource};
use crate::ItemIdx;

pub type Overrides = HashMap<ItemIdx, ItemOverride>;

pub struct ItemFeatureStage {
    redis: Option<Arc<RedisOnline>>,
    /// The user-feature stage's breaker: one view of Redis's health.
    breaker: Arc<Breaker>,
    slice: Duration,
    metrics: Arc<Metrics>,
}

impl ItemFeatureStage {
    pub fn new(
        redis: Option<Arc<RedisOnline>>,
        breaker: Arc<Breaker>,
        features_ms: u64,
        metrics: Arc<Metrics>,
    ) -> Self {
        ItemFeatureStage {
            redis,
            breaker,
            slice: Duration::from_millis(features_ms),
            metrics,
        }
    }

    /// The overrides, and whether they may be stale (Redis down or late: cache or none).
    pub async fn fetch(
        &self,
        bundle: &Bundle,
        cands: &[Candidate],
        deadline: Instant,
    ) -> (Overrides, bool) {
        let Some(r) = &self.redis else {
            return (HashMap::new(), false);
        };
        let items: Vec<ItemIdx> = cands.iter().map(|c| c.item).collect();
        let ids: Vec<u64> = items
            .iter()
            .filter_map(|&i| bundle.catalog.get(i).map(|it| it.id))
            .collect();
        // The user-feature fetch is the breaker's probe; items only go to Redis when it is closed.
        if !self.breaker.is_closed() {
            let cached = r.cached_only(&ids);
            return (items.into_iter().zip(cached).collect(), true);
        }
        let slice = (Instant::now() + self.slice).min(deadline);
        match tokio::time::timeout_at(slice.into(), r.items(&ids)).await {
            Ok(Ok((o, asked))) => {
                // All cache hits say nothing about Redis's health.
                if asked {
                    self.breaker.record(true);
                }
                (items.into_iter().zip(o).collect(), false)
            }
            failed => {
                self.breaker.record(false);
                self.metrics.observe_redis_failure(match failed {
                    Err(_) => RedisFailure::Timeout,
                    Ok(_) => RedisFailure::Error,
                });
                (HashMap::new(), true)
            }
        }
    }
}

/// The re-rank rules' view of items: the bundle's catalog with online overrides on top.
pub struct ItemView<'a> {
    pub bundle: &'a Bundle,
    pub overrides: &'a HashMap<ItemIdx, ItemOverride>,
}

impl ItemFactsSource for ItemView<'_> {
    fn facts(&self, item: ItemIdx) -> Option<ItemFacts<'_>> {
        let it = self.bundle.catalog.get(item)?;
        let o = self.overrides.get(&item).copied().unwrap_or_default();
        Some(ItemFacts {
            flagged: o.flagged.unwrap_or(it.flagged),
            promoted: o.promoted.unwrap_or(it.promoted),
            published_at: o.published_at.unwrap_or(it.published_at),
            categories: &it.categories,
            creator_id: it.creator_id,
        })
    }
}
