//! Limits that keep a client from holding the gateway or framing providers: a request larger
//! than providers accept is refused before it is sent, a body that arrives too slowly gets 408
//! and frees its in-flight place, and the verification header takes only true or false.

use std::time::Duration;

use crate::common::{self, Gateway, error_code};
use quiver_gateway::GatewayOptions;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn chat(model: &str) -> String {
    json!({ "model": model, "messages": [{ "role": "user", "content": "Hi" }], "max_tokens": 4 }).to_string()
}

#[tokio::test]
async fn a_request_larger_than_providers_accept_is_refused_before_it_is_sent() {
    let gw = Gateway::start(GatewayOptions::default()).await;
    // Under the gateway's 1 MiB body limit, over the 512 KiB a provider reads: refused here with
    // a 400 naming the limit, before any provider is asked (and charged for not answering).
    let prompt = "a".repeat(600 * 1024);
    let body = json!({ "model": "smollm2-135m", "prompt": prompt, "max_tokens": 4 }).to_string();
    let (status, _, body) = gw.post("/v1/completions", body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(error_code(&body), "invalid_request");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("at most")), "{body}");
    gw.stop().await;
}

#[tokio::test]
async fn a_body_that_arrives_too_slowly_gets_408_and_frees_its_place() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = Gateway::start(GatewayOptions {
        max_in_flight: 1,
        body_timeout: Duration::from_millis(500),
        ..Default::default()
    })
    .await;
    // Headers promise 100 bytes of body; 5 come, then nothing.
    let mut slow = tokio::net::TcpStream::connect(gw.addr).await.expect("connect");
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"mo",
        gw.addr
    );
    slow.write_all(head.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(common::HTTP_TIMEOUT, async {
        let mut buf = [0u8; 1024];
        while !String::from_utf8_lossy(&answer).contains("\r\n\r\n") {
            match slow.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the gateway answered the slow body");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // Its in-flight place is free again: the next request is not refused with 429.
    let (status, _, body) = gw
        .post("/v1/completions", json!({ "model": "no-such-model", "prompt": "Hi", "max_tokens": 4 }).to_string())
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    gw.stop().await;
}

#[tokio::test]
async fn the_verify_header_is_true_or_false() {
    let gw = Gateway::start(GatewayOptions::default()).await;
    let resp = gw
        .http
        .post(gw.url("/v1/chat/completions"))
        .header("x-quiver-verify", "perhaps")
        .body(chat("no-such-model"))
        .send()
        .await
        .expect("answered");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(error_code(&body), "invalid_request");
    // `false` is taken (and the request goes on to find no such model).
    let resp = gw
        .http
        .post(gw.url("/v1/chat/completions"))
        .header("x-quiver-verify", "false")
        .body(chat("no-such-model"))
        .send()
        .await
        .expect("answered");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    gw.stop().await;
}
