//! The HTTP surface (axum): `POST /v1/recommend`, `POST /v1/events`, `GET /healthz`,
//! `GET /readyz`, `GET /metrics` (Prometheus), `GET /openapi.json`, the API's description
//! generated from these types ([`openapi`]), and the token-guarded bundle version routes under
//! `/admin` ([`admin`]). It owns the mapping of failures to statuses — every error is JSON
//! `{code, message}`, including those of the HTTP layer ([`conn`]) — the API keys ([`auth`]),
//! request bodies (size and time limits), and the containment of panics: a request that panics
//! gets a 500, the server keeps serving.

pub mod admin;
pub mod admission;
pub mod auth;
pub mod conn;
pub mod dashboard;
pub mod openapi;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::api::{ApiError, ErrorCode, ErrorKind, RecommendRequest};
use crate::engine::deploy::Deployment;
use crate::engine::Engine;

use self::auth::KeySet;
use tracing::Instrument;

/// The HTTP status of each kind of failure: the one place that mapping lives.
pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::Malformed => StatusCode::BAD_REQUEST,
        ErrorKind::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        ErrorKind::UriTooLong => StatusCode::URI_TOO_LONG,
        ErrorKind::Timeout => StatusCode::REQUEST_TIMEOUT,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::Unavailable | ErrorKind::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = status_of(self.kind);
        let mut resp = (status, Json(self.body())).into_response();
        // The body of a request refused for its size or its slowness may still be on the wire:
        // close rather than read it.
        if matches!(self.kind, ErrorKind::Timeout | ErrorKind::TooLarge) {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

#[derive(Clone)]
struct AppState {
    /// The served bundle version and those beside it; each request takes the current engine
    /// once and keeps it to its end.
    deploy: Arc<Deployment>,
    next_id: Arc<AtomicU64>,
    id_prefix: Arc<str>,
    recommend_keys: Arc<KeySet>,
    events_keys: Arc<KeySet>,
    admin_tokens: Arc<KeySet>,
    body_timeout: Duration,
    /// To let shadow runs stand aside while requests wait.
    admission: Option<Arc<admission::Admission>>,
}

impl AppState {
    fn engine(&self) -> Arc<Engine> {
        self.deploy.current()
    }
}

/// The application's routes over a fixed `engine`.
pub fn router(engine: Arc<Engine>) -> Router {
    router_for(Deployment::fixed(engine))
}

/// The application's routes over the versions of `deploy`. Server-wide settings (listen,
/// limits, keys, admission) are the first version's config; a reload changes the bundle only.
pub fn router_for(deploy: Arc<Deployment>) -> Router {
    let engine = deploy.current();
    let cfg = engine.config();
    let admission = cfg.admission.enabled.then(|| {
        let adm = Arc::new(admission::Admission::new(
            &cfg.admission,
            cfg.server.cpu_pool_threads(),
            engine.metrics_shared(),
        ));
        tracing::info!(
            in_flight = adm.limit(),
            queue = cfg.admission.max_queue,
            queue_timeout_ms = cfg.admission.queue_timeout_ms,
            "admission control on /v1/recommend"
        );
        adm
    });
    let state = AppState {
        recommend_keys: Arc::new(KeySet::new(&cfg.auth.recommend_keys)),
        events_keys: Arc::new(KeySet::new(&cfg.auth.events_keys)),
        admin_tokens: Arc::new(KeySet::new(&cfg.auth.admin_tokens)),
        body_timeout: Duration::from_millis(cfg.server.body_timeout_ms),
        deploy,
        next_id: Arc::new(AtomicU64::new(1)),
        id_prefix: format!("{:08x}", rand::random::<u32>()).into(),
        admission: admission.clone(),
    };
    let admit = axum::middleware::from_fn_with_state(admission, admission::admit);
    Router::new()
        .route("/v1/recommend", post(recommend).layer(admit))
        .route("/v1/events", post(events))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/dashboard", get(dashboard::page))
        .route("/admin/versions", get(admin::versions))
        .route("/admin/reload", post(admin::reload))
        .route("/admin/rollback", post(admin::rollback))
        .route("/admin/pin", post(admin::pin))
        .route("/admin/experiments", get(admin::experiments))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// The route label of a request: its matched route, one of a fixed set (an unmatched path is
/// "other", so a scanner cannot grow the metrics without bound).
fn route_label(path: Option<&MatchedPath>) -> &'static str {
    const ROUTES: [&str; 12] = [
        "/v1/recommend",
        "/v1/events",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/dashboard",
        "/admin/versions",
        "/admin/reload",
        "/admin/rollback",
        "/admin/pin",
        "/admin/experiments",
    ];
    path.and_then(|p| ROUTES.iter().find(|r| **r == p.as_str()).copied())
        .unwrap_or("other")
}

/// Counts and times every request the router answers (by route and status).
async fn observe(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let t = std::time::Instant::now();
    let route = route_label(req.extensions().get::<MatchedPath>());
    let resp = next.run(req).await;
    s.engine()
        .metrics()
        .observe_http(route, resp.status().as_u16(), t.elapsed().as_secs_f64());
    resp
}

/// Serves a fixed `engine` (see [`serve_deployment`]).
pub async fn serve(
    engine: Arc<Engine>,
    addr: SocketAddr,
    on_bound: impl FnOnce(SocketAddr),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_deployment(Deployment::fixed(engine), addr, on_bound, shutdown).await
}

/// Serves `router_for(deploy)` on `addr` until `shutdown` resolves, then lets requests in
/// flight finish (up to 10 s). Returns the bound address through `on_bound` first (port 0
/// picks a free one). Runs the deployment's background work (`CURRENT` poller, live trending).
pub async fn serve_deployment(
    deploy: Arc<Deployment>,
    addr: SocketAddr,
    on_bound: impl FnOnce(SocketAddr),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let engine = deploy.current();
    // Experiment arms that serve their own bundle version need it loaded before the first
    // request.
    if let Some(exp) = engine.shared().experiment() {
        let versions: Vec<String> = exp
            .config()
            .arms
            .iter()
            .filter_map(|a| a.bundle_version.clone())
            .collect();
        deploy
            .hold(&versions)
            .await
            .map_err(|e| std::io::Error::other(format!("experiment {}: {e}", exp.config().name)))?;
        tracing::info!(
            experiment = %exp.config().name,
            arms = exp.config().arms.len(),
            "experiment running"
        );
    }
    let listener = tokio::net::TcpListener::bind(addr).await?;
    on_bound(listener.local_addr()?);
    let mut limits = conn::ConnLimits::from_config(&engine.config().server);
    // Room for the log, the bundle's files and Redis besides the connections.
    const OTHER_FDS: u64 = 256;
    if let Some(soft) = conn::raise_fd_limit(limits.max_connections as u64 + OTHER_FDS) {
        let room = soft.saturating_sub(OTHER_FDS).max(1) as usize;
        if room < limits.max_connections {
            tracing::warn!(
                configured = limits.max_connections,
                open_file_limit = soft,
                "server.max_connections lowered to what the open-file limit allows: {room}"
            );
            limits.max_connections = room;
        }
    }
    let auth = &engine.config().auth;
    for (route, keys) in [
        ("/v1/recommend", &auth.recommend_keys),
        ("/v1/events", &auth.events_keys),
    ] {
        if keys.is_empty() {
            tracing::warn!("{route} is open: no API key configured (see [auth] in the config)");
        } else {
            tracing::info!(keys = keys.len(), "{route} requires an API key");
        }
    }
    if !auth.admin_tokens.is_empty() {
        tracing::info!(
            tokens = auth.admin_tokens.len(),
            "/admin routes on (bearer token)"
        );
    }
    let background = deploy.spawn_background();
    drop(engine);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let accept = conn::accept_loop(
        listener,
        router_for(deploy),
        limits,
        stopped,
        Duration::from_secs(10),
    );
    tokio::pin!(accept);
    tokio::select! {
        _ = &mut accept => {}
        _ = shutdown => {
            let _ = stop.send(true);
            accept.await;
        }
    }
    for b in background {
        b.abort();
    }
    Ok(())
}

/// Most of an oversized body read and dropped before the 413, so that a client still sending
/// it gets the answer instead of a reset (closing a socket with unread data resets it).
const DRAIN_MAX_BYTES: usize = 1 << 20;
const DRAIN_MAX_TIME: Duration = Duration::from_millis(500);

/// A request's body, whole: refused with 413 past `limit` and with 408 when it does not arrive
/// within `timeout`.
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ApiError> {
    use http_body_util::BodyExt;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let mut body = body;
    // A declared size over the limit is refused without reading it all.
    let mut over = declared.is_some_and(|n| n > limit as u64);
    let read = async {
        let mut out: Vec<u8> = Vec::new();
        while !over {
            let Some(frame) = body.frame().await else {
                return Ok(Bytes::from(out));
            };
            let frame = frame.map_err(|e| ApiError::malformed(format!("body: {e}")))?;
            if let Ok(data) = frame.into_data() {
                if out.len() + data.len() > limit {
                    over = true;
                } else {
                    out.extend_from_slice(&data);
                }
            }
        }
        Err(ApiError::too_large(limit))
    };
    let result = tokio::time::timeout(timeout, read)
        .await
        .unwrap_or_else(|_| {
            Err(ApiError::new(
                ErrorCode::RequestTimeout,
                format!(
                    "the request body did not arrive within {} ms",
                    timeout.as_millis()
                ),
            ))
        });
    if matches!(&result, Err(e) if e.kind == ErrorKind::TooLarge)
        && declared.is_none_or(|n| n <= DRAIN_MAX_BYTES as u64)
    {
        let drain = async {
            let mut seen = 0usize;
            while let Some(Ok(frame)) = body.frame().await {
                seen += frame.data_ref().map_or(0, |d| d.len());
                if seen > DRAIN_MAX_BYTES {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(DRAIN_MAX_TIME.min(timeout), drain).await;
    }
    result
}

/// `GET /healthz`: the process is up and answering.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
// Only for the schema (`additionalProperties: false`): the body has this one field.
#[serde(deny_unknown_fields)]
pub struct Health {
    /// Always `alive`.
    #[schema(value_type = String, pattern = "^alive$")]
    pub status: &'static str,
}

/// The process is alive (it says nothing about the bundle or Redis: see `/readyz`).
#[utoipa::path(get, path = "/healthz", tag = "health", responses(
    (status = 200, description = "Alive", body = Health),
))]
async fn healthz() -> Json<Health> {
    Json(Health { status: "alive" })
}

/// The bundle version, the feature store and each component's state. `degraded` still answers
/// 200: the server serves (with fallbacks) whenever it is up.
#[utoipa::path(get, path = "/readyz", tag = "health", responses(
    (status = 200, description = "Readiness of every dependency", body = crate::engine::Readiness),
))]
async fn readyz(State(s): State<AppState>) -> Json<crate::engine::Readiness> {
    let mut r = s.engine().readiness().await;
    r.versions = Some(s.deploy.state());
    Json(r)
}

/// Prometheus scrape: rendering walks every series, so it runs off the reactor.
async fn metrics(State(s): State<AppState>) -> Response {
    let engine = s.engine();
    match tokio::task::spawn_blocking(move || engine.render_metrics()).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(crate::observe::metrics::CONTENT_TYPE),
            )],
            text,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "rendering the metrics failed");
            ApiError::internal("rendering the metrics failed").into_response()
        }
    }
}

async fn not_found() -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        "no such route; try POST /v1/recommend, POST /v1/events, GET /healthz, GET /readyz, \
         GET /metrics, GET /dashboard or GET /openapi.json",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "method not allowed on this route",
    )
}

/// Recommendations for one user through the whole funnel. An unknown `user_id` is a cold
/// start, not an error.
#[utoipa::path(
    post,
    path = "/v1/recommend",
    tag = "recommend",
    request_body = crate::api::RecommendRequest,
    params(("x-request-id" = Option<String>, Header,
        description = "Echoed back as the response's `request_id` (1..=128 bytes); generated when absent")),
    security((), ("api_key" = [])),
    responses(
        (status = 200, description = "Recommendations", body = crate::api::RecommendResponse,
            headers(("x-request-id" = String, description = "The request's id"))),
        (status = 400, description = "The body is not JSON", body = crate::api::ApiErrorBody),
        (status = 401, description = "API key missing or wrong (only when keys are configured)",
            body = crate::api::ApiErrorBody),
        (status = 408, description = "The body did not arrive in time", body = crate::api::ApiErrorBody),
        (status = 413, description = "The body is over `server.max_body_bytes`",
            body = crate::api::ApiErrorBody),
        (status = 422, description = "The request breaks the schema or a limit",
            body = crate::api::ApiErrorBody),
        (status = 500, description = "The request failed inside the server (contained to it)",
            body = crate::api::ApiErrorBody),
        (status = 503, description = "Over capacity (`overloaded`, with `Retry-After`): shed by \
            admission control before any work was done; retry later",
            body = crate::api::ApiErrorBody,
            headers(("retry-after" = String, description = "Seconds to wait before retrying"))),
    ),
)]
async fn recommend(State(s): State<AppState>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let headers = parts.headers;
    if let Err(e) = s.recommend_keys.check(&headers) {
        return e.into_response();
    }
    // The version that answers: taken once, kept to the end even if a reload swaps meanwhile.
    let engine = s.engine();
    let limit = engine.config().server.max_body_bytes;
    let body = match read_body(&headers, body, limit, s.body_timeout).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let req = match RecommendRequest::parse(&body, &engine.config().server) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_owned)
        .unwrap_or_else(|| {
            format!(
                "{}-{}",
                s.id_prefix,
                s.next_id.fetch_add(1, Ordering::Relaxed)
            )
        });
    // An experiment picks the arm (assigned by user, or forced by the request), which may
    // serve another loaded bundle version and override the ensemble.
    let experiment = engine.shared().experiment().cloned();
    let (engine, req, assignment) = match &experiment {
        None => (engine, req, None),
        Some(exp) => {
            let a = match exp.choose(&req.user_id.key(), req.arm.as_deref()) {
                Ok(a) => a,
                Err(m) => return ApiError::invalid(m).into_response(),
            };
            let arm = exp.arm(a.arm);
            let engine = match &arm.bundle_version {
                Some(v) => s.deploy.loaded(v).unwrap_or(engine),
                None => engine,
            };
            let req = match &arm.ranking {
                Some(r) => req.with_arm_ranking(r),
                None => req,
            };
            (engine, req, Some(a))
        }
    };
    // Shadow arms run on a copy of the request, after the answer (never before it).
    let shadow_req = experiment
        .as_ref()
        .filter(|e| e.shadow_arms().next().is_some())
        .map(|_| req.clone());
    // A spawned task turns a panic anywhere in the request path into a JoinError.
    let rid = request_id.clone();
    // Every log line of the request carries its id (the JSON log format prints span fields).
    // At warn level so it is there under the default filter; its close is only logged with
    // `--log-spans`.
    let span = tracing::warn_span!("request", request_id = %rid);
    let arrived = parts
        .extensions
        .get::<admission::Arrival>()
        .map_or_else(std::time::Instant::now, |a| a.0);
    let served = engine.clone();
    let arm_of = experiment.clone().zip(assignment.map(|a| a.arm));
    let task = tokio::spawn(
        async move {
            let plan = arm_of.as_ref().and_then(|(e, i)| e.plan(*i));
            served.recommend_arm(req, rid, arrived, plan).await
        }
        .instrument(span),
    );
    let mut resp = match task.await {
        Ok(Ok(mut r)) => {
            if let (Some(exp), Some(a)) = (&experiment, assignment) {
                exp.record_served(a.arm, &request_id, r.timings_ms.total, r.degradation);
                r.experiment = Some(exp.tag(a));
                if let Some(q) = shadow_req {
                    spawn_shadows(&s, exp, engine, q, &r);
                }
            }
            Json(r).into_response()
        }
        Ok(Err(e)) => e.into_response(),
        Err(e) => {
            tracing::error!(request_id, error = %e, "request task failed");
            ApiError::internal("internal error while answering the request").into_response()
        }
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// Runs each shadow arm sampled for this request on its own task, after the served answer,
/// and compares its list with the served one. Skipped (counted as dropped) while admission
/// control has requests waiting or every shadow slot is busy: shadow work never competes with
/// served requests for a queue place.
fn spawn_shadows(
    s: &AppState,
    exp: &Arc<crate::engine::experiments::Experiment>,
    served_by: Arc<Engine>,
    req: crate::api::ValidRequest,
    answer: &crate::api::RecommendResponse,
) {
    let served: Arc<Vec<u64>> = Arc::new(answer.items.iter().map(|i| i.item_id).collect());
    for (i, arm) in exp.shadow_arms() {
        if rand::random::<f64>() >= arm.share {
            continue;
        }
        if s.admission.as_ref().is_some_and(|a| a.busy()) {
            exp.record_shadow_dropped(i);
            continue;
        }
        let Some(permit) = exp.try_shadow(i) else {
            continue;
        };
        let engine = match &arm.bundle_version {
            Some(v) => s.deploy.loaded(v).unwrap_or_else(|| served_by.clone()),
            None => served_by.clone(),
        };
        let req = req.clone().for_shadow(arm.ranking.as_ref());
        let rid = format!("{}~shadow-{}", answer.request_id, arm.name);
        let (exp, served) = (exp.clone(), served.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let t = std::time::Instant::now();
            let got = engine.pipeline().run_shadow(req, rid, exp.plan(i)).await;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            let list: Option<Vec<u64>> = got
                .ok()
                .map(|r| r.items.iter().map(|i| i.item_id).collect());
            exp.record_shadow(i, &served, list.as_deref(), ms);
        });
    }
}

/// A batch of interaction events: logged durably, then applied to the streaming features. A
/// bad event is rejected alone (listed in `rejected`); only batch-level problems fail the
/// request.
#[utoipa::path(
    post,
    path = "/v1/events",
    tag = "events",
    request_body = crate::events::api::EventsRequest,
    security((), ("api_key" = [])),
    responses(
        (status = 202, description = "The batch is in the durable log",
            body = crate::events::api::EventsResponse),
        (status = 400, description = "The body is not JSON", body = crate::api::ApiErrorBody),
        (status = 401, description = "API key missing or wrong (only when keys are configured)",
            body = crate::api::ApiErrorBody),
        (status = 408, description = "The body did not arrive in time", body = crate::api::ApiErrorBody),
        (status = 413, description = "The body is over `events.max_body_bytes`",
            body = crate::api::ApiErrorBody),
        (status = 422, description = "Not `{\"events\": [...]}`, or no events, or more than \
            `events.max_batch`", body = crate::api::ApiErrorBody),
        (status = 500, description = "The request failed inside the server (contained to it)",
            body = crate::api::ApiErrorBody),
        (status = 503, description = "Events are disabled, or the event log cannot take the \
            batch (nothing recorded; retry)", body = crate::api::ApiErrorBody),
    ),
)]
async fn events(State(s): State<AppState>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    if let Err(e) = s.events_keys.check(&parts.headers) {
        return e.into_response();
    }
    let engine = s.engine();
    let limit = engine.config().events.max_body_bytes;
    let body = match read_body(&parts.headers, body, limit, s.body_timeout).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    // As for recommend: a panic is contained to this request.
    match tokio::spawn(async move { engine.ingest(&body).await }).await {
        Ok(Ok(r)) => (StatusCode::ACCEPTED, Json(r)).into_response(),
        Ok(Err(e)) => e.into_response(),
        Err(e) => {
            tracing::error!(error = %e, "events task failed");
            ApiError::internal("internal error while ingesting events").into_response()
        }
    }
}
