//! `GET /dashboard`: one self-contained HTML page (inline CSS and JS, plain SVG charts, no
//! external URL) that polls `GET /metrics` and draws live stage latencies, request rate,
//! degradation mix, breaker states, ensemble size and skew alarms, plus a "try a user" form
//! that calls `/v1/recommend` with `explain` and draws the stage waterfall.
//!
//! The page is compiled into the binary so that the engine serves it with no build step and no
//! file to deploy beside it; all windowed values are computed in the browser from successive
//! scrapes, so the server keeps no per-viewer state and polling costs it only a scrape.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

const PAGE: &str = include_str!("dashboard.html");

/// Only the page's own inline code and same-origin fetches: a dashboard that talks to nothing
/// but the engine it is served by. `unsafe-inline` is needed because the script and styles live
/// in the page itself; nothing else is allowed to load.
const CSP: &str = "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; \
                   frame-ancestors 'none'";

pub async fn page() -> Response {
    let mut resp = PAGE.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    // A new binary may ship a new page: revalidate rather than keep a stale copy.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}
