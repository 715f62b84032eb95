//! `GET /openapi.json` against a real server on loopback: the document describes every route the
//! router serves and every error code, and the real responses of a test run — successes and
//! errors, from the router and from the HTTP layer — validate against the schema it gives for
//! their path and status.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};

use common::{shared_bundle, test_config, users_with_batch, TestServer};
use funnel::api::ErrorCode;

const KEY: &str = "k-openapi-test-key-0001";

/// The (method, path) pairs `server::router` registers, read from its source so that a route
/// added there without a description fails this test.
fn routed() -> BTreeSet<(String, String)> {
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/server/mod.rs"))
        .expect("read src/server/mod.rs");
    let mut out = BTreeSet::new();
    for line in src.lines() {
        let Some(at) = line.find(".route(\"") else {
            continue;
        };
        let rest = &line[at + 8..];
        let Some(end) = rest.find('"') else { continue };
        let path = rest[..end].to_string();
        let handlers = &rest[end..];
        for m in ["get", "post", "put", "delete", "patch", "head", "options"] {
            // `get(handler)` or a chained `.post(handler)`.
            let call = format!("{m}(");
            if handlers
                .match_indices(&call)
                .any(|(i, _)| i == 0 || !handlers.as_bytes()[i - 1].is_ascii_alphanumeric())
            {
                out.insert((m.to_string(), path.clone()));
            }
        }
    }
    out
}

/// The document's component schemas as one JSON Schema (2020-12) root with `$defs`, with
/// OpenAPI's `#/components/schemas/X` references rewritten to `#/$defs/X`.
struct Spec {
    doc: Value,
    defs: Value,
}

fn rewrite_refs(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get_mut("$ref") {
                if let Some(name) = r.strip_prefix("#/components/schemas/") {
                    *r = format!("#/$defs/{name}");
                }
            }
            m.values_mut().for_each(rewrite_refs);
        }
        Value::Array(a) => a.iter_mut().for_each(rewrite_refs),
        _ => {}
    }
}

impl Spec {
    fn new(doc: Value) -> Self {
        let mut defs = doc["components"]["schemas"].clone();
        rewrite_refs(&mut defs);
        Self { doc, defs }
    }

    /// The response object for `method path` answering `status`: the operation's, or for
    /// 404 / 405 the reusable response of any path.
    fn response(&self, method: &str, path: &str, status: u16) -> Result<&Value, String> {
        let r = match status {
            404 => &self.doc["components"]["responses"]["NotFound"],
            405 => &self.doc["components"]["responses"]["MethodNotAllowed"],
            _ => &self.doc["paths"][path][method]["responses"][status.to_string()],
        };
        if r.is_null() {
            return Err(format!(
                "{} {path}: status {status} is not described",
                method.to_uppercase()
            ));
        }
        if let Some(name) = r["$ref"]
            .as_str()
            .and_then(|r| r.strip_prefix("#/components/responses/"))
        {
            return Ok(&self.doc["components"]["responses"][name]);
        }
        Ok(r)
    }

    /// Validates `body` (of type `content_type`) against the schema the document gives.
    fn check(
        &self,
        method: &str,
        path: &str,
        status: u16,
        content_type: &str,
        body: &[u8],
    ) -> Result<(), String> {
        let what = format!("{} {path} → {status}", method.to_uppercase());
        let resp = self.response(method, path, status)?;
        let content = resp["content"]
            .as_object()
            .ok_or_else(|| format!("{what}: no content described"))?;
        let media = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let described = content
            .get(&media)
            .ok_or_else(|| format!("{what}: content type {media:?} not among {content:?}"))?;
        if media != "application/json" {
            return Ok(());
        }
        let instance: Value =
            serde_json::from_slice(body).map_err(|e| format!("{what}: body is not JSON ({e})"))?;
        self.validate(&described["schema"], &instance)
            .map_err(|e| format!("{what}: {e}\nbody: {instance}"))
    }

    fn validate(&self, schema: &Value, instance: &Value) -> Result<(), String> {
        let mut schema = schema.clone();
        rewrite_refs(&mut schema);
        let root = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$defs": self.defs,
            "allOf": [schema],
        });
        let validator = jsonschema::validator_for(&root).map_err(|e| format!("schema: {e}"))?;
        let errors: Vec<String> = validator
            .iter_errors(instance)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    fn schema_of(&self, method: &str, path: &str, status: u16) -> Value {
        self.response(method, path, status).expect("described")["content"]["application/json"]
            ["schema"]
            .clone()
    }
}

/// One real exchange: the request as (method, path) and what came back.
struct Exchange {
    method: &'static str,
    path: String,
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

async fn send(
    client: &reqwest::Client,
    s: &TestServer,
    method: &'static str,
    path: &str,
    key: Option<&str>,
    body: Option<Vec<u8>>,
) -> Exchange {
    let m = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes()).expect("method");
    let mut req = client.request(m, s.url(path));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b);
    }
    let r = req.send().await.expect("send");
    let status = r.status().as_u16();
    let content_type = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = r.bytes().await.expect("body").to_vec();
    Exchange {
        method,
        path: path.to_string(),
        status,
        content_type,
        body,
    }
}

fn post_json(v: Value) -> Option<Vec<u8>> {
    Some(v.to_string().into_bytes())
}

/// Writes `bytes` on a fresh connection (optionally waiting before the rest of the request)
/// and reads the one response until the server closes: for errors reqwest cannot provoke.
fn raw(addr: SocketAddr, bytes: &[u8], then_wait: Duration) -> (u16, String, Vec<u8>) {
    let mut c = std::net::TcpStream::connect(addr).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    c.write_all(bytes).expect("write");
    std::thread::sleep(then_wait);
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    (status, content_type, body.as_bytes().to_vec())
}

async fn raw_exchange(
    addr: SocketAddr,
    method: &'static str,
    path: &str,
    bytes: Vec<u8>,
    then_wait: Duration,
) -> Exchange {
    let (status, content_type, body) =
        tokio::task::spawn_blocking(move || raw(addr, &bytes, then_wait))
            .await
            .expect("join");
    Exchange {
        method,
        path: path.to_string(),
        status,
        content_type,
        body,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_describes_every_route_and_code_and_real_responses_validate() {
    let s = TestServer::start(shared_bundle(), test_config(), None).await;
    let client = reqwest::Client::new();

    // The document itself.
    let doc_x = send(&client, &s, "get", "/openapi.json", None, None).await;
    assert_eq!(doc_x.status, 200);
    assert!(doc_x.content_type.starts_with("application/json"));
    let doc: Value = serde_json::from_slice(&doc_x.body).expect("JSON document");
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], "Funnel");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let spec = Spec::new(doc.clone());

    // Every route the router serves has its operation; every described path is routed (or
    // described ahead of its handler).
    let routes = routed();
    for r in [
        ("post", "/v1/recommend"),
        ("post", "/v1/events"),
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/openapi.json"),
    ] {
        assert!(
            routes.contains(&(r.0.to_string(), r.1.to_string())),
            "route scan missed {r:?}: {routes:?}"
        );
    }
    for (m, p) in &routes {
        assert!(
            doc["paths"][p][m].is_object(),
            "{} {p} is routed but not described",
            m.to_uppercase()
        );
    }
    let paths = doc["paths"].as_object().expect("paths");
    for (p, item) in paths {
        for m in item.as_object().expect("path item").keys() {
            assert!(
                routes.contains(&(m.clone(), p.clone())),
                "{m} {p} is described but not routed"
            );
        }
    }
    assert_eq!(
        doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
            .as_object()
            .map(|c| c.keys().cloned().collect::<Vec<_>>()),
        Some(vec!["application/openmetrics-text".to_string()])
    );
    assert!(
        doc["paths"]["/dashboard"]["get"]["responses"]["200"]["content"]["text/html"].is_object()
    );

    // Every code the server can send is in the error body's enum, and nothing else is.
    let listed: BTreeSet<&str> = doc["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .expect("ErrorCode enum")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let all: BTreeSet<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(listed, all);
    assert_eq!(
        doc["components"]["schemas"]["ApiErrorBody"]["properties"]["code"]["$ref"],
        "#/components/schemas/ErrorCode"
    );
    // Every error response of every operation is the error body, and each operation lists the
    // errors of the HTTP layer.
    for (p, item) in paths {
        for (m, op) in item.as_object().expect("path item") {
            let responses = op["responses"].as_object().expect("responses");
            for status in ["400", "408", "414", "431", "503"] {
                assert!(responses.contains_key(status), "{m} {p}: no {status}");
            }
            for (status, r) in responses {
                if status.as_str() >= "400" {
                    assert_eq!(
                        r["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ApiErrorBody",
                        "{m} {p} {status}"
                    );
                }
            }
        }
    }
    // The key-protected routes name the bearer scheme (optional: open until keys are set).
    assert_eq!(
        doc["components"]["securitySchemes"]["api_key"]["scheme"],
        "bearer"
    );
    for p in ["/v1/recommend", "/v1/events"] {
        let sec = &doc["paths"][p]["post"]["security"];
        assert!(
            sec.as_array()
                .is_some_and(|a| a.contains(&json!({})) && a.contains(&json!({"api_key": []}))),
            "{p}: {sec}"
        );
    }

    // Real traffic.
    let b = s.engine.bundle();
    let user = users_with_batch(&s, 1)[0];
    let category = b.catalog.categories[3].clone();
    let item = b
        .catalog
        .items
        .iter()
        .find(|i| !i.flagged)
        .expect("an item")
        .id;
    let event = json!({"user_id": user, "item_id": item, "type": "click", "event_id": "oa-1"});
    let mut xs = vec![doc_x];
    for body in [
        json!({"user_id": user, "k": 10}),
        json!({"user_id": user.to_string(), "k": 10, "explain": true}),
        json!({"user_id": "openapi-cold-user", "k": 5, "explain": true,
               "context": {"device": "mobile", "timestamp": "2024-01-01T00:00:00Z"}}),
        json!({"user_id": user, "k": 20, "explain": true,
               "filters": {"categories_any": [category], "published_after": 0},
               "ranking": {"strategy": "rank_avg", "selection": "all", "max_models": 2}}),
    ] {
        xs.push(send(&client, &s, "post", "/v1/recommend", None, post_json(body)).await);
    }
    for events in [
        json!({"events": [event.clone()]}),
        // The retry: a duplicate; with it an unknown item and a broken event, rejected alone.
        json!({"events": [event, {"user_id": user, "item_id": u64::MAX, "type": "click"},
                          {"user_id": user, "item_id": item, "type": "teleport"}]}),
    ] {
        xs.push(send(&client, &s, "post", "/v1/events", None, post_json(events)).await);
    }
    for p in ["/healthz", "/readyz"] {
        xs.push(send(&client, &s, "get", p, None, None).await);
    }
    // Errors of the router and the handlers.
    let big = vec![b' '; 70 * 1024];
    xs.push(
        send(
            &client,
            &s,
            "post",
            "/v1/recommend",
            None,
            Some(b"{".to_vec()),
        )
        .await,
    );
    xs.push(
        send(
            &client,
            &s,
            "post",
            "/v1/recommend",
            None,
            post_json(json!({"k": 5})),
        )
        .await,
    );
    xs.push(
        send(
            &client,
            &s,
            "post",
            "/v1/recommend",
            None,
            post_json(json!({"user_id": 1, "k": 1000})),
        )
        .await,
    );
    xs.push(send(&client, &s, "post", "/v1/recommend", None, Some(big)).await);
    xs.push(
        send(
            &client,
            &s,
            "post",
            "/v1/events",
            None,
            Some(b"nope".to_vec()),
        )
        .await,
    );
    xs.push(
        send(
            &client,
            &s,
            "post",
            "/v1/events",
            None,
            post_json(json!({"events": []})),
        )
        .await,
    );
    xs.push(send(&client, &s, "get", "/no/such/route", None, None).await);
    xs.push(send(&client, &s, "get", "/v1/recommend", None, None).await);
    xs.push(send(&client, &s, "delete", "/healthz", None, None).await);
    // Errors of the HTTP layer, which never reach the router.
    xs.push(
        raw_exchange(
            s.addr,
            "get",
            "/healthz",
            b"GET /healthz HTTP/1.1\r\nhost: x\r\nbad header line\r\n\r\n".to_vec(),
            Duration::ZERO,
        )
        .await,
    );
    let huge = format!(
        "GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    xs.push(raw_exchange(s.addr, "get", "/healthz", huge.into_bytes(), Duration::ZERO).await);

    // A second server: keys required on recommend, events switched off, a short body timeout.
    let mut cfg = test_config();
    cfg.auth.recommend_keys = vec![KEY.to_string()];
    cfg.events.enabled = false;
    cfg.server.body_timeout_ms = 300;
    let locked = TestServer::start(shared_bundle(), cfg, None).await;
    let ok = post_json(json!({"user_id": user, "k": 3}));
    xs.push(send(&client, &locked, "post", "/v1/recommend", None, ok.clone()).await);
    xs.push(
        send(
            &client,
            &locked,
            "post",
            "/v1/recommend",
            Some("k-wrong-key-00000000"),
            ok.clone(),
        )
        .await,
    );
    xs.push(send(&client, &locked, "post", "/v1/recommend", Some(KEY), ok).await);
    xs.push(
        send(
            &client,
            &locked,
            "post",
            "/v1/events",
            None,
            post_json(json!({"events": [{"user_id": 1, "item_id": item, "type": "click"}]})),
        )
        .await,
    );
    let slow = format!(
        "POST /v1/recommend HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"user_id\""
    );
    xs.push(
        raw_exchange(
            locked.addr,
            "post",
            "/v1/recommend",
            slow.into_bytes(),
            Duration::from_millis(600),
        )
        .await,
    );

    // Every exchange got a described status, and its body validates.
    let mut failures = Vec::new();
    let mut seen: BTreeMap<u16, usize> = BTreeMap::new();
    for x in &xs {
        *seen.entry(x.status).or_default() += 1;
        if let Err(e) = spec.check(x.method, &x.path, x.status, &x.content_type, &x.body) {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    // The run covered what it means to (a server change that stops an error from happening
    // should change this test too).
    let statuses: Vec<u16> = seen.keys().copied().collect();
    assert_eq!(
        statuses,
        vec![200, 202, 400, 401, 404, 405, 408, 413, 422, 431, 503],
        "{seen:?}"
    );
    let codes: BTreeSet<String> = xs
        .iter()
        .filter(|x| x.status >= 400)
        .filter_map(|x| serde_json::from_slice::<Value>(&x.body).ok())
        .filter_map(|v| v["code"].as_str().map(str::to_owned))
        .collect();
    for c in [
        "malformed_json",
        "bad_request",
        "invalid_request",
        "unauthorized",
        "payload_too_large",
        "headers_too_large",
        "request_timeout",
        "not_found",
        "method_not_allowed",
        "events_disabled",
    ] {
        assert!(codes.contains(c), "no response carried {c}: {codes:?}");
    }
    // An explained response carries the parts that only explain adds.
    let explained: Value = serde_json::from_slice(&xs[2].body).expect("json");
    assert!(explained["explain"]["stages"]
        .as_array()
        .is_some_and(|a| !a.is_empty()));
    let events: Value = serde_json::from_slice(&xs[6].body).expect("json");
    assert_eq!(events["duplicates"], 1, "{events}");
    assert_eq!(
        events["rejected"].as_array().map(Vec::len),
        Some(2),
        "{events}"
    );

    // The check can fail: bodies that break the schema do not validate.
    let rec = spec.schema_of("post", "/v1/recommend", 200);
    let mut good: Value = serde_json::from_slice(&xs[2].body).expect("json");
    assert!(spec.validate(&rec, &good).is_ok());
    let mut missing = good.clone();
    missing.as_object_mut().expect("object").remove("items");
    let mut wrong_enum = good.clone();
    wrong_enum["degradation"] = json!("somewhat");
    let mut wrong_type = good.clone();
    wrong_type["items"][0]["item_id"] = json!("seven");
    let mut negative = good.clone();
    negative["items"][0]["item_id"] = json!(-1);
    for (what, bad) in [
        ("missing items", missing),
        ("unknown degradation", wrong_enum),
        ("string item id", wrong_type),
        ("negative item id", negative),
    ] {
        assert!(spec.validate(&rec, &bad).is_err(), "{what} validated");
    }
    let err = spec.schema_of("post", "/v1/recommend", 422);
    assert!(spec
        .validate(&err, &json!({"code": "invalid_request", "message": "x"}))
        .is_ok());
    for bad in [
        json!({"code": "no_such_code", "message": "x"}),
        json!({"code": "invalid_request"}),
        json!({"code": "invalid_request", "message": "x", "extra": 1}),
    ] {
        assert!(spec.validate(&err, &bad).is_err(), "{bad} validated");
    }
    // A status the operation never answers is not described.
    assert!(spec.response("get", "/healthz", 422).is_err());
    good["explain"]["stages"] = json!([{"stage": "x"}]);
    assert!(
        spec.validate(&rec, &good).is_err(),
        "a partial stage validated"
    );

    locked.stop().await;
    s.stop().await;
}
