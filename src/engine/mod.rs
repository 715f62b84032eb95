//! The engine: one loaded bundle wired into the [`Pipeline`], plus what lives beside the
//! request path — readiness for `/readyz`, event ingestion and the live trending refresh
//! (`events.rs`). The request path itself is `crate::pipeline`.

pub mod deploy;
mod events;
pub mod experiments;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::api::{ApiError, RecommendResponse, ValidRequest};
use crate::breaker::Breaker;
use crate::bundle::{Bundle, BundleError};
use crate::config::EngineConfig;
use crate::events::ingest::Ingestor;
use crate::features::online::RedisOnline;
use crate::features::streaming::{MemoryStreams, RedisStreams, StreamStore};
use crate::features::{FeatureError, RedisFeatureStore, RedisStoreOptions};
use crate::observe::metrics::Metrics;
use crate::observe::skew::{SkewMonitor, SkewReport};
use crate::pipeline::context::RequestStage;
use crate::pipeline::fallback::FallbackStage;
use crate::pipeline::features::FeatureStage;
use crate::pipeline::item_features::ItemFeatureStage;
use crate::pipeline::merge::MergeStage;
use crate::pipeline::rank::RankStage;
use crate::pipeline::rerank::RerankStage;
use crate::pipeline::retrieval::SourceSet;
use crate::pipeline::Pipeline;
use crate::ranking::registry::Registry;
use crate::sources::ann::AnnSource;
use crate::sources::cf::CfSource;
use crate::sources::content::ContentSource;
use crate::sources::trending::TrendingSource;
use crate::sources::CandidateSource;

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

/// A loaded bundle version, ready to answer requests. Shared by all request tasks
/// (`Arc<Engine>`); a hot reload builds a new one over the same [`Shared`] parts and swaps it in
/// (see [`deploy`]), and requests in flight finish on the one they started with.
pub struct Engine {
    cfg: EngineConfig,
    bundle: Arc<Bundle>,
    pipeline: Pipeline,
    /// The version's view of Redis: its version-tagged keys and its item-feature cache.
    redis: Option<Arc<RedisOnline>>,
    /// The trending source, typed: the live counters move it.
    trending: Option<Arc<TrendingSource>>,
    /// Live trending refreshes that failed in a row (for `/readyz`).
    trending_failures: std::sync::atomic::AtomicU64,
    /// Served ranker inputs against the training reference.
    skew: Arc<SkewMonitor>,
    /// The in-process counters' version the live trending blend was made from.
    trending_version: std::sync::atomic::AtomicU64,
    /// What outlives the version: connections, breakers, streams, the event log, metrics.
    shared: Arc<Shared>,
}

/// The parts of a server that do not belong to one bundle version and survive a reload: the
/// Redis connection and its breakers, the streaming features, the event log (one writer per
/// directory) and the metrics registry.
pub struct Shared {
    redis_store: Option<RedisFeatureStore>,
    /// Around the request path's Redis reads (user and item features, the trending refresh).
    redis_breaker: Arc<Breaker>,
    /// Around ingestion's Redis writes: a slow ingest burst must not open the request path's.
    events_breaker: Breaker,
    /// Streaming features (recent, seen, trending counters): Redis, or in process.
    streams: Arc<StreamStore>,
    /// The event log's writer; None when `events.enabled` is false.
    ingestor: Option<Ingestor>,
    /// What `/metrics` exports; the pipeline and ingestion record into it.
    metrics: Arc<Metrics>,
    /// The running A/B experiment, if one is configured.
    experiment: Option<Arc<experiments::Experiment>>,
}

impl Shared {
    /// Opens what the first version needs and later ones reuse. `redis` None = embedded store.
    pub fn open(
        bundle: &Bundle,
        cfg: &EngineConfig,
        redis: Option<RedisFeatureStore>,
    ) -> Result<Arc<Self>, EngineError> {
        cfg.validate().map_err(EngineError::Config)?;
        let streams = Arc::new(match &redis {
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
        });
        let ingestor = if cfg.events.enabled {
            Some(events::open_log(&cfg.events)?)
        } else {
            None
        };
        let metrics = Arc::new(Metrics::new(
            &bundle.manifest.version,
            ingestor.as_ref().map(|i| i.stats.commit_seconds.clone()),
            cfg.monitor.metrics,
        ));
        // Shadow runs take at most half the CPU pool's threads.
        let shadow_slots = (cfg.server.cpu_pool_threads() / 2).max(1);
        let experiment = cfg
            .experiment
            .clone()
            .map(|e| Arc::new(experiments::Experiment::new(e, shadow_slots)));
        Ok(Arc::new(Shared {
            experiment,
            redis_store: redis,
            redis_breaker: Arc::new(Breaker::new("redis", cfg.breaker)),
            events_breaker: Breaker::new("redis.events", cfg.breaker),
            streams,
            ingestor,
            metrics,
        }))
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn experiment(&self) -> Option<&Arc<experiments::Experiment>> {
        self.experiment.as_ref()
    }
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

/// The rankers learned from candidates retrieved with the build's quotas and merge; a server
/// that retrieves differently ranks candidates they were not trained on. Worth a warning, not a
/// refusal (an operator may mean it).
fn warn_on_plan_mismatch(bundle: &Bundle, cfg: &EngineConfig) {
    let Some(built) = bundle.manifest.info.get("retrieval_plan") else {
        return;
    };
    let serving = cfg.retrieval_plan();
    match serde_json::from_value::<crate::config::RetrievalPlan>(built.clone()) {
        Ok(b) if b == serving => {}
        Ok(b) => tracing::warn!(
            built = ?b,
            serving = ?serving,
            "the rankers were trained on candidates from other source quotas or merge settings \
             than this server retrieves with; rebuild with --serving-config"
        ),
        Err(e) => tracing::debug!(error = %e, "unreadable retrieval_plan in the manifest"),
    }
}

/// The bundle's retrieval components as candidate sources (the trending one also typed). The
/// ANN source searches the backend the config names: a FAISS backend the bundle was never built
/// with is an error here, at load, not a silent fallback; one whose file is missing or corrupt
/// leaves the ANN source out (degraded) while the other sources serve.
type TakenSources = (Vec<Arc<dyn CandidateSource>>, Option<Arc<TrendingSource>>);

fn take_sources(bundle: &mut Bundle, cfg: &EngineConfig) -> Result<TakenSources, EngineError> {
    let mut sources: Vec<Arc<dyn CandidateSource>> = Vec::new();
    let graph = bundle.ann.take();
    match cfg.retrieval.ann_backend {
        crate::config::AnnBackend::Hnsw => {
            if let Some(g) = graph {
                sources.push(Arc::new(AnnSource::new(g)));
            }
        }
        crate::config::AnnBackend::Faiss => match load_faiss(bundle, cfg)? {
            Ok(index) => sources.push(Arc::new(AnnSource::new(index))),
            // Listed in the manifest but missing or corrupt: served degraded, like any other
            // component that fails to load, and reported in /readyz.
            Err(problem) => {
                tracing::warn!(component = "ann", error = %problem, "bundle component unavailable");
                bundle.problems.push(("ann".to_string(), problem));
            }
        },
    }
    if let Some(cf) = bundle.cf.take() {
        sources.push(Arc::new(CfSource::new(cf)));
    }
    if let Some(c) = bundle.content.take() {
        sources.push(Arc::new(ContentSource::new(c)));
    }
    let trending = bundle
        .trending
        .take()
        .map(|t| Arc::new(TrendingSource::new(t)));
    if let Some(t) = &trending {
        sources.push(t.clone());
    }
    Ok((sources, trending))
}

/// Outer error: the bundle cannot serve FAISS at all (refuse to start); inner: this load failed.
type FaissLoad = Result<Arc<dyn crate::sources::ann::AnnIndex>, String>;

#[cfg(feature = "faiss")]
fn load_faiss(bundle: &Bundle, cfg: &EngineConfig) -> Result<FaissLoad, EngineError> {
    use crate::sources::ann::faiss;
    if !faiss::bundle_has_index(bundle) {
        return Err(EngineError::Config(format!(
            "retrieval.ann_backend = \"faiss\", but the bundle at {} has no FAISS index: build \
             it with an index-builder compiled with `--features faiss` and a `[faiss] factory` \
             in the build config, or serve with retrieval.ann_backend = \"hnsw\"",
            bundle.dir.display()
        )));
    }
    let params: Vec<(String, f64)> = cfg
        .retrieval
        .faiss_params
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    Ok(match faiss::load_from_bundle(bundle, &params) {
        Ok(index) => {
            tracing::info!(factory = index.factory(), "ANN backend: faiss");
            Ok(Arc::new(index))
        }
        Err(e) => Err(e.to_string()),
    })
}

#[cfg(not(feature = "faiss"))]
fn load_faiss(_bundle: &Bundle, _cfg: &EngineConfig) -> Result<FaissLoad, EngineError> {
    Err(EngineError::Config(
        crate::config::FAISS_NEEDS_FEATURE.into(),
    ))
}

impl Engine {
    /// Takes the bundle's components into serving form. `redis` None = the embedded store.
    pub fn new(
        bundle: Bundle,
        cfg: EngineConfig,
        redis: Option<RedisFeatureStore>,
    ) -> Result<Arc<Self>, EngineError> {
        let shared = Shared::open(&bundle, &cfg, redis)?;
        Self::with_shared(bundle, cfg, shared)
    }

    /// Another bundle version over the parts an earlier one opened (a hot reload).
    pub fn with_shared(
        mut bundle: Bundle,
        mut cfg: EngineConfig,
        shared: Arc<Shared>,
    ) -> Result<Arc<Self>, EngineError> {
        cfg.validate().map_err(EngineError::Config)?;
        if cfg.ranking.strategy_from_bundle {
            if let Some(best) = bundle
                .rankers_manifest
                .as_ref()
                .and_then(|m| m.ensemble.as_ref())
                .and_then(|e| e.best_strategy())
            {
                tracing::info!(strategy = %best, "combination strategy from the bundle's validation");
                cfg.ranking.strategy = best;
            }
        }
        warn_on_plan_mismatch(&bundle, &cfg);
        // Before the rankers warm up, so their cost models see serving's threading.
        apply_matmul_threads(cfg.server.matmul_threads);
        let (sources, trending) = take_sources(&mut bundle, &cfg)?;
        let registry = Registry::new(
            std::mem::take(&mut bundle.rankers),
            bundle.rankers_manifest.as_ref(),
            cfg.ranking.model.as_deref(),
            cfg.breaker,
        )
        .map_err(EngineError::Config)?;
        let threads = cfg.server.cpu_pool_threads();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("funnel-sources-{i}"))
            .build()
            .map_err(|e| EngineError::Pool(e.to_string()))?;
        let redis = shared.redis_store.clone().map(|store| {
            Arc::new(RedisOnline::new(
                store,
                &bundle.manifest.version,
                Duration::from_secs(cfg.features.item_cache_ttl_s),
                cfg.features.item_cache_capacity,
            ))
        });
        let redis_breaker = shared.redis_breaker.clone();
        let features_ms = cfg.budget.features_ms;
        let metrics = shared.metrics.clone();
        let reference = bundle
            .rankers_manifest
            .as_ref()
            .and_then(|m| m.input_reference.clone());
        if reference.is_none() && cfg.monitor.enabled {
            tracing::info!(
                "the bundle's rankers carry no input reference (built before the skew monitor): \
                 skew is not monitored until a rebuild"
            );
        }
        let skew = Arc::new(SkewMonitor::new(cfg.monitor.clone(), reference));
        let bundle = Arc::new(bundle);
        let pipeline = Pipeline {
            context: RequestStage::new(&cfg.budget, cfg.features.clock, &bundle),
            features: FeatureStage::new(
                redis.clone(),
                redis_breaker.clone(),
                shared.streams.clone(),
                features_ms,
                metrics.clone(),
            ),
            retrieval: SourceSet::new(
                sources,
                &cfg.retrieval.quotas,
                cfg.budget.source_ms,
                cfg.breaker,
                Some(pool),
            ),
            session_blend: cfg.retrieval.session_blend,
            merge: MergeStage::new(&cfg.merge),
            fallback: FallbackStage::new(&bundle),
            items: ItemFeatureStage::new(
                redis.clone(),
                redis_breaker.clone(),
                features_ms,
                metrics.clone(),
            ),
            rank: RankStage::new(
                registry,
                cfg.ranking.clone(),
                cfg.budget.rank_ms,
                threads,
                skew.clone(),
            ),
            metrics,
            rerank: RerankStage::new(&cfg.rerank),
            bundle: bundle.clone(),
        };
        Ok(Arc::new(Engine {
            cfg,
            bundle,
            pipeline,
            redis,
            trending,
            trending_failures: std::sync::atomic::AtomicU64::new(0),
            trending_version: std::sync::atomic::AtomicU64::new(u64::MAX),
            skew,
            shared,
        }))
    }

    /// Fills this version's item-feature cache with the items `previous` has cached (its own
    /// version's rows of them), before it serves: without it, the first second after a swap
    /// sends every candidate's item features to Redis. Bounded by `limit`; returns the count.
    pub async fn warm_items_from(&self, previous: &Engine, limit: Duration) -> usize {
        let (Some(new), Some(old)) = (&self.redis, &previous.redis) else {
            return 0;
        };
        let ids = old.cached_ids(self.cfg.features.item_cache_capacity as usize);
        match tokio::time::timeout(limit, new.prefetch(&ids, 500)).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "item cache warm-up stopped");
                0
            }
            Err(_) => new.cached_items() as usize,
        }
    }

    /// The parts a reload builds the next version over.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// The metrics, shared (for the HTTP layer's admission control).
    pub fn metrics_shared(&self) -> Arc<Metrics> {
        self.shared.metrics.clone()
    }

    pub fn skew(&self) -> &SkewMonitor {
        &self.skew
    }

    /// `GET /metrics`: every metric, with the breaker and skew gauges set from their state now.
    pub fn render_metrics(&self) -> String {
        let breakers: Vec<(String, &'static str)> = self
            .breakers()
            .map(|b| (b.name().to_string(), b.state_name()))
            .collect();
        let (skew, rows) = self.skew.gauges();
        if let Some(exp) = &self.shared.experiment {
            self.shared.metrics.set_arms(&exp.metric_figures());
        }
        self.shared.metrics.render(&breakers, &skew, rows)
    }

    /// Every circuit breaker: Redis (request path, ingestion) when there is one, each source's,
    /// each ranker's.
    fn breakers(&self) -> impl Iterator<Item = &Breaker> {
        let slots = self.pipeline.retrieval.slots();
        [&*self.shared.redis_breaker, &self.shared.events_breaker]
            .into_iter()
            .filter(|_| self.redis.is_some())
            .chain(slots.iter().map(|s| s.breaker()))
            .chain(self.pipeline.rank.registry().breakers())
    }

    pub fn store_kind(&self) -> StoreKind {
        if self.redis.is_some() {
            StoreKind::Redis
        } else {
            StoreKind::Embedded
        }
    }

    /// Runs the funnel for one (validated) request.
    pub async fn recommend(
        &self,
        req: ValidRequest,
        request_id: String,
    ) -> Result<RecommendResponse, ApiError> {
        self.pipeline.run(req, request_id).await
    }

    /// [`Self::recommend`] for a request that arrived at `arrived` (it waited for admission
    /// since): its deadline counts from then.
    pub async fn recommend_since(
        &self,
        req: ValidRequest,
        request_id: String,
        arrived: std::time::Instant,
    ) -> Result<RecommendResponse, ApiError> {
        self.pipeline.run_since(req, request_id, arrived).await
    }

    /// [`Self::recommend_since`] for an experiment arm: its changes to the stages.
    pub async fn recommend_arm(
        &self,
        req: ValidRequest,
        request_id: String,
        arrived: std::time::Instant,
        plan: Option<&crate::pipeline::ArmPlan>,
    ) -> Result<RecommendResponse, ApiError> {
        self.pipeline.run_arm(req, request_id, arrived, plan).await
    }

    /// The state of each dependency, for `/readyz`.
    pub async fn readiness(&self) -> Readiness {
        let mut components = BTreeMap::new();
        let slots = self.pipeline.retrieval.slots();
        let rank = self.pipeline.rank.registry();
        for slot in slots {
            let id = slot.id;
            let state = match slot.available() {
                true => "ok".to_string(),
                false => self
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
            match rank.preferred() {
                Some(_) => format!("ok: {} models", rank.entries().len()),
                None => "unavailable: no ranker loaded".into(),
            },
        );
        let mut breakers = BTreeMap::new();
        for b in self.breakers() {
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
                if r.is_cluster() {
                    "redis_cluster"
                } else {
                    "redis"
                },
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
        let (factor, p99, adjustments) = self.pipeline.rank.controller().snapshot();
        let ranking = RankingState {
            strategy: self.cfg.ranking.strategy.as_str(),
            lambda: rank.lambda(),
            budget_factor: factor,
            window_p99_ms: p99,
            controller_adjustments: adjustments,
            models: rank
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
            skew: self.skew.report(),
            versions: None,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct FeatureStoreState {
    #[schema(value_type = String, pattern = "^(embedded|redis|redis_cluster)$")]
    pub kind: &'static str,
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cached_items: Option<u64>,
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ModelState {
    pub arch: &'static str,
    pub version: u32,
    /// The cost model's current prediction for 500 candidates.
    pub cost_ms_at_500: f64,
    pub runs_observed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warmup_error: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct RankingState {
    #[schema(value_type = crate::ranking::combine::Strategy)]
    pub strategy: &'static str,
    /// Weight of the estimator's diversity term.
    pub lambda: f64,
    /// The latency controller's share of the remaining budget the selector may spend.
    pub budget_factor: f64,
    pub window_p99_ms: f64,
    pub controller_adjustments: u64,
    pub models: BTreeMap<String, ModelState>,
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// "ready", or "degraded" when a dependency is down (the server still answers).
    #[schema(value_type = String, pattern = "^(ready|degraded)$")]
    pub status: &'static str,
    pub bundle_version: String,
    pub feature_store: FeatureStoreState,
    pub components: BTreeMap<String, String>,
    /// Circuit breaker per dependency.
    pub breakers: BTreeMap<String, BreakerState>,
    pub ranking: RankingState,
    pub events: events::EventsState,
    /// The training–serving skew monitor (does not change `status`: the server still serves).
    pub skew: SkewReport,
    /// Bundle versions: the served one, those loaded, the last reload, rollback or pin.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub versions: Option<deploy::VersionsState>,
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

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct BreakerState {
    /// closed, open or half_open.
    #[schema(value_type = String, pattern = "^(closed|open|half_open)$")]
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
