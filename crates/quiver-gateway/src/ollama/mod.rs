//! Ollama's API on the gateway's listener, served by the network, so that the `ollama` clients
//! and apps built for Ollama work unchanged: `POST /api/chat` and `/api/generate` (NDJSON
//! streaming by default), `GET /api/tags`, `POST /api/show`, `GET /api/ps` and `GET /api/version`.
//!
//! Errors have Ollama's shape, `{"error": "..."}`, with the status code the OpenAI routes give
//! for the same cause.

pub mod request;

use std::convert::Infallible;
use std::time::Instant;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use quiver_node::engine::chat::template::strftime;
use quiver_node::engine::chat::tools::{self, ParsedCall};
use quiver_node::engine::{FinishReason, Tools, models};
use quiver_node::{InferError, InferenceRequest, InferenceResult, Node, StreamEvent};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tracing::debug;

use crate::openai::limits::{Admission, InFlight};
use crate::openai::tool_calls::Splitter;
use crate::openai::{ApiError, model_known, now_secs};
use request::{ChatRequest, GenerateRequest, network_name};

/// The Ollama version this API follows (what `GET /api/version` says).
pub const OLLAMA_API_VERSION: &str = "0.12.0";
/// Lines buffered between the task reading the network and the client's response body.
const LINES: usize = 32;

/// An error in Ollama's shape.
pub struct OllamaError(pub ApiError);

impl From<ApiError> for OllamaError {
    fn from(e: ApiError) -> Self {
        OllamaError(e)
    }
}

impl IntoResponse for OllamaError {
    fn into_response(self) -> Response {
        (self.0.status(), Json(json!({ "error": self.0.message() }))).into_response()
    }
}

/// The body as JSON of `T`, or a 400.
pub(crate) fn parse<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// Counts an Ollama answer by endpoint and status, in Ollama's error shape.
pub(crate) fn answered(node: &Node, endpoint: &'static str, answer: Result<Response, ApiError>) -> Response {
    let resp = answer.unwrap_or_else(|e| OllamaError(e).into_response());
    node.record_gateway_request(endpoint, resp.status().as_u16());
    resp
}

/// `GET /api/version`.
pub async fn version() -> Json<Value> {
    Json(json!({ "version": OLLAMA_API_VERSION }))
}

/// A time as Ollama writes it (RFC 3339, UTC).
fn timestamp(secs: u64) -> String {
    strftime("%Y-%m-%dT%H:%M:%SZ", secs)
}

/// A model of the network as Ollama lists it.
fn model_entry(name: &str, sha256: &str) -> Value {
    let entry = models::find(name);
    let size = entry.as_ref().map_or(0, |e| e.size);
    let file = entry.as_ref().map(|e| e.file_name.clone()).unwrap_or_default();
    // Quantisation as GGUF file names give it (`...Q4_1.gguf`, `...-q4_k_m.gguf`).
    let quantization = file
        .trim_end_matches(".gguf")
        .rsplit(['.', '-'])
        .next()
        .filter(|q| {
            q.len() > 1 && (q.starts_with('Q') || q.starts_with('q') || q.starts_with("F") || q.starts_with("f"))
        })
        .map(str::to_uppercase)
        .unwrap_or_default();
    let family = name.split(['-', ':', '.']).next().unwrap_or(name);
    let parameter_size = name
        .split(['-', ':'])
        .find(|p| p.len() > 1 && p[..p.len() - 1].parse::<f64>().is_ok() && p.ends_with(['m', 'b', 'M', 'B']))
        .map(str::to_uppercase)
        .unwrap_or_default();
    json!({
        "name": format!("{name}:latest"), "model": format!("{name}:latest"),
        "modified_at": timestamp(0), "size": size, "digest": sha256,
        "details": { "parent_model": "", "format": "gguf", "family": family, "families": [family],
                     "parameter_size": parameter_size, "quantization_level": quantization },
    })
}

/// The network's models (served by providers other than this node) with a model file's sha256.
async fn network_models(node: &Node) -> Vec<(String, String)> {
    crate::status::providers_by_model(node)
        .await
        .into_iter()
        .filter_map(|(name, providers)| providers.into_iter().find(|p| !p.local).map(|p| (name, p.sha256)))
        .collect()
}

/// `GET /api/tags`: the models the network serves.
pub async fn tags(State(node): State<Node>) -> Response {
    let list: Vec<Value> = network_models(&node).await.iter().map(|(n, sha)| model_entry(n, sha)).collect();
    answered(&node, "ollama_tags", Ok(Json(json!({ "models": list })).into_response()))
}

/// `GET /api/ps`: models "loaded": on the network every served model is loaded at its providers.
pub async fn ps(State(node): State<Node>) -> Response {
    let list: Vec<Value> = network_models(&node)
        .await
        .iter()
        .map(|(n, sha)| {
            let mut m = model_entry(n, sha);
            m["expires_at"] = json!(timestamp(now_secs() + 3600));
            m["size_vram"] = json!(0);
            m
        })
        .collect();
    answered(&node, "ollama_ps", Ok(Json(json!({ "models": list })).into_response()))
}

/// `POST /api/show`: what is known of a model, or 404.
pub async fn show(State(node): State<Node>, body: Result<Bytes, BytesRejection>) -> Response {
    let answer = async {
        let req: Value = parse(body)?;
        let asked = req.get("model").or_else(|| req.get("name")).and_then(Value::as_str).unwrap_or_default();
        let name = network_name(asked);
        let found = network_models(&node).await.into_iter().find(|(n, _)| n == name);
        let Some((name, sha)) = found else { return Err(not_found(asked)) };
        let entry = model_entry(&name, &sha);
        Ok(Json(json!({
            "modelfile": format!("# served by the QUIVer network\nFROM {name}\n"),
            "parameters": "", "template": "", "details": entry["details"],
            "model_info": { "general.basename": name, "general.file_type": entry["details"]["quantization_level"] },
            "capabilities": ["completion", "tools", "embedding"],
            "modified_at": entry["modified_at"],
        }))
        .into_response())
    };
    answered(&node, "ollama_show", answer.await)
}

fn not_found(model: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "model_not_found",
        format!("model '{model}' not found"),
    )
}

/// Which Ollama answer is being written.
#[derive(Clone, Copy, PartialEq)]
enum Shape {
    Chat,
    Generate,
}

/// `POST /api/chat`.
pub async fn chat(State(node): State<Node>, admission: Admission, body: Result<Bytes, BytesRejection>) -> Response {
    let answer = async {
        let verify = admission.verify?;
        let req: ChatRequest = parse(body)?;
        let inference = InferenceRequest { verify, ..req.to_inference()? };
        let stream = req.stream.unwrap_or(true);
        respond(&node, &req.model, inference, Shape::Chat, stream, admission.place).await
    };
    answered(&node, "ollama_chat", answer.await)
}

/// `POST /api/generate`.
pub async fn generate(State(node): State<Node>, admission: Admission, body: Result<Bytes, BytesRejection>) -> Response {
    let answer = async {
        let verify = admission.verify?;
        let req: GenerateRequest = parse(body)?;
        if req.prompt.is_empty() {
            // Ollama's way to load a model: nothing to generate.
            if !model_known(&node, network_name(&req.model)).await {
                return Err(not_found(&req.model));
            }
            let done = json!({ "model": req.model, "created_at": timestamp(now_secs()), "response": "",
                               "done": true, "done_reason": "load" });
            return Ok(Json(done).into_response());
        }
        let inference = InferenceRequest { verify, ..req.to_inference()? };
        let stream = req.stream.unwrap_or(true);
        respond(&node, &req.model, inference, Shape::Generate, stream, admission.place).await
    };
    answered(&node, "ollama_generate", answer.await)
}

/// One line of an answer: new text (or, at the end, the rest and the calls).
fn line(shape: Shape, model: &str, text: &str, calls: &[ParsedCall]) -> Value {
    let created_at = timestamp(now_secs());
    match shape {
        Shape::Chat => {
            let mut message = json!({ "role": "assistant", "content": text });
            if !calls.is_empty() {
                let calls: Vec<Value> = calls
                    .iter()
                    .map(|c| {
                        let arguments: Value = serde_json::from_str(&c.arguments).unwrap_or_else(|_| json!({}));
                        json!({ "function": { "name": c.name, "arguments": arguments } })
                    })
                    .collect();
                message["tool_calls"] = Value::Array(calls);
            }
            json!({ "model": model, "created_at": created_at, "message": message, "done": false })
        }
        Shape::Generate => json!({ "model": model, "created_at": created_at, "response": text, "done": false }),
    }
}

/// The last line's fields: why it ended and Ollama's counts and durations (nanoseconds).
fn finish(v: &mut Value, r: &InferenceResult, calls: bool, started: Instant) {
    let reason = match r.finish_reason {
        FinishReason::Length => "length",
        _ if calls => "stop",
        _ => "stop",
    };
    let ns = |ms: f64| (ms * 1e6) as u64;
    let total = started.elapsed().as_nanos() as u64;
    v["done"] = json!(true);
    v["done_reason"] = json!(reason);
    v["total_duration"] = json!(total);
    v["load_duration"] = json!(0);
    v["prompt_eval_count"] = json!(r.usage.prompt_tokens);
    v["prompt_eval_duration"] = json!(ns(r.timing.ttft_ms));
    v["eval_count"] = json!(r.usage.completion_tokens);
    v["eval_duration"] = json!(ns((r.timing.total_ms - r.timing.ttft_ms).max(0.0)));
}

async fn respond(
    node: &Node,
    model: &str,
    inference: InferenceRequest,
    shape: Shape,
    stream: bool,
    place: Option<InFlight>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let tools = inference.tools.clone();
    let name = network_name(model).to_owned();
    let mut events = node.infer_stream(inference)?;
    // The first event, so that "no provider" is still an HTTP error.
    let first = match events.next().await {
        Some(Ok(ev)) => ev,
        Some(Err(e)) => return Err(ApiError::from_infer(e, model_known(node, &name).await)),
        None => return Err(ApiError::from(InferError::Net("the request ended without a result".into()))),
    };
    if !stream {
        let mut next = Some(Ok(first));
        let result = loop {
            match next.take() {
                Some(Ok(StreamEvent::Token(_))) => {}
                Some(Ok(StreamEvent::Done(r))) => break *r,
                Some(Err(e)) => return Err(ApiError::from_infer(e, model_known(node, &name).await)),
                None => return Err(ApiError::from(InferError::Net("the request ended without a result".into()))),
            }
            next = events.next().await;
        };
        node.record_gateway_usage(result.usage);
        let (content, calls) = split_calls(&result.text, &tools, shape);
        let mut v = line(shape, model, &content, &calls);
        finish(&mut v, &result, !calls.is_empty(), started);
        return Ok(Json(v).into_response());
    }
    let (tx, rx) = mpsc::channel::<Bytes>(LINES);
    let node = node.clone();
    let model = model.to_owned();
    tokio::spawn(async move {
        let _place = place;
        let mut splitter = (shape == Shape::Chat && tools.active()).then(|| Splitter::new(tools));
        let send = |v: Value| {
            let mut bytes = v.to_string().into_bytes();
            bytes.push(b'\n');
            tx.send(Bytes::from(bytes))
        };
        let mut next = Some(Ok(first));
        while let Some(event) = next.take() {
            match event {
                Ok(StreamEvent::Token(t)) => {
                    let text = match &mut splitter {
                        Some(s) => s.push(&t),
                        None => t,
                    };
                    if !text.is_empty() && send(line(shape, &model, &text, &[])).await.is_err() {
                        debug!("the client went away; cancelling the job");
                        return;
                    }
                }
                Ok(StreamEvent::Done(r)) => {
                    node.record_gateway_usage(r.usage);
                    let (rest, calls) = splitter.map(Splitter::finish).unwrap_or_default();
                    let mut v = line(shape, &model, &rest, &calls);
                    finish(&mut v, &r, !calls.is_empty(), started);
                    let _ = send(v).await;
                    return;
                }
                Err(e) => {
                    let _ = send(json!({ "error": ApiError::from(e).message() })).await;
                    return;
                }
            }
            next = tokio::select! {
                ev = events.next() => ev,
                () = tx.closed() => {
                    debug!("the client went away; cancelling the job");
                    return;
                }
            };
        }
    });
    let body =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx)) });
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(body)).into_response())
}

/// A whole answer's content and the tool calls in it (chat with tools only).
fn split_calls(text: &str, tools: &Tools, shape: Shape) -> (String, Vec<ParsedCall>) {
    if shape != Shape::Chat || !tools.active() {
        return (text.to_owned(), Vec::new());
    }
    let parsed = tools::parse(text, tools);
    if parsed.calls.is_empty() { (text.to_owned(), Vec::new()) } else { (parsed.content, parsed.calls) }
}
