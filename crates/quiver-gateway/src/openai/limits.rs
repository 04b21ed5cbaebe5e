//! Limits on the completion endpoints: bodies within a size and a deadline, requests in flight,
//! and whether a request is verified.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use quiver_node::Node;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{ApiError, MAX_BODY_BYTES, counted};

/// Whether the gateway verifies answers unless a request says otherwise (`--verify`).
#[derive(Debug, Clone, Copy)]
pub struct VerifyByDefault(pub bool);

/// Header with which a request asks for verification (`true`) or declines it (`false`).
pub const VERIFY_HEADER: &str = "x-quiver-verify";

/// Whether to verify a request: its `X-Quiver-Verify` header, else the gateway's default. A
/// header that is neither `true` nor `false` (nor 1/0) is a 400, not silently ignored.
pub(crate) fn wants_verify(headers: &HeaderMap, default: bool) -> Result<bool, ApiError> {
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

/// The metrics label of a limited route.
fn endpoint_of(path: &str) -> &'static str {
    match path {
        "/v1/chat/completions" => "chat_completions",
        "/v1/embeddings" => "embeddings",
        "/api/chat" => "ollama_chat",
        "/api/generate" => "ollama_generate",
        "/api/embed" | "/api/embeddings" => "ollama_embed",
        _ => "completions",
    }
}

/// Reads a completion request's body within its deadline (and [`MAX_BODY_BYTES`]): a client
/// that sends its body a byte at a time gets a 408 instead of holding an in-flight place.
pub async fn read_body_in_time(State(deadline): State<BodyDeadline>, req: Request, next: Next) -> Response {
    let endpoint = endpoint_of(req.uri().path());
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
            let endpoint = endpoint_of(req.uri().path());
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

/// What every completion route takes besides its body: its place among the requests in flight
/// and whether to verify it (its header, else the gateway's default; a bad header is the
/// route's 400, counted with its other answers).
pub struct Admission {
    pub place: Option<InFlight>,
    pub verify: Result<bool, ApiError>,
}

impl<S: Send + Sync> FromRequestParts<S> for Admission {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let place = parts.extensions.get::<InFlight>().cloned();
        let default = parts.extensions.get::<VerifyByDefault>().is_some_and(|v| v.0);
        Ok(Admission { place, verify: wants_verify(&parts.headers, default) })
    }
}
