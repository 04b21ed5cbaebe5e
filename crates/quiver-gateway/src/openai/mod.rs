//! The OpenAI-compatible API, served by the network: `POST /v1/chat/completions`,
//! `POST /v1/completions` (both with SSE streaming) and `GET /v1/models`.

pub(crate) mod limits;
pub(crate) mod request;
mod stream;
pub(crate) mod tool_calls;

use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use quiver_node::engine::{Input, TokenLogprob, Usage};
use quiver_node::{InferError, InferenceRequest, InferenceResult, Node, StreamEvent};
use serde_json::{Value, json};

pub use limits::{
    Admission, BODY_READ_TIMEOUT, BodyDeadline, InFlight, InFlightLimit, VERIFY_HEADER, VerifyByDefault,
    limit_in_flight, read_body_in_time,
};
pub use request::CompletionRequest;
use request::{ApiMessage, check_tool_results, parse_body};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

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

    /// What went wrong, for people.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// From an error of the network, knowing whether the model is one anybody serves or
    /// catalogues: asking for a model nobody knows is 404 `model_not_found`, as with OpenAI; a
    /// known model with no provider reachable now is 503.
    pub(crate) fn from_infer(e: InferError, model_known: bool) -> Self {
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

/// Unknown paths, in OpenAI's shape.
pub async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "unknown_url",
        format!(
            "Unknown request URL: {method} {}. QUIVer serves POST /v1/chat/completions, POST /v1/completions, \
             POST /v1/embeddings, GET /v1/models, Ollama's /api/chat, /api/generate, /api/embed, /api/tags, \
             /api/show, /api/ps and /api/version, and the status page at /",
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

pub(crate) fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn usage(u: Usage) -> Value {
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

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Completion,
}

pub async fn chat_completions(
    State(node): State<Node>,
    admission: Admission,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let answer = async {
        let verify = admission.verify?;
        let req = parse_body(body)?;
        let messages = req.messages.clone().ok_or_else(|| ApiError::bad_request("`messages` is required"))?;
        if messages.is_empty() {
            return Err(ApiError::bad_request("`messages` must not be empty"));
        }
        let messages = messages.into_iter().map(ApiMessage::into_chat).collect::<Result<Vec<_>, _>>()?;
        check_tool_results(&messages)?;
        let inference = InferenceRequest { verify, ..req.to_inference(Input::Chat(messages))? };
        respond(&node, req, inference, Kind::Chat, admission.place).await
    };
    counted(&node, "chat_completions", answer.await)
}

pub async fn completions(
    State(node): State<Node>,
    admission: Admission,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let answer = async {
        let verify = admission.verify?;
        let req = parse_body(body)?;
        let prompt = match &req.prompt {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => a[0].as_str().unwrap_or_default().to_owned(),
            _ => return Err(ApiError::bad_request("`prompt` must be a string")),
        };
        let inference = InferenceRequest { verify, ..req.to_inference(Input::Prompt(prompt))? };
        respond(&node, req, inference, Kind::Completion, admission.place).await
    };
    counted(&node, "completions", answer.await)
}

/// Counts the request by endpoint and status (the tokens of answered ones are counted where the
/// answer ends).
pub(crate) fn counted(node: &Node, endpoint: &'static str, answer: Result<Response, ApiError>) -> Response {
    let resp = answer.unwrap_or_else(IntoResponse::into_response);
    node.record_gateway_request(endpoint, resp.status().as_u16());
    resp
}

/// Whether anybody is known to serve `model`, or the catalogue names it.
pub(crate) async fn model_known(node: &Node, model: &str) -> bool {
    quiver_node::engine::models::find(model).is_some()
        || crate::status::providers_by_model(node).await.contains_key(model)
}

/// Runs one request to its result (non-streamed); dropping the future (client gone) drops the
/// stream, which cancels the job.
async fn run_to_end(node: &Node, inference: InferenceRequest, model: &str) -> Result<InferenceResult, ApiError> {
    let mut stream = node.infer_stream(inference)?;
    loop {
        match stream.next().await {
            Some(Ok(StreamEvent::Token(_))) => {}
            Some(Ok(StreamEvent::Done(r))) => return Ok(*r),
            Some(Err(e)) => return Err(ApiError::from_infer(e, model_known(node, model).await)),
            None => return Err(ApiError::from(InferError::Net("the request ended without a result".into()))),
        }
    }
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
    if !req.stream {
        // `n` choices are `n` requests, each with a seed of its own when sampling.
        let n = req.choices()?;
        let runs = (0..n).map(|i| {
            let mut one = inference.clone();
            if one.params.temperature > 0.0 {
                one.params.seed = one.params.seed.wrapping_add(u64::from(i));
            }
            run_to_end(node, one, &model)
        });
        let results = futures::future::try_join_all(runs).await?;
        let asked = inference.params.logprobs.is_some();
        let logprobs = |r: &InferenceResult| if asked { logprobs_json(kind, &r.logprobs) } else { Value::Null };
        let mut choices = Vec::with_capacity(results.len());
        let mut total = Usage::default();
        for (index, result) in results.iter().enumerate() {
            node.record_gateway_usage(result.usage);
            total.prompt_tokens += result.usage.prompt_tokens;
            total.completion_tokens += result.usage.completion_tokens;
            total.cached_tokens += result.usage.cached_tokens;
            choices.push(match kind {
                Kind::Chat => {
                    let (message, finish) = tool_calls::message(&result.text, &inference.tools, result.finish_reason);
                    json!({ "index": index, "message": message, "finish_reason": finish, "logprobs": logprobs(result) })
                }
                Kind::Completion => json!({ "index": index, "text": result.text,
                                            "finish_reason": result.finish_reason, "logprobs": logprobs(result) }),
            });
        }
        let object = if kind == Kind::Chat { "chat.completion" } else { "text_completion" };
        let first = &results[0];
        return Ok(Json(json!({
            "id": id, "object": object, "created": created, "model": model,
            "choices": choices, "usage": usage(total), "quiver": quiver_info(first),
        }))
        .into_response());
    }

    let mut stream = node.infer_stream(inference.clone())?;
    // Streaming: wait for the first event so that "no provider" is still an HTTP error.
    let first = match stream.next().await {
        Some(Ok(ev)) => ev,
        Some(Err(e)) => return Err(ApiError::from_infer(e, model_known(node, &model).await)),
        None => return Err(ApiError::from(InferError::Net("the request ended without a result".into()))),
    };
    let include_usage = req.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let object = if kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" };
    let chunk = move |delta: Value, finish: Value, logprobs: Value| -> Event {
        let choice = match kind {
            Kind::Chat => json!({ "index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs }),
            Kind::Completion => json!({ "index": 0, "text": delta["content"].as_str().unwrap_or(""),
                                        "finish_reason": finish, "logprobs": logprobs }),
        };
        let v = json!({ "id": id, "object": object, "created": created, "model": model, "choices": [choice] });
        Event::default().data(v.to_string())
    };
    let splitter = (kind == Kind::Chat && inference.tools.active()).then(|| tool_calls::Splitter::new(inference.tools));
    let logprobs = inference.params.logprobs.is_some();
    let answer = stream::Answer { node: node.clone(), chunk, include_usage, kind, splitter, logprobs, place };
    Ok(Sse::new(answer.events(stream, first)).keep_alive(KeepAlive::default()).into_response())
}

/// Log probabilities in OpenAI's shape: chat's `{content: [{token, logprob, bytes,
/// top_logprobs}]}`, completions' parallel lists. (A probability of zero, `-inf`, is `null`.)
fn logprobs_json(kind: Kind, lps: &[TokenLogprob]) -> Value {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    match kind {
        Kind::Chat => {
            let content: Vec<Value> = lps
                .iter()
                .map(|lp| {
                    let top: Vec<Value> =
                        lp.top.iter().map(|(t, l)| json!({ "token": text(t), "logprob": l, "bytes": t })).collect();
                    json!({ "token": text(&lp.token), "logprob": lp.logprob, "bytes": lp.token, "top_logprobs": top })
                })
                .collect();
            json!({ "content": content, "refusal": null })
        }
        Kind::Completion => {
            let mut offset = 0;
            let mut offsets = Vec::with_capacity(lps.len());
            for lp in lps {
                offsets.push(offset);
                offset += lp.token.len();
            }
            let tops: Vec<Value> =
                lps.iter().map(|lp| Value::Object(lp.top.iter().map(|(t, l)| (text(t), json!(l))).collect())).collect();
            json!({ "tokens": lps.iter().map(|lp| text(&lp.token)).collect::<Vec<_>>(),
                    "token_logprobs": lps.iter().map(|lp| lp.logprob).collect::<Vec<_>>(),
                    "top_logprobs": tops, "text_offset": offsets })
        }
    }
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
#[path = "../tests/openai.rs"]
mod tests;
