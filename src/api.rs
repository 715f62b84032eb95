//! The wire types of `POST /v1/recommend` and their validation. Parsing is split in two so that
//! clients get the right status: bytes that are not JSON are a 400, JSON that breaks the schema a
//! 422 naming the field.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::ServerConfig;
use crate::ranking::combine::Strategy;

/// What kind of failure a client is told about. The engine says what went wrong; only the HTTP
/// surface (`server/`) decides which status that is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The body is not what it claims to be (not JSON, unreadable).
    Malformed,
    /// Well-formed, but it breaks the schema or a limit.
    Invalid,
    Unauthorized,
    TooLarge,
    /// The request head's fields are over the configured size or count.
    HeadersTooLarge,
    UriTooLong,
    /// The client did not send its request in time.
    Timeout,
    NotFound,
    MethodNotAllowed,
    /// The request cannot apply to the server's current state.
    Conflict,
    /// A part the request needs is switched off or down (retrying later may help).
    Unavailable,
    /// Too much work queued; nothing was done, retry.
    Overloaded,
    Internal,
}

/// Declares [`ErrorCode`] from one table, so that the variant, its wire string, its kind and
/// [`ErrorCode::ALL`] cannot disagree: a code is added here or it does not exist. The code is a
/// `tt`, not a `literal` fragment: utoipa reads `#[serde(rename = ...)]` from the raw tokens and
/// does not see through a literal fragment's invisible group (the schema would list the variant
/// names).
macro_rules! error_codes {
    ($( $(#[$doc:meta])* $variant:ident = $code:tt => $kind:ident, )+) => {
        /// Every `code` an error response can carry (the body's `code` field). The HTTP layer's
        /// own errors (`server::conn`) and the router's use it too: a client can match on the
        /// complete list, and the OpenAPI document lists exactly these.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
        pub enum ErrorCode {
            $( $(#[$doc])* #[serde(rename = $code)] $variant, )+
        }

        impl ErrorCode {
            /// Every code, in declaration order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),+];

            /// The code as it appears on the wire.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $code,)+
                }
            }

            /// The kind of failure the code reports (which decides its HTTP status).
            pub const fn kind(self) -> ErrorKind {
                match self {
                    $(ErrorCode::$variant => ErrorKind::$kind,)+
                }
            }
        }
    };
}

error_codes! {
    /// The body is not JSON (or could not be read).
    MalformedJson = "malformed_json" => Malformed,
    /// The HTTP request itself could not be parsed (request line, header syntax, framing).
    BadRequest = "bad_request" => Malformed,
    /// JSON that breaks the schema or a limit.
    InvalidRequest = "invalid_request" => Invalid,
    /// An API key is required and missing or wrong.
    Unauthorized = "unauthorized" => Unauthorized,
    PayloadTooLarge = "payload_too_large" => TooLarge,
    HeadersTooLarge = "headers_too_large" => HeadersTooLarge,
    UriTooLong = "uri_too_long" => UriTooLong,
    /// The request head or body did not arrive in time.
    RequestTimeout = "request_timeout" => Timeout,
    NotFound = "not_found" => NotFound,
    MethodNotAllowed = "method_not_allowed" => MethodNotAllowed,
    /// `events.enabled = false` on this server.
    EventsDisabled = "events_disabled" => Unavailable,
    /// The durable event log could not take the batch (nothing was recorded).
    EventLogUnavailable = "event_log_unavailable" => Unavailable,
    /// The event log's queue is full (nothing was recorded; retry).
    Overloaded = "overloaded" => Overloaded,
    /// The connection cap is reached (sent with `Retry-After`).
    TooManyConnections = "too_many_connections" => Overloaded,
    Internal = "internal" => Internal,
    /// A bundle version failed verification, loading or warm-up; the served version stays.
    VersionRefused = "version_refused" => Invalid,
    /// No such published bundle version (or none before the served one, for a rollback).
    VersionNotFound = "version_not_found" => NotFound,
    /// The server serves a fixed bundle version (started on a version directory).
    VersionsFixed = "versions_fixed" => Conflict,
    /// No experiment is configured.
    NoExperiment = "no_experiment" => NotFound,
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The JSON body of every error response, whichever layer answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
// Only for the schema (`additionalProperties: false`): clients may rely on exactly these two.
#[serde(deny_unknown_fields)]
pub struct ApiErrorBody {
    pub code: ErrorCode,
    /// For humans; not stable.
    pub message: String,
}

/// An error a client can act on: its kind, a stable code, a human message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub kind: ErrorKind,
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            kind: code.kind(),
            code,
            message: message.into(),
        }
    }
    pub fn malformed(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::MalformedJson, message)
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            ErrorCode::PayloadTooLarge,
            format!("request body exceeds {limit} bytes"),
        )
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    /// The response body.
    pub fn body(&self) -> ApiErrorBody {
        ApiErrorBody {
            code: self.code,
            message: self.message.clone(),
        }
    }
}

/// A user id as clients send it: a string or a non-negative integer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum UserId {
    Num(u64),
    /// Up to 256 bytes, not blank; a decimal string is the same user as the number.
    Str(String),
}

impl UserId {
    /// The id as experiment assignment hashes it: a number's decimal form (so `42` and
    /// `"42"` are one user, as for the bundle), else the trimmed string.
    pub fn key(&self) -> String {
        match self.as_u64() {
            Some(n) => n.to_string(),
            None => match self {
                UserId::Str(s) => s.trim().to_string(),
                UserId::Num(n) => n.to_string(),
            },
        }
    }

    /// The numeric id the bundle keys users by; None for ids that cannot be one (a cold user).
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            UserId::Num(n) => Some(*n),
            UserId::Str(s) => s.trim().parse().ok(),
        }
    }
}

/// A point in time: unix seconds or an RFC 3339 string.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Timestamp {
    Unix(i64),
    /// RFC 3339, e.g. `2024-01-01T00:00:00Z` (anything else is a 422).
    Rfc3339(String),
}

impl Timestamp {
    pub fn to_unix(&self, field: &str) -> Result<i64, ApiError> {
        match self {
            Timestamp::Unix(t) => Ok(*t),
            Timestamp::Rfc3339(s) => chrono::DateTime::parse_from_rfc3339(s)
                .map(|d| d.timestamp())
                .map_err(|e| {
                    ApiError::invalid(format!(
                        "{field}: {s:?} is neither unix seconds nor RFC 3339 ({e})"
                    ))
                }),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestContext {
    pub device: Option<String>,
    pub timestamp: Option<Timestamp>,
    /// Items of the current session, newest first.
    #[serde(default)]
    pub session_items: Vec<u64>,
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Filters {
    pub categories_any: Option<Vec<String>>,
    #[serde(default)]
    pub categories_none: Vec<String>,
    #[serde(default)]
    pub creators_none: Vec<u64>,
    pub published_after: Option<Timestamp>,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecommendRequest {
    pub user_id: UserId,
    /// How many items to return (the limits are checked after parsing: out of range is a 422).
    #[serde(default = "default_k")]
    #[schema(minimum = 1, maximum = 100, default = 20)]
    pub k: i64,
    #[serde(default)]
    pub context: RequestContext,
    #[serde(default)]
    pub exclude_items: Vec<u64>,
    #[serde(default)]
    pub filters: Filters,
    #[serde(default)]
    pub explain: bool,
    /// Per-request overrides of the ensemble (for experiments).
    #[serde(default)]
    pub ranking: RankingOverride,
    /// The client's own deadline in ms; the server keeps the smaller of it and its budget.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 60000)]
    pub deadline_ms: Option<u64>,
    /// Serve this arm of the running experiment instead of the user's assigned one (for
    /// testing an arm; shadow arms cannot be forced). An unknown arm is a 422.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 64)]
    pub arm: Option<String>,
}

/// Overrides of the configured ensemble for one request (or one experiment arm).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RankingOverride {
    /// Combination strategy: mean | weighted | rank_avg | borda | stacking.
    pub strategy: Option<Strategy>,
    /// Only these model ids may be selected.
    pub models: Option<Vec<String>>,
    #[schema(minimum = 1, maximum = 32)]
    pub max_models: Option<u32>,
    /// `optimize` | `all` (see `[ranking] selection`).
    pub selection: Option<crate::ranking::select::SelectionMode>,
}

impl RankingOverride {
    /// Nothing overridden.
    pub fn is_empty(&self) -> bool {
        *self == RankingOverride::default()
    }
}

/// Cap on `ranking.max_models` and `ranking.models` in a request.
pub const MAX_REQUEST_MODELS: usize = 32;

const fn default_k() -> i64 {
    20
}

pub const MAX_K: i64 = 100;

impl RecommendRequest {
    /// Parses a body: 400 when it is not JSON, 422 when it breaks the schema or the limits.
    pub fn parse(body: &[u8], limits: &ServerConfig) -> Result<ValidRequest, ApiError> {
        let req: RecommendRequest = serde_json::from_slice(body).map_err(|e| {
            use serde_json::error::Category;
            match e.classify() {
                Category::Syntax | Category::Eof | Category::Io => {
                    ApiError::malformed(format!("body is not valid JSON: {e}"))
                }
                Category::Data => ApiError::invalid(e.to_string()),
            }
        })?;
        req.validate(limits)
    }

    /// Checks every limit and parses the timestamps, once: the pipeline takes only the result.
    pub fn validate(self, limits: &ServerConfig) -> Result<ValidRequest, ApiError> {
        if let UserId::Str(s) = &self.user_id {
            if s.trim().is_empty() {
                return Err(ApiError::invalid("user_id must not be empty"));
            }
            if s.len() > 256 {
                return Err(ApiError::invalid("user_id is longer than 256 bytes"));
            }
        }
        if !(1..=MAX_K).contains(&self.k) {
            return Err(ApiError::invalid(format!(
                "k must be within 1..={MAX_K}, got {}",
                self.k
            )));
        }
        if self.context.session_items.len() > limits.max_session_items {
            return Err(ApiError::invalid(format!(
                "context.session_items has {} items; at most {} are accepted",
                self.context.session_items.len(),
                limits.max_session_items
            )));
        }
        if self.exclude_items.len() > limits.max_exclude_items {
            return Err(ApiError::invalid(format!(
                "exclude_items has {} items; at most {} are accepted",
                self.exclude_items.len(),
                limits.max_exclude_items
            )));
        }
        if let Some(d) = &self.context.device {
            if d.len() > 64 {
                return Err(ApiError::invalid("context.device is longer than 64 bytes"));
            }
        }
        let timestamp = self
            .context
            .timestamp
            .as_ref()
            .map(|t| t.to_unix("context.timestamp"))
            .transpose()?;
        let published_after = self
            .filters
            .published_after
            .as_ref()
            .map(|t| t.to_unix("filters.published_after"))
            .transpose()?;
        let f = &self.filters;
        let n_filter = f.categories_any.as_ref().map_or(0, Vec::len)
            + f.categories_none.len()
            + f.creators_none.len();
        if n_filter > 1000 {
            return Err(ApiError::invalid("filters list at most 1000 values in all"));
        }
        if f.categories_any.as_ref().is_some_and(Vec::is_empty) {
            return Err(ApiError::invalid(
                "filters.categories_any must not be empty (omit it to allow every category)",
            ));
        }
        if let Some(d) = self.deadline_ms {
            if !(1..=60_000).contains(&d) {
                return Err(ApiError::invalid(format!(
                    "deadline_ms must be within 1..=60000, got {d}"
                )));
            }
        }
        let r = &self.ranking;
        if let Some(m) = &r.models {
            if m.is_empty() || m.len() > MAX_REQUEST_MODELS {
                return Err(ApiError::invalid(format!(
                    "ranking.models must list 1..={MAX_REQUEST_MODELS} model ids"
                )));
            }
            if m.iter().any(|id| id.is_empty() || id.len() > 128) {
                return Err(ApiError::invalid(
                    "ranking.models ids must be 1..=128 bytes",
                ));
            }
        }
        if let Some(n) = r.max_models {
            if !(1..=MAX_REQUEST_MODELS as u32).contains(&n) {
                return Err(ApiError::invalid(format!(
                    "ranking.max_models must be within 1..={MAX_REQUEST_MODELS}, got {n}"
                )));
            }
        }
        if let Some(a) = &self.arm {
            if a.is_empty() || a.len() > 64 {
                return Err(ApiError::invalid("arm must be 1..=64 bytes"));
            }
        }
        Ok(ValidRequest {
            req: self,
            timestamp,
            published_after,
        })
    }
}

/// A request that passed [`RecommendRequest::validate`], with its timestamps parsed. Only this
/// type enters the pipeline, so no stage re-checks or re-parses the request.
#[derive(Debug, Clone)]
pub struct ValidRequest {
    req: RecommendRequest,
    /// `context.timestamp` as unix seconds.
    pub timestamp: Option<i64>,
    /// `filters.published_after` as unix seconds.
    pub published_after: Option<i64>,
}

impl ValidRequest {
    /// The request with an experiment arm's ranking override, where it sets none of its own.
    pub fn with_arm_ranking(mut self, ranking: &RankingOverride) -> Self {
        if self.req.ranking.is_empty() {
            self.req.ranking = ranking.clone();
        }
        self
    }

    /// The request as a shadow arm runs it: the arm's ranking override, and no explain.
    pub fn for_shadow(mut self, ranking: Option<&RankingOverride>) -> Self {
        if let Some(r) = ranking {
            self.req.ranking = r.clone();
        }
        self.req.explain = false;
        self
    }
}

impl std::ops::Deref for ValidRequest {
    type Target = RecommendRequest;
    fn deref(&self) -> &RecommendRequest {
        &self.req
    }
}

/// How degraded a response is, from none to the last resort (the fallback chain, in order).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Degradation {
    Full,
    /// The online store was unavailable or late: the bundle's (nightly) features were used.
    StaleFeatures,
    /// No ranker could score: candidates are in merged retrieval order.
    SimpleRanking,
    /// No source answered: the user's nightly batch list.
    Batch,
    /// Nothing else: global popularity.
    Popularity,
}

impl Degradation {
    pub fn as_str(self) -> &'static str {
        match self {
            Degradation::Full => "full",
            Degradation::StaleFeatures => "stale_features",
            Degradation::SimpleRanking => "simple_ranking",
            Degradation::Batch => "batch",
            Degradation::Popularity => "popularity",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ItemOut {
    pub item_id: u64,
    pub score: f32,
    pub sources: Vec<String>,
    /// How much the ensemble's models agree on this item, in [0, 1] (0 when no model scored
    /// it: retrieval order, batch or popularity).
    pub confidence: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasons: Option<Vec<String>>,
    /// With `explain`: each model's score for this item.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_scores: Option<BTreeMap<String, f32>>,
}

/// Source name → wall time from its launch (every configured source, 0 when not called).
pub type SourceTimings = BTreeMap<String, f64>;

/// What one pipeline stage did for a request: its time and how many items went in and out
/// (`explain.stages`, in the order the stages ran).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StageReport {
    pub stage: String,
    pub ms: f64,
    pub items_in: usize,
    pub items_out: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Timings {
    /// Waiting for the user's online features.
    pub features: f64,
    /// Fetching candidates' item features (cache misses go to the store).
    pub item_features: f64,
    /// Wall time of each source, from its launch.
    #[schema(value_type = BTreeMap<String, f64>)]
    pub sources: SourceTimings,
    pub merge: f64,
    pub rank: f64,
    pub rerank: f64,
    pub total: f64,
}

/// What `explain: true` adds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Explain {
    pub user_known: bool,
    pub history_len: u32,
    pub candidates: usize,
    /// Candidates per source before merge.
    pub per_source: BTreeMap<String, usize>,
    /// Source name → why it returned nothing useful ("timeout", "unavailable", an error).
    pub source_problems: BTreeMap<String, String>,
    /// The models that scored the candidates, joined by `+` (or why none did).
    pub ranker: Option<String>,
    pub now: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ensemble: Option<EnsembleExplain>,
    /// Each stage's time and item counts, in the order they ran.
    #[serde(default)]
    pub stages: Vec<StageReport>,
}

/// How the ensemble for this request was chosen and combined.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EnsembleExplain {
    /// The strategy applied (stacking falls back to weighted for an untrained subset).
    pub strategy: String,
    /// Time the selector could spend on models, after the latency controller's factor.
    pub budget_ms: f64,
    /// The latency controller's factor applied to the remaining time.
    pub budget_factor: f64,
    pub segment: String,
    /// The estimator's quality for the chosen subset, and the predicted wall time.
    pub estimate: f64,
    pub predicted_ms: f64,
    /// Subsets the branch and bound visited; false when its node cap cut it short.
    pub search_nodes: u64,
    pub exhaustive: bool,
    pub selected: Vec<SelectedModel>,
    pub skipped: Vec<SkippedModel>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SelectedModel {
    pub model_id: String,
    pub weight: f64,
    /// Predicted cost when selected.
    pub cost_ms: f64,
    /// Measured time, or why it gave no scores (then it is left out of the combination).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub took_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SkippedModel {
    pub model_id: String,
    /// budget | unhealthy | diversity | size | quality
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RecommendResponse {
    pub request_id: String,
    pub bundle_version: String,
    pub degradation: Degradation,
    pub items: Vec<ItemOut>,
    pub timings_ms: Timings,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explain: Option<Explain>,
    /// The experiment and arm that served this request (when an experiment runs). Send the
    /// response's `request_id` with the events it leads to, so they count for this arm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<ExperimentTag>,
}

/// Which experiment arm served a response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExperimentTag {
    pub name: String,
    pub arm: String,
    /// The arm was forced by the request's `arm`, not assigned.
    pub forced: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_unique_and_serialize_as_their_string() {
        let mut seen = std::collections::HashSet::new();
        for &c in ErrorCode::ALL {
            assert!(seen.insert(c.as_str()), "duplicate code {c}");
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
            assert!(c
                .as_str()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_'));
        }
        let e = ApiError::new(ErrorCode::Overloaded, "x");
        assert_eq!(e.kind, ErrorKind::Overloaded);
        let body = serde_json::to_value(e.body()).unwrap();
        assert_eq!(
            (&body["code"], &body["message"]),
            (&"overloaded".into(), &"x".into())
        );
    }

    /// Codes are typed, so an `ApiError` cannot carry one that is not listed; this guards the
    /// ways around the type: an error body's `code` written into JSON by hand, or a struct's
    /// `code` field set from a string literal. Every source file of the crate is scanned.
    #[test]
    fn no_error_code_is_written_outside_the_enum() {
        fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    out.push(p);
                }
            }
        }
        // Built here so that this test's own source does not match them.
        let key = format!("{q}code{q}", q = '"');
        let field = format!("code: {q}", q = '"');
        let mut files = Vec::new();
        walk(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut files,
        );
        assert!(files.len() > 20, "scan found {} files", files.len());
        let mut offenders = Vec::new();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for (n, line) in text.lines().enumerate() {
                let l = line.trim();
                if l.starts_with("//") {
                    continue;
                }
                // `"code":` / `"code" =>` is a key being written; `v["code"]` only reads one.
                let json_key = l.match_indices(&key).any(|(i, _)| {
                    let after = l[i + key.len()..].trim_start();
                    after.starts_with(':') || after.starts_with("=>")
                });
                if json_key || l.contains(&field) {
                    offenders.push(format!("{}:{}: {l}", f.display(), n + 1));
                }
            }
        }
        assert!(
            offenders.is_empty(),
            "error codes must come from api::ErrorCode: {offenders:#?}"
        );
    }

    fn parse(s: &str) -> Result<ValidRequest, ApiError> {
        RecommendRequest::parse(s.as_bytes(), &ServerConfig::default())
    }

    #[test]
    fn statuses() {
        assert_eq!(parse("{").unwrap_err().kind, ErrorKind::Malformed);
        assert_eq!(parse("not json").unwrap_err().kind, ErrorKind::Malformed);
        assert_eq!(parse(r#"{"k": 5}"#).unwrap_err().kind, ErrorKind::Invalid);
        assert_eq!(
            parse(r#"{"user_id": ""}"#).unwrap_err().kind,
            ErrorKind::Invalid
        );
        assert_eq!(
            parse(r#"{"user_id": "1", "k": 0}"#).unwrap_err().kind,
            ErrorKind::Invalid
        );
        assert_eq!(
            parse(r#"{"user_id": "1", "k": 101}"#).unwrap_err().kind,
            ErrorKind::Invalid
        );
        assert_eq!(
            parse(r#"{"user_id": "1", "bogus": 1}"#).unwrap_err().kind,
            ErrorKind::Invalid
        );
        assert_eq!(
            parse(r#"{"user_id": -3}"#).unwrap_err().kind,
            ErrorKind::Invalid
        );
        let many: Vec<u64> = (0..51).collect();
        let body =
            serde_json::json!({"user_id": 1, "context": {"session_items": many}}).to_string();
        assert_eq!(parse(&body).unwrap_err().kind, ErrorKind::Invalid);
        let bad_ts = r#"{"user_id": 1, "filters": {"published_after": "yesterday"}}"#;
        assert_eq!(parse(bad_ts).unwrap_err().kind, ErrorKind::Invalid);
        let ok = parse(r#"{"user_id": "42", "context": {"timestamp": "2020-01-01T00:00:00Z"}}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ok.user_id.as_u64(), Some(42));
        assert_eq!(ok.k, 20);
        assert_eq!(
            parse(r#"{"user_id": "anon-x"}"#).map(|r| r.user_id.as_u64()),
            Ok(None)
        );
    }
}
