//! A model whose layers are split over a group of machines (ggml's RPC backend).
//!
//! The *head* runs the first layers on its own CPU and each *member* runs a range of the rest
//! on an RPC server ([`rpc::serve_forever`]) that QUIVer reaches through its own tunnel (in
//! `quiver-node`). [`plan`] deals the layers; [`load`] loads the model placed that way.
//!
//! ggml's RPC client aborts the process when a member goes away mid-call, so the head never
//! loads a split model in its own process: it starts an engine *worker* (its own binary with
//! [`WORKER_ENV`] set), which loads the model and speaks [`ToWorker`]/[`FromWorker`] as JSON
//! lines over its stdin and stdout ([`worker`]). [`process::WorkerEngine`] is that worker seen
//! as an [`Engine`](crate::Engine); when the worker dies, its generations fail with an error
//! and the head decides what to do next.

pub mod cache;
pub mod load;
pub mod plan;
pub mod process;
pub mod relay;
pub mod rpc;
pub mod wire;
pub mod worker;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::{DeviceInfo, EngineError, GenEvent, GenerateRequest};

pub use plan::{LayerPlan, PlanError};

/// Set (to any value) in a QUIVer binary's environment, it runs as an engine worker instead.
pub const WORKER_ENV: &str = "QUIVER_ENGINE_WORKER";
/// Longest line the worker accepts from its parent (a request of up to 4 MiB of text, escaped).
pub const MAX_TO_WORKER_LINE: usize = 32 << 20;
/// Longest line the parent accepts from its worker.
pub const MAX_FROM_WORKER_LINE: usize = 1 << 20;

/// The engine build of every split model: one id whatever the layout, so that a head reloading
/// over other members keeps announcing what its receipts named (heartbeats are checked against
/// receipts). Its answers are compared only with other split engines'.
pub fn build_id() -> String {
    format!("llama.cpp/llama-cpp-2={}+rpc", crate::llama::LLAMA_CPP_2_VERSION)
}

/// What goes wrong with a split model.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SplitError {
    #[error("this build has no ggml RPC backend (build with GGML_RPC=ON, as .cargo/config.toml does)")]
    NoRpc,
    #[error("bad RPC endpoint or path: {0}")]
    Endpoint(String),
    #[error("the RPC server at {0} stopped")]
    ServerEnded(String),
    #[error("cannot place the split model: {0}")]
    Plan(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("engine worker: {0}")]
    Worker(String),
}

/// Where a split model's stages are: the RPC endpoints of the members (in order) and the
/// blocks each stage holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitTarget {
    /// `host:port` of each member's RPC server (for QUIVer, the head's end of a tunnel).
    pub endpoints: Vec<String>,
    /// Blocks per stage, head first.
    pub counts: Vec<u32>,
}

/// What the worker is to load: the first line its parent writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub path: PathBuf,
    pub name: String,
    /// The file's sha256 (hex), known to the parent.
    pub sha256: String,
    pub threads: u32,
    pub context_size: u32,
    pub slots: u32,
    pub split: SplitTarget,
}

/// From the parent to its worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum ToWorker {
    Generate { id: u64, request: GenerateRequest },
    Cancel { id: u64 },
}

/// From the worker to its parent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum FromWorker {
    /// The model is loaded and served.
    Loaded { build_id: String, threads: u32, context_size: u32, capacity: usize, device: DeviceInfo },
    /// The model could not be loaded; the worker exits.
    LoadFailed { error: String },
    /// An event of generation `id` (its last is `Done`).
    Event { id: u64, event: GenEvent },
    /// Generation `id` failed (or was refused); nothing more comes for it.
    Failed { id: u64, error: EngineError },
}

/// Writes each message of `rx` to `out` as one JSON line, until `rx` closes or `out` fails.
async fn write_lines<T: Serialize, W: AsyncWrite + Unpin>(mut rx: mpsc::Receiver<T>, mut out: W) {
    while let Some(msg) = rx.recv().await {
        let Ok(mut line) = serde_json::to_vec(&msg) else { continue };
        line.push(b'\n');
        if out.write_all(&line).await.is_err() || out.flush().await.is_err() {
            break;
        }
    }
}
