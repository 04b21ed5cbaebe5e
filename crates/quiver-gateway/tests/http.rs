//! The gateway's HTTP behaviour with a real node on 127.0.0.1 (ephemeral ports) that has no
//! provider in reach: OpenAI-shaped errors and status codes, size limits, bearer keys, CORS off
//! by default, the status page and its JSON, and metrics that parse. `provider_errors`: the
//! answers when a provider is in reach but cannot serve.

mod common;
// A module of this test binary rather than one of its own: each test binary links the whole
// node stack again.
#[path = "http/limits.rs"]
mod limits;
#[path = "http/provider_errors.rs"]
mod provider_errors;

use std::time::Duration;

use common::{Gateway, error_code};
use quiver_gateway::{GatewayOptions, METRICS_CONTENT_TYPE};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn chat(model: &str) -> String {
    json!({ "model": model, "messages": [{ "role": "user", "content": "Hi" }], "max_tokens": 4 }).to_string()
}

#[tokio::test]
async fn errors_have_openai_shapes_and_status_codes() {
    let gw = Gateway::start(GatewayOptions::default()).await;

    // A model nobody serves or catalogues: 404 model_not_found, as OpenAI answers.
    let (status, _, body) = gw.post("/v1/chat/completions", chat("no-such-model")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(error_code(&body), "model_not_found");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    for id in ["no-such-model", "org/no-such-model"] {
        let resp = gw.get(&format!("/v1/models/{id}")).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{id}");
        let body: Value = resp.json().await.expect("JSON");
        assert_eq!(error_code(&body), "model_not_found", "{id}: {body}");
    }

    // The catalogue's model with no provider in reach: 503 no_provider, retry later.
    let (status, headers, body) =
        gw.post("/v1/completions", json!({ "model": "smollm2-135m", "prompt": "Hi" }).to_string()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(error_code(&body), "no_provider");
    assert_eq!(headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));

    // Bad requests: 400 invalid_request, whatever the content type (curl -d sends a form type).
    for bad in [
        "{not json".to_owned(),
        json!({ "model": "m" }).to_string(),
        json!({ "model": "m", "messages": [] }).to_string(),
        json!({ "model": "m", "messages": [{ "role": "user", "content": "x" }], "n": 2, "stream": true }).to_string(),
        json!({ "messages": [{ "role": "user", "content": "x" }] }).to_string(),
        json!({ "model": "m", "messages": [{ "role": "user", "content": [{ "type": "image_url" }] }] }).to_string(),
    ] {
        let (status, _, body) = gw.post("/v1/chat/completions", bad.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(error_code(&body), "invalid_request", "{bad}");
    }
    let (status, _, body) = gw.post("/v1/completions", json!({ "model": "m", "prompt": 7 }).to_string()).await;
    assert_eq!((status, error_code(&body)), (StatusCode::BAD_REQUEST, "invalid_request"), "{body}");

    // Over the size limit: 413, before anything is parsed.
    let huge = format!(r#"{{"model":"m","prompt":"{}"}}"#, "a".repeat(quiver_gateway::openai::MAX_BODY_BYTES));
    let (status, _, body) = gw.post("/v1/completions", huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(error_code(&body), "request_too_large");

    // Unknown URL and wrong method, in the same shape.
    let (status, _, body) = gw.post("/v1/audio/speech", "{}").await;
    assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, "unknown_url"), "{body}");
    let resp = gw.get("/v1/chat/completions").await;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(error_code(&body), "method_not_allowed");

    // Every request above is counted by endpoint and status.
    let metrics = gw.get("/metrics").await.text().await.expect("metrics");
    for line in [
        "quiver_gateway_requests_total{endpoint=\"chat_completions\",status=\"404\"} 1",
        "quiver_gateway_requests_total{endpoint=\"completions\",status=\"503\"} 1",
        "quiver_gateway_requests_total{endpoint=\"chat_completions\",status=\"400\"} 6",
        "quiver_gateway_requests_total{endpoint=\"models\",status=\"404\"} 2",
        "quiver_gateway_requests_total{endpoint=\"completions\",status=\"413\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "missing {line:?}:\n{metrics}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn api_keys_guard_v1_only() {
    let gw =
        Gateway::start(GatewayOptions { api_keys: vec!["sk-one".into(), "sk-two".into()], ..Default::default() }).await;
    let models = |key: Option<&'static str>| {
        let mut req = gw.http.get(gw.url("/v1/models"));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        req.send()
    };
    for key in [None, Some("sk-three"), Some("sk-on")] {
        let resp = models(key).await.expect("answered");
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "key {key:?}");
        let body: Value = resp.json().await.expect("JSON");
        assert_eq!(error_code(&body), "invalid_api_key");
    }
    for key in ["sk-one", "sk-two"] {
        let resp = models(Some(key)).await.expect("answered");
        assert_eq!(resp.status(), StatusCode::OK, "key {key}");
        let body: Value = resp.json().await.expect("JSON");
        assert_eq!(body["object"], "list");
    }
    // The status page and its JSON stay readable without a key.
    assert_eq!(gw.get("/").await.status(), StatusCode::OK);
    assert_eq!(gw.get("/api/v1/status").await.status(), StatusCode::OK);
    gw.stop().await;
}

#[tokio::test]
async fn cors_is_off_by_default_and_opt_in_per_origin() {
    let origin = "https://app.example.org";
    let preflight = |gw: &Gateway| {
        gw.http
            .request(reqwest::Method::OPTIONS, gw.url("/v1/chat/completions"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization, content-type")
            .send()
    };

    let closed = Gateway::start(GatewayOptions::default()).await;
    let resp = closed.http.get(closed.url("/v1/models")).header("origin", origin).send().await.expect("answered");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().get("access-control-allow-origin").is_none(), "{:?}", resp.headers());
    let resp = preflight(&closed).await.expect("answered");
    assert!(resp.headers().get("access-control-allow-origin").is_none(), "{:?}", resp.headers());
    assert!(!resp.status().is_success(), "a preflight without CORS is not approved: {}", resp.status());
    closed.stop().await;

    let open = Gateway::start(GatewayOptions {
        api_keys: vec!["sk-k".into()],
        cors_origins: vec![origin.into()],
        ..Default::default()
    })
    .await;
    // The preflight needs no key; the allowed origin gets the headers, another origin does not.
    let resp = preflight(&open).await.expect("answered");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(resp.headers().get("access-control-allow-origin").and_then(|v| v.to_str().ok()), Some(origin));
    let methods = resp.headers().get("access-control-allow-methods").and_then(|v| v.to_str().ok()).unwrap_or("");
    assert!(methods.contains("POST"), "{methods}");
    let resp = open
        .http
        .get(open.url("/v1/models"))
        .header("origin", "https://evil.example")
        .bearer_auth("sk-k")
        .send()
        .await
        .expect("answered");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().get("access-control-allow-origin").is_none());
    let resp =
        open.http.get(open.url("/v1/models")).header("origin", origin).bearer_auth("sk-k").send().await.expect("ok");
    assert_eq!(resp.headers().get("access-control-allow-origin").and_then(|v| v.to_str().ok()), Some(origin));
    open.stop().await;
}

#[tokio::test]
async fn status_page_is_self_contained_and_its_json_is_served() {
    let gw = Gateway::start(GatewayOptions::default()).await;
    let resp = gw.get("/").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let ctype = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    assert!(ctype.starts_with("text/html"), "{ctype}");
    let csp = resp.headers().get("content-security-policy").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"), "{csp}");
    let html = resp.text().await.expect("body");
    assert_eq!(html, quiver_gateway::status::STATUS_PAGE);
    for external in ["src=\"http", "href=\"http", "src=\"//", "@import", "url(http"] {
        assert!(!html.contains(external), "the page loads something from elsewhere: {external}");
    }
    for endpoint in ["api/v1/status", "api/v1/peers", "api/v1/models", "api/v1/jobs"] {
        assert!(html.contains(endpoint), "the page does not poll {endpoint}");
    }

    // The node's own control API serves the same page.
    let api = quiver_gateway::bind("127.0.0.1:0".parse().expect("addr")).await.expect("bind");
    let api_addr = api.local_addr().expect("addr");
    tokio::spawn(quiver_gateway::serve_api(gw.node.clone(), api, std::future::pending()));
    let page = gw.http.get(format!("http://{api_addr}/")).send().await.expect("answered").text().await.expect("body");
    assert_eq!(page, html);

    let models: Value = gw.get("/api/v1/models").await.json().await.expect("JSON");
    assert_eq!(models, json!({ "models": [] }));
    // A lone node: no model on the network, and too few peers to estimate its size.
    let network: Value = gw.get("/api/v1/network").await.json().await.expect("JSON");
    assert_eq!(network["models"], json!([]), "{network}");
    assert_eq!(network["size"]["estimate"], Value::Null, "{network}");
    assert_eq!(network["size"]["local"], json!({ "state": "too_few_peers", "peers": 0 }), "{network}");
    assert_eq!(network["size"]["known_nodes"], 1, "{network}");
    assert!(network["size"]["summary"].as_str().is_some_and(|s| s.starts_with("unknown:")), "{network}");
    let status: Value = gw.get("/api/v1/status").await.json().await.expect("JSON");
    assert_eq!(status["network"], network);
    let jobs: Value = gw.get("/api/v1/jobs").await.json().await.expect("JSON");
    assert_eq!(jobs["counters"], json!({ "tokens_generated": 0, "tokens_received": 0 }));
    assert_eq!(jobs["jobs"], json!([]));

    // A failed request shows up among the recent jobs.
    let (status, _, _) = gw.post("/v1/chat/completions", chat("smollm2-135m")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let jobs: Value = gw.get("/api/v1/jobs").await.json().await.expect("JSON");
    let job = &jobs["jobs"][0];
    assert_eq!((job["role"].as_str(), job["model"].as_str()), (Some("client"), Some("smollm2-135m")), "{jobs}");
    assert_eq!(job["outcome"], "no_provider", "{jobs}");
    gw.stop().await;
}

/// Parses OpenMetrics text: every line is a `# HELP|TYPE|UNIT` comment, `# EOF` (last), or
/// `name{labels} value`; returns the sample names.
fn parse_openmetrics(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "OpenMetrics text ends with # EOF");
    let mut names = Vec::new();
    for line in &lines[..lines.len() - 1] {
        if let Some(comment) = line.strip_prefix("# ") {
            let kind = comment.split_whitespace().next().unwrap_or("");
            assert!(["HELP", "TYPE", "UNIT"].contains(&kind), "unexpected comment: {line}");
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        assert!(value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value), "bad value: {line}");
        let name = series.split('{').next().unwrap_or("");
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name: {line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            assert!(labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')), "bad labels: {line}");
        }
        names.push(name.to_owned());
    }
    names
}

#[tokio::test]
async fn metrics_parse_and_follow_the_naming_conventions() {
    let gw = Gateway::start(GatewayOptions::default()).await;
    let resp = gw.get("/metrics").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers().get("content-type").and_then(|v| v.to_str().ok()), Some(METRICS_CONTENT_TYPE));
    let text = resp.text().await.expect("body");
    let names = parse_openmetrics(&text);
    for name in [
        "quiver_connected_peers",
        "quiver_dht_routing_table_peers",
        "quiver_network_size_estimate",
        "quiver_network_size",
        "quiver_known_nodes",
        "quiver_provider_queue_depth",
        "quiver_provider_free_slots",
        "quiver_tokens_generated_total",
        "quiver_provider_time_to_first_token_seconds_bucket",
        "quiver_provider_job_duration_seconds_count",
        "quiver_client_time_to_first_token_seconds_sum",
        "quiver_client_request_duration_seconds_bucket",
        "quiver_peer_reputation_score_count",
        "quiver_peers_banned",
        "process_start_time_seconds",
    ] {
        assert!(names.iter().any(|n| n == name), "missing {name}:\n{text}");
    }
    // Counters end in _total; histograms in seconds name their unit.
    for line in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let mut parts = line.split_whitespace();
        let (name, kind) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        if kind == "counter" {
            assert!(names.iter().any(|n| *n == format!("{name}_total")), "counter {name} has no _total sample");
        }
        if kind == "histogram" && name.starts_with("quiver_") && !name.ends_with("_score") {
            assert!(name.ends_with("_seconds"), "histogram {name} does not name its unit");
        }
    }
    gw.stop().await;
}

#[tokio::test]
async fn requests_beyond_the_in_flight_limit_get_429() {
    use tokio::io::AsyncWriteExt;
    let gw = Gateway::start(GatewayOptions { max_in_flight: 1, ..Default::default() }).await;
    let in_flight = || async {
        let text = gw.get("/metrics").await.text().await.expect("metrics");
        text.lines().find_map(|l| l.strip_prefix("quiver_gateway_requests_in_flight ")?.parse::<i64>().ok())
    };
    assert_eq!(in_flight().await, Some(0));

    // A request whose body is still uploading holds the one place.
    let mut slow = tokio::net::TcpStream::connect(gw.addr).await.expect("connect");
    slow.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"model\"")
        .await
        .expect("send half a request");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while in_flight().await != Some(1) {
        assert!(tokio::time::Instant::now() < deadline, "the slow request was not counted in flight");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, headers, body) = gw.post("/v1/chat/completions", chat("no-such-model")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(error_code(&body), "rate_limit_exceeded");
    assert_eq!(headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    // Listing models is not limited.
    assert_eq!(gw.get("/v1/models").await.status(), StatusCode::OK);

    // The place comes back when that client leaves.
    drop(slow);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while in_flight().await != Some(0) {
        assert!(tokio::time::Instant::now() < deadline, "the place was not given back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _, body) = gw.post("/v1/chat/completions", chat("no-such-model")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    gw.stop().await;
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = Gateway::start(GatewayOptions::default()).await;
    // Slowloris: headers begun and never ended, on a few connections.
    let mut slow = Vec::new();
    for _ in 0..4 {
        let mut c = tokio::net::TcpStream::connect(gw.addr).await.expect("connect");
        c.write_all(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.expect("send part of the headers");
        slow.push(c);
    }
    // Others are served meanwhile.
    assert_eq!(gw.get("/v1/models").await.status(), StatusCode::OK);
    // Each slow connection is closed once the header timeout passes (whatever it says first).
    let limit = quiver_gateway::serve::HEADER_READ_TIMEOUT * 6;
    for mut c in slow {
        let closed = tokio::time::timeout(limit, async {
            let mut buf = [0u8; 512];
            loop {
                match c.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "a connection with unfinished headers was still open after {limit:?}");
    }
    gw.stop().await;
}
