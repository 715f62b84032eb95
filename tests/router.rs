//! The HTTP surface in process: the application's router driven with `tower::ServiceExt::oneshot`
//! (no socket), over a real bundle and engine. The real-server tests (`server.rs`) cover the
//! connection layer; these pin the routes, the status mapping and the response shape.

mod common;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use serde_json::{json, Value};
use tower::ServiceExt;

use common::{shared_bundle, test_config};
use funnel::bundle::Bundle;
use funnel::engine::Engine;
use funnel::features::FeatureRegistry;

fn app() -> axum::Router {
    let registry = FeatureRegistry::bundled().expect("defs");
    let b = Bundle::open(shared_bundle(), &registry).expect("bundle");
    funnel::server::router(Engine::new(b, test_config(), None).expect("engine"))
}

async fn call(
    app: &axum::Router,
    method: Method,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if body.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let body = body.map_or_else(Body::empty, |v| Body::from(v.to_string()));
    let resp = app
        .clone()
        .oneshot(req.body(body).expect("request"))
        .await
        .expect("infallible");
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 22)
        .await
        .expect("body");
    let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recommend_walks_every_stage_in_order() {
    let app = app();
    let user = {
        let b = Bundle::open(shared_bundle(), &FeatureRegistry::bundled().expect("defs"))
            .expect("bundle");
        b.user_ids[0]
    };
    let (st, v) = call(
        &app,
        Method::POST,
        "/v1/recommend",
        Some(json!({"user_id": user, "k": 7, "explain": true})),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["items"].as_array().map(Vec::len), Some(7), "{v}");
    let stages: Vec<&str> = v["explain"]["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .filter_map(|s| s["stage"].as_str())
        .collect();
    assert_eq!(
        stages,
        [
            "features",
            "retrieval",
            "merge",
            "fallback",
            "item_features",
            "rank",
            "rerank",
            "response"
        ]
    );
    // Each stage's output is the next one's input, where they hand the same items on.
    let s = &v["explain"]["stages"];
    assert_eq!(s[1]["items_out"], s[2]["items_in"], "{s}");
    assert_eq!(s[2]["items_out"], s[3]["items_in"], "{s}");
    assert_eq!(s[3]["items_out"], v["explain"]["candidates"], "{s}");
    assert_eq!(s[6]["items_out"], json!(7), "{s}");
    for src in ["ann", "cf", "content", "trending"] {
        assert!(v["timings_ms"]["sources"][src].is_number(), "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_json_with_the_mapped_status() {
    let app = app();
    let cases = [
        (
            Method::POST,
            "/v1/recommend",
            Some(json!({"user_id": 1, "k": 0})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::POST,
            "/v1/recommend",
            Some(json!({"user_id": 1, "filters": {"categories_any": ["no-such-category"]}})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::GET,
            "/v1/recommend",
            None,
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (Method::GET, "/nope", None, StatusCode::NOT_FOUND),
    ];
    for (method, uri, body, want) in cases {
        let (st, v) = call(&app, method.clone(), uri, body).await;
        assert_eq!(st, want, "{method} {uri}: {v}");
        assert!(v["code"].is_string() && v["message"].is_string(), "{v}");
    }
    let (st, v) = call(&app, Method::GET, "/healthz", None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
}
