//! A member of split-model groups (`quiver-node --shard-host --shard-allow PEERID`): it serves
//! its GPUs (or else its CPU) through ggml's RPC servers, one per allowed head, which listen on
//! 127.0.0.1 only, and carries to each the `/quiver/shard/1` streams of its head. Anyone else's
//! stream is dropped before a byte of it is read, and counted.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use quiver_engine::split::rpc;
use quiver_net::{NetClient, PeerId, StreamProtocol};
use quiver_proto::shard::{MAX_SHARD_FRAME_BYTES, MAX_SHARD_MODEL_NAME, SHARD_PROTOCOL};
use quiver_proto::{ShardHello, ShardInfo, read_frame, shard_hello, write_frame};
use serde::Serialize;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use super::tunnel;

/// Time a head has to say what its stream is for.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Streams of allowed heads handled at once (info probes and RPC tunnels).
const MAX_STREAMS: usize = 32;
/// Fills remembered (done, failed or running); beyond this new ones are not started.
const MAX_FILLS: usize = 64;
/// Largest block number a hello may name.
const MAX_BLOCKS: u32 = 100_000;

/// A weight-cache fill: (model sha256, first block, end block).
type WeightsKey = ([u8; 32], u32, u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fill {
    Running,
    Ready,
    /// No local copy with that hash (or it could not be read): the head sends the weights.
    NotHeld,
}

/// Time the RPC server has to start listening.
const SERVER_START: Duration = Duration::from_secs(10);

/// How a member is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardHostConfig {
    /// The heads it serves; nobody else gets through.
    pub allow: Vec<PeerId>,
    /// Where the RPC server caches weights it was sent, by hash.
    pub cache_dir: PathBuf,
    /// Threads its RPC server computes with (0 = the physical cores).
    pub threads: u32,
    /// Where its own models are: a head's model found here with the same sha256 fills the
    /// weight cache from this copy instead of being sent.
    pub models_dir: PathBuf,
}

/// What `quiver status` shows of a member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ShardHostStatus {
    /// Heads on the allow list.
    pub allowed: Vec<String>,
    /// Streams refused (not on the allow list), since start.
    pub refused: u64,
    /// RPC tunnels open now.
    pub tunnels: u64,
    /// Threads of its RPC server.
    pub threads: u32,
    /// The devices it serves: its GPUs, or else its CPU.
    #[serde(default)]
    pub devices: Vec<String>,
}

/// A running member.
pub struct ShardHost {
    allow: HashSet<PeerId>,
    cache_dir: PathBuf,
    models_dir: PathBuf,
    /// Weight-cache fills from local model files, by (model sha256, first block, end block).
    weights: Arc<Mutex<HashMap<WeightsKey, Fill>>>,
    refused: AtomicU64,
    /// Tunnels open now.
    tunnels: AtomicU64,
    /// The port of each allowed head's RPC server.
    rpc_ports: HashMap<PeerId, u16>,
    threads: u32,
    devices: Vec<rpc::ServedDevice>,
}

impl ShardHost {
    /// Starts an RPC server per allowed head (on 127.0.0.1, free ports) and accepts heads' streams.
    pub(crate) async fn start(net: NetClient, cfg: ShardHostConfig) -> Result<Arc<ShardHost>, String> {
        if !rpc::available() {
            return Err("this build has no ggml RPC backend".into());
        }
        std::fs::create_dir_all(&cfg.cache_dir).map_err(|e| format!("{}: {e}", cfg.cache_dir.display()))?;
        let threads = match cfg.threads {
            0 => quiver_engine::host::default_threads(),
            n => n,
        };
        let devices = rpc::served_devices().map_err(|e| e.to_string())?;
        // One RPC server per head (ggml's serves one client at a time): every head on the
        // allow list can load at once, each planning by the memory the others left free.
        let mut rpc_ports = HashMap::new();
        for head in cfg.allow.iter().copied().collect::<HashSet<PeerId>>() {
            rpc_ports.insert(head, start_rpc_server(&cfg.cache_dir, threads).await?);
        }
        let mut incoming = net
            .streams()
            .accept(StreamProtocol::new(SHARD_PROTOCOL))
            .map_err(|e| format!("cannot accept {SHARD_PROTOCOL}: {e}"))?;
        let host = Arc::new(ShardHost {
            allow: cfg.allow.iter().copied().collect(),
            cache_dir: cfg.cache_dir.clone(),
            models_dir: cfg.models_dir.clone(),
            weights: Arc::default(),
            refused: AtomicU64::new(0),
            tunnels: AtomicU64::new(0),
            rpc_ports,
            threads,
            devices,
        });
        info!(
            heads = cfg.allow.len(),
            threads,
            devices = ?host.devices.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
            "serving as a shard host (ggml RPC on 127.0.0.1, one server per head, reached through /quiver/shard/1)"
        );
        let this = Arc::clone(&host);
        tokio::spawn(async move {
            let limit = Arc::new(Semaphore::new(MAX_STREAMS));
            while let Some((peer, stream)) = incoming.next().await {
                if !this.allow.contains(&peer) {
                    this.refused.fetch_add(1, Ordering::Relaxed);
                    debug!(%peer, "shard stream refused: not on the allow list");
                    drop(stream);
                    continue;
                }
                let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
                    debug!(%peer, "shard stream dropped: too many open");
                    continue;
                };
                let this = Arc::clone(&this);
                tokio::spawn(async move {
                    if let Err(e) = this.serve_stream(peer, stream).await {
                        debug!(%peer, error = %e, "shard stream ended");
                    }
                    drop(permit);
                });
            }
        });
        Ok(host)
    }

    async fn serve_stream(&self, head: PeerId, mut stream: quiver_net::Stream) -> Result<(), String> {
        let hello: ShardHello = tokio::time::timeout(HELLO_TIMEOUT, read_frame(&mut stream, MAX_SHARD_FRAME_BYTES))
            .await
            .map_err(|_| "no hello".to_string())?
            .map_err(|e| e.to_string())?;
        match shard_hello::Kind::try_from(hello.kind) {
            Ok(shard_hello::Kind::Info) => {
                let (has_model, cache_ready) = self.weights_for(&hello);
                let (memory_available, memory_total) = self.memory();
                let info = ShardInfo {
                    memory_available,
                    memory_total,
                    devices: self.devices.iter().map(|d| format!("{} ({})", d.name, d.description)).collect(),
                    threads: self.threads,
                    rpc_streams: u32::try_from(self.tunnels.load(Ordering::Relaxed)).unwrap_or(u32::MAX),
                    has_model,
                    cache_ready,
                };
                write_frame(&mut stream, &info).await.map_err(|e| e.to_string())
            }
            Ok(shard_hello::Kind::Rpc) => {
                let port = self.rpc_ports.get(&head).copied().ok_or("no RPC server for this head")?;
                let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| e.to_string())?;
                tunnel::member(tcp, stream, &self.tunnels).await.map_err(|e| e.to_string())
            }
            Err(_) => Err(format!("unknown hello kind {}", hello.kind)),
        }
    }

    /// Whether this member holds the model a hello names, and whether its weight cache holds
    /// the big tensors of the blocks named; starts filling it from the local copy (one fill at
    /// a time) when it does not yet. `(false, false)` for a hello naming no model.
    fn weights_for(&self, hello: &ShardHello) -> (bool, bool) {
        let Ok(sha256) = <[u8; 32]>::try_from(hello.model_sha256.as_slice()) else { return (false, false) };
        let name = hello.model_name.clone();
        if name.len() > MAX_SHARD_MODEL_NAME || quiver_proto::infer::validate_model_name(&name).is_err() {
            return (false, false);
        }
        let blocks = hello.first_block..hello.end_block;
        if blocks.is_empty() || blocks.end > MAX_BLOCKS {
            return (false, false);
        }
        let key = (sha256, blocks.start, blocks.end);
        let Ok(mut fills) = self.weights.lock() else { return (false, false) };
        match fills.get(&key) {
            Some(Fill::Ready) => return (true, true),
            Some(Fill::NotHeld) => return (false, false),
            Some(Fill::Running) => return (true, false),
            None => {}
        }
        if fills.values().any(|f| *f == Fill::Running) || fills.len() >= MAX_FILLS {
            // Another fill runs (or too many were asked for): this head sends the weights.
            return (false, false);
        }
        fills.insert(key, Fill::Running);
        drop(fills);
        let (models_dir, cache_dir, weights) =
            (self.models_dir.clone(), self.cache_dir.clone(), Arc::clone(&self.weights));
        tokio::task::spawn_blocking(move || {
            let outcome = match local_copy(&name, &sha256, &models_dir) {
                Some(path) => match quiver_engine::split::cache::fill_from_gguf(&path, &cache_dir, blocks.clone()) {
                    Ok(f) => {
                        info!(model = %name, ?blocks, written = f.written, present = f.present, bytes = f.bytes,
                            "weight cache filled from the local copy");
                        Fill::Ready
                    }
                    Err(e) => {
                        warn!(model = %name, error = %e, "cannot fill the weight cache from the local copy");
                        Fill::NotHeld
                    }
                },
                None => Fill::NotHeld,
            };
            if let Ok(mut fills) = weights.lock() {
                fills.insert(key, outcome);
            }
        });
        (true, false)
    }

    /// Memory its heads can fill, free and in all: its GPUs' when it serves GPUs, else the
    /// machine's.
    fn memory(&self) -> (u64, u64) {
        if self.devices.iter().all(|d| d.cpu) {
            let host = quiver_engine::host::available_memory().unwrap_or(0);
            return (host, quiver_engine::host::total_memory().unwrap_or(0));
        }
        rpc::served_devices()
            .unwrap_or_default()
            .iter()
            .filter(|d| !d.cpu)
            .fold((0, 0), |(free, total), d| (free + d.free, total + d.total))
    }

    pub fn status(&self) -> ShardHostStatus {
        let mut allowed: Vec<String> = self.allow.iter().map(ToString::to_string).collect();
        allowed.sort();
        ShardHostStatus {
            allowed,
            refused: self.refused.load(Ordering::Relaxed),
            tunnels: self.tunnels.load(Ordering::Relaxed),
            threads: self.threads,
            devices: self.devices.iter().map(|d| format!("{} ({})", d.name, d.description)).collect(),
        }
    }

    /// Streams refused since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// Starts a ggml RPC server on a free port of 127.0.0.1 (on a thread of its own, for the life
/// of the process) and waits until it listens; its port.
async fn start_rpc_server(cache_dir: &std::path::Path, threads: u32) -> Result<u16, String> {
    // A free port: bound and released, then taken by ggml's server (which binds it itself).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port on 127.0.0.1: {e}"))?
        .port();
    let endpoint = format!("127.0.0.1:{port}");
    let (cache, ep) = (cache_dir.to_path_buf(), endpoint.clone());
    std::thread::Builder::new()
        .name("ggml-rpc-server".into())
        .spawn(move || {
            if let Err(e) = rpc::serve_forever(&ep, &cache, threads) {
                warn!(error = %e, "the shard RPC server stopped");
            }
        })
        .map_err(|e| e.to_string())?;
    let deadline = tokio::time::Instant::now() + SERVER_START;
    while tokio::net::TcpStream::connect(&endpoint).await.is_err() {
        if tokio::time::Instant::now() > deadline {
            return Err(format!("the RPC server did not listen on {endpoint}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(port)
}

/// A model file in `models_dir` known as `name` whose sha256 is `sha256` (hashed here when its
/// source does not say).
fn local_copy(name: &str, sha256: &[u8; 32], models_dir: &std::path::Path) -> Option<PathBuf> {
    let local = quiver_engine::models::resolve_local(name, models_dir).ok()?;
    let known = match local.sha256 {
        Some(s) => s,
        None => quiver_engine::models::sha256_file(&local.path, &mut |_, _| {}).ok()?,
    };
    (known == *sha256).then_some(local.path)
}
