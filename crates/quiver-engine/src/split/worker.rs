//! The engine worker: the child process that holds a split model (see [`super`]).
//!
//! It reads a [`WorkerSpec`] line, loads the model, answers [`FromWorker::Loaded`] (or
//! `LoadFailed`), then serves [`ToWorker`] lines until its stdin closes. Its frames go out on a
//! copy of the stdout it was given; its own stdout is pointed at stderr first, so that nothing
//! printed by C code can corrupt them.

use std::collections::HashMap;
use std::io::Write as _;
use std::os::fd::FromRawFd;
use std::sync::Arc;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, BufReader};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tracing::{info, warn};

use super::{FromWorker, MAX_TO_WORKER_LINE, SplitError, ToWorker, WorkerSpec};
use crate::llama::{LlamaConfig, LlamaEngine};
use crate::{Engine, EngineError, GpuLayers, models};

/// Generations the worker keeps track of at once (the engine bounds its own work well below).
const MAX_GENERATIONS: usize = 1024;
/// Frames waiting to be written to the parent.
const OUT_QUEUE: usize = 256;

/// Runs the worker in this process and returns its exit code; a binary's `main` calls it when
/// [`super::WORKER_ENV`] is set, before anything else.
pub fn main() -> i32 {
    // SAFETY: duplicating and redirecting this process's own standard descriptors.
    let frames = unsafe {
        let fd = libc::dup(1);
        if fd < 0 || libc::dup2(2, 1) < 0 {
            eprintln!("engine worker: cannot set up its output");
            return 2;
        }
        std::fs::File::from_raw_fd(fd)
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("engine worker: {e}");
            return 2;
        }
    };
    let result = runtime.block_on(async move {
        let stdin = BufReader::new(tokio::io::stdin());
        let out = tokio::fs::File::from_std(frames);
        run(stdin, out).await
    });
    match result {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "engine worker: {e}");
            1
        }
    }
}

/// Reads the spec, loads the model and serves it until `input` ends.
pub async fn run<R, W>(mut input: R, out: W) -> Result<(), SplitError>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<FromWorker>(OUT_QUEUE);
    let writer = tokio::spawn(super::write_lines(rx, out));
    let line = read_line(&mut input, MAX_TO_WORKER_LINE)
        .await
        .map_err(|e| SplitError::Worker(e.to_string()))?
        .ok_or_else(|| SplitError::Worker("no spec before the input ended".into()))?;
    let spec: WorkerSpec = serde_json::from_str(&line).map_err(|e| SplitError::Worker(format!("bad spec: {e}")))?;
    let engine = match tokio::task::spawn_blocking(move || load(spec)).await {
        Ok(Ok(engine)) => Arc::new(engine),
        Ok(Err(e)) => return fail_load(tx, writer, e.to_string()).await,
        Err(e) => return fail_load(tx, writer, e.to_string()).await,
    };
    serve_loaded(engine, input, tx).await?;
    let _ = writer.await;
    Ok(())
}

/// Says [`FromWorker::Loaded`] for `engine`, then serves it (see [`serve`]).
async fn serve_loaded<E: Engine, R: AsyncBufRead + Unpin>(
    engine: Arc<E>,
    input: R,
    out: mpsc::Sender<FromWorker>,
) -> Result<(), SplitError> {
    let loaded = FromWorker::Loaded {
        build_id: engine.build_id(),
        threads: engine.threads(),
        context_size: engine.context_size(),
        capacity: engine.capacity(),
        device: engine.device(),
    };
    if out.send(loaded).await.is_err() {
        return Err(SplitError::Worker("the parent stopped reading".into()));
    }
    serve(engine, input, out).await;
    Ok(())
}

/// The worker's side of the protocol for an engine already loaded, over any byte streams:
/// says `Loaded`, then serves requests from `input` until it ends (for tests, and for hosts
/// that load engines their own way).
pub async fn serve_io<E, R, W>(engine: Arc<E>, input: R, output: W) -> Result<(), SplitError>
where
    E: Engine,
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<FromWorker>(OUT_QUEUE);
    let writer = tokio::spawn(super::write_lines(rx, output));
    let served = serve_loaded(engine, input, tx).await;
    let _ = writer.await;
    served
}

async fn fail_load(
    tx: mpsc::Sender<FromWorker>,
    writer: tokio::task::JoinHandle<()>,
    error: String,
) -> Result<(), SplitError> {
    let _ = tx.send(FromWorker::LoadFailed { error: error.clone() }).await;
    drop(tx);
    let _ = writer.await;
    Err(SplitError::Worker(error))
}

fn load(spec: WorkerSpec) -> Result<LlamaEngine, SplitError> {
    let sha256 =
        models::parse_hex32(&spec.sha256).ok_or_else(|| SplitError::Worker("bad sha256 in the spec".into()))?;
    let config = LlamaConfig {
        threads: spec.threads,
        context_size: spec.context_size,
        slots: spec.slots,
        gpu_layers: GpuLayers::Count(0),
        split: Some(spec.split),
    };
    info!(model = %spec.name, "engine worker loading the split model");
    Ok(LlamaEngine::load(&spec.path, &spec.name, Some(sha256), config)?)
}

/// Serves `engine` to the requests read from `input`, writing through `out`, until `input`
/// ends; generations still running are then cancelled.
pub async fn serve<E: Engine, R: AsyncBufRead + Unpin>(engine: Arc<E>, mut input: R, out: mpsc::Sender<FromWorker>) {
    let mut running: HashMap<u64, AbortHandle> = HashMap::new();
    loop {
        let line = match read_line(&mut input, MAX_TO_WORKER_LINE).await {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(e) => {
                warn!(error = %e, "engine worker: unreadable input");
                break;
            }
        };
        let msg: ToWorker = match serde_json::from_str(&line) {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "engine worker: a line it cannot read");
                continue;
            }
        };
        match msg {
            ToWorker::Cancel { id } => {
                if let Some(h) = running.remove(&id) {
                    h.abort();
                }
            }
            ToWorker::Generate { id, request } => {
                running.retain(|_, h| !h.is_finished());
                if running.len() >= MAX_GENERATIONS {
                    let error = EngineError::Busy("too many generations in the worker".into());
                    let _ = out.send(FromWorker::Failed { id, error }).await;
                    continue;
                }
                let mut generation = match engine.generate(request) {
                    Ok(g) => g,
                    Err(error) => {
                        let _ = out.send(FromWorker::Failed { id, error }).await;
                        continue;
                    }
                };
                let out = out.clone();
                let task = tokio::spawn(async move {
                    while let Some(event) = generation.next().await {
                        let msg = match event {
                            Ok(event) => FromWorker::Event { id, event },
                            Err(error) => FromWorker::Failed { id, error },
                        };
                        let last = matches!(
                            msg,
                            FromWorker::Failed { .. } | FromWorker::Event { event: crate::GenEvent::Done { .. }, .. }
                        );
                        if out.send(msg).await.is_err() || last {
                            break;
                        }
                    }
                });
                running.insert(id, task.abort_handle());
            }
        }
    }
    for (_, h) in running {
        h.abort();
    }
}

/// One line of at most `max` bytes (without its newline); `None` at the end of the input.
pub(crate) async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R, max: usize) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return if line.is_empty() {
                Ok(None)
            } else {
                Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "a line without its end"))
            };
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if line.len() + take > max + 1 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a line longer than {max} bytes"),
            ));
        }
        line.extend_from_slice(&buf[..take]);
        r.consume(take);
        if done {
            line.pop();
            return String::from_utf8(line)
                .map(Some)
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "a line that is not UTF-8"));
        }
    }
}
