//! The status page (`GET /`) and the JSON it polls beside `/api/v1/status` and `/api/v1/peers`:
//! providers per model (`/api/v1/models`) and recent jobs with token counters (`/api/v1/jobs`);
//! and the network at a glance (`/api/v1/network`: its estimated size and one row per model).

use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use quiver_node::Node;
use serde::Serialize;
use serde_json::json;

/// The page: one self-contained file (markup, style, script), compiled into the binary.
pub const STATUS_PAGE: &str = include_str!("status.html");

/// What the page may load: nothing from elsewhere, only this origin's JSON.
const PAGE_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                        connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'";

pub async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, PAGE_CSP),
            (header::CACHE_CONTROL, "no-store"),
        ],
        STATUS_PAGE,
    )
        .into_response()
}

/// One provider of one model, as this node knows it.
#[derive(Debug, Clone, Serialize)]
pub struct ModelProvider {
    pub peer_id: String,
    /// This node itself.
    pub local: bool,
    pub sha256: String,
    pub free_slots: u32,
    pub queue_depth: u32,
    /// Its measured generation speed (0 = not measured yet).
    pub tokens_per_sec: f32,
    pub cpu_load: Option<f32>,
    /// Seconds since its last heartbeat (0 for this node).
    pub last_seen_secs: f64,
    /// This node's reputation score of it, if it has a record.
    pub reputation: Option<f64>,
    pub agent_version: String,
}

/// Every model served on the network as far as this node knows (its own models and the ones
/// announced in heartbeats), with its providers, by name.
pub async fn providers_by_model(node: &Node) -> BTreeMap<String, Vec<ModelProvider>> {
    let scores: HashMap<String, f64> = node.reputation().into_iter().map(|v| (v.peer, v.score)).collect();
    let mut out: BTreeMap<String, Vec<ModelProvider>> = BTreeMap::new();
    if let Ok(status) = node.status().await
        && let Some(p) = status.provider
    {
        for m in p.models {
            out.entry(m.name).or_default().push(ModelProvider {
                peer_id: status.peer_id.clone(),
                local: true,
                sha256: m.sha256,
                free_slots: p.free_slots,
                queue_depth: p.queue_depth,
                tokens_per_sec: p.tokens_per_sec,
                cpu_load: None,
                last_seen_secs: 0.0,
                reputation: None,
                agent_version: status.version.clone(),
            });
        }
    }
    for n in node.known_nodes() {
        let peer_id = n.peer_id.to_string();
        for m in n.models {
            out.entry(m.name).or_default().push(ModelProvider {
                peer_id: peer_id.clone(),
                local: false,
                sha256: m.sha256,
                free_slots: n.free_slots,
                queue_depth: n.queue_depth,
                tokens_per_sec: n.tokens_per_sec,
                cpu_load: Some(n.cpu_load),
                last_seen_secs: n.last_seen_secs,
                reputation: scores.get(&peer_id).copied(),
                agent_version: n.agent_version.clone(),
            });
        }
    }
    out
}

/// `GET /api/v1/models`: `{"models": [{"name", "providers": [...]}]}`.
pub async fn models(State(node): State<Node>) -> Json<serde_json::Value> {
    let models: Vec<serde_json::Value> = providers_by_model(&node)
        .await
        .into_iter()
        .map(|(name, providers)| json!({ "name": name, "providers": providers }))
        .collect();
    Json(json!({ "models": models }))
}

/// `GET /api/v1/network`: `{"size": {"estimate", "local", "sources", "known_nodes", "summary"},
/// "models": [{"name", "providers", "free_slots", "queue_depth", "tokens_per_sec", ...}]}`
/// (`quiver_node::network::NetworkView`); 503 when the node is stopping.
pub async fn network(State(node): State<Node>) -> Response {
    match node.network().await {
        Ok(view) => Json(view).into_response(),
        Err(e) => {
            (axum::http::StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "error": e.to_string() }))).into_response()
        }
    }
}

/// `GET /api/v1/jobs`: token counters since start and the most recent jobs, newest first.
pub async fn jobs(State(node): State<Node>) -> Json<serde_json::Value> {
    Json(json!({ "counters": node.job_counters(), "jobs": node.recent_jobs() }))
}
