//! The OpenAI-compatible API, served by the network: `POST /v1/chat/completions`,
//! `POST /v1/completions` (both with SSE streaming) and `GET /v1/models`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use quiver_node::engine::{ChatMessage, Input, SamplingParams};
use quiver_node::{InferError, InferenceRequest, InferenceResult, Node, StreamEvent};
use serde::Deserialize;
use serde_json::{Value, json};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
const DEFAULT_MAX_TOKENS: u32 = 256;

/// An error in OpenAI's shape.
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, kind, code, message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_request", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "message": self.message, "type": self.kind, "param": null, "code": self.code } });
        (self.status, Json(body)).into_response()
    }
}

impl From<InferError> for ApiError {
    fn from(e: InferError) -> Self {
        let msg = e.to_string();
        match e {
            InferError::Invalid(_) => ApiError::bad_request(msg),
            InferError::Rejected { .. } => ApiError::bad_request(msg),
            InferError::NoProvider { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", "model_not_found", msg)
            }
            InferError::AllProvidersFailed { ref failures, .. }
                if failures.iter().all(|f| f.ends_with("busy") || f.ends_with("rate limited")) =>
            {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "server_error", "overloaded", msg)
            }
            InferError::AllProvidersFailed { .. }
            | InferError::Diverged
            | InferError::Net(_)
            | InferError::VerificationFailed { .. } => {
                ApiError::new(StatusCode::BAD_GATEWAY, "server_error", "providers_failed", msg)
            }
        }
    }
}

/// `stop` may be a string or a list of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// The fields of both request kinds that QUIVer honours; others are ignored as OpenAI does for
/// fields a model does not support.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    model: String,
    #[serde(default)]
    messages: Option<Vec<ChatMessage>>,
    #[serde(default)]
    prompt: Option<Value>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<u64>,
    stop: Option<Stop>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    n: Option<u32>,
}

impl CompletionRequest {
    fn to_inference(&self, input: Input) -> Result<InferenceRequest, ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::bad_request("only n = 1 is supported"));
        }
        let temperature = self.temperature.unwrap_or(1.0);
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        let params = SamplingParams {
            max_tokens: self.max_completion_tokens.or(self.max_tokens).unwrap_or(DEFAULT_MAX_TOKENS),
            temperature,
            top_p: self.top_p.unwrap_or(1.0),
            // A fixed seed lets a failover reproduce the same tokens.
            seed: self.seed.unwrap_or_else(|| if temperature > 0.0 { rand::random() } else { 0 }),
            stop,
        };
        Ok(InferenceRequest { input, params, ..InferenceRequest::chat(&self.model, "", 1) })
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn usage(r: &InferenceResult) -> Value {
    let u = r.usage;
    json!({ "prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.prompt_tokens + u.completion_tokens })
}

/// QUIVer's own fields beside the OpenAI ones: who served the answer, and its verified receipt.
fn quiver_info(r: &InferenceResult) -> Value {
    json!({ "provider": r.provider.to_string(), "route": r.route, "attempts": r.attempts, "receipt": r.receipt })
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Completion,
}

pub async fn chat_completions(
    State(node): State<Node>,
    body: Result<Json<CompletionRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let messages = req.messages.clone().ok_or_else(|| ApiError::bad_request("`messages` is required"))?;
    if messages.is_empty() {
        return Err(ApiError::bad_request("`messages` must not be empty"));
    }
    let inference = req.to_inference(Input::Chat(messages))?;
    respond(node, req, inference, Kind::Chat).await
}

pub async fn completions(
    State(node): State<Node>,
    body: Result<Json<CompletionRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let prompt = match &req.prompt {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => a[0].as_str().unwrap_or_default().to_owned(),
        _ => return Err(ApiError::bad_request("`prompt` must be a string")),
    };
    let inference = req.to_inference(Input::Prompt(prompt))?;
    respond(node, req, inference, Kind::Completion).await
}

async fn respond(
    node: Node,
    req: CompletionRequest,
    inference: InferenceRequest,
    kind: Kind,
) -> Result<Response, ApiError> {
    let id = format!("{}-{:016x}", if kind == Kind::Chat { "chatcmpl" } else { "cmpl" }, rand::random::<u64>());
    let created = now_secs();
    let model = req.model.clone();
    let mut stream = node.infer_stream(inference)?;
    if !req.stream {
        // Dropping this future (client gone) drops the stream, which cancels the job.
        let mut text = String::new();
        let result = loop {
            match stream.next().await {
                Some(Ok(StreamEvent::Token(t))) => text.push_str(&t),
                Some(Ok(StreamEvent::Done(r))) => break *r,
                Some(Err(e)) => return Err(e.into()),
                None => return Err(ApiError::from(InferError::Net("the request ended without a result".into()))),
            }
        };
        let choice = match kind {
            Kind::Chat => json!({ "index": 0, "message": { "role": "assistant", "content": result.text },
                                  "finish_reason": result.finish_reason, "logprobs": null }),
            Kind::Completion => {
                json!({ "index": 0, "text": result.text, "finish_reason": result.finish_reason, "logprobs": null })
            }
        };
        let object = if kind == Kind::Chat { "chat.completion" } else { "text_completion" };
        return Ok(Json(json!({
            "id": id, "object": object, "created": created, "model": model,
            "choices": [choice], "usage": usage(&result), "quiver": quiver_info(&result),
        }))
        .into_response());
    }

    // Streaming: wait for the first event so that "no provider" is still an HTTP error.
    let first = match stream.next().await {
        Some(Ok(ev)) => ev,
        Some(Err(e)) => return Err(e.into()),
        None => return Err(ApiError::from(InferError::Net("the request ended without a result".into()))),
    };
    let include_usage = req.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let object = if kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" };
    let chunk = move |delta: Value, finish: Value| -> Event {
        let choice = match kind {
            Kind::Chat => json!({ "index": 0, "delta": delta, "finish_reason": finish, "logprobs": null }),
            Kind::Completion => json!({ "index": 0, "text": delta["content"].as_str().unwrap_or(""),
                                        "finish_reason": finish, "logprobs": null }),
        };
        let v = json!({ "id": id, "object": object, "created": created, "model": model, "choices": [choice] });
        Event::default().data(v.to_string())
    };
    let events = async_stream(stream, first, chunk, include_usage, kind);
    Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
}

/// The SSE events of a streamed answer: a role delta (chat), content deltas, the finish reason,
/// usage if asked, and `[DONE]`. An error mid-stream ends with an error event.
fn async_stream(
    mut stream: quiver_node::InferenceStream,
    first: StreamEvent,
    chunk: impl Fn(Value, Value) -> Event + Send + 'static,
    include_usage: bool,
    kind: Kind,
) -> impl Stream<Item = Result<Event, Infallible>> + Send {
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(32);
    tokio::spawn(async move {
        if kind == Kind::Chat
            && tx.send(chunk(json!({ "role": "assistant", "content": "" }), Value::Null)).await.is_err()
        {
            return;
        }
        let mut next = Some(Ok(first));
        while let Some(event) = next.take() {
            match event {
                Ok(StreamEvent::Token(t)) => {
                    if tx.send(chunk(json!({ "content": t }), Value::Null)).await.is_err() {
                        return; // the client went away: dropping `stream` cancels the job
                    }
                }
                Ok(StreamEvent::Done(r)) => {
                    let _ = tx.send(chunk(json!({}), json!(r.finish_reason))).await;
                    if include_usage {
                        let v = json!({ "object": "chat.completion.chunk", "choices": [], "usage": usage(&r),
                                        "quiver": quiver_info(&r) });
                        let _ = tx.send(Event::default().data(v.to_string())).await;
                    }
                    let _ = tx.send(Event::default().data("[DONE]")).await;
                    return;
                }
                Err(e) => {
                    let err = ApiError::from(e);
                    let v = json!({ "error": { "message": err.message, "type": err.kind, "code": err.code } });
                    let _ = tx.send(Event::default().data(v.to_string())).await;
                    return;
                }
            }
            next = stream.next().await;
        }
    });
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) })
}

/// Models available on the network: served here or announced in heartbeats, with provider counts.
pub async fn models(State(node): State<Node>) -> Json<Value> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for n in node.known_nodes() {
        for m in n.models {
            *counts.entry(m.name).or_default() += 1;
        }
    }
    if let Ok(status) = node.status().await
        && let Some(p) = status.provider
    {
        for m in p.models {
            *counts.entry(m.name).or_default() += 1;
        }
    }
    let data: Vec<Value> = counts
        .into_iter()
        .map(|(id, providers)| json!({ "id": id, "object": "model", "created": 0, "owned_by": "quiver", "providers": providers }))
        .collect();
    Json(json!({ "object": "list", "data": data }))
}
