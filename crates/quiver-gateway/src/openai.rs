//! The OpenAI-compatible API, served by the network: `POST /v1/chat/completions`,
//! `POST /v1/completions` (both with SSE streaming) and `GET /v1/models`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use quiver_node::engine::{ChatMessage, Input, SamplingParams};
use quiver_node::{InferError, InferenceRequest, InferenceResult, Node, StreamEvent};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::debug;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
const DEFAULT_MAX_TOKENS: u32 = 256;

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
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

    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// From an error of the network, knowing whether the model is one anybody serves or
    /// catalogues: asking for a model nobody knows is 404 `model_not_found`, as with OpenAI; a
    /// known model with no provider reachable now is 503.
    fn from_infer(e: InferError, model_known: bool) -> Self {
        match e {
            InferError::NoProvider { model } if !model_known => ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "model_not_found",
                format!("The model `{model}` does not exist: no provider on the network serves it"),
            ),
            other => other.into(),
        }
    }

    fn body(&self) -> Value {
        json!({ "error": { "message": self.message, "type": self.kind, "param": null, "code": self.code } })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(self.body())).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE || self.status == StatusCode::TOO_MANY_REQUESTS {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

impl From<InferError> for ApiError {
    fn from(e: InferError) -> Self {
        let msg = e.to_string();
        match e {
            InferError::Invalid(_) => ApiError::bad_request(msg),
            InferError::Rejected { ref code, .. } if code == "context_overflow" => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", "context_length_exceeded", msg)
            }
            InferError::Rejected { .. } => ApiError::bad_request(msg),
            InferError::NoProvider { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", "no_provider", msg)
            }
            InferError::AllProvidersFailed { ref failures, .. }
                if failures.iter().all(|f| f.ends_with("busy") || f.ends_with("rate limited")) =>
            {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", "overloaded", msg)
            }
            InferError::Unverified { .. } => {
                ApiError::new(StatusCode::BAD_GATEWAY, "server_error", "could_not_verify", msg)
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

/// The body as JSON, or an OpenAI-shaped 400 (unparsable); its size limit (413) and deadline
/// (408) are [`read_body_in_time`]'s.
/// Any content type is taken, so `curl -d '{...}'` works without a header.
fn parse_body(body: Result<Bytes, BytesRejection>) -> Result<CompletionRequest, ApiError> {
    // Its size and arrival time were checked as it was read (`read_body_in_time`).
    let bytes = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// Unknown paths, in OpenAI's shape.
pub async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "unknown_url",
        format!(
            "Unknown request URL: {method} {}. QUIVer serves POST /v1/chat/completions, POST /v1/completions, \
             GET /v1/models, and the status page at /",
            uri.path()
        ),
    )
}

pub async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
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

/// A chat message as OpenAI clients send it. `content` is a string, a list of content parts
/// (frameworks and newer SDKs send `[{"type": "text", "text": ...}]`; only text parts can be
/// served, and they are joined by newlines), or absent/null (an assistant turn that only called
/// tools). `developer` is OpenAI's newer name for the system role.
#[derive(Debug, Clone, Deserialize)]
struct ApiMessage {
    role: String,
    #[serde(default)]
    content: Option<MessageContent>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

/// Roles a chat template is given (after `developer` became `system`).
const ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

impl ApiMessage {
    fn into_chat(self) -> Result<ChatMessage, ApiError> {
        let role = if self.role == "developer" { "system".to_owned() } else { self.role };
        if !ROLES.contains(&role.as_str()) {
            return Err(ApiError::bad_request(format!(
                "unknown message role `{role}`: expected system, developer, user, assistant or tool"
            )));
        }
        let content = match self.content {
            None => String::new(),
            Some(MessageContent::Text(text)) => text,
            Some(MessageContent::Parts(parts)) => {
                let mut texts = Vec::with_capacity(parts.len());
                for part in parts {
                    match (part.kind.as_str(), part.text) {
                        ("text", Some(text)) => texts.push(text),
                        ("text", None) => return Err(ApiError::bad_request("a text content part has no `text`")),
                        (other, _) => {
                            return Err(ApiError::bad_request(format!(
                                "content parts of type `{other}` are not supported: the models served are text only"
                            )));
                        }
                    }
                }
                texts.join("\n")
            }
        };
        Ok(ChatMessage { role, content })
    }
}

/// The fields of both request kinds that QUIVer honours; others are ignored as OpenAI does for
/// fields a model does not support.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    model: String,
    #[serde(default)]
    messages: Option<Vec<ApiMessage>>,
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
            "total_tokens": u.prompt_tokens + u.completion_tokens,
            "prompt_tokens_details": { "cached_tokens": u.cached_tokens } })
}

/// QUIVer's own fields beside the OpenAI ones: who served the answer, and its verified receipt.
fn quiver_info(r: &InferenceResult) -> Value {
    let verified_by: Vec<String> = r.verified_by.iter().map(ToString::to_string).collect();
    json!({ "provider": r.provider.to_string(), "route": r.route, "attempts": r.attempts, "receipt": r.receipt,
            "verified": !verified_by.is_empty(), "verified_by": verified_by, "cached": r.cached })
}

/// Whether the gateway verifies answers unless a request says otherwise (`--verify`).
#[derive(Debug, Clone, Copy)]
pub struct VerifyByDefault(pub bool);

/// Header with which a request asks for verification (`true`) or declines it (`false`).
pub const VERIFY_HEADER: &str = "x-quiver-verify";

/// Whether to verify a request: its `X-Quiver-Verify` header, else the gateway's default. A
/// header that is neither `true` nor `false` (nor 1/0) is a 400, not silently ignored.
fn wants_verify(headers: &HeaderMap, default: bool) -> Result<bool, ApiError> {
    let Some(v) = headers.get(VERIFY_HEADER) else { return Ok(default) };
    match v.to_str().map(|s| s.trim().to_ascii_lowercase()).as_deref() {
        Ok("true" | "1") => Ok(true),
        Ok("false" | "0") => Ok(false),
        _ => Err(ApiError::bad_request("X-Quiver-Verify must be true or false")),
    }
}

/// Longest time a request body may take to arrive, once its headers have (the default of
/// `GatewayOptions::body_timeout`).
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// What [`read_body_in_time`] needs: the node (to count refusals) and the time a body may take.
#[derive(Clone)]
pub struct BodyDeadline {
    pub node: Node,
    pub limit: Duration,
}

/// Reads a completion request's body within its deadline (and [`MAX_BODY_BYTES`]): a client
/// that sends its body a byte at a time gets a 408 instead of holding an in-flight place.
pub async fn read_body_in_time(State(deadline): State<BodyDeadline>, req: Request, next: Next) -> Response {
    let endpoint = if req.uri().path().ends_with("/chat/completions") { "chat_completions" } else { "completions" };
    let (parts, body) = req.into_parts();
    // One byte over the limit is enough to tell a body that is too large.
    let read = tokio::time::timeout(deadline.limit, axum::body::to_bytes(body, MAX_BODY_BYTES + 1)).await;
    let refusal = match read {
        Ok(Ok(b)) if b.len() <= MAX_BODY_BYTES => {
            return next.run(Request::from_parts(parts, axum::body::Body::from(b))).await;
        }
        Ok(_) => too_large(),
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            "request_timeout",
            format!("the request body did not arrive within {} s", deadline.limit.as_secs_f64()),
        ),
    };
    counted(&deadline.node, endpoint, Err(refusal))
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request_error",
        "request_too_large",
        format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
    )
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Completion,
}

/// Bounds the completion requests answered at once.
#[derive(Clone)]
pub struct InFlightLimit {
    node: Node,
    permits: Arc<Semaphore>,
    max: usize,
}

impl InFlightLimit {
    pub fn new(node: Node, max: usize) -> Self {
        let max = max.max(1);
        InFlightLimit { node, permits: Arc::new(Semaphore::new(max)), max }
    }
}

/// One request's place among those in flight; given back (and the gauge lowered) when the
/// answer, or its stream, ends.
#[derive(Clone)]
pub struct InFlight {
    _place: Arc<InFlightPlace>,
}

struct InFlightPlace {
    _permit: OwnedSemaphorePermit,
    node: Node,
}

impl Drop for InFlightPlace {
    fn drop(&mut self) {
        self.node.record_gateway_in_flight(-1);
    }
}

/// Middleware: a place among the in-flight requests, or 429 `rate_limit_exceeded` at once.
pub async fn limit_in_flight(State(limit): State<InFlightLimit>, mut req: Request, next: Next) -> Response {
    match limit.permits.clone().try_acquire_owned() {
        Ok(permit) => {
            limit.node.record_gateway_in_flight(1);
            req.extensions_mut()
                .insert(InFlight { _place: Arc::new(InFlightPlace { _permit: permit, node: limit.node }) });
            next.run(req).await
        }
        Err(_) => {
            let endpoint =
                if req.uri().path().ends_with("/chat/completions") { "chat_completions" } else { "completions" };
            limit.node.record_gateway_request(endpoint, StatusCode::TOO_MANY_REQUESTS.as_u16());
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "requests",
                "rate_limit_exceeded",
                format!("this gateway answers at most {} requests at once; retry shortly", limit.max),
            )
            .into_response()
        }
    }
}

pub async fn chat_completions(
    State(node): State<Node>,
    place: Option<Extension<InFlight>>,
    verify: Option<Extension<VerifyByDefault>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let answer = async {
        let verify = wants_verify(&headers, verify.is_some_and(|Extension(v)| v.0))?;
        let req = parse_body(body)?;
        let messages = req.messages.clone().ok_or_else(|| ApiError::bad_request("`messages` is required"))?;
        if messages.is_empty() {
            return Err(ApiError::bad_request("`messages` must not be empty"));
        }
        let messages = messages.into_iter().map(ApiMessage::into_chat).collect::<Result<Vec<_>, _>>()?;
        let inference = InferenceRequest { verify, ..req.to_inference(Input::Chat(messages))? };
        respond(&node, req, inference, Kind::Chat, place.map(|Extension(p)| p)).await
    };
    counted(&node, "chat_completions", answer.await)
}

pub async fn completions(
    State(node): State<Node>,
    place: Option<Extension<InFlight>>,
    verify: Option<Extension<VerifyByDefault>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let answer = async {
        let verify = wants_verify(&headers, verify.is_some_and(|Extension(v)| v.0))?;
        let req = parse_body(body)?;
        let prompt = match &req.prompt {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => a[0].as_str().unwrap_or_default().to_owned(),
            _ => return Err(ApiError::bad_request("`prompt` must be a string")),
        };
        let inference = InferenceRequest { verify, ..req.to_inference(Input::Prompt(prompt))? };
        respond(&node, req, inference, Kind::Completion, place.map(|Extension(p)| p)).await
    };
    counted(&node, "completions", answer.await)
}

/// Counts the request by endpoint and status (the tokens of answered ones are counted where the
/// answer ends).
fn counted(node: &Node, endpoint: &'static str, answer: Result<Response, ApiError>) -> Response {
    let resp = answer.unwrap_or_else(IntoResponse::into_response);
    node.record_gateway_request(endpoint, resp.status().as_u16());
    resp
}

/// Whether anybody is known to serve `model`, or the catalogue names it.
async fn model_known(node: &Node, model: &str) -> bool {
    quiver_node::engine::models::find(model).is_some()
        || crate::status::providers_by_model(node).await.contains_key(model)
}

async fn respond(
    node: &Node,
    req: CompletionRequest,
    inference: InferenceRequest,
    kind: Kind,
    place: Option<InFlight>,
) -> Result<Response, ApiError> {
    let id = format!("{}-{:016x}", if kind == Kind::Chat { "chatcmpl" } else { "cmpl" }, rand::random::<u64>());
    let created = now_secs();
    let model = req.model.clone();
    let mut stream = node.infer_stream(inference)?;
    if !req.stream {
        // Dropping this future (client gone) drops the stream, which cancels the job.
        let result = loop {
            match stream.next().await {
                Some(Ok(StreamEvent::Token(_))) => {}
                Some(Ok(StreamEvent::Done(r))) => break *r,
                Some(Err(e)) => return Err(ApiError::from_infer(e, model_known(node, &model).await)),
                None => return Err(ApiError::from(InferError::Net("the request ended without a result".into()))),
            }
        };
        node.record_gateway_usage(result.usage);
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
        Some(Err(e)) => return Err(ApiError::from_infer(e, model_known(node, &model).await)),
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
    let events = async_stream(node.clone(), stream, first, chunk, include_usage, kind, place);
    Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
}

/// The SSE events of a streamed answer: a role delta (chat), content deltas, the finish reason,
/// usage if asked, and `[DONE]`. An error mid-stream ends with an error event.
fn async_stream(
    node: Node,
    mut stream: quiver_node::InferenceStream,
    first: StreamEvent,
    chunk: impl Fn(Value, Value) -> Event + Send + 'static,
    include_usage: bool,
    kind: Kind,
    place: Option<InFlight>,
) -> impl Stream<Item = Result<Event, Infallible>> + Send {
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(32);
    tokio::spawn(async move {
        // The request stays in flight until its stream ends.
        let _place = place;
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
                        debug!("the client went away; cancelling the job");
                        return; // dropping `stream` cancels the job
                    }
                }
                Ok(StreamEvent::Done(r)) => {
                    node.record_gateway_usage(r.usage);
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
                    let _ = tx.send(Event::default().data(err.body().to_string())).await;
                    return;
                }
            }
            next = tokio::select! {
                ev = stream.next() => ev,
                // Also notice a client that left while no token is coming (a queued job).
                () = tx.closed() => {
                    debug!("the client went away; cancelling the job");
                    return;
                }
            };
        }
    });
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) })
}

/// Models available on the network with provider counts (`providers`, a QUIVer field beside
/// OpenAI's). Only providers a request can be routed to count: the node's own engines do not,
/// since the client role asks other peers (a provider's gateway serves the rest of the network).
pub async fn models(State(node): State<Node>) -> Json<Value> {
    let data = model_objects(&node).await;
    node.record_gateway_request("models", 200);
    Json(json!({ "object": "list", "data": data }))
}

/// `GET /v1/models/{model}`: one model of the list, or 404 `model_not_found`.
pub async fn model(State(node): State<Node>, Path(id): Path<String>) -> Response {
    let found = model_objects(&node).await.into_iter().find(|m| m["id"] == id.as_str());
    let answer = found.map(|m| Json(m).into_response()).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
            format!("The model `{id}` does not exist: no provider on the network serves it"),
        )
    });
    counted(&node, "models", answer)
}

/// The models served on the network (by providers other than this node), as OpenAI model objects.
async fn model_objects(node: &Node) -> Vec<Value> {
    crate::status::providers_by_model(node)
        .await
        .into_iter()
        .map(|(id, providers)| (id, providers.iter().filter(|p| !p.local).count()))
        .filter(|(_, n)| *n > 0)
        .map(|(id, n)| json!({ "id": id, "object": "model", "created": 0, "owned_by": "quiver", "providers": n }))
        .collect()
}

#[cfg(test)]
#[path = "tests/openai.rs"]
mod tests;
