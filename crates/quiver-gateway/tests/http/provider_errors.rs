//! The gateway's answers when providers are in reach but cannot serve: real in-process nodes on
//! 127.0.0.1, a provider whose engine is scripted, and a gateway on a second node. A full
//! provider gives 503 `overloaded`, a failing one 502 `providers_failed`, and a prompt longer
//! than the provider's context 400 `context_length_exceeded`.

use std::sync::Arc;
use std::time::Duration;

use crate::common::{Gateway, HTTP_TIMEOUT, error_code};
use quiver_gateway::GatewayOptions;
use quiver_node::engine::{
    Engine, EngineError, FinishReason, GenEvent, GenerateRequest, Generation, Input, ModelId, Usage,
};
use quiver_node::{BootstrapAddr, InferenceRequest, Node, NodeConfig, ProviderConfig, StreamEvent};
use reqwest::StatusCode;
use serde_json::json;

const MODEL: &str = "scripted";
/// The scripted engine's context, in words.
const CONTEXT: u32 = 32;

/// What the scripted engine does with every request.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Script {
    /// One token, then nothing until the consumer goes away: the job holds its slot.
    Hold,
    /// Refuses with an inference error.
    Fail,
    /// Answers one token per word of the input, after refusing inputs of `CONTEXT` words or more
    /// as llama.cpp does.
    Echo,
}

/// A real [`Engine`] that follows a [`Script`]; its prompt tokens are the input's words.
struct ScriptedEngine {
    model: ModelId,
    script: Script,
}

impl ScriptedEngine {
    fn new(script: Script) -> Arc<ScriptedEngine> {
        let model = ModelId { name: MODEL.into(), gguf_name: "scripted test engine".into(), sha256: [7; 32] };
        Arc::new(ScriptedEngine { model, script })
    }
}

fn words(input: &Input) -> Vec<String> {
    match input {
        Input::Prompt(p) => p.split_whitespace().map(str::to_owned).collect(),
        Input::Chat(messages) => {
            messages.iter().flat_map(|m| m.content.split_whitespace()).map(str::to_owned).collect()
        }
    }
}

impl Engine for ScriptedEngine {
    fn model(&self) -> &ModelId {
        &self.model
    }
    fn build_id(&self) -> String {
        "scripted-test-engine/1".into()
    }
    fn threads(&self) -> u32 {
        1
    }
    fn context_size(&self) -> u32 {
        CONTEXT
    }
    fn capacity(&self) -> usize {
        1
    }

    fn generate(&self, request: GenerateRequest) -> Result<Generation, EngineError> {
        request.params.validate()?;
        let words = words(&request.input);
        let prompt_tokens = u32::try_from(words.len()).unwrap_or(u32::MAX);
        if prompt_tokens >= CONTEXT {
            return Err(EngineError::ContextOverflow { prompt_tokens, context: CONTEXT });
        }
        if self.script == Script::Fail {
            return Err(EngineError::Inference("the scripted engine always fails".into()));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(Generation::CHANNEL);
        if self.script == Script::Hold {
            tokio::spawn(async move {
                if tx.send(Ok(GenEvent::Token { text: " held".into(), tokens: 1 })).await.is_ok() {
                    tx.closed().await;
                }
            });
        } else {
            let completion = words.len().min(request.params.max_tokens as usize);
            tokio::spawn(async move {
                for word in &words[..completion] {
                    if tx.send(Ok(GenEvent::Token { text: format!(" {word}"), tokens: 1 })).await.is_err() {
                        return;
                    }
                }
                let usage = Usage { prompt_tokens, completion_tokens: completion as u32, cached_tokens: 0 };
                let _ = tx.send(Ok(GenEvent::Done { finish_reason: FinishReason::Length, usage })).await;
            });
        }
        Ok(Generation::new(rx))
    }
}

/// A provider of the scripted engine (one job at a time, no queue) and a gateway on another node
/// that knows it.
async fn provider_and_gateway(script: Script) -> (Node, Gateway) {
    let fast = |config: NodeConfig| NodeConfig {
        listen_addrs: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr")],
        heartbeat_interval: Duration::from_millis(500),
        ..config
    };
    let provider = Node::start(fast(NodeConfig {
        bootstrap_node: true,
        provider: Some(ProviderConfig::new(vec![ScriptedEngine::new(script)], 1, 0)),
        ..NodeConfig::default()
    }))
    .await
    .expect("provider starts");
    let mut addrs = provider.listen_addrs();
    let bootstrap: BootstrapAddr = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(a) = addrs.borrow().iter().find(|a| a.to_string().contains("/tcp/")) {
                return a.to_string().parse().expect("own address parses");
            }
            addrs.changed().await.expect("the provider stopped");
        }
    })
    .await
    .expect("the provider listens");
    let gateway = Gateway::start_with(
        fast(NodeConfig { bootstrap_peers: vec![bootstrap], dht_client_only: true, ..NodeConfig::default() }),
        GatewayOptions::default(),
    )
    .await;
    assert!(
        gateway.node.wait_for_provider(MODEL, Duration::from_secs(30)).await,
        "the gateway never heard of the provider"
    );
    (provider, gateway)
}

fn chat(content: &str) -> String {
    json!({ "model": MODEL, "messages": [{ "role": "user", "content": content }], "max_tokens": 8 }).to_string()
}

/// Asserts an OpenAI-shaped error with `status`, `kind` and `code`, and returns its message.
#[track_caller]
fn expect_error<'a>(
    (status, body): (StatusCode, &'a serde_json::Value),
    want: StatusCode,
    kind: &str,
    code: &str,
) -> &'a str {
    assert_eq!((status, error_code(body)), (want, code), "{body}");
    assert_eq!(body["error"]["type"], kind, "{body}");
    body["error"]["message"].as_str().unwrap_or_default()
}

async fn stop(provider: Node, gateway: Gateway) {
    gateway.stop().await;
    provider.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_provider_gives_503_overloaded() {
    let (provider, gw) = provider_and_gateway(Script::Hold).await;
    // A job that holds the provider's only slot (it has no queue), seen running.
    let mut held = gw.node.infer_stream(InferenceRequest::chat(MODEL, "hold the slot", 8)).expect("request starts");
    let first = tokio::time::timeout(HTTP_TIMEOUT, held.next()).await.expect("the held job streams in time");
    assert!(matches!(first, Some(Ok(StreamEvent::Token(_)))), "{first:?}");

    let (status, headers, body) = gw.post("/v1/chat/completions", chat("one more")).await;
    expect_error((status, &body), StatusCode::SERVICE_UNAVAILABLE, "server_error", "overloaded");
    assert_eq!(headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    drop(held);
    stop(provider, gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_provider_gives_502_providers_failed() {
    let (provider, gw) = provider_and_gateway(Script::Fail).await;
    let (status, headers, body) = gw.post("/v1/chat/completions", chat("anything")).await;
    let message = expect_error((status, &body), StatusCode::BAD_GATEWAY, "server_error", "providers_failed");
    assert!(message.contains("the scripted engine always fails"), "the provider's failure is named: {message}");
    assert!(headers.get("retry-after").is_none(), "a failure is not load: {headers:?}");
    stop(provider, gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_beyond_the_providers_context_gives_400_context_length_exceeded() {
    let (provider, gw) = provider_and_gateway(Script::Echo).await;
    // The same provider serves a prompt that fits.
    let (status, _, body) = gw.post("/v1/chat/completions", chat("three short words")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], " three short words");

    let long = vec!["word"; CONTEXT as usize + 8].join(" ");
    let (status, _, body) = gw.post("/v1/chat/completions", chat(&long)).await;
    let message =
        expect_error((status, &body), StatusCode::BAD_REQUEST, "invalid_request_error", "context_length_exceeded");
    assert!(message.contains(&format!("{} tokens", CONTEXT + 8)), "the prompt's size is named: {message}");
    stop(provider, gw).await;
}
