//! `/admin/*`: bundle versions at run time — list, reload (follow `CURRENT`), roll back, pin —
//! and the running experiment's per-arm results.
//! Every route needs `Authorization: Bearer <token>` from `[auth] admin_tokens` (or
//! `FUNNEL_ADMIN_TOKENS`), compared in constant time ([`super::auth`]); with no token
//! configured the routes do not exist (404), so an unconfigured server exposes nothing.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::AppState;
use crate::api::{ApiError, ErrorCode};
use crate::engine::deploy::{
    describe_versions, DeployError, PublishedVersion, SwitchOutcome, VersionsState,
};

/// The admin routes' gate: 404 when no token is configured, 401 without the right one.
fn gate(s: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    if s.admin_tokens.is_open() {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            "no such route (admin routes are off: no [auth] admin_tokens configured)",
        ));
    }
    s.admin_tokens.check(headers)
}

fn deploy_error(e: DeployError) -> ApiError {
    let code = match &e {
        DeployError::Fixed => ErrorCode::VersionsFixed,
        DeployError::NotFound(_) | DeployError::NoPrevious(_) => ErrorCode::VersionNotFound,
        DeployError::Refused { .. } => ErrorCode::VersionRefused,
    };
    ApiError::new(code, crate::engine::without_paths(&e.to_string()))
}

fn outcome(r: Result<SwitchOutcome, DeployError>) -> Response {
    match r {
        Ok(o) => (StatusCode::OK, Json(o)).into_response(),
        Err(e) => deploy_error(e).into_response(),
    }
}

/// `GET /admin/versions`.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct VersionsReport {
    pub state: VersionsState,
    /// The bundle root's published versions, oldest first (empty for a fixed version).
    pub published: Vec<PublishedVersion>,
}

/// The served version, those loaded, the last change, and every published version with the
/// evaluation figures of its build.
#[utoipa::path(get, path = "/admin/versions", tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Bundle versions", body = VersionsReport),
        (status = 401, description = "Admin token missing or wrong", body = crate::api::ApiErrorBody),
        (status = 404, description = "Admin routes are off (no token configured)",
            body = crate::api::ApiErrorBody),
        (status = 500, description = "The bundle root could not be read", body = crate::api::ApiErrorBody),
    ),
)]
pub(super) async fn versions(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(e) = gate(&s, &headers) {
        return e.into_response();
    }
    let published = match s.deploy.root().map(|r| r.to_path_buf()) {
        None => Ok(Vec::new()),
        Some(root) => tokio::task::spawn_blocking(move || describe_versions(&root))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string())),
    };
    match published {
        Ok(published) => Json(VersionsReport {
            state: s.deploy.state(),
            published,
        })
        .into_response(),
        Err(e) => ApiError::internal(format!(
            "reading the bundle root: {}",
            crate::engine::without_paths(&e)
        ))
        .into_response(),
    }
}

/// Loads the version `CURRENT` names (verified, warmed, off the request path) and swaps it in;
/// clears a pin. A version that fails is refused and the served one stays.
#[utoipa::path(post, path = "/admin/reload", tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Swapped, or unchanged (already served)", body = SwitchOutcome),
        (status = 401, description = "Admin token missing or wrong", body = crate::api::ApiErrorBody),
        (status = 404, description = "Admin routes are off, or `CURRENT` names no version",
            body = crate::api::ApiErrorBody),
        (status = 409, description = "The server serves a fixed version (`versions_fixed`)",
            body = crate::api::ApiErrorBody),
        (status = 422, description = "The version failed verification, loading or warm-up \
            (`version_refused`); the served one stays", body = crate::api::ApiErrorBody),
    ),
)]
pub(super) async fn reload(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(e) = gate(&s, &headers) {
        return e.into_response();
    }
    outcome(s.deploy.reload().await)
}

/// Serves the published version before the served one and pins it (the server stops following
/// `CURRENT` until `POST /admin/reload`).
#[utoipa::path(post, path = "/admin/rollback", tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Rolled back", body = SwitchOutcome),
        (status = 401, description = "Admin token missing or wrong", body = crate::api::ApiErrorBody),
        (status = 404, description = "Admin routes are off, or no version before the served one \
            (`version_not_found`)", body = crate::api::ApiErrorBody),
        (status = 409, description = "The server serves a fixed version (`versions_fixed`)",
            body = crate::api::ApiErrorBody),
        (status = 422, description = "The previous version failed to load (`version_refused`)",
            body = crate::api::ApiErrorBody),
    ),
)]
pub(super) async fn rollback(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(e) = gate(&s, &headers) {
        return e.into_response();
    }
    outcome(s.deploy.rollback().await)
}

/// `POST /admin/pin` body.
#[derive(Debug, Clone, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PinRequest {
    /// A published version of the bundle root (see `GET /admin/versions`).
    pub version: String,
}

/// Serves a published version and pins it (an experiment arm, or a rollback further back).
#[utoipa::path(post, path = "/admin/pin", tag = "admin",
    request_body = PinRequest,
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Pinned", body = SwitchOutcome),
        (status = 400, description = "The body is not JSON", body = crate::api::ApiErrorBody),
        (status = 401, description = "Admin token missing or wrong", body = crate::api::ApiErrorBody),
        (status = 404, description = "Admin routes are off, or no such published version",
            body = crate::api::ApiErrorBody),
        (status = 409, description = "The server serves a fixed version (`versions_fixed`)",
            body = crate::api::ApiErrorBody),
        (status = 413, description = "The body is over 4 KiB", body = crate::api::ApiErrorBody),
        (status = 422, description = "Not `{\"version\": \"...\"}`, or the version failed to load",
            body = crate::api::ApiErrorBody),
    ),
)]
pub(super) async fn pin(State(s): State<AppState>, req: Request<Body>) -> Response {
    let (parts, body) = req.into_parts();
    if let Err(e) = gate(&s, &parts.headers) {
        return e.into_response();
    }
    let body = match super::read_body(&parts.headers, body, 4096, s.body_timeout).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let req: PinRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) if e.classify() == serde_json::error::Category::Data => {
            return ApiError::new(
                ErrorCode::InvalidRequest,
                format!("expected {{\"version\": \"<published version>\"}}: {e}"),
            )
            .into_response()
        }
        Err(e) => return ApiError::malformed(format!("body: {e}")).into_response(),
    };
    outcome(s.deploy.pin(&req.version).await)
}

/// The running experiment's per-arm results since the server started: requests, latency,
/// degradation mix, impressions, clicks, CTR with its 95 % interval, shadow comparisons.
#[utoipa::path(get, path = "/admin/experiments", tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Per-arm results",
            body = crate::engine::experiments::ExperimentReport),
        (status = 401, description = "Admin token missing or wrong", body = crate::api::ApiErrorBody),
        (status = 404, description = "Admin routes are off, or no experiment is configured \
            (`no_experiment`)", body = crate::api::ApiErrorBody),
    ),
)]
pub(super) async fn experiments(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(e) = gate(&s, &headers) {
        return e.into_response();
    }
    match s.engine().shared().experiment() {
        Some(exp) => Json(exp.report()).into_response(),
        None => ApiError::new(
            ErrorCode::NoExperiment,
            "no experiment is configured ([experiment] in the config)",
        )
        .into_response(),
    }
}
