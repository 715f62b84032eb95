//! The online funnel for one request, in the order data flows:
//! features ∥ sources → merge → item features → rank → re-rank → response.
//!
//! The trending source needs nothing from the user, so it starts at once, concurrently with the
//! user's feature fetch; ANN, CF and content start the moment the features land (they are the
//! query). Sources and ranking run on a bounded CPU pool off the async reactor, each under its own
//! time slice of the request budget. What fails or is late is left out, and the response's
//! `degradation` says how far down the fallback chain the answer came from.

pub mod api;
pub mod breaker;
pub mod context;
mod events;

use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::bundle::{Bundle, BundleError};
use crate::config::{Clock, EngineConfig};
use crate::events::ingest::Ingestor;
use crate::features::online::{ItemOverride, RedisOnline, UserFeatures};
use crate::features::streaming::{MemoryStreams, RedisStreams, StreamStore};
use crate::features::{Entity, FeatureError, RedisFeatureStore, RedisStoreOptions};
use crate::merge::{merge, Candidate};
use crate::ranking::combine::{combine, Strategy};
use crate::ranking::controller::LatencyController;
use crate::ranking::ensemble::segment_for_history;
use crate::ranking::input::{
    push_row, CandidateSignals, DeviceKind, ItemSignals, UserSignals, INPUT_DIM,
};
use crate::ranking::registry::{score_with, EnsemblePlan, PlanRequest, Registry};
use crate::rerank::{apply_all, Origin, Ranked, RerankContext, RerankRule};
use crate::sources::ann::AnnSource;
use crate::sources::cf::CfSource;
use crate::sources::content::ContentSource;
use crate::sources::trending::TrendingSource;
use crate::sources::{CandidateSource, RetrievalQuery, ScoredItem, SourceError, SourceId};
use crate::ItemIdx;

use self::api::{
    ApiError, Degradation, EnsembleExplain, Explain, ItemOut, RecommendRequest, RecommendResponse,
    SelectedModel, SkippedModel, SourceTimings, Timings,
};
use self::breaker::Breaker;
use self::context::{query_state, resolve_filter, ItemView, QueryState};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("config: {0}")]
    Config(String),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Features(#[from] FeatureError),
    #[error("cpu pool: {0}")]
    Pool(String),
    #[error("event log: {0}")]
    Events(#[from] crate::events::ingest::IngestError),
}

/// Where the request path reads online features from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// The bundle's embedded store (no Redis).
    Embedded,
    Redis,
}

/// A loaded bundle, ready to answer requests. Shared by all request tasks (`Arc<Engine>`).
pub struct Engine {
    cfg: EngineConfig,
    bundle: Bundle,
    sources: [Option<Arc<dyn CandidateSource>>; 4],
    rank: Registry,
    /// Scales the ensemble's budget to hold the configured p99.
    controller: LatencyController,
    /// Ranking worker threads (rank slots): a request's models run this many at a time.
    workers: usize,
    rules: Vec<Box<dyn RerankRule>>,
    redis: Option<RedisOnline>,
    redis_breaker: Breaker,
    /// Around ingestion's Redis writes: a slow ingest burst must not open the request path's.
    events_breaker: Breaker,
    /// Indexed by `SourceId::index()`.
    source_breakers: Vec<Breaker>,
    /// Runs the sources.
    pool: rayon::ThreadPool,
    /// Bounds concurrent ranking jobs. They run on tokio's blocking threads, not the sources'
    /// pool, so a hung model cannot starve retrieval (and, unlike a second rayon pool, idle
    /// blocking threads do not spin on the two cores).
    rank_slots: Arc<tokio::sync::Semaphore>,
    /// Every item, most popular first: cold-start fill and the last-resort fallback.
    popular: Vec<ItemIdx>,
    /// The bundle's data cutoff (unix seconds), when it records one.
    cutoff: Option<i64>,
    /// The trending source, typed: the live counters move it.
    trending: Option<Arc<TrendingSource>>,
    /// Streaming features (recent, seen, trending counters): Redis, or in process.
    streams: StreamStore,
    /// The event log's writer; None when `events.enabled` is false.
    ingestor: Option<Ingestor>,
    /// Live trending refreshes that failed in a row (for `/readyz`).
    trending_failures: std::sync::atomic::AtomicU64,
    /// The in-process counters' version the live trending blend was made from.
    trending_version: std::sync::atomic::AtomicU64,
}

/// Connects to Redis for the request path (reply timeout from the config).
pub async fn connect_redis(
    url: &str,
    registry: &crate::features::FeatureRegistry,
    cfg: &EngineConfig,
) -> Result<RedisFeatureStore, FeatureError> {
    let opts = RedisStoreOptions {
        response_timeout: Some(Duration::from_millis(cfg.features.redis_timeout_ms)),
        connection_timeout: Some(Duration::from_millis(
            cfg.features.redis_timeout_ms.max(500),
        )),
        ..RedisStoreOptions::default()
    };
    RedisFeatureStore::connect_with(url, registry, &opts).await
}

/// Caps the threads one candle matmul uses (`[server] matmul_threads`; 0 leaves candle's
/// default). candle has no API for it: it reads `RAYON_NUM_THREADS` on every call, so this sets
/// the variable, once per process, and never over a value the environment already has. The CLI
/// calls it before the runtime starts (setting the environment while other threads may read it
/// from C is unsound); `Engine::new` calls it too, for in-process users.
pub fn apply_matmul_threads(threads: usize) {
    if threads > 0 && std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
}

/// A job's result from the CPU pool: `Err` when the job panicked.
type CpuResult<T> = oneshot::Receiver<std::thread::Result<T>>;

struct Launched {
    id: SourceId,
    start: Instant,
    /// Err: why the source was not called.
    rx: Result<CpuResult<Result<Vec<ScoredItem>, SourceError>>, &'static str>,
}

struct SourceResult {
    id: SourceId,
    ms: f64,
    items: Result<Vec<ScoredItem>, String>,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

impl Engine {
    /// Takes the bundle's components into serving form. `redis` None = the embedded store.
    pub fn new(
        mut bundle: Bundle,
        cfg: EngineConfig,
        redis: Option<RedisFeatureStore>,
    ) -> Result<Arc<Self>, EngineError> {
        cfg.validate().map_err(EngineError::Config)?;
        // Before the rankers warm up, so their cost models see serving's threading.
        apply_matmul_threads(cfg.server.matmul_threads);
        let mut sources: [Option<Arc<dyn CandidateSource>>; 4] = [None, None, None, None];
        if let Some(g) = bundle.ann.take() {
            sources[SourceId::Ann.index()] = Some(Arc::new(AnnSource::new(g)));
        }
        if let Some(cf) = bundle.cf.take() {
            sources[SourceId::Cf.index()] = Some(Arc::new(CfSource::new(cf)));
        }
        if let Some(c) = bundle.content.take() {
            sources[SourceId::Content.index()] = Some(Arc::new(ContentSource::new(c)));
        }
        let trending = bundle
            .trending
            .take()
            .map(|t| Arc::new(TrendingSource::new(t)));
        if let Some(t) = &trending {
            sources[SourceId::Trending.index()] = Some(t.clone() as Arc<dyn CandidateSource>);
        }
        let rank = Registry::new(
            std::mem::take(&mut bundle.rankers),
            bundle.rankers_manifest.as_ref(),
            cfg.ranking.model.as_deref(),
            cfg.breaker,
        )
        .map_err(EngineError::Config)?;
        let mut popular: Vec<ItemIdx> = (0..bundle.catalog.len() as ItemIdx).collect();
        popular.sort_by(|&a, &b| {
            let p = |i: ItemIdx| bundle.popularity.get(i as usize).copied().unwrap_or(0.0);
            p(b).total_cmp(&p(a)).then(a.cmp(&b))
        });
        let cutoff = bundle.manifest.info.get("cutoff").and_then(|v| v.as_i64());
        let threads = match cfg.server.cpu_threads {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        let pool_of = |name: &'static str| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .thread_name(move |i| format!("funnel-{name}-{i}"))
                .build()
                .map_err(|e| EngineError::Pool(e.to_string()))
        };
        let pool = pool_of("sources")?;
        let streams = match &redis {
            Some(store) => StreamStore::Redis(RedisStreams::new(
                store.clone(),
                bundle.stream_defs.clone(),
                cfg.events.trending_top,
                Duration::from_millis(cfg.events.apply_timeout_ms),
            )),
            None => StreamStore::Memory(MemoryStreams::new(
                bundle.stream_defs.clone(),
                cfg.events.memory_max_users,
                cfg.events.trending_half_life_s,
            )),
        };
        let ingestor = if cfg.events.enabled {
            Some(events::open_log(&cfg.events)?)
        } else {
            None
        };
        let redis = redis.map(|store| {
            RedisOnline::new(
                store,
                &bundle.manifest.version,
                Duration::from_secs(cfg.features.item_cache_ttl_s),
                cfg.features.item_cache_capacity,
            )
        });
        let source_breakers = SourceId::ALL
            .iter()
            .map(|s| Breaker::new(format!("source.{}", s.name()), cfg.breaker))
            .collect();
        Ok(Arc::new(Engine {
            redis_breaker: Breaker::new("redis", cfg.breaker),
            events_breaker: Breaker::new("redis.events", cfg.breaker),
            source_breakers,
            rank_slots: Arc::new(tokio::sync::Semaphore::new(threads)),
            controller: LatencyController::new(cfg.ranking.controller.clone()),
            workers: threads,
            rules: cfg.rerank.build(),
            cfg,
            bundle,
            sources,
            rank,
            redis,
            pool,
            popular,
            cutoff,
            trending,
            streams,
            ingestor,
            trending_failures: std::sync::atomic::AtomicU64::new(0),
            trending_version: std::sync::atomic::AtomicU64::new(u64::MAX),
        }))
    }

    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    pub fn store_kind(&self) -> StoreKind {
        if self.redis.is_some() {
            StoreKind::Redis
        } else {
            StoreKind::Embedded
        }
    }

    /// The state of each dependency, for `/readyz`.
    pub async fn readiness(&self) -> Readiness {
        let mut components = BTreeMap::new();
        for id in SourceId::ALL {
            let state = match &self.sources[id.index()] {
                Some(_) => "ok".to_string(),
                None => self
                    .bundle
                    .problems
                    .iter()
                    .find(|(c, _)| c == id.name())
                    .map(|(_, e)| format!("unavailable: {}", without_paths(&e.to_string())))
                    .unwrap_or_else(|| "unavailable".into()),
            };
            components.insert(format!("source.{}", id.name()), state);
        }
        components.insert(
            "ranker".into(),
            match self.rank.preferred() {
                Some(_) => format!("ok: {} models", self.rank.entries().len()),
                None => "unavailable: no ranker loaded".into(),
            },
        );
        let mut breakers = BTreeMap::new();
        let all = [&self.redis_breaker, &self.events_breaker]
            .into_iter()
            .filter(|_| self.redis.is_some())
            .chain(&self.source_breakers)
            .chain(self.rank.breakers());
        for b in all {
            let (opened, skipped, failures) = b.counts();
            breakers.insert(
                b.name().to_string(),
                BreakerState {
                    state: b.state_name(),
                    opened,
                    skipped,
                    failures,
                },
            );
        }
        for (c, e) in &self.bundle.problems {
            components
                .entry(c.clone())
                .or_insert_with(|| format!("unavailable: {}", without_paths(&e.to_string())));
        }
        let (kind, state) = match &self.redis {
            None => (
                "embedded",
                if self.bundle.features.is_some() {
                    "ok".to_string()
                } else {
                    "unavailable: the bundle has no embedded features".to_string()
                },
            ),
            Some(r) => (
                "redis",
                match tokio::time::timeout(
                    Duration::from_millis(self.cfg.features.redis_timeout_ms.max(200)),
                    r.ping(),
                )
                .await
                {
                    Ok(Ok(())) => "ok".to_string(),
                    Ok(Err(e)) => format!("unreachable: {e} (serving the bundle's features)"),
                    Err(_) => "unreachable: timeout (serving the bundle's features)".to_string(),
                },
            ),
        };
        let degraded = state != "ok"
            || components.values().any(|s| !s.starts_with("ok"))
            || breakers.values().any(|b| b.state != "closed");
        let (factor, p99, adjustments) = self.controller.snapshot();
        let ranking = RankingState {
            strategy: self.cfg.ranking.strategy.as_str(),
            lambda: self.rank.lambda(),
            budget_factor: factor,
            window_p99_ms: p99,
            controller_adjustments: adjustments,
            models: self
                .rank
                .entries()
                .iter()
                .map(|e| {
                    let (fixed, per, runs) = e.cost.snapshot();
                    (
                        e.id().to_string(),
                        ModelState {
                            arch: e.arch.as_str(),
                            version: e.version,
                            cost_ms_at_500: fixed + per * 500.0,
                            runs_observed: runs,
                            warmup_error: e.warmup_error.clone(),
                        },
                    )
                })
                .collect(),
        };
        Readiness {
            ranking,
            status: if degraded { "degraded" } else { "ready" },
            bundle_version: self.bundle.manifest.version.clone(),
            feature_store: FeatureStoreState {
                kind,
                state,
                cached_items: self.redis.as_ref().map(|r| r.cached_items()),
            },
            components,
            breakers,
            events: self.events_state(),
        }
    }

    fn run_cpu<T: Send + 'static>(
        pool: &rayon::ThreadPool,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> CpuResult<T> {
        let (tx, rx) = oneshot::channel();
        pool.spawn(move || {
            // A panic is contained to this request's stage and reported, never unwinding the pool.
            let _ = tx.send(std::panic::catch_unwind(AssertUnwindSafe(f)));
        });
        rx
    }

    fn launch(self: &Arc<Self>, id: SourceId, q: &Arc<QueryState>) -> Launched {
        let start = Instant::now();
        let Some(src) = self.sources[id.index()].clone() else {
            return Launched {
                id,
                start,
                rx: Err("unavailable"),
            };
        };
        if !self.source_breakers[id.index()].allow() {
            return Launched {
                id,
                start,
                rx: Err("circuit open"),
            };
        }
        let quotas = &self.cfg.retrieval.quotas;
        let quota = match id {
            SourceId::Ann => quotas.ann,
            SourceId::Cf => quotas.cf,
            SourceId::Content => quotas.content,
            SourceId::Trending => quotas.trending,
        };
        let (eng, q) = (self.clone(), q.clone());
        let rx = Self::run_cpu(&self.pool, move || {
            let allow = |i: ItemIdx| q.allows(&eng.bundle, i);
            let rq = RetrievalQuery {
                embedding: q.embedding.as_deref(),
                recent_items: &q.recent,
                category_prefs: &q.prefs,
                allow: &allow,
            };
            src.retrieve(&rq, quota)
        });
        Launched {
            id,
            start,
            rx: Ok(rx),
        }
    }

    async fn collect(&self, l: Launched, deadline: Instant) -> SourceResult {
        let rx = match l.rx {
            Ok(rx) => rx,
            Err(why) => {
                return SourceResult {
                    id: l.id,
                    ms: 0.0,
                    items: Err(why.into()),
                }
            }
        };
        let limit = (l.start + Duration::from_millis(self.cfg.budget.source_ms)).min(deadline);
        let items = match tokio::time::timeout_at(limit.into(), rx).await {
            Ok(Ok(Ok(Ok(v)))) => Ok(v),
            Ok(Ok(Ok(Err(e)))) => Err(e.to_string()),
            Ok(Ok(Err(_))) => Err("panicked".into()),
            Ok(Err(_)) => Err("dropped".into()),
            Err(_) => Err("timeout".into()),
        };
        self.source_breakers[l.id.index()].record(items.is_ok());
        SourceResult {
            id: l.id,
            ms: ms(l.start.elapsed()),
            items,
        }
    }

    /// The user's features: Redis under the features slice, else the bundle's (stale) copy.
    async fn user_features(&self, id: Option<u64>) -> (Option<UserFeatures>, bool) {
        let Some(id) = id else {
            return (None, false);
        };
        let embedded = || {
            self.bundle
                .features
                .as_ref()
                .and_then(|s| s.get(Entity::User, id))
                .map(UserFeatures::from_row)
        };
        let Some(r) = &self.redis else {
            let mut f = embedded();
            if let StreamStore::Memory(m) = &self.streams {
                if let Some(s) = m.user(id, crate::features::redis::unix_now_f64()) {
                    f = Some(f.unwrap_or_default().with_stream(s));
                }
            }
            return (f, false);
        };
        if !self.redis_breaker.allow() {
            return (embedded(), true);
        }
        let slice = Duration::from_millis(self.cfg.budget.features_ms);
        let got = tokio::time::timeout(slice, r.user(id)).await;
        self.redis_breaker.record(matches!(got, Ok(Ok(_))));
        match got {
            Ok(Ok(u)) => (u, false),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "user features from redis failed; using the bundle's");
                (embedded(), true)
            }
            Err(_) => {
                tracing::debug!("user features from redis timed out; using the bundle's");
                (embedded(), true)
            }
        }
    }

    /// Online overrides of the candidates' item features (Redis mode only).
    async fn item_overrides(
        &self,
        items: &[ItemIdx],
        deadline: Instant,
    ) -> (HashMap<ItemIdx, ItemOverride>, bool) {
        let Some(r) = &self.redis else {
            return (HashMap::new(), false);
        };
        let ids: Vec<u64> = items
            .iter()
            .filter_map(|&i| self.bundle.catalog.get(i).map(|it| it.id))
            .collect();
        // The user-feature fetch is the breaker's probe; items only go to Redis when it is closed.
        if !self.redis_breaker.is_closed() {
            let cached = r.cached_only(&ids);
            return (items.iter().copied().zip(cached).collect(), true);
        }
        let slice =
            (Instant::now() + Duration::from_millis(self.cfg.budget.features_ms)).min(deadline);
        let got = tokio::time::timeout_at(slice.into(), r.items(&ids)).await;
        match got {
            Ok(Ok((o, asked))) => {
                // All cache hits say nothing about Redis's health.
                if asked {
                    self.redis_breaker.record(true);
                }
                (items.iter().copied().zip(o).collect(), false)
            }
            _ => {
                self.redis_breaker.record(false);
                (HashMap::new(), true)
            }
        }
    }

    fn now(&self, req: &RecommendRequest) -> i64 {
        if let Some(t) = req
            .context
            .timestamp
            .as_ref()
            .and_then(|t| t.to_unix("context.timestamp").ok())
        {
            return t;
        }
        match (self.cfg.features.clock, self.cutoff) {
            (Clock::Bundle, Some(c)) => c,
            _ => chrono::Utc::now().timestamp(),
        }
    }

    /// Runs the funnel for one request.
    pub async fn recommend(
        self: &Arc<Self>,
        req: RecommendRequest,
        request_id: String,
    ) -> Result<RecommendResponse, ApiError> {
        let t0 = Instant::now();
        req.validate(&self.cfg.server)?;
        let total_ms = req.deadline_ms.map_or(self.cfg.budget.total_ms, |d| {
            d.min(self.cfg.budget.total_ms)
        });
        let deadline = t0 + Duration::from_millis(total_ms);
        let k = req.k as usize;
        let now = self.now(&req);
        let published_after = req
            .filters
            .published_after
            .as_ref()
            .map(|t| t.to_unix("filters.published_after"))
            .transpose()?;
        let filter = resolve_filter(&self.bundle, &req.filters, published_after)?;
        let catalog = &self.bundle.catalog;
        let session: Vec<ItemIdx> = req
            .context
            .session_items
            .iter()
            .filter_map(|&id| catalog.idx(id))
            .collect();
        let exclude: Vec<ItemIdx> = req
            .exclude_items
            .iter()
            .filter_map(|&id| catalog.idx(id))
            .collect();
        let device = req
            .context
            .device
            .as_deref()
            .map(DeviceKind::parse)
            .unwrap_or_default();
        let blend = self.cfg.retrieval.session_blend;

        // 1. Trending needs no user state: it runs while the features are fetched.
        let early = Arc::new(query_state(
            &self.bundle,
            None,
            &session,
            &exclude,
            filter.clone(),
            blend,
        ));
        let trending = self.launch(SourceId::Trending, &early);
        let tf = Instant::now();
        let user_id = req.user_id.as_u64();
        let (features, mut stale) = self.user_features(user_id).await;
        let features_ms = ms(tf.elapsed());

        // 2. The user-driven sources, concurrently.
        let q = Arc::new(query_state(
            &self.bundle,
            features.as_ref(),
            &session,
            &exclude,
            filter,
            blend,
        ));
        let launched = [
            self.launch(SourceId::Ann, &q),
            self.launch(SourceId::Cf, &q),
            self.launch(SourceId::Content, &q),
        ];
        let [a, c, n] = launched;
        let (ra, rc, rn, rt) = tokio::join!(
            self.collect(a, deadline),
            self.collect(c, deadline),
            self.collect(n, deadline),
            self.collect(trending, deadline),
        );
        let mut timings = Timings {
            features: features_ms,
            sources: SourceTimings {
                ann: ra.ms,
                cf: rc.ms,
                content: rn.ms,
                trending: rt.ms,
            },
            ..Timings::default()
        };
        let mut per_source: Vec<(SourceId, Vec<ScoredItem>)> = Vec::with_capacity(4);
        let mut explain = Explain {
            user_known: features.as_ref().is_some_and(UserFeatures::from_build),
            history_len: features.as_ref().map_or(0, |f| f.history_len),
            now,
            ..Explain::default()
        };
        for r in [ra, rc, rn, rt] {
            match r.items {
                Ok(v) => {
                    explain.per_source.insert(r.id.name().into(), v.len());
                    per_source.push((r.id, v));
                }
                Err(e) => {
                    explain.source_problems.insert(r.id.name().into(), e);
                }
            }
        }

        // 3. Merge, then the fallback chain when retrieval found nothing.
        let tm = Instant::now();
        let merged = merge(&per_source, &self.cfg.merge);
        let mut level = if stale {
            Degradation::StaleFeatures
        } else {
            Degradation::Full
        };
        let mut origins: Vec<Origin>;
        let mut cands: Vec<Candidate>;
        if !merged.is_empty() {
            origins = vec![Origin::Retrieval; merged.len()];
            cands = merged;
        } else {
            let batch: Vec<ItemIdx> = features
                .as_ref()
                .map(|f| {
                    f.batch_recs
                        .iter()
                        .filter_map(|&id| catalog.idx(id))
                        .filter(|&i| q.allows(&self.bundle, i))
                        .collect()
                })
                .unwrap_or_default();
            let n = batch.len();
            cands = batch
                .into_iter()
                .enumerate()
                .map(|(r, item)| Candidate {
                    item,
                    source_scores: [0.0; 4],
                    source_mask: 0,
                    score: 1.0 - r as f32 / (n as f32 + 1.0),
                })
                .collect();
            level = level.max(if cands.is_empty() {
                Degradation::Popularity
            } else {
                Degradation::Batch
            });
            origins = vec![Origin::Batch; cands.len()];
        }
        // Fill from popularity so that k servable items exist whenever the catalog has them
        // (cold users, narrow filters). Margin: online flags may still drop a few.
        let servable = cands
            .iter()
            .filter(|c| q.allows(&self.bundle, c.item))
            .count();
        let want = k + k / 4 + 2;
        if servable < want {
            let present: std::collections::HashSet<ItemIdx> =
                cands.iter().map(|c| c.item).collect();
            let floor = cands.iter().map(|c| c.score).fold(0.0f32, f32::min);
            let fill: Vec<ItemIdx> = self
                .popular
                .iter()
                .copied()
                .filter(|i| !present.contains(i) && q.allows(&self.bundle, *i))
                .take(want - servable)
                .collect();
            let n = fill.len() as f32;
            for (r, item) in fill.into_iter().enumerate() {
                cands.push(Candidate {
                    item,
                    source_scores: [0.0; 4],
                    source_mask: 0,
                    score: floor - 1.0 - r as f32 / (n + 1.0),
                });
                origins.push(Origin::Popularity);
            }
        }
        explain.candidates = cands.len();
        timings.merge = ms(tm.elapsed());

        // 4. Online item features for the candidates (flags, promotion, popularity, trending).
        let ti = Instant::now();
        let items: Vec<ItemIdx> = cands.iter().map(|c| c.item).collect();
        let (overrides, items_stale) = self.item_overrides(&items, deadline).await;
        stale |= items_stale;
        if stale {
            level = level.max(Degradation::StaleFeatures);
        }
        timings.item_features = ms(ti.elapsed());

        // 5. Rank retrieval candidates with the ensemble; batch and popularity lists keep their
        //    own order.
        let tr = Instant::now();
        let overrides = Arc::new(overrides);
        let mut scores: Vec<f32> = cands.iter().map(|c| c.score).collect();
        let mut confidence: Vec<f32> = vec![0.0; cands.len()];
        let mut model_scores: Vec<(String, Vec<f32>)> = Vec::new();
        if level <= Degradation::StaleFeatures {
            let history_len = features.as_ref().map_or(0, |f| f.history_len);
            let user = RankUser {
                embedding: features.as_ref().and_then(|f| f.embedding.clone()),
                // A user only events have told us about has no preferences yet: the prior.
                prefs: if features
                    .as_ref()
                    .is_some_and(|f| !f.category_prefs.is_empty())
                {
                    q_prefs_unfiltered(&self.bundle, features.as_ref())
                } else {
                    self.bundle.category_prior.clone()
                },
                history_len,
                device,
                has_session: !session.is_empty(),
                now,
            };
            let rc = &self.cfg.ranking;
            let remaining_ms = deadline
                .saturating_duration_since(Instant::now())
                .as_secs_f64()
                * 1e3;
            let slice_ms = (remaining_ms - rc.reserve_ms as f64)
                .min(self.cfg.budget.rank_ms as f64)
                .max(0.0);
            let factor = self.controller.factor();
            let encode_ms = self.rank.encode_cost.predict_ms(cands.len());
            let plan = self.rank.plan(&PlanRequest {
                candidates: cands.len(),
                segment: segment_for_history(history_len),
                budget_ms: ((slice_ms - encode_ms) * factor).max(0.0),
                workers: self.workers,
                max_models: req.ranking.max_models.map_or(rc.max_models, |n| n as usize),
                min_diversity: rc.min_diversity,
                only: req.ranking.models.as_deref(),
                max_nodes: rc.max_search_nodes,
                mode: req.ranking.selection.unwrap_or(rc.selection),
            });
            let strategy = req.ranking.strategy.unwrap_or(rc.strategy);
            let limit = (Instant::now() + Duration::from_secs_f64(slice_ms / 1e3)).min(deadline);
            let outcome = self
                .rank_ensemble(&plan, user, &cands, &overrides, limit)
                .await;
            let mut ens = EnsembleExplain {
                strategy: strategy.as_str().into(),
                budget_ms: (plan.budget_ms * 1e3).round() / 1e3,
                budget_factor: factor,
                segment: Registry::segment_name(plan.segment).into(),
                estimate: plan.estimate,
                predicted_ms: (plan.predicted_ms * 1e3).round() / 1e3,
                search_nodes: plan.nodes,
                exhaustive: plan.exhaustive,
                selected: Vec::new(),
                skipped: plan
                    .skipped
                    .iter()
                    .map(|&(m, why)| SkippedModel {
                        model_id: self.rank.entries()[m].id().to_string(),
                        reason: why.as_str().into(),
                    })
                    .collect(),
            };
            let mut ok_members = Vec::new();
            let mut ok_scores = Vec::new();
            for (member, result) in plan.members.iter().zip(outcome) {
                let id = self.rank.entries()[member.index].id().to_string();
                let mut sel = SelectedModel {
                    model_id: id.clone(),
                    weight: member.weight,
                    cost_ms: (member.cost_ms * 1e3).round() / 1e3,
                    ..SelectedModel::default()
                };
                match result {
                    Ok((s, took)) => {
                        sel.took_ms = Some(ms(took));
                        ok_members.push(member.clone());
                        // Per-item model scores only travel with `explain`.
                        if req.explain {
                            model_scores.push((id, s.clone()));
                        }
                        ok_scores.push(s);
                    }
                    Err(e) => sel.failed = Some(e),
                }
                ens.selected.push(sel);
            }
            if ok_scores.is_empty() {
                level = level.max(Degradation::SimpleRanking);
                explain.ranker = Some(if plan.members.is_empty() {
                    "none: no model fits the budget or all are unhealthy".into()
                } else {
                    let why: Vec<String> = ens
                        .selected
                        .iter()
                        .map(|s| format!("{}: {}", s.model_id, s.failed.as_deref().unwrap_or("?")))
                        .collect();
                    format!("failed: {}", why.join(", "))
                });
            } else {
                let idx: Vec<usize> = ok_members.iter().map(|m| m.index).collect();
                let weights: Vec<f64> = ok_members.iter().map(|m| m.weight).collect();
                let stacker = if strategy == Strategy::Stacking {
                    self.rank.stacker(&idx)
                } else {
                    None
                };
                let c = combine(
                    strategy,
                    &ok_scores,
                    &weights,
                    stacker.as_ref().map(|(w, _)| w.as_slice()),
                    stacker.as_ref().map_or(0.0, |(_, b)| *b),
                );
                scores = c.scores;
                confidence = c.confidence;
                ens.strategy = c.strategy.as_str().into();
                let ids: Vec<&str> = ok_members
                    .iter()
                    .map(|m| self.rank.entries()[m.index].id())
                    .collect();
                explain.ranker = Some(ids.join("+"));
            }
            explain.ensemble = Some(ens);
        }
        timings.rank = ms(tr.elapsed());

        // 6. Re-rank with the business rules, then cut to k.
        let tq = Instant::now();
        let mut list: Vec<Ranked> = cands
            .iter()
            .zip(&origins)
            .zip(&scores)
            .map(|((c, &o), &s)| Ranked::new(c.item, s, c.source_mask, o))
            .collect();
        crate::rerank::sort_by_score(&mut list);
        let view = ItemView {
            bundle: &self.bundle,
            overrides: &overrides,
        };
        let ctx = RerankContext {
            items: &view,
            seen: &q.seen,
            filter: &q.filter,
            now,
            category_cap: self.cfg.rerank.active_cap(),
        };
        apply_all(&self.rules, &ctx, &mut list);
        list.truncate(k);
        timings.rerank = ms(tq.elapsed());

        let position: HashMap<ItemIdx, usize> =
            cands.iter().enumerate().map(|(p, c)| (c.item, p)).collect();
        let items = list
            .into_iter()
            .filter_map(|r| {
                let at = position.get(&r.item).copied();
                let it = catalog.get(r.item)?;
                let mut sources: Vec<String> = SourceId::ALL
                    .iter()
                    .filter(|s| r.source_mask & (1 << s.index()) != 0)
                    .map(|s| s.name().to_string())
                    .collect();
                match r.origin {
                    Origin::Retrieval => {}
                    Origin::Batch => sources.push("batch".into()),
                    Origin::Popularity => sources.push("popularity".into()),
                }
                let reasons = req.explain.then(|| {
                    let mut why: Vec<String> = Vec::new();
                    if r.source_mask.count_ones() >= 2 {
                        why.push("multi_source".into());
                    }
                    why.extend(r.reasons.iter().map(|s| s.to_string()));
                    why
                });
                let model_scores = (req.explain && !model_scores.is_empty()).then(|| {
                    model_scores
                        .iter()
                        .filter_map(|(id, s)| Some((id.clone(), *s.get(at?)?)))
                        .collect()
                });
                Some(ItemOut {
                    item_id: it.id,
                    score: if r.score.is_finite() { r.score } else { 0.0 },
                    sources,
                    confidence: at.and_then(|p| confidence.get(p).copied()).unwrap_or(0.0),
                    reasons,
                    model_scores,
                })
            })
            .collect();
        timings.total = ms(t0.elapsed());
        self.controller.record(timings.total);
        Ok(RecommendResponse {
            request_id,
            bundle_version: self.bundle.manifest.version.clone(),
            degradation: level,
            items,
            timings_ms: timings,
            explain: req.explain.then_some(explain),
        })
    }

    /// Encodes the candidates once, then runs the plan's members concurrently on the rank
    /// slots (each on a blocking thread, panics contained) until `limit`. Returns each member's
    /// scores and run time, or why it gave none; every outcome is recorded in the registry.
    async fn rank_ensemble(
        self: &Arc<Self>,
        plan: &EnsemblePlan,
        user: RankUser,
        cands: &[Candidate],
        overrides: &Arc<HashMap<ItemIdx, ItemOverride>>,
        limit: Instant,
    ) -> Vec<Result<(Vec<f32>, Duration), String>> {
        type Scored = Result<(Vec<f32>, Duration), String>;
        let n = cands.len();
        if plan.members.is_empty() {
            return Vec::new();
        }
        let slots = self.rank_slots.clone();
        let encode = {
            let (eng, cands, overrides, slots) = (
                self.clone(),
                cands.to_vec(),
                overrides.clone(),
                slots.clone(),
            );
            async move {
                // The permit travels with the job: work that overruns keeps its slot until it
                // returns, so hung jobs cannot pile up threads.
                let permit = slots.acquire_owned().await.ok()?;
                tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    let t = Instant::now();
                    let rows = eng.encode(&user, &cands, &overrides);
                    (rows, t.elapsed())
                })
                .await
                .ok()
            }
        };
        let rows = match tokio::time::timeout_at(limit.into(), encode).await {
            Ok(Some((rows, took))) => {
                self.rank.encode_cost.observe(n, took);
                Arc::new(rows)
            }
            Ok(None) => return self.fail_all(plan, n, "encoding failed"),
            Err(_) => return self.fail_all(plan, n, "timeout"),
        };
        let mut set: tokio::task::JoinSet<(usize, Scored)> = tokio::task::JoinSet::new();
        for (pos, member) in plan.members.iter().enumerate() {
            let model = self.rank.entries()[member.index].ranker.clone();
            let (rows, slots) = (rows.clone(), slots.clone());
            set.spawn(async move {
                let Ok(permit) = slots.acquire_owned().await else {
                    return (pos, Err("rank slots closed".to_string()));
                };
                let job = tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    let t = Instant::now();
                    let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        score_with(&*model, &rows, n)
                    }));
                    (r, t.elapsed())
                });
                let out = match job.await {
                    Ok((Ok(Ok(s)), took)) if s.len() == n => Ok((s, took)),
                    Ok((Ok(Ok(s)), _)) => Err(format!("{} scores for {n} candidates", s.len())),
                    Ok((Ok(Err(e)), _)) => Err(e.to_string()),
                    Ok((Err(_), _)) => Err("panicked".to_string()),
                    Err(_) => Err("cancelled".to_string()),
                };
                (pos, out)
            });
        }
        let mut out: Vec<Option<Scored>> = vec![None; plan.members.len()];
        // Dropping the set at the deadline abandons the stragglers (a blocking job cannot be
        // cancelled; it finishes in the background on its own slot).
        while let Ok(Some(joined)) = tokio::time::timeout_at(limit.into(), set.join_next()).await {
            if let Ok((pos, r)) = joined {
                out[pos] = Some(r);
            }
        }
        plan.members
            .iter()
            .zip(out)
            .map(|(m, r)| {
                let r = r.unwrap_or_else(|| Err("timeout".to_string()));
                self.rank.record(
                    m.index,
                    n,
                    r.as_ref().map(|(_, took)| *took).map_err(|_| ()),
                );
                r
            })
            .collect()
    }

    fn fail_all(
        &self,
        plan: &EnsemblePlan,
        n: usize,
        why: &str,
    ) -> Vec<Result<(Vec<f32>, Duration), String>> {
        plan.members
            .iter()
            .map(|m| {
                self.rank.record(m.index, n, Err(()));
                Err(why.to_string())
            })
            .collect()
    }

    /// Ranker input rows through the shared encoder (the builder trains on the same rows).
    fn encode(
        &self,
        user: &RankUser,
        cands: &[Candidate],
        overrides: &HashMap<ItemIdx, ItemOverride>,
    ) -> Vec<f32> {
        encode_rows(&self.bundle, user, cands, overrides)
    }
}

/// Ranker input rows for `cands` through the shared encoder (the builder trains on the same
/// rows); `overrides` are the online item features that replace the bundle's.
pub fn encode_rows(
    bundle: &Bundle,
    user: &RankUser,
    cands: &[Candidate],
    overrides: &HashMap<ItemIdx, ItemOverride>,
) -> Vec<f32> {
    let u = UserSignals {
        embedding: user.embedding.as_deref(),
        category_prefs: &user.prefs,
        history_len: user.history_len,
        device: user.device,
        has_session: user.has_session,
    };
    let zero = vec![0.0f32; bundle.dim];
    let mut rows = Vec::with_capacity(cands.len() * INPUT_DIM);
    for c in cands {
        let Some(item) = bundle.catalog.get(c.item) else {
            rows.resize(rows.len() + INPUT_DIM, 0.0);
            continue;
        };
        let o = overrides.get(&c.item).copied().unwrap_or_default();
        let at = c.item as usize;
        let pop = o
            .popularity
            .unwrap_or_else(|| bundle.popularity.get(at).copied().unwrap_or(0.0));
        let published = o.published_at.unwrap_or(item.published_at);
        let i = ItemSignals {
            embedding: bundle.item_embedding(c.item).unwrap_or(&zero),
            categories: &item.categories,
            log_popularity: pop.max(0.0).ln_1p(),
            trending: o
                .trending
                .unwrap_or_else(|| bundle.trending_score.get(at).copied().unwrap_or(0.0)),
            age_days: ((user.now - published) as f32 / 86_400.0).max(0.0),
            promoted: o.promoted.unwrap_or(item.promoted),
        };
        let cs = CandidateSignals {
            source_scores: c.source_scores,
            source_mask: c.source_mask,
            merged_score: c.score,
        };
        push_row(&mut rows, &u, &i, &cs);
    }
    rows
}

/// The user's category preferences as trained on (no filter adjustments).
pub fn q_prefs_unfiltered(bundle: &Bundle, f: Option<&UserFeatures>) -> Vec<f32> {
    let mut prefs = vec![0.0f32; bundle.catalog.categories.len()];
    if let Some(f) = f {
        for (name, &w) in &f.category_prefs {
            if let Some(c) = bundle.catalog.category_idx(name) {
                prefs[c as usize] = if w.is_finite() { w } else { 0.0 };
            }
        }
    }
    prefs
}

/// What the ranker's encoder needs about the user.
pub struct RankUser {
    pub embedding: Option<Vec<f32>>,
    pub prefs: Vec<f32>,
    pub history_len: u32,
    pub device: DeviceKind,
    pub has_session: bool,
    pub now: i64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct FeatureStoreState {
    pub kind: &'static str,
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cached_items: Option<u64>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelState {
    pub arch: &'static str,
    pub version: u32,
    /// The cost model's current prediction for 500 candidates.
    pub cost_ms_at_500: f64,
    pub runs_observed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warmup_error: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RankingState {
    pub strategy: &'static str,
    /// Weight of the estimator's diversity term.
    pub lambda: f64,
    /// The latency controller's share of the remaining budget the selector may spend.
    pub budget_factor: f64,
    pub window_p99_ms: f64,
    pub controller_adjustments: u64,
    pub models: BTreeMap<String, ModelState>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Readiness {
    /// "ready", or "degraded" when a dependency is down (the server still answers).
    pub status: &'static str,
    pub bundle_version: String,
    pub feature_store: FeatureStoreState,
    pub components: BTreeMap<String, String>,
    /// Circuit breaker per dependency.
    pub breakers: BTreeMap<String, BreakerState>,
    pub ranking: RankingState,
    pub events: events::EventsState,
}

/// `message` with every absolute filesystem path cut to its file name: `/readyz` is often
/// reachable from outside, and the layout of the host is none of a client's business.
pub fn without_paths(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find('/') {
        // A path starts at a '/' that begins a word (not inside "a/b" or a URL's "//").
        let starts_word = rest[..at]
            .chars()
            .next_back()
            .or_else(|| out.chars().next_back())
            .is_none_or(|c| c.is_whitespace() || "(\"'`=[".contains(c));
        if !starts_word {
            out.push_str(&rest[..=at]);
            rest = &rest[at + 1..];
            continue;
        }
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| c.is_whitespace() || "\"'`),;]".contains(c))
            .unwrap_or(tail.len());
        // "file.ext:" as in "path: error" keeps its colon outside the name.
        let path = tail[..end].trim_end_matches(':');
        let name = path.rsplit('/').find(|s| !s.is_empty()).unwrap_or("");
        out.push_str(name);
        rest = &tail[path.len()..];
    }
    out.push_str(rest);
    out
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BreakerState {
    /// closed, open or half_open.
    pub state: &'static str,
    /// Times it opened, calls it skipped, failures recorded (since start).
    pub opened: u64,
    pub skipped: u64,
    pub failures: u64,
}

#[cfg(test)]
mod tests {
    use super::without_paths;

    #[test]
    fn readiness_messages_lose_absolute_paths() {
        assert_eq!(
            without_paths("reading /tmp/x/v1/ann.hnsw: No such file (os error 2)"),
            "reading ann.hnsw: No such file (os error 2)"
        );
        assert_eq!(
            without_paths("bad \"/srv/b/cf.arrow\", see (/a/b/)"),
            "bad \"cf.arrow\", see (b)"
        );
        assert_eq!(
            without_paths("ratio 1/2 and redis://h:1/0"),
            "ratio 1/2 and redis://h:1/0"
        );
        assert_eq!(without_paths("no paths here"), "no paths here");
    }
}
