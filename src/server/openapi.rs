//! `GET /openapi.json`: the OpenAPI 3.1 document of the HTTP API, generated from the wire types
//! (`utoipa::ToSchema` on them) and the handlers' `#[utoipa::path]` annotations, never written by
//! hand: a field added to a response type is in the document with the next build.
//!
//! What annotations cannot say is added by the [`Modify`] steps below, from the same sources the
//! server answers with: the errors the HTTP layer ([`super::conn`]) may send on any route, the
//! 404 / 405 of unknown routes and methods, which status each [`ErrorCode`] has, and the known
//! event types. `tests/openapi.rs` checks the document against the router and validates real
//! responses against it.

use std::sync::OnceLock;

use axum::body::Bytes;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::Schema;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{Content, OpenApi as Document, Ref, RefOr};
use utoipa::{Modify, OpenApi};

use crate::api::{ApiError, ApiErrorBody, ErrorCode};

/// The security scheme name the key-protected operations refer to.
pub const API_KEY_SCHEME: &str = "api_key";
/// The security scheme of the `/admin` routes.
pub const ADMIN_TOKEN_SCHEME: &str = "admin_token";

/// Codes the HTTP layer may answer on any route, before the router sees the request.
pub const HTTP_LAYER_CODES: &[ErrorCode] = &[
    ErrorCode::BadRequest,
    ErrorCode::RequestTimeout,
    ErrorCode::UriTooLong,
    ErrorCode::HeadersTooLarge,
    ErrorCode::TooManyConnections,
];

/// Name of the reusable response for a request to a path the server does not serve.
pub const NOT_FOUND_RESPONSE: &str = "NotFound";
/// Name of the reusable response for a served path asked with another method.
pub const METHOD_NOT_ALLOWED_RESPONSE: &str = "MethodNotAllowed";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Funnel",
        version = env!("CARGO_PKG_VERSION"),
        description = "A multi-stage recommendation serving engine. Every error is JSON \
            `{code, message}` (`ApiErrorBody`); `ErrorCode` lists every code. A path the server \
            does not serve answers 404 (`components/responses/NotFound`), a served path asked \
            with another method 405 (`components/responses/MethodNotAllowed`). Generated from \
            the server's types."
    ),
    paths(
        super::recommend,
        super::events,
        super::healthz,
        super::readyz,
        metrics,
        dashboard,
        openapi_json,
        super::admin::versions,
        super::admin::reload,
        super::admin::rollback,
        super::admin::pin,
        super::admin::experiments
    ),
    components(schemas(ApiErrorBody, ErrorCode)),
    modifiers(&ApiKeys, &HttpLayerErrors, &Descriptions),
    tags(
        (name = "recommend", description = "Recommendations"),
        (name = "events", description = "Interaction events"),
        (name = "health", description = "Liveness and readiness"),
        (name = "operations", description = "Metrics, dashboard and this document"),
        (name = "admin", description = "Bundle versions (list, hot reload, rollback, pin) and \
            experiment results (bearer token from `[auth] admin_tokens`; without one these routes answer 404)")
    )
)]
pub struct ApiDoc;

/// The document, built once: the derive assembles it from every type's schema at run time.
pub fn document() -> &'static Document {
    static DOC: OnceLock<Document> = OnceLock::new();
    DOC.get_or_init(ApiDoc::openapi)
}

/// `GET /openapi.json`, serialized once.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses(
    (status = 200, description = "This document (OpenAPI 3.1)", body = Object,
        content_type = "application/json"),
    (status = 500, description = "The document could not be serialized", body = ApiErrorBody),
))]
pub async fn openapi_json() -> Response {
    static JSON: OnceLock<Result<Bytes, String>> = OnceLock::new();
    let json = JSON.get_or_init(|| {
        document()
            .to_json()
            .map(Bytes::from)
            .map_err(|e| e.to_string())
    });
    match json {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body.clone(),
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "the OpenAPI document does not serialize");
            ApiError::internal("the OpenAPI document could not be serialized").into_response()
        }
    }
}

// The two operations below answer text and HTML, not a typed body: their handlers
// (`server::metrics`, `server::dashboard::page`) need no schema, so these bodiless functions
// carry their descriptions. They are never called.

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses(
    (status = 200, description = "Prometheus metrics, OpenMetrics 1.0.0 text format", body = String,
        content_type = "application/openmetrics-text"),
))]
#[allow(dead_code)]
fn metrics() {}

/// The live dashboard (a self-contained HTML page).
#[utoipa::path(get, path = "/dashboard", tag = "operations", responses(
    (status = 200, description = "The dashboard page", body = String, content_type = "text/html"),
))]
#[allow(dead_code)]
fn dashboard() {}

/// `Authorization: Bearer KEY` (see `server::auth`). Operations list it next to an empty
/// requirement: a route is open until keys are configured for it.
struct ApiKeys;

impl Modify for ApiKeys {
    fn modify(&self, doc: &mut Document) {
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.description = Some(
            "API key as `Authorization: Bearer KEY`; required only when keys are configured \
             for the route (`[auth] recommend_keys / events_keys`)"
                .into(),
        );
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(API_KEY_SCHEME, SecurityScheme::Http(scheme));
        let mut admin = Http::new(HttpAuthScheme::Bearer);
        admin.description = Some(
            "Admin token as `Authorization: Bearer TOKEN` (`[auth] admin_tokens` or \
             `FUNNEL_ADMIN_TOKENS`); always required — with no token configured the admin \
             routes answer 404"
                .into(),
        );
        components.add_security_scheme(ADMIN_TOKEN_SCHEME, SecurityScheme::Http(admin));
    }
}

/// Every operation gets the HTTP layer's errors; the components get the router's 404 and 405.
struct HttpLayerErrors;

fn error_response(description: &str) -> utoipa::openapi::Response {
    let mut r = utoipa::openapi::Response::new(description);
    r.content.insert(
        "application/json".into(),
        RefOr::T(Content::new(Some(Ref::from_schema_name("ApiErrorBody")))),
    );
    r
}

fn http_layer_description(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::BadRequest => "The HTTP request could not be parsed",
        ErrorCode::RequestTimeout => "The request head or body did not arrive in time",
        ErrorCode::UriTooLong => "The request target is too long",
        ErrorCode::HeadersTooLarge => {
            "Request headers over `server.max_header_bytes` / `max_headers`"
        }
        ErrorCode::TooManyConnections => {
            "The server holds `server.max_connections` connections (with `Retry-After`)"
        }
        _ => "An error of the HTTP layer",
    }
}

fn operations_mut(doc: &mut Document) -> impl Iterator<Item = &mut Operation> {
    doc.paths.paths.values_mut().flat_map(|item| {
        [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
        ]
        .into_iter()
        .filter_map(Option::as_mut)
    })
}

impl Modify for HttpLayerErrors {
    fn modify(&self, doc: &mut Document) {
        for op in operations_mut(doc) {
            for &code in HTTP_LAYER_CODES {
                let status = super::status_of(code.kind()).as_u16().to_string();
                let also = format!("{} (`{code}`)", http_layer_description(code));
                match op.responses.responses.get_mut(&status) {
                    // The handler answers this status too (e.g. 400 for a body that is not
                    // JSON): same body schema, one more cause.
                    Some(RefOr::T(r)) => r.description = format!("{}; or: {also}", r.description),
                    Some(RefOr::Ref(_)) => {}
                    None => {
                        op.responses
                            .responses
                            .insert(status, RefOr::T(error_response(&also)));
                    }
                }
            }
        }
        let components = doc.components.get_or_insert_with(Default::default);
        components.responses.insert(
            NOT_FOUND_RESPONSE.into(),
            RefOr::T(error_response("No such route (`not_found`)")),
        );
        components.responses.insert(
            METHOD_NOT_ALLOWED_RESPONSE.into(),
            RefOr::T(error_response(
                "The route exists, not with this method (`method_not_allowed`)",
            )),
        );
    }
}

/// Descriptions taken from the tables the server runs on, so that they cannot drift.
struct Descriptions;

fn object_mut<'a>(doc: &'a mut Document, name: &str) -> Option<&'a mut Schema> {
    match doc.components.as_mut()?.schemas.get_mut(name)? {
        RefOr::T(s) => Some(s),
        RefOr::Ref(_) => None,
    }
}

impl Modify for Descriptions {
    fn modify(&self, doc: &mut Document) {
        let codes: Vec<String> = ErrorCode::ALL
            .iter()
            .map(|c| format!("`{c}` ({})", super::status_of(c.kind()).as_u16()))
            .collect();
        if let Some(Schema::Object(o)) = object_mut(doc, "ErrorCode") {
            o.description = Some(format!(
                "Every error code, with the HTTP status it comes with: {}",
                codes.join(", ")
            ));
        }
        if let Some(Schema::Object(o)) = object_mut(doc, "Event") {
            if let Some(RefOr::T(Schema::Object(t))) = o.properties.get_mut("type") {
                let known: Vec<String> = crate::events::EVENT_TYPES
                    .iter()
                    .map(|(t, w)| format!("`{t}` ({w})"))
                    .collect();
                t.description = Some(format!(
                    "The event type, case-insensitive, with its default weight: {}. An unknown \
                     type rejects the event (`invalid_event`).",
                    known.join(", ")
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json() -> serde_json::Value {
        serde_json::to_value(document()).unwrap()
    }

    #[test]
    fn document_is_openapi_3_1_with_every_code() {
        let v = json();
        assert_eq!(v["openapi"], "3.1.0");
        assert_eq!(v["info"]["title"], "Funnel");
        assert_eq!(v["info"]["version"], env!("CARGO_PKG_VERSION"));
        let listed: Vec<&str> = v["components"]["schemas"]["ErrorCode"]["enum"]
            .as_array()
            .expect("ErrorCode enum")
            .iter()
            .filter_map(|c| c.as_str())
            .collect();
        let all: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(listed, all);
        assert_eq!(
            v["components"]["schemas"]["ApiErrorBody"]["properties"]["code"]["$ref"],
            "#/components/schemas/ErrorCode"
        );
    }

    #[test]
    fn limits_in_the_schema_are_the_server_s() {
        let v = json();
        let k = &v["components"]["schemas"]["RecommendRequest"]["properties"]["k"];
        assert_eq!(k["maximum"], crate::api::MAX_K, "{k}");
        let m = &v["components"]["schemas"]["RankingOverride"]["properties"]["max_models"];
        assert_eq!(m["maximum"], crate::api::MAX_REQUEST_MODELS, "{m}");
        let w = &v["components"]["schemas"]["Event"]["properties"];
        assert_eq!(
            w["weight"]["maximum"],
            crate::events::api::MAX_WEIGHT,
            "{w}"
        );
        assert_eq!(
            w["event_id"]["maxLength"],
            crate::events::api::MAX_EVENT_ID_LEN,
            "{w}"
        );
    }
}
