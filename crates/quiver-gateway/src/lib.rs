//! QUIVer's HTTP surfaces: the local control API of a node (`GET /api/v1/status`,
//! `GET /api/v1/peers`, `GET /metrics`) and the OpenAI-compatible gateway (`/v1/...`) whose
//! answers come from the network.

pub mod openai;

use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use quiver_node::Node;
use serde_json::json;
use tokio::net::TcpListener;

/// Content type of the metrics page (OpenMetrics text, which Prometheus scrapes).
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
}

/// The control API's routes.
pub fn api_router(node: Node) -> Router {
    Router::new()
        .route("/api/v1/status", get(status))
        .route("/api/v1/peers", get(peers))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        // Only GETs are served: no request needs a body.
        .layer(DefaultBodyLimit::max(16 * 1024))
        .with_state(node)
}

/// The OpenAI-compatible routes plus the control API, optionally behind bearer keys.
pub fn gateway_router(node: Node, api_keys: Vec<String>) -> Router {
    let v1 = Router::new()
        .route("/v1/chat/completions", axum::routing::post(openai::chat_completions))
        .route("/v1/completions", axum::routing::post(openai::completions))
        .route("/v1/models", get(openai::models))
        .layer(DefaultBodyLimit::max(openai::MAX_BODY_BYTES))
        .with_state(node.clone());
    let v1 = if api_keys.is_empty() {
        v1
    } else {
        let keys = std::sync::Arc::new(api_keys);
        v1.layer(axum::middleware::from_fn(move |req: axum::extract::Request, next: axum::middleware::Next| {
            let keys = keys.clone();
            async move {
                let given = req
                    .headers()
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "));
                if given.is_some_and(|g| keys.iter().any(|k| k == g)) {
                    next.run(req).await
                } else {
                    openai::ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "invalid_request_error",
                        "invalid_api_key",
                        "missing or wrong API key",
                    )
                    .into_response()
                }
            }
        }))
    };
    v1.merge(api_router(node))
}

/// Serves the gateway until `shutdown` completes.
pub async fn serve_gateway(
    node: Node,
    listener: TcpListener,
    api_keys: Vec<String>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    axum::serve(listener, gateway_router(node, api_keys))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(GatewayError::Serve)
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
    axum::serve(listener, api_router(node)).with_graceful_shutdown(shutdown).await.map_err(GatewayError::Serve)
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
    ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], node.metrics_text()).into_response()
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such endpoint; try /api/v1/status, /api/v1/peers or /metrics")
}
