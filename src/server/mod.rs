//! The HTTP surface (axum): `POST /v1/recommend`, `POST /v1/events`, `GET /healthz`,
//! `GET /readyz`. It owns the
//! mapping of failures to statuses — every error is JSON `{code, message}` — and the containment
//! of panics: a request that panics gets a 500, the server keeps serving.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::engine::api::{ApiError, RecommendRequest};
use crate::engine::Engine;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::json!({ "code": self.code, "message": self.message });
        (status, Json(body)).into_response()
    }
}

#[derive(Clone)]
struct AppState {
    engine: Arc<Engine>,
    next_id: Arc<AtomicU64>,
    id_prefix: Arc<str>,
}

/// The application's routes over `engine`.
pub fn router(engine: Arc<Engine>) -> Router {
    let limit = engine.config().server.max_body_bytes;
    let events_limit = engine.config().events.max_body_bytes;
    let state = AppState {
        engine,
        next_id: Arc::new(AtomicU64::new(1)),
        id_prefix: format!("{:08x}", rand::random::<u32>()).into(),
    };
    Router::new()
        .route("/v1/recommend", post(recommend))
        .route(
            "/v1/events",
            post(events).layer(DefaultBodyLimit::max(events_limit)),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Serves `router(engine)` on `addr` until `shutdown` resolves. Returns the bound address
/// through `on_bound` first (port 0 picks a free one).
pub async fn serve(
    engine: Arc<Engine>,
    addr: SocketAddr,
    on_bound: impl FnOnce(SocketAddr),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    on_bound(listener.local_addr()?);
    let background = engine.spawn_background();
    let served = axum::serve(listener, router(engine))
        .with_graceful_shutdown(shutdown)
        .await;
    if let Some(b) = background {
        b.abort();
    }
    served
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "alive" }))
}

async fn readyz(State(s): State<AppState>) -> Json<crate::engine::Readiness> {
    Json(s.engine.readiness().await)
}

async fn not_found() -> ApiError {
    ApiError {
        status: 404,
        code: "not_found",
        message:
            "no such route; try POST /v1/recommend, POST /v1/events, GET /healthz or GET /readyz"
                .into(),
    }
}

async fn method_not_allowed() -> ApiError {
    ApiError {
        status: 405,
        code: "method_not_allowed",
        message: "method not allowed on this route".into(),
    }
}

/// The body, or the JSON error for a body that is too large (413) or unreadable (400).
fn body_or_error(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    match body {
        Ok(b) => Ok(b),
        Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::too_large(limit)),
        Err(r) => Err(ApiError::malformed(r.body_text())),
    }
}

async fn recommend(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body_or_error(body, s.engine.config().server.max_body_bytes) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let req = match RecommendRequest::parse(&body, &s.engine.config().server) {
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
    // A spawned task turns a panic anywhere in the request path into a JoinError.
    let engine = s.engine.clone();
    let rid = request_id.clone();
    let task = tokio::spawn(async move { engine.recommend(req, rid).await });
    let mut resp = match task.await {
        Ok(Ok(r)) => Json(r).into_response(),
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

async fn events(State(s): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    let body = match body_or_error(body, s.engine.config().events.max_body_bytes) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let engine = s.engine.clone();
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
