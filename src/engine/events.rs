//! The engine's side of event ingestion: `POST /v1/events` (validate → durable log → streaming
//! features) and the background refresh that moves the trending source with the live counters.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{EventsConfig, FsyncMode};
use crate::events::api::{parse_batch, EventsResponse};
use crate::events::ingest::{IngestError, IngestOptions, Ingestor};
use crate::events::log::{FsyncPolicy, LogOptions};
use crate::features::redis::unix_now_f64;
use crate::features::streaming::{StreamEvent, StreamStore};
use crate::observe::metrics::RedisFailure;
use crate::sources::ScoredItem;

use super::Engine;
use crate::api::{ApiError, ErrorCode};

/// Failed live trending refreshes in a row after which the build's list serves alone.
const STALE_AFTER_FAILURES: u64 = 20;

/// Event ingestion's state, for `/readyz`.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct EventsState {
    pub enabled: bool,
    /// Events appended to the log by this process, retries dropped, group commits, failures.
    pub appended: u64,
    pub duplicates: u64,
    pub commits: u64,
    pub failures: u64,
    /// `event_id`s remembered from the log at start.
    pub recovered_ids: usize,
    /// Where the streaming features live: "redis" or "memory".
    #[schema(value_type = String, pattern = "^(redis|memory)$")]
    pub stream_store: &'static str,
    /// Live trending refreshes that failed in a row.
    pub trending_refresh_failures: u64,
}

/// Opens the event log the config names.
pub(super) fn open_log(cfg: &EventsConfig) -> Result<Ingestor, IngestError> {
    let fsync = match cfg.fsync {
        FsyncMode::Always => FsyncPolicy::Always,
        FsyncMode::Interval => FsyncPolicy::Interval(cfg.fsync_interval_ms),
        FsyncMode::Never => FsyncPolicy::Never,
    };
    let ing = Ingestor::start(
        Path::new(&cfg.log_dir),
        IngestOptions {
            log: LogOptions {
                segment_bytes: cfg.segment_mb.saturating_mul(1 << 20),
                fsync,
            },
            dedupe_window: Duration::from_secs(cfg.dedupe_window_s),
            dedupe_capacity: cfg.dedupe_capacity,
            queue: cfg.queue,
        },
    )?;
    tracing::info!(
        dir = %cfg.log_dir,
        recovered_ids = ing.recovered_ids,
        fsync = ?cfg.fsync,
        "event log open"
    );
    Ok(ing)
}

impl Engine {
    /// `POST /v1/events`: validates each event, appends the good ones durably (retried
    /// `event_id`s once), then moves the streaming features. Answers only after the log holds
    /// the events.
    pub async fn ingest(self: &Arc<Self>, body: &[u8]) -> Result<EventsResponse, ApiError> {
        let Some(ing) = &self.shared.ingestor else {
            return Err(ApiError::new(
                ErrorCode::EventsDisabled,
                "event ingestion is disabled on this server (events.enabled = false)",
            ));
        };
        let now = unix_now_f64();
        let catalog = &self.bundle.catalog;
        let known = |id: u64| catalog.idx(id).is_some();
        let mut batch = parse_batch(body, self.cfg.events.max_batch, now as i64, &known)?;
        // Each event counts for an experiment arm: the one that served its request_id, else
        // the user's; the log records which.
        let attributed: Vec<(usize, bool)> = match self.shared.experiment() {
            Some(exp) => batch
                .events
                .iter_mut()
                .map(|e| {
                    let (arm, by_request) =
                        exp.attribute(e.request_id.as_deref(), &e.user_id.to_string());
                    e.arm = Some(exp.label(arm));
                    (arm, by_request)
                })
                .collect(),
            None => Vec::new(),
        };
        let types: Vec<String> = match attributed.is_empty() {
            true => Vec::new(),
            false => batch.events.iter().map(|e| e.event_type.clone()).collect(),
        };
        // What the streaming features need, taken before the events move into the log writer.
        let candidates: Vec<StreamEvent> = batch
            .events
            .iter()
            .map(|e| StreamEvent {
                user_id: e.user_id,
                item_id: e.item_id,
                weight: e.weight,
                at: e.timestamp,
            })
            .collect();
        let fresh = ing.submit(batch.events).await.map_err(|e| {
            let code = match e {
                IngestError::Busy(_) => ErrorCode::Overloaded,
                _ => ErrorCode::EventLogUnavailable,
            };
            ApiError::new(
                code,
                format!("{e}; nothing in this batch was recorded, retry it"),
            )
        })?;
        let stream: Vec<StreamEvent> = candidates
            .into_iter()
            .zip(&fresh)
            .filter(|(_, new)| **new)
            .map(|(e, _)| e)
            .collect();
        if let Some(exp) = self.shared.experiment() {
            for (((arm, by_request), t), new) in attributed.iter().zip(&types).zip(&fresh) {
                if *new {
                    exp.record_event(*arm, t, *by_request);
                }
            }
        }
        let accepted = stream.len();
        let features_updated = self.apply_streams(&stream, now).await;
        self.shared
            .metrics
            .observe_events(accepted, fresh.len() - accepted, batch.rejected.len());
        Ok(EventsResponse {
            accepted,
            duplicates: fresh.len() - accepted,
            rejected: batch.rejected,
            features_updated,
        })
    }

    /// Moves the streaming features; false when the online store could not take them.
    async fn apply_streams(&self, events: &[StreamEvent], now: f64) -> bool {
        if events.is_empty() {
            return true;
        }
        if let StreamStore::Redis(_) = &*self.shared.streams {
            if !self.shared.events_breaker.allow() {
                return false;
            }
            let limit = Duration::from_millis(self.cfg.events.apply_timeout_ms);
            let got = tokio::time::timeout(limit, self.shared.streams.apply(events, now)).await;
            let ok = matches!(got, Ok(Ok(())));
            self.shared.events_breaker.record(ok);
            match got {
                Ok(Ok(())) => {}
                Ok(Err(_)) => self
                    .shared
                    .metrics
                    .observe_redis_failure(RedisFailure::Error),
                Err(_) => self
                    .shared
                    .metrics
                    .observe_redis_failure(RedisFailure::Timeout),
            }
            if !ok {
                tracing::warn!(
                    events = events.len(),
                    "streaming features not updated (redis); the events are logged"
                );
            }
            return ok;
        }
        self.shared.streams.apply(events, now).await.is_ok()
    }

    /// Recomputes the live trending list from the counters and blends it into the trending
    /// source. Returns how many live items it used.
    pub async fn refresh_trending(&self) -> Result<usize, String> {
        let Some(src) = &self.trending else {
            return Ok(0);
        };
        if self.shared.streams.defs().trending.is_none() {
            return Ok(0);
        }
        if matches!(*self.shared.streams, StreamStore::Redis(_))
            && !self.shared.redis_breaker.is_closed()
        {
            return Err("redis circuit open".into());
        }
        let ev = &self.cfg.events;
        // Nothing counted and nothing expired since the last refresh: the blend stands.
        let version = self.shared.streams.trending_version(unix_now_f64());
        if version.is_some() && version == Some(self.trending_version.load(Ordering::Relaxed)) {
            return Ok(0);
        }
        let top = tokio::time::timeout(
            Duration::from_millis(self.cfg.features.redis_timeout_ms.max(100)),
            self.shared
                .streams
                .trending(unix_now_f64(), ev.trending_top, ev.trending_half_life_s),
        )
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())?;
        let live: Vec<ScoredItem> = top
            .iter()
            .filter_map(|&(id, score)| {
                Some(ScoredItem {
                    item: self.bundle.catalog.idx(id)?,
                    score: score as f32,
                })
            })
            .collect();
        let n = live.len();
        // O(live items): the blend is an overlay on the build's list.
        src.set_live(&live, ev.trending_weight);
        if let Some(v) = version {
            self.trending_version.store(v, Ordering::Relaxed);
        }
        Ok(n)
    }

    /// One step of the background work (the live trending refresh); the deployment calls it
    /// on the served version every `events.trending_refresh_ms`.
    pub async fn trending_tick(&self) {
        if self.trending.is_none() || self.shared.streams.defs().trending.is_none() {
            return;
        }
        match self.refresh_trending().await {
            Ok(_) => self.trending_failures.store(0, Ordering::Relaxed),
            Err(e) => {
                let n = self.trending_failures.fetch_add(1, Ordering::Relaxed);
                if n == 0 {
                    tracing::warn!(error = %e, "live trending refresh failed");
                }
                // A live list that cannot be refreshed goes stale: after a few seconds of
                // failures the build's list serves alone again.
                if n + 1 == STALE_AFTER_FAILURES {
                    if let Some(src) = &self.trending {
                        src.set_live(&[], 0.0);
                    }
                    self.trending_version.store(u64::MAX, Ordering::Relaxed);
                }
            }
        }
    }

    pub(super) fn events_state(&self) -> EventsState {
        let (appended, duplicates, commits, failures, recovered) = match &self.shared.ingestor {
            Some(i) => (
                i.stats.appended.load(Ordering::Relaxed),
                i.stats.duplicates.load(Ordering::Relaxed),
                i.stats.commits.load(Ordering::Relaxed),
                i.stats.failures.load(Ordering::Relaxed),
                i.recovered_ids,
            ),
            None => (0, 0, 0, 0, 0),
        };
        EventsState {
            enabled: self.shared.ingestor.is_some(),
            appended,
            duplicates,
            commits,
            failures,
            recovered_ids: recovered,
            stream_store: match *self.shared.streams {
                StreamStore::Redis(_) => "redis",
                StreamStore::Memory(_) => "memory",
            },
            trending_refresh_failures: self.trending_failures.load(Ordering::Relaxed),
        }
    }
}
