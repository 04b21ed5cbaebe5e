//! QUIVer's HTTP surfaces: the local control API of a node (`GET /` status page,
//! `GET /api/v1/{status,peers,models,jobs}`, `GET /metrics`) and the OpenAI-compatible gateway
//! (`/v1/...`) whose answers come from the network.
//!
//! Everything is bounded: request bodies ([`openai::MAX_BODY_BYTES`] on `/v1`, 16 KiB
//! elsewhere), the recent-jobs ring of the node, the SSE channel of a streamed answer.

pub mod embeddings;
pub mod ollama;
pub mod openai;
pub mod serve;
pub mod status;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use quiver_node::Node;
use serde_json::json;
use tokio::net::TcpListener;

/// Content type of the metrics page (OpenMetrics text, which Prometheus scrapes).
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Largest body accepted outside `/v1` (only GETs are served there).
const MAX_API_BODY_BYTES: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// Requests the gateway answers at once by default; beyond them it answers 429.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 256;

/// How the OpenAI-compatible gateway is exposed.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// Bearer keys `/v1` requires; empty means open.
    pub api_keys: Vec<String>,
    /// Origins a browser may call the gateway from (`*` for any); empty (the default) sends no
    /// CORS headers at all, so browsers keep other sites' pages out.
    pub cors_origins: Vec<String>,
    /// Completion requests answered at once (a stream counts until it ends); more get 429.
    pub max_in_flight: usize,
    /// Verify every answer (`quiver gateway --verify`): only an answer a second, independent
    /// provider reproduced is returned. A request's `X-Quiver-Verify: true|false` header
    /// overrides this default.
    pub verify: bool,
    /// Longest time a completion request's body may take to arrive once its headers have
    /// (then 408): a slow upload holds an in-flight place only so long.
    pub body_timeout: std::time::Duration,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        GatewayOptions {
            api_keys: Vec::new(),
            cors_origins: Vec::new(),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            verify: false,
            body_timeout: openai::BODY_READ_TIMEOUT,
        }
    }
}

/// The control API's routes, without a fallback (so they can be merged).
fn api_routes(node: Node) -> Router {
    Router::new()
        .route("/", get(status::page))
        .route("/api/v1/status", get(status))
        .route("/api/v1/peers", get(peers))
        .route("/api/v1/models", get(status::models))
        .route("/api/v1/network", get(status::network))
        .route("/api/v1/jobs", get(status::jobs))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_API_BODY_BYTES))
        .with_state(node)
}

/// The control API: the status page, its JSON and the Prometheus metrics.
pub fn api_router(node: Node) -> Router {
    api_routes(node).fallback(not_found).method_not_allowed_fallback(method_not_allowed)
}

/// The OpenAI-compatible routes plus the control API. Bearer keys (when given) guard `/v1`; the
/// status page, its JSON and `/metrics` stay readable, as on the node's control API.
pub fn gateway_router(node: Node, options: GatewayOptions) -> Router {
    let limit = openai::InFlightLimit::new(node.clone(), options.max_in_flight);
    let completions = Router::new()
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/api/chat", post(ollama::chat))
        .route("/api/generate", post(ollama::generate))
        .route("/v1/embeddings", post(embeddings::openai))
        .route("/api/embed", post(embeddings::ollama_embed))
        .route("/api/embeddings", post(embeddings::ollama_embeddings))
        // The body must arrive in time: a slow upload holds an in-flight place only so long.
        .layer(axum::middleware::from_fn_with_state(
            openai::BodyDeadline { node: node.clone(), limit: options.body_timeout },
            openai::read_body_in_time,
        ))
        // Taken before the body is read, so slow uploads count too.
        .layer(axum::middleware::from_fn_with_state(limit, openai::limit_in_flight))
        .layer(axum::Extension(openai::VerifyByDefault(options.verify)));
    let v1 = completions
        .route("/v1/models", get(openai::models))
        .route("/v1/models/{*model}", get(openai::model))
        .route("/api/tags", get(ollama::tags))
        .route("/api/ps", get(ollama::ps))
        .route("/api/show", post(ollama::show))
        .route("/api/version", get(ollama::version))
        .layer(DefaultBodyLimit::max(openai::MAX_BODY_BYTES))
        .with_state(node.clone());
    let v1 = if options.api_keys.is_empty() {
        v1
    } else {
        let keys = Arc::new(options.api_keys);
        v1.layer(axum::middleware::from_fn_with_state(keys, require_key))
    };
    let router =
        v1.merge(api_routes(node)).fallback(openai::not_found).method_not_allowed_fallback(openai::method_not_allowed);
    if options.cors_origins.is_empty() {
        router
    } else {
        // Outside the key check: a browser's preflight carries no credentials.
        router.layer(axum::middleware::from_fn_with_state(Arc::new(options.cors_origins), cors))
    }
}

async fn require_key(State(keys): State<Arc<Vec<String>>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if given.is_some_and(|g| keys.iter().any(|k| constant_time_eq(k.as_bytes(), g.as_bytes()))) {
        next.run(req).await
    } else {
        openai::ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid_api_key",
            "missing or wrong API key: send `Authorization: Bearer <key>`",
        )
        .into_response()
    }
}

/// Compares without stopping at the first difference, so timing does not reveal a key's prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// CORS for the listed origins only: preflights are answered here, and answers to allowed
/// origins carry `Access-Control-Allow-Origin`.
async fn cors(State(origins): State<Arc<Vec<String>>>, req: Request, next: Next) -> Response {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let allowed = origin.as_ref().and_then(|o| {
        let any = origins.iter().any(|a| a == "*");
        let listed = o.to_str().is_ok_and(|o| origins.iter().any(|a| a == o));
        if any {
            Some(HeaderValue::from_static("*"))
        } else if listed {
            Some(o.clone())
        } else {
            None
        }
    });
    let preflight =
        req.method() == Method::OPTIONS && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut resp = if preflight {
        let mut r = StatusCode::NO_CONTENT.into_response();
        if allowed.is_some() {
            let h = r.headers_mut();
            h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, OPTIONS"));
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("authorization, content-type, x-quiver-verify"),
            );
            h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
        }
        r
    } else {
        next.run(req).await
    };
    if let Some(a) = allowed {
        resp.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, a);
    }
    resp.headers_mut().append(header::VARY, HeaderValue::from_static("origin"));
    resp
}

/// Serves the gateway until `shutdown` completes.
pub async fn serve_gateway(
    node: Node,
    listener: TcpListener,
    options: GatewayOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    serve::serve(listener, gateway_router(node, options), shutdown).await;
    Ok(())
}

/// Binds the control API; the returned listener's `local_addr` is the address actually used.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, GatewayError> {
    TcpListener::bind(addr).await.map_err(|source| GatewayError::Bind { addr, source })
}

/// Serves the control API until `shutdown` completes.
pub async fn serve_api(
    node: Node,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    serve::serve(listener, api_router(node), shutdown).await;
    Ok(())
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error": { "message": message, "code": status.as_u16() } }))).into_response()
}

async fn status(State(node): State<Node>) -> Response {
    match node.status().await {
        Ok(s) => axum::Json(s).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// Every connected peer and every peer with a reputation record: connection facts beside this
/// node's own observations of it (score, counts, latency, ban state).
async fn peers(State(node): State<Node>) -> Response {
    let connected = match node.peers().await {
        Ok(p) => p,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    let mut reputation: std::collections::HashMap<String, serde_json::Value> =
        node.reputation().into_iter().filter_map(|v| Some((v.peer.clone(), serde_json::to_value(v).ok()?))).collect();
    let mut out: Vec<serde_json::Value> = connected
        .into_iter()
        .map(|p| {
            let id = p.peer_id.to_string();
            let mut v = serde_json::to_value(&p).unwrap_or_default();
            v["connected"] = json!(true);
            v["reputation"] = reputation.remove(&id).unwrap_or(serde_json::Value::Null);
            v
        })
        .collect();
    out.extend(reputation.into_iter().map(|(id, r)| json!({ "peer_id": id, "connected": false, "reputation": r })));
    axum::Json(out).into_response()
}

async fn metrics(State(node): State<Node>) -> Response {
    node.refresh_metrics().await;
    ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], node.metrics_text()).into_response()
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no such endpoint; try / (status page), /api/v1/status, /api/v1/peers, /api/v1/models, /api/v1/network, /api/v1/jobs or /metrics",
    )
}

async fn method_not_allowed() -> Response {
    error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
}
