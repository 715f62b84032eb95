//! The server's typed configuration (`configs/default.toml`): every field defaulted, unknown keys
//! refused, validated at load with errors that name the file and line.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::breaker::BreakerConfig;
use crate::merge::MergeConfig;
use crate::ranking::combine::Strategy;
use crate::ranking::controller::ControllerConfig;
use crate::rerank::RerankConfig;
use crate::sources::SourceQuotas;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub budget: BudgetConfig,
    #[serde(default)]
    pub features: FeaturesConfig,
    #[serde(default)]
    pub retrieval: RetrievalConfig,
    #[serde(default)]
    pub merge: MergeConfig,
    #[serde(default)]
    pub ranking: RankingConfig,
    #[serde(default)]
    pub rerank: RerankConfig,
    /// Circuit breakers around Redis, each source and each ranker.
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// Event ingestion: the durable log and the streaming features.
    #[serde(default)]
    pub events: EventsConfig,
    /// API keys for the public routes (none: open).
    #[serde(default)]
    pub auth: AuthConfig,
    /// Metrics recording and the training–serving skew monitor.
    #[serde(default)]
    pub monitor: crate::observe::skew::MonitorConfig,
    /// Admission control in front of `/v1/recommend`: in-flight limit, short queue, shedding.
    #[serde(default)]
    pub admission: AdmissionConfig,
    /// Bundle versions: hot reload, how many stay loaded for rollback and pins.
    #[serde(default)]
    pub versions: VersionsConfig,
    /// An A/B experiment on live traffic (none by default).
    #[serde(default)]
    pub experiment: Option<ExperimentConfig>,
}

/// An experiment (`[experiment]` with `[[experiment.arms]]`): each user is assigned to one arm
/// by a salted hash of their id, so a user stays in their arm across requests and restarts.
/// Served arms' shares sum to 1; a `shadow` arm is computed beside the served one for a sampled
/// `share` of requests, off the critical path, and only compared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    pub name: String,
    /// Mixed into the assignment hash; a new salt reshuffles users (default: the name).
    #[serde(default)]
    pub salt: Option<String>,
    pub arms: Vec<ArmConfig>,
}

/// One arm: what it changes against the server's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArmConfig {
    pub name: String,
    /// Share of users (served arms, summing to 1), or of requests sampled (shadow arms).
    pub share: f64,
    #[serde(default)]
    pub shadow: bool,
    /// Serve this published bundle version (loaded at start and kept loaded) instead of the
    /// served one.
    #[serde(default)]
    pub bundle_version: Option<String>,
    /// The ensemble override of this arm (a request's own `ranking` takes precedence).
    #[serde(default)]
    pub ranking: Option<crate::api::RankingOverride>,
    /// The sources' quotas for this arm's requests (every source named; see `[retrieval.quotas]`).
    #[serde(default)]
    pub quotas: Option<SourceQuotas>,
    /// The re-rank rules for this arm's requests (as `[rerank]`).
    #[serde(default)]
    pub rerank: Option<RerankConfig>,
}

impl ExperimentConfig {
    pub fn validate(&self) -> Result<(), String> {
        let ok_name = |n: &str| {
            !n.is_empty()
                && n.len() <= 64
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        if !ok_name(&self.name) {
            return Err("experiment.name must be 1..=64 characters of [A-Za-z0-9._-]".into());
        }
        if self.arms.is_empty() || self.arms.len() > 16 {
            return Err("experiment.arms must list 1..=16 arms".into());
        }
        let mut names = std::collections::HashSet::new();
        let mut served = 0.0;
        for a in &self.arms {
            if !ok_name(&a.name) {
                return Err(format!(
                    "experiment arm {:?}: the name must be 1..=64 characters of [A-Za-z0-9._-]",
                    a.name
                ));
            }
            if !names.insert(a.name.as_str()) {
                return Err(format!("experiment arm {:?} is listed twice", a.name));
            }
            if !(a.share > 0.0 && a.share <= 1.0) {
                return Err(format!(
                    "experiment arm {:?}: share must be within (0, 1]",
                    a.name
                ));
            }
            if !a.shadow {
                served += a.share;
            }
            if let Some(r) = &a.rerank {
                r.validate()
                    .map_err(|m| format!("experiment arm {:?}: {m}", a.name))?;
            }
            if let Some(v) = &a.bundle_version {
                if !crate::bundle::is_version_name(v) {
                    return Err(format!(
                        "experiment arm {:?}: bundle_version {v:?} is not a version name",
                        a.name
                    ));
                }
            }
        }
        if (served - 1.0).abs() > 1e-6 {
            return Err(format!(
                "experiment {:?}: the shares of the served (non-shadow) arms must sum to 1, not {served}",
                self.name
            ));
        }
        Ok(())
    }
}

/// Bundle versions at run time (`[versions]`): the server follows the bundle root's `CURRENT`
/// (polled every `poll_ms`, and on `POST /admin/reload`), loads and verifies a new version off
/// the request path and swaps it in; up to `keep_loaded` versions stay in memory so a rollback
/// or a pin is instant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VersionsConfig {
    /// Poll `CURRENT` for a new version; 0 = only on `POST /admin/reload`.
    pub poll_ms: u64,
    /// Versions held in memory at most (the served one included), >= 1.
    pub keep_loaded: usize,
    /// Re-check every file's sha256 against the manifest before a reload swaps a version in.
    pub verify_checksums: bool,
}

impl Default for VersionsConfig {
    fn default() -> Self {
        Self {
            poll_ms: 2_000,
            keep_loaded: 2,
            verify_checksums: true,
        }
    }
}

impl VersionsConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=16).contains(&self.keep_loaded) {
            return Err("versions.keep_loaded must be within 1..=16".into());
        }
        if self.poll_ms != 0 && !(100..=3_600_000).contains(&self.poll_ms) {
            return Err("versions.poll_ms must be 0 (off) or within 100..=3600000".into());
        }
        Ok(())
    }
}

/// Admission control of `POST /v1/recommend` (`[admission]`): at most `max_in_flight` requests
/// run the pipeline at once, at most `max_queue` more wait for a slot, each for at most
/// `queue_timeout_ms`; every other request is answered at once with 503 `overloaded` and
/// `Retry-After`. Past the saturation point this keeps the latency of the requests taken inside
/// their deadline instead of letting every request miss it. Health, readiness and metrics are
/// never shed; events have their own queue bound (`events.queue_capacity`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionConfig {
    pub enabled: bool,
    /// Requests in the pipeline at once; 0 = `per_core_in_flight` × the CPU pool's threads.
    pub max_in_flight: usize,
    /// Used when `max_in_flight` is 0.
    pub per_core_in_flight: usize,
    /// Requests waiting for a slot at most (0: none waits; past the limit is shed at once).
    pub max_queue: usize,
    /// A queued request that gets no slot within this is shed. The wait counts against its
    /// deadline (`budget.total_ms`).
    pub queue_timeout_ms: u64,
    /// The `Retry-After` seconds of a shed request.
    pub retry_after_s: u64,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_in_flight: 0,
            per_core_in_flight: 16,
            max_queue: 32,
            queue_timeout_ms: 40,
            retry_after_s: 1,
        }
    }
}

impl AdmissionConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.per_core_in_flight == 0 || self.per_core_in_flight > 1024 {
            return Err("admission.per_core_in_flight must be within 1..=1024".into());
        }
        if self.max_in_flight > 1_000_000 || self.max_queue > 1_000_000 {
            return Err("admission.max_in_flight and max_queue must be <= 1000000".into());
        }
        if self.queue_timeout_ms > 60_000 {
            return Err("admission.queue_timeout_ms must be <= 60000".into());
        }
        if !(1..=3600).contains(&self.retry_after_s) {
            return Err("admission.retry_after_s must be within 1..=3600".into());
        }
        Ok(())
    }

    /// The in-flight limit for a CPU pool of `cpu_threads`.
    pub fn in_flight_limit(&self, cpu_threads: usize) -> usize {
        if self.max_in_flight > 0 {
            self.max_in_flight
        } else {
            self.per_core_in_flight.saturating_mul(cpu_threads.max(1))
        }
    }
}

/// When the event log forces appended events to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncMode {
    /// Before acknowledging (one sync per group commit): survives a machine crash.
    #[default]
    Always,
    /// At most every `fsync_interval_ms`: a machine crash can lose that window.
    Interval,
    /// Left to the OS: survives a process crash (`kill -9`), not a machine crash.
    Never,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// `POST /v1/events` answers 503 when false.
    pub enabled: bool,
    /// Directory of the event log (Arrow IPC stream segments); one server per directory.
    pub log_dir: String,
    pub fsync: FsyncMode,
    pub fsync_interval_ms: u64,
    /// Segments rotate past this size.
    pub segment_mb: u64,
    /// Events per request at most.
    pub max_batch: usize,
    pub max_body_bytes: usize,
    /// How long, and how many, `event_id`s are remembered for idempotent retries.
    pub dedupe_window_s: u64,
    pub dedupe_capacity: usize,
    /// Batches waiting for the log writer before requests get 503.
    pub queue: usize,
    /// Users whose streaming state the in-process store keeps (without Redis).
    pub memory_max_users: u64,
    /// How long a batch's streaming-feature update may take in Redis (its own breaker, apart
    /// from the request path's).
    pub apply_timeout_ms: u64,
    /// How often the live trending list is recomputed from the counters.
    pub trending_refresh_ms: u64,
    /// Half-life of a counter bucket's weight in the live trending score.
    pub trending_half_life_s: f64,
    /// Share of the live counters in the trending source's score (the rest: the build's).
    pub trending_weight: f32,
    /// Items taken from the live counters (and per bucket from Redis).
    pub trending_top: usize,
}

fn d_log_dir() -> String {
    "artifacts/events".into()
}
const fn d_fsync_interval() -> u64 {
    100
}
const fn d_segment_mb() -> u64 {
    64
}
const fn d_max_batch() -> usize {
    1000
}
const fn d_events_body() -> usize {
    1 << 20
}
const fn d_dedupe_window() -> u64 {
    86_400
}
const fn d_dedupe_capacity() -> usize {
    5_000_000
}
const fn d_queue() -> usize {
    1024
}
const fn d_memory_users() -> u64 {
    200_000
}
const fn d_apply_timeout() -> u64 {
    1000
}
const fn d_trending_refresh() -> u64 {
    250
}
const fn d_trending_half_life() -> f64 {
    1800.0
}
const fn d_trending_weight() -> f32 {
    0.5
}
const fn d_trending_top() -> usize {
    1000
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            log_dir: d_log_dir(),
            fsync: FsyncMode::Always,
            fsync_interval_ms: d_fsync_interval(),
            segment_mb: d_segment_mb(),
            max_batch: d_max_batch(),
            max_body_bytes: d_events_body(),
            dedupe_window_s: d_dedupe_window(),
            dedupe_capacity: d_dedupe_capacity(),
            queue: d_queue(),
            memory_max_users: d_memory_users(),
            apply_timeout_ms: d_apply_timeout(),
            trending_refresh_ms: d_trending_refresh(),
            trending_half_life_s: d_trending_half_life(),
            trending_weight: d_trending_weight(),
            trending_top: d_trending_top(),
        }
    }
}

impl EventsConfig {
    pub fn validate(&self) -> Result<(), String> {
        let checks: [(bool, &str); 8] = [
            (
                !self.enabled || !self.log_dir.trim().is_empty(),
                "events.log_dir must not be empty (or set events.enabled = false)",
            ),
            (
                (1..=100_000).contains(&self.max_batch),
                "events.max_batch must be within 1..=100000",
            ),
            (
                self.max_body_bytes >= 1024,
                "events.max_body_bytes must be >= 1024",
            ),
            (self.segment_mb >= 1, "events.segment_mb must be >= 1"),
            (
                self.queue >= 1 && self.dedupe_capacity >= 1 && self.memory_max_users >= 1,
                "events.queue, events.dedupe_capacity and events.memory_max_users must be >= 1",
            ),
            (
                self.trending_refresh_ms >= 10 && self.apply_timeout_ms >= 1,
                "events.trending_refresh_ms must be >= 10 and events.apply_timeout_ms >= 1",
            ),
            (
                self.trending_half_life_s.is_finite() && self.trending_half_life_s > 0.0,
                "events.trending_half_life_s must be > 0",
            ),
            (
                (0.0..=1.0).contains(&self.trending_weight) && self.trending_top >= 1,
                "events.trending_weight must be within [0, 1] and events.trending_top >= 1",
            ),
        ];
        for (ok, msg) in checks {
            if !ok {
                return Err(msg.to_string());
            }
        }
        Ok(())
    }
}

/// The HTTP surface: listen address, request limits, connection hardening. Every field's
/// default is in `Default` (one place); a missing key takes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: String,
    /// Request bodies above this size are refused with 413.
    pub max_body_bytes: usize,
    /// Limits on list fields of a request (422 above them).
    pub max_session_items: usize,
    pub max_exclude_items: usize,
    /// Threads of the CPU pool that runs sources and ranking off the async reactor; 0 = one per core.
    pub cpu_threads: usize,
    /// Threads one ranker's matrix multiply may use; 0 leaves candle's default (every core).
    /// One, because a request's models already run concurrently on the rank slots: splitting
    /// each product across the cores as well only oversubscribes them (README, Performance).
    pub matmul_threads: usize,
    /// A request head (request line and headers) must arrive whole within this, from its first
    /// byte; past it the client gets 408 and the connection closes.
    pub header_timeout_ms: u64,
    /// A request body must arrive whole within this, once its head is in (408 past it).
    pub body_timeout_ms: u64,
    /// A kept-alive connection with no request in progress closes after this.
    pub idle_timeout_ms: u64,
    /// A response the client does not read closes the connection after this.
    pub write_timeout_ms: u64,
    /// Request line plus headers, in bytes (431 above it).
    pub max_header_bytes: usize,
    /// Header fields per request (431 above it).
    pub max_headers: usize,
    /// Open client connections at most; one more is answered 503 and closed at once.
    pub max_connections: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 64 * 1024,
            max_session_items: 50,
            max_exclude_items: 1000,
            cpu_threads: 0,
            matmul_threads: 1,
            header_timeout_ms: 5_000,
            body_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            write_timeout_ms: 10_000,
            max_header_bytes: 16 * 1024,
            max_headers: 64,
            max_connections: 4096,
        }
    }
}

impl ServerConfig {
    /// Threads of the CPU pool (`cpu_threads`, 0 = one per core).
    pub fn cpu_pool_threads(&self) -> usize {
        match self.cpu_threads {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        let checks: [(bool, &str); 5] = [
            (
                self.max_body_bytes >= 1024,
                "server.max_body_bytes must be >= 1024",
            ),
            (
                self.listen.parse::<std::net::SocketAddr>().is_ok(),
                "server.listen must be an address like 127.0.0.1:8080",
            ),
            (
                self.header_timeout_ms >= 1
                    && self.body_timeout_ms >= 1
                    && self.idle_timeout_ms >= 1
                    && self.write_timeout_ms >= 1,
                "server.header_timeout_ms, body_timeout_ms, idle_timeout_ms and write_timeout_ms must be >= 1",
            ),
            (
                // hyper reads a head into a buffer of at least 8 KiB.
                (8192..=1 << 20).contains(&self.max_header_bytes),
                "server.max_header_bytes must be within 8192..=1048576",
            ),
            (
                (1..=1000).contains(&self.max_headers) && self.max_connections >= 1,
                "server.max_headers must be within 1..=1000 and server.max_connections >= 1",
            ),
        ];
        for (ok, msg) in checks {
            if !ok {
                return Err(msg.to_string());
            }
        }
        Ok(())
    }
}

/// Bearer keys for the public API. Keys may also come from the environment
/// (`FUNNEL_RECOMMEND_KEYS`, `FUNNEL_EVENTS_KEYS`, `FUNNEL_ADMIN_TOKENS`: comma-separated), which
/// adds to these. A public route with no key configured is open; the admin routes with no token
/// configured are off (404).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Keys accepted on `POST /v1/recommend`.
    pub recommend_keys: Vec<String>,
    /// Keys accepted on `POST /v1/events`.
    pub events_keys: Vec<String>,
    /// Tokens accepted on `/admin/*` (reload, rollback, pin, versions). None: admin is off.
    pub admin_tokens: Vec<String>,
}

/// Environment variables whose comma-separated keys join `auth.recommend_keys` / `auth.events_keys`.
pub const RECOMMEND_KEYS_ENV: &str = "FUNNEL_RECOMMEND_KEYS";
pub const EVENTS_KEYS_ENV: &str = "FUNNEL_EVENTS_KEYS";
pub const ADMIN_TOKENS_ENV: &str = "FUNNEL_ADMIN_TOKENS";

impl AuthConfig {
    /// Adds the keys of the environment variables above.
    pub fn with_env(mut self) -> Self {
        let split = |v: String| -> Vec<String> {
            v.split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(str::to_owned)
                .collect()
        };
        if let Ok(v) = std::env::var(RECOMMEND_KEYS_ENV) {
            self.recommend_keys.extend(split(v));
        }
        if let Ok(v) = std::env::var(EVENTS_KEYS_ENV) {
            self.events_keys.extend(split(v));
        }
        if let Ok(v) = std::env::var(ADMIN_TOKENS_ENV) {
            self.admin_tokens.extend(split(v));
        }
        self
    }

    pub fn validate(&self) -> Result<(), String> {
        let all = self
            .recommend_keys
            .iter()
            .chain(&self.events_keys)
            .chain(&self.admin_tokens);
        for k in all {
            // Never echo the key itself.
            if k.len() < 16 || k.len() > 256 || !k.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(
                    "auth: every key must be 16..=256 printable ASCII characters, no spaces".into(),
                );
            }
        }
        Ok(())
    }
}

/// Time slices of a request. Stages that run out of time are cut and the response says so.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetConfig {
    /// End-to-end deadline of one request.
    pub total_ms: u64,
    /// Longest wait for the online feature store before falling back to the bundle's features.
    pub features_ms: u64,
    /// Longest wait for any one candidate source.
    pub source_ms: u64,
    /// Longest wait for ranking; past it the merged retrieval order is served.
    pub rank_ms: u64,
}

const fn d_total() -> u64 {
    200
}
const fn d_features() -> u64 {
    40
}
const fn d_source() -> u64 {
    60
}
const fn d_rank() -> u64 {
    80
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            total_ms: d_total(),
            features_ms: d_features(),
            source_ms: d_source(),
            rank_ms: d_rank(),
        }
    }
}

/// Which clock "now" is read from for freshness and item age.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Clock {
    /// The machine's wall clock (production).
    #[default]
    Wall,
    /// The bundle's data cutoff: for replaying historical data (demo, offline evaluation), where
    /// the wall clock would make every item look years old.
    Bundle,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeaturesConfig {
    /// Hot item features read from Redis are cached this long.
    pub item_cache_ttl_s: u64,
    pub item_cache_capacity: u64,
    /// Redis reply timeout (the request still stops waiting at `budget.features_ms`).
    pub redis_timeout_ms: u64,
    pub clock: Clock,
}

const fn d_cache_ttl() -> u64 {
    60
}
const fn d_cache_cap() -> u64 {
    500_000
}
const fn d_redis_timeout() -> u64 {
    100
}

impl Default for FeaturesConfig {
    fn default() -> Self {
        Self {
            item_cache_ttl_s: d_cache_ttl(),
            item_cache_capacity: d_cache_cap(),
            redis_timeout_ms: d_redis_timeout(),
            clock: Clock::Wall,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetrievalConfig {
    pub quotas: SourceQuotas,
    /// Weight of the session items' mean embedding in the ANN query (0 = user embedding only).
    pub session_blend: f32,
    /// Which of the bundle's ANN indexes serves: its frozen HNSW graph, or the FAISS index the
    /// builder wrote when its config had a `[faiss]` factory (needs `--features faiss`).
    pub ann_backend: AnnBackend,
    /// FAISS tuning parameters set at load through its ParameterSpace, e.g. `{ efSearch = 128 }`
    /// for an HNSW factory or `{ nprobe = 32 }` for an IVF one.
    pub faiss_params: std::collections::BTreeMap<String, f64>,
}

/// Why `ann_backend = "faiss"` is refused by a funnel built without the feature.
pub const FAISS_NEEDS_FEATURE: &str =
    "retrieval.ann_backend = \"faiss\" needs a funnel built with `--features faiss`";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnnBackend {
    #[default]
    Hnsw,
    Faiss,
}

const fn d_session_blend() -> f32 {
    0.5
}

impl Default for RetrievalConfig {
    fn default() -> Self {
        Self {
            quotas: SourceQuotas::default(),
            session_blend: d_session_blend(),
            ann_backend: AnnBackend::default(),
            faiss_params: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RankingConfig {
    /// Pin one ranker id (served alone, no ensemble); unset = the ensemble.
    pub model: Option<String>,
    /// How the selected models' scores combine (unless `strategy_from_bundle` finds one).
    pub strategy: Strategy,
    /// Use the strategy with the best validation NDCG@20 in the bundle's ensemble manifest
    /// (chosen on the builder's validation users, never on a holdout); `strategy` when the
    /// bundle scored none.
    pub strategy_from_bundle: bool,
    /// Most models one request may run.
    pub max_models: usize,
    /// Distinct architectures / ensemble size must reach this (0 = no constraint).
    pub min_diversity: f64,
    /// Time kept back from the deadline for re-rank and the response, in ms.
    pub reserve_ms: u64,
    /// Branch-and-bound node cap per request (the best subset found so far is used past it).
    pub max_search_nodes: u64,
    /// `optimize` (branch and bound over subsets) or `all` (a fixed ensemble: every model, best
    /// first, as many as fit the budget and `max_models`).
    pub selection: crate::ranking::select::SelectionMode,
    /// Scales the selector's budget to hold the observed p99.
    pub controller: ControllerConfig,
}

/// Stacking: its meta-learner is fitted on log-loss over every validation row (the least noisy
/// objective the builder has), and it served best or level on every holdout we measured.
const fn d_strategy() -> Strategy {
    Strategy::Stacking
}
const fn d_max_models() -> usize {
    3
}
const fn d_min_diversity() -> f64 {
    0.5
}
const fn d_reserve() -> u64 {
    10
}
const fn d_max_nodes() -> u64 {
    200_000
}

impl Default for RankingConfig {
    fn default() -> Self {
        Self {
            model: None,
            strategy: d_strategy(),
            strategy_from_bundle: true,
            max_models: d_max_models(),
            min_diversity: d_min_diversity(),
            reserve_ms: d_reserve(),
            max_search_nodes: d_max_nodes(),
            selection: Default::default(),
            controller: ControllerConfig::default(),
        }
    }
}

impl EngineConfig {
    /// Reads and validates `path`; errors read `path:line: message`.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::from_toml(&text).map_err(|m| format!("{}{m}", path.display()))
    }

    /// Parses TOML text; errors start with `:line: ` when the line is known, else `: `.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let cfg: EngineConfig = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
        cfg.validate().map_err(|m| format!(": {m}"))?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), String> {
        let b = &self.budget;
        let r = &self.ranking;
        let checks: [(bool, &str); 10] = [
            (
                (1..=64).contains(&r.max_models),
                "ranking.max_models must be within 1..=64",
            ),
            (
                (0.0..=1.0).contains(&r.min_diversity),
                "ranking.min_diversity must be within [0, 1]",
            ),
            (
                r.max_search_nodes >= 1,
                "ranking.max_search_nodes must be >= 1",
            ),
            (
                self.breaker.failure_threshold >= 1,
                "breaker.failure_threshold must be >= 1",
            ),
            (b.total_ms > 0, "budget.total_ms must be > 0"),
            (
                b.features_ms <= b.total_ms && b.source_ms <= b.total_ms && b.rank_ms <= b.total_ms,
                "budget slices (features_ms, source_ms, rank_ms) must each be <= budget.total_ms",
            ),
            (
                (0.0..=1.0).contains(&self.retrieval.session_blend),
                "retrieval.session_blend must be within [0, 1]",
            ),
            (
                self.retrieval.ann_backend != AnnBackend::Faiss
                    || crate::sources::ann::FAISS_AVAILABLE,
                FAISS_NEEDS_FEATURE,
            ),
            (
                self.features.item_cache_capacity > 0,
                "features.item_cache_capacity must be > 0",
            ),
            (
                self.features.redis_timeout_ms > 0,
                "features.redis_timeout_ms must be > 0",
            ),
        ];
        for (ok, msg) in checks {
            if !ok {
                return Err(msg.to_string());
            }
        }
        self.server.validate()?;
        self.merge.validate()?;
        self.auth.validate()?;
        self.ranking.controller.validate()?;
        self.events.validate()?;
        self.monitor.validate()?;
        self.admission.validate()?;
        self.versions.validate()?;
        if let Some(e) = &self.experiment {
            e.validate()?;
        }
        self.rerank.validate()
    }
}

/// What retrieval hands to ranking: the per-source quotas and the merge. The index-builder
/// draws ranker training candidates with the values the server serves with (`--serving-config`),
/// records them in the manifest, and the server warns when its own differ.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RetrievalPlan {
    pub quotas: SourceQuotas,
    pub merge: MergeConfig,
}

impl EngineConfig {
    pub fn retrieval_plan(&self) -> RetrievalPlan {
        RetrievalPlan {
            quotas: self.retrieval.quotas.clone(),
            merge: self.merge.clone(),
        }
    }
}

/// A TOML parse error as `:line: message` (or `: message` when the position is unknown), for
/// callers to prefix with the file name. Shared by every typed config in the workspace.
pub fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let line = e
        .span()
        .map(|s| {
            text.as_bytes()[..s.start.min(text.len())]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1
        })
        .map(|l| format!(":{l}"))
        .unwrap_or_default();
    format!("{line}: {}", e.message().trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_default_config_equals_the_defaults() {
        let text = include_str!("../configs/default.toml");
        let cfg = EngineConfig::from_toml(text).unwrap_or_else(|e| panic!("default.toml{e}"));
        let want = serde_json::to_value(EngineConfig::default()).ok();
        assert_eq!(serde_json::to_value(&cfg).ok(), want);
    }

    #[test]
    fn errors_name_the_line() {
        let e = EngineConfig::from_toml("[budget]\ntotal_ms = 10\nbogus = 1\n").unwrap_err();
        assert!(e.starts_with(":3:"), "{e}");
        let e = EngineConfig::from_toml("[budget]\ntotal_ms = 10\nrank_ms = 50\n").unwrap_err();
        assert!(e.contains("budget slices"), "{e}");
        let e =
            EngineConfig::from_toml("[rerank.category_cap]\nmax_per_category = 0\n").unwrap_err();
        assert!(e.contains("max_per_category"), "{e}");
    }
}
