//! The OpenAI-compatible engine against a fake HTTP server.
//!
//! The fake only stands in for error cases and protocol framing (SSE split across reads, usage,
//! finish reasons); the test against a real OpenAI-compatible server comes with the gateway.

use std::time::Duration;

use crate::common::{FakeServer, Piece, closed_port, response, sse_head};
use quiver_engine::openai::{OpenAiConfig, OpenAiEngine};
use quiver_engine::{
    ChatMessage, Engine, EngineError, FinishReason, GenEvent, GenerateRequest, Generation, Input, ModelId,
    SamplingParams, Usage,
};

fn engine(base_url: String, stream: bool, idle: Duration) -> OpenAiEngine {
    let config = OpenAiConfig {
        base_url,
        model: "tiny".into(),
        api_key: Some("secret".into()),
        stream,
        connect_timeout: Duration::from_secs(5),
        idle_timeout: idle,
    };
    let id = ModelId { name: "tiny".into(), gguf_name: "Tiny".into(), sha256: [7; 32] };
    OpenAiEngine::new(config, id).unwrap()
}

fn chat(text: &str) -> GenerateRequest {
    GenerateRequest {
        input: Input::Chat(vec![ChatMessage::new("user", text)]),
        params: SamplingParams { max_tokens: 16, stop: vec!["\n\n".into()], ..Default::default() },
        tools: Default::default(),
    }
}

/// Token texts and the final outcome.
async fn collect(mut g: Generation) -> (Vec<String>, Result<(FinishReason, Usage), EngineError>) {
    let mut texts = Vec::new();
    while let Some(event) = g.next().await {
        match event {
            Ok(GenEvent::Token { text, .. }) => texts.push(text),
            Ok(GenEvent::Logprob(_)) => {}
            Ok(GenEvent::Done { finish_reason, usage }) => {
                assert!(g.next().await.is_none(), "nothing after Done");
                return (texts, Ok((finish_reason, usage)));
            }
            Err(e) => {
                assert!(g.next().await.is_none(), "nothing after an error");
                return (texts, Err(e));
            }
        }
    }
    panic!("the generation ended without Done or an error");
}

fn sse(lines: &[&str]) -> Vec<u8> {
    lines.iter().map(|l| format!("{l}\n\n")).collect::<String>().into_bytes()
}

#[tokio::test]
async fn streaming_chat() {
    let body = sse(&[
        r#"data: {"choices":[{"delta":{"role":"assistant","content":""}}]}"#,
        r#"data: {"choices":[{"delta":{"content":"Paris"}}]}"#,
        ": a comment",
        r#"data: {"choices":[{"delta":{"content":" is"}}]}"#,
        r#"data: {"choices":[{"delta":{"content":" nice é"},"finish_reason":null}]}"#,
        r#"data: {"choices":[{"delta":{},"finish_reason":"length"}]}"#,
        r#"data: {"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}"#,
        "data: [DONE]",
    ]);
    let server = FakeServer::start(move |_| {
        // Cut the body into awkward pieces (inside lines, inside a multi-byte character).
        let mut pieces = vec![sse_head()];
        let cuts = [0, 20, 71, 140, 141, 230, 231, body.len()];
        for w in cuts.windows(2) {
            let (a, b) = (w[0].min(body.len()), w[1].min(body.len()));
            pieces.push(Piece::Bytes(body[a..b].to_vec()));
            pieces.push(Piece::Pause(Duration::from_millis(20)));
        }
        pieces
    })
    .await;
    let e = engine(server.url("/v1/"), true, Duration::from_secs(10));
    let (texts, done) = collect(e.generate(chat("capital of France?")).unwrap()).await;
    assert_eq!(texts, ["Paris", " is", " nice é"]);
    assert_eq!(done, Ok((FinishReason::Length, Usage { prompt_tokens: 12, completion_tokens: 3, cached_tokens: 0 })));

    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert!(r.head.starts_with("POST /v1/chat/completions "), "{}", r.head);
    assert_eq!(r.header("authorization").as_deref(), Some("Bearer secret"));
    let j = r.json();
    assert_eq!(j["model"], "tiny");
    assert_eq!(j["stream"], true);
    assert_eq!(j["stream_options"]["include_usage"], true);
    assert_eq!(j["max_tokens"], 16);
    assert_eq!(j["stop"][0], "\n\n");
    assert_eq!(j["messages"][0]["role"], "user");
    assert_eq!(j["messages"][0]["content"], "capital of France?");
}

#[tokio::test]
async fn streaming_completion_without_usage() {
    let body = sse(&[
        r#"data: {"choices":[{"text":"one"}]}"#,
        r#"data: {"choices":[{"text":" two","finish_reason":"stop"}]}"#,
        "data: [DONE]",
    ]);
    let server = FakeServer::start(move |_| vec![sse_head(), Piece::Bytes(body.clone())]).await;
    let e = engine(server.url("/v1"), true, Duration::from_secs(10));
    let request = GenerateRequest {
        input: Input::Prompt("count:".into()),
        params: Default::default(),
        tools: Default::default(),
    };
    let (texts, done) = collect(e.generate(request).unwrap()).await;
    assert_eq!(texts, ["one", " two"]);
    assert_eq!(done, Ok((FinishReason::Stop, Usage { prompt_tokens: 0, completion_tokens: 2, cached_tokens: 0 })));
    let r = &server.requests()[0];
    assert!(r.head.starts_with("POST /v1/completions "), "{}", r.head);
    assert_eq!(r.json()["prompt"], "count:");
}

#[tokio::test]
async fn non_streaming_chat() {
    let answer = br#"{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Paris."},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":3}}"#;
    let server = FakeServer::start(move |_| response("200 OK", "application/json", answer)).await;
    let e = engine(server.url("/v1"), false, Duration::from_secs(10));
    let mut g = e.generate(chat("capital?")).unwrap();
    assert_eq!(g.next().await, Some(Ok(GenEvent::Token { text: "Paris.".into(), tokens: 3 })));
    assert_eq!(
        g.next().await,
        Some(Ok(GenEvent::Done {
            finish_reason: FinishReason::Stop,
            usage: Usage { prompt_tokens: 9, completion_tokens: 3, cached_tokens: 0 }
        }))
    );
    assert_eq!(g.next().await, None);
    let j = server.requests()[0].json();
    assert_eq!(j["stream"], false);
    assert!(j.get("stream_options").is_none());
}

#[tokio::test]
async fn refused_connection_is_unavailable() {
    let e = engine(format!("http://127.0.0.1:{}/v1", closed_port()), true, Duration::from_secs(5));
    let (texts, done) = collect(e.generate(chat("hi")).unwrap()).await;
    assert!(texts.is_empty());
    match done {
        Err(EngineError::Unavailable { url, .. }) => assert!(url.ends_with("/v1/chat/completions")),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn error_status_carries_the_message() {
    let server = FakeServer::start(|_| {
        response(
            "500 Internal Server Error",
            "application/json",
            br#"{"error":{"message":"model exploded","type":"server_error"}}"#,
        )
    })
    .await;
    let e = engine(server.url("/v1"), true, Duration::from_secs(10));
    let (_, done) = collect(e.generate(chat("hi")).unwrap()).await;
    assert_eq!(done, Err(EngineError::BackendStatus { status: 500, message: "model exploded".into() }));
}

#[tokio::test]
async fn garbage_streams_are_protocol_errors() {
    for garbage in [&b"data: {\"choices\": [tru\n\n"[..], b"hello\nworld\n", b"\xff\xfe\xfd\n"] {
        let server = FakeServer::start(move |_| vec![sse_head(), Piece::Bytes(garbage.to_vec())]).await;
        let e = engine(server.url("/v1"), true, Duration::from_secs(10));
        let (_, done) = collect(e.generate(chat("hi")).unwrap()).await;
        assert!(matches!(done, Err(EngineError::BackendProtocol(_))), "{done:?}");
    }
    // Not JSON where a whole answer is expected.
    let server = FakeServer::start(|_| response("200 OK", "application/json", b"<html>")).await;
    let e = engine(server.url("/v1"), false, Duration::from_secs(10));
    let (_, done) = collect(e.generate(chat("hi")).unwrap()).await;
    assert!(matches!(done, Err(EngineError::BackendProtocol(_))), "{done:?}");
}

#[tokio::test]
async fn stalled_server_times_out() {
    // Silent after the request.
    let server = FakeServer::start(|_| vec![Piece::Pause(Duration::from_secs(30))]).await;
    let e = engine(server.url("/v1"), true, Duration::from_millis(300));
    let (_, done) = collect(e.generate(chat("hi")).unwrap()).await;
    assert!(matches!(done, Err(EngineError::Timeout(_))), "{done:?}");

    // Silent in the middle of a stream.
    let first = sse(&[r#"data: {"choices":[{"delta":{"content":"a"}}]}"#]);
    let server = FakeServer::start(move |_| {
        vec![sse_head(), Piece::Bytes(first.clone()), Piece::Pause(Duration::from_secs(30))]
    })
    .await;
    let e = engine(server.url("/v1"), true, Duration::from_millis(300));
    let (texts, done) = collect(e.generate(chat("hi")).unwrap()).await;
    assert_eq!(texts, ["a"]);
    assert!(matches!(done, Err(EngineError::Timeout(_))), "{done:?}");
}

#[tokio::test]
async fn dropping_the_generation_drops_the_connection() {
    let chunk = sse(&[r#"data: {"choices":[{"delta":{"content":"x"}}]}"#]);
    let server = FakeServer::start(move |_| {
        let mut pieces = vec![sse_head()];
        for _ in 0..2000 {
            pieces.push(Piece::Bytes(chunk.clone()));
            pieces.push(Piece::Pause(Duration::from_millis(10)));
        }
        pieces
    })
    .await;
    let e = engine(server.url("/v1"), true, Duration::from_secs(10));
    let mut g = e.generate(chat("hi")).unwrap();
    assert!(matches!(g.next().await, Some(Ok(GenEvent::Token { .. }))));
    drop(g);
    // The server notices the closed connection long before its 20 s script ends.
    tokio::time::timeout(Duration::from_secs(15), server.client_gone.notified())
        .await
        .expect("the connection was not closed");
}

#[tokio::test]
async fn bad_configs_and_requests_are_refused() {
    let id = ModelId { name: "m".into(), gguf_name: "M".into(), sha256: [0; 32] };
    let config =
        |base: &str, model: &str| OpenAiConfig { base_url: base.into(), model: model.into(), ..Default::default() };
    assert!(OpenAiEngine::new(config("ftp://x/v1", "m"), id.clone()).is_err());
    assert!(OpenAiEngine::new(config("not a url", "m"), id.clone()).is_err());
    assert!(OpenAiEngine::new(config("http://127.0.0.1:1/v1", ""), id.clone()).is_err());
    let e = OpenAiEngine::new(config("http://127.0.0.1:1/v1", "m"), id).unwrap();
    assert_eq!(e.build_id(), "openai-compatible:m");
    let mut bad = chat("hi");
    bad.params.max_tokens = 0;
    assert!(matches!(e.generate(bad), Err(EngineError::InvalidRequest(_))));
    let empty = GenerateRequest { input: Input::Chat(vec![]), params: Default::default(), tools: Default::default() };
    assert!(matches!(e.generate(empty), Err(EngineError::InvalidRequest(_))));
}

#[test]
fn generate_outside_a_runtime_is_an_error() {
    let e = engine("http://127.0.0.1:1/v1".into(), true, Duration::from_secs(1));
    assert!(matches!(e.generate(chat("hi")), Err(EngineError::InvalidRequest(_))));
}
