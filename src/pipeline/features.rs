//! The user-feature stage: the user's online features from Redis under its time slice and
//! breaker, else the bundle's embedded (nightly, so stale) copy; without Redis, the embedded copy
//! with the in-process streaming features on top.

use std::sync::Arc;
use std::time::Duration;

use crate::breaker::Breaker;
use crate::bundle::Bundle;
use crate::features::online::{RedisOnline, UserFeatures};
use crate::features::redis::unix_now_f64;
use crate::features::streaming::StreamStore;
use crate::features::Entity;
use crate::observe::metrics::{Metrics, RedisFailure};

/// What the stage found.
#[derive(Debug, Default)]
pub struct UserLookup {
    /// None: an unknown (cold) user, or no user id.
    pub features: Option<UserFeatures>,
    /// The online store failed or was late: these are the bundle's features.
    pub stale: bool,
}

pub struct FeatureStage {
    redis: Option<Arc<RedisOnline>>,
    /// Shared with the item-feature stage and the live trending refresh.
    breaker: Arc<Breaker>,
    streams: Arc<StreamStore>,
    slice: Duration,
    metrics: Arc<Metrics>,
}

impl FeatureStage {
    pub fn new(
        redis: Option<Arc<RedisOnline>>,
        breaker: Arc<Breaker>,
        streams: Arc<StreamStore>,
        features_ms: u64,
        metrics: Arc<Metrics>,
    ) -> Self {
        FeatureStage {
            redis,
            breaker,
            streams,
            slice: Duration::from_millis(features_ms),
            metrics,
        }
    }

    pub async fn fetch(&self, bundle: &Bundle, id: Option<u64>) -> UserLookup {
        let Some(id) = id else {
            return UserLookup::default();
        };
        let embedded = || {
            bundle
                .features
                .as_ref()
                .and_then(|s| s.get(Entity::User, id))
                .map(UserFeatures::from_row)
        };
        let Some(r) = &self.redis else {
            let mut f = embedded();
            if let StreamStore::Memory(m) = &*self.streams {
                if let Some(s) = m.user(id, unix_now_f64()) {
                    f = Some(f.unwrap_or_default().with_stream(s));
                }
            }
            return UserLookup {
                features: f,
                stale: false,
            };
        };
        let stale = || UserLookup {
            features: embedded(),
            stale: true,
        };
        if !self.breaker.allow() {
            return stale();
        }
        let got = tokio::time::timeout(self.slice, r.user(id)).await;
        self.breaker.record(matches!(got, Ok(Ok(_))));
        match got {
            Ok(Ok(u)) => UserLookup {
                features: u,
                stale: false,
            },
            Ok(Err(e)) => {
                self.metrics.observe_redis_failure(RedisFailure::Error);
                tracing::debug!(error = %e, "user features from redis failed; using the bundle's");
                stale()
            }
            Err(_) => {
                self.metrics.observe_redis_failure(RedisFailure::Timeout);
                tracing::debug!("user features from redis timed out; using the bundle's");
                stale()
            }
        }
    }
}
