//! The engine worker seen from its parent: [`WorkerEngine`] is an [`Engine`] whose work runs
//! in a child process (see [`super`]). When the child dies (a member went away and ggml's RPC
//! client aborted, or it was killed), every generation in flight ends with an error at once and
//! the engine stays dead; the owner notices with [`WorkerEngine::ended`] and starts another.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use super::worker::read_line;
use super::{FromWorker, MAX_FROM_WORKER_LINE, SplitError, ToWorker, WORKER_ENV, WorkerSpec};
use crate::{DeviceInfo, Engine, EngineError, GenEvent, GenerateRequest, Generation, ModelId};

/// Requests waiting to be written to the worker.
const TO_WORKER_QUEUE: usize = 256;

type Route = mpsc::Sender<Result<GenEvent, EngineError>>;

/// What the worker said once it had loaded the model.
#[derive(Debug, Clone, PartialEq)]
struct Loaded {
    build_id: String,
    threads: u32,
    context_size: u32,
    capacity: usize,
    device: DeviceInfo,
}

/// A model served by an engine worker process.
pub struct WorkerEngine {
    id: ModelId,
    loaded: Loaded,
    to_worker: mpsc::Sender<ToWorker>,
    routes: Arc<Mutex<HashMap<u64, Route>>>,
    next_id: AtomicU64,
    /// `Some(why)` once the worker has ended.
    ended: watch::Receiver<Option<String>>,
    /// Ends the child (dropping it kills it too).
    kill: mpsc::Sender<()>,
}

impl std::fmt::Debug for WorkerEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerEngine")
            .field("model", &self.id.name)
            .field("loaded", &self.loaded)
            .finish_non_exhaustive()
    }
}

impl WorkerEngine {
    /// Starts `program` as an engine worker for `spec` and waits up to `load_timeout` for it to
    /// load. The child is killed when the engine is dropped.
    pub async fn start(
        program: &Path,
        spec: &WorkerSpec,
        id: ModelId,
        load_timeout: Duration,
    ) -> Result<WorkerEngine, SplitError> {
        let mut child = tokio::process::Command::new(program)
            .env(WORKER_ENV, "1")
            // ggml prints a debugger backtrace when it aborts (a member lost): slow and noisy.
            .env("GGML_NO_BACKTRACE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| SplitError::Worker(format!("cannot start {}: {e}", program.display())))?;
        let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(SplitError::Worker("the worker's pipes are missing".into()));
        };
        let mut line = serde_json::to_vec(spec).map_err(|e| SplitError::Worker(e.to_string()))?;
        line.push(b'\n');
        stdin.write_all(&line).await.map_err(|e| SplitError::Worker(format!("cannot brief the worker: {e}")))?;
        let (kill_tx, mut kill_rx) = mpsc::channel::<()>(1);
        let (exit_tx, exit_rx) = watch::channel::<Option<String>>(None);
        tokio::spawn(async move {
            let why = tokio::select! {
                status = child.wait() => match status {
                    Ok(s) => format!("the engine worker exited ({s})"),
                    Err(e) => format!("the engine worker is lost: {e}"),
                },
                _ = kill_rx.recv() => {
                    let _ = child.kill().await;
                    "the engine worker was stopped".to_string()
                }
            };
            let _ = exit_tx.send(Some(why));
        });
        let connect = Self::connect(BufReader::new(stdout), stdin, id, exit_rx, kill_tx);
        match tokio::time::timeout(load_timeout, connect).await {
            Ok(r) => r,
            Err(_) => Err(SplitError::Worker(format!("the model did not load within {load_timeout:?}"))),
        }
    }

    /// Speaks to a worker whose spec was already sent: waits for its `Loaded`, then routes
    /// its events. `exited` says when the process behind `input` ends; `kill` ends it.
    pub async fn connect<R, W>(
        mut input: R,
        output: W,
        id: ModelId,
        exited: watch::Receiver<Option<String>>,
        kill: mpsc::Sender<()>,
    ) -> Result<WorkerEngine, SplitError>
    where
        R: AsyncBufRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let first = read_line(&mut input, MAX_FROM_WORKER_LINE).await.map_err(|e| SplitError::Worker(e.to_string()))?;
        let loaded = match first.as_deref().map(serde_json::from_str::<FromWorker>) {
            Some(Ok(FromWorker::Loaded { build_id, threads, context_size, capacity, device })) => {
                Loaded { build_id, threads, context_size, capacity, device }
            }
            Some(Ok(FromWorker::LoadFailed { error })) => {
                return Err(SplitError::Worker(format!("loading failed: {error}")));
            }
            Some(Ok(other)) => return Err(SplitError::Worker(format!("unexpected first message {other:?}"))),
            Some(Err(e)) => return Err(SplitError::Worker(format!("unreadable first message: {e}"))),
            None => {
                let why = exited.borrow().clone().unwrap_or_else(|| "the worker ended before loading".into());
                return Err(SplitError::Worker(why));
            }
        };
        let routes: Arc<Mutex<HashMap<u64, Route>>> = Arc::default();
        let (to_worker, rx) = mpsc::channel::<ToWorker>(TO_WORKER_QUEUE);
        tokio::spawn(super::write_lines(rx, output));
        tokio::spawn(route_events(input, Arc::clone(&routes), to_worker.clone(), exited.clone()));
        Ok(WorkerEngine { id, loaded, to_worker, routes, next_id: AtomicU64::new(1), ended: exited, kill })
    }

    /// Whether the worker still runs.
    pub fn alive(&self) -> bool {
        self.ended.borrow().is_none()
    }

    /// Waits until the worker has ended; says why.
    pub async fn ended(&self) -> String {
        let mut rx = self.ended.clone();
        loop {
            if let Some(why) = rx.borrow_and_update().clone() {
                return why;
            }
            if rx.changed().await.is_err() {
                return "the engine worker is gone".into();
            }
        }
    }

    /// Ends the worker now (its generations fail).
    pub fn stop(&self) {
        let _ = self.kill.try_send(());
    }

    /// Generations in flight.
    pub fn in_flight(&self) -> usize {
        self.routes.lock().map_or(0, |r| r.len())
    }
}

impl Drop for WorkerEngine {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Hands each event to its generation; when the worker's output ends, fails all that remain.
async fn route_events<R: AsyncBufRead + Unpin>(
    mut input: R,
    routes: Arc<Mutex<HashMap<u64, Route>>>,
    to_worker: mpsc::Sender<ToWorker>,
    mut exited: watch::Receiver<Option<String>>,
) {
    loop {
        let line = match read_line(&mut input, MAX_FROM_WORKER_LINE).await {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(e) => {
                warn!(error = %e, "engine worker output unreadable");
                break;
            }
        };
        let (id, item, last) = match serde_json::from_str::<FromWorker>(&line) {
            Ok(FromWorker::Event { id, event }) => {
                let last = matches!(event, GenEvent::Done { .. });
                (id, Ok(event), last)
            }
            Ok(FromWorker::Failed { id, error }) => (id, Err(error), true),
            Ok(other) => {
                debug!(?other, "engine worker message ignored");
                continue;
            }
            Err(e) => {
                warn!(error = %e, "engine worker message unreadable");
                continue;
            }
        };
        let route = routes.lock().ok().and_then(|r| r.get(&id).cloned());
        let Some(route) = route else { continue };
        let delivered = route.send(item).await.is_ok();
        if last || !delivered {
            if let Ok(mut r) = routes.lock() {
                r.remove(&id);
            }
        }
        if !delivered {
            // The consumer dropped its generation: the worker stops it.
            let _ = to_worker.try_send(ToWorker::Cancel { id });
        }
    }
    // The output ended: the worker is exiting. Wait briefly for its status, for the message.
    let why = match tokio::time::timeout(Duration::from_secs(2), exited.wait_for(Option::is_some)).await {
        Ok(Ok(why)) => why.clone().unwrap_or_default(),
        _ => "the engine worker stopped answering".to_string(),
    };
    let pending: Vec<Route> = routes.lock().map(|mut r| r.drain().map(|(_, v)| v).collect()).unwrap_or_default();
    for route in pending {
        let _ = route.try_send(Err(EngineError::Inference(why.clone())));
    }
}

impl Engine for WorkerEngine {
    fn model(&self) -> &ModelId {
        &self.id
    }
    fn build_id(&self) -> String {
        self.loaded.build_id.clone()
    }
    fn threads(&self) -> u32 {
        self.loaded.threads
    }
    fn context_size(&self) -> u32 {
        self.loaded.context_size
    }
    fn capacity(&self) -> usize {
        self.loaded.capacity
    }
    fn device(&self) -> DeviceInfo {
        self.loaded.device.clone()
    }
    fn ready(&self) -> bool {
        self.alive()
    }
    fn generate(&self, request: GenerateRequest) -> Result<Generation, EngineError> {
        request.params.validate()?;
        if let Some(why) = self.ended.borrow().clone() {
            return Err(EngineError::Inference(why));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(Generation::CHANNEL);
        if let Ok(mut r) = self.routes.lock() {
            r.insert(id, tx);
        }
        if self.to_worker.try_send(ToWorker::Generate { id, request }).is_err() {
            if let Ok(mut r) = self.routes.lock() {
                r.remove(&id);
            }
            return Err(EngineError::Busy("the engine worker's queue is full".into()));
        }
        Ok(Generation::new(rx))
    }
}
