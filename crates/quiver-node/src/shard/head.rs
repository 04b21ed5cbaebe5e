//! The head of a split model (`quiver-provider --model M --shard-peer PEERID ...`): it finds its
//! members, deals the model's layers over itself and them, loads the model in an engine worker
//! process whose RPC connections go through `/quiver/shard/1` tunnels, and serves it like any
//! provider. A member that leaves (its tunnel breaks, the worker dies) or stalls (it stops
//! answering probes) stops the serving at once: jobs in flight fail, so their clients fail
//! over; the head then reloads on the members that remain if the model fits in them, or waits
//! for the missing ones.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use quiver_engine::split::process::WorkerEngine;
use quiver_engine::split::{LayerPlan, SplitTarget, WorkerSpec};
use quiver_engine::{DeviceInfo, Engine, EngineError, GenerateRequest, Generation, ModelId};
use quiver_net::{PeerId, StreamProtocol};
use quiver_proto::shard::SHARD_PROTOCOL;
use quiver_proto::{ShardHello, ShardInfo, shard_hello, write_frame};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::reach::{Found, PROBE_TIMEOUT, info_hello, probe};
use super::tunnel::{self, Traffic};
use crate::Node;

/// Probes of the members while serving, this often.
const PROBE_EVERY: Duration = Duration::from_secs(2);
/// Probes failed in a row after which a member counts as stalled.
const STALLED_AFTER: u32 = 2;
/// Wait between attempts while members are missing or a load failed.
const RETRY_EVERY: Duration = Duration::from_secs(2);
/// How long the head waits for all its members at start before it settles for those that
/// answer (when the model fits in them).
const STARTUP_GRACE: Duration = Duration::from_secs(30);
/// Longest wait for members filling their weight cache from their own copy of the model.
const PREPARE_LIMIT: Duration = Duration::from_secs(1800);
/// Probes in a row a member left out of the loaded model must answer before the head reloads
/// to take it back.
const BACK_AFTER: u32 = 3;
/// Longest wait for the jobs in flight to finish before such a reload.
const DRAIN_LIMIT: Duration = Duration::from_secs(120);
/// Memory a stage needs beyond its share of the weights, as a fraction of that share (KV
/// cache, compute buffers).
const MEMORY_MARGIN: f64 = 0.25;

/// How a head is set up.
#[derive(Debug, Clone)]
pub struct ShardHeadConfig {
    pub path: PathBuf,
    pub id: ModelId,
    /// Repeating blocks of the model (its layers without the output layer).
    pub blocks: u32,
    /// Size of the model file, bytes.
    pub file_bytes: u64,
    pub members: Vec<PeerId>,
    /// Weights of the stages, head first (`--shard-split`); `None`: by free memory.
    pub weights: Option<Vec<f64>>,
    /// CPU threads of the engine worker (resolved: never 0).
    pub threads: u32,
    pub context_size: u32,
    pub slots: u32,
    /// The program run as the engine worker (a QUIVer binary).
    pub worker_program: PathBuf,
    pub load_timeout: Duration,
}

/// What `quiver status` shows of a head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardHeadStatus {
    pub model: String,
    /// `finding members`, `preparing weights`, `loading`, `serving`, `draining` (finishing the
    /// jobs in flight before taking a returned member back), `waiting for members`,
    /// `reloading`.
    pub state: String,
    /// Blocks on the head's own CPU, e.g. `0..10 + output` (the output layer is computed on the
    /// head too); `None` while not loaded.
    pub head_layers: Option<String>,
    pub members: Vec<ShardMemberStatus>,
    /// Times the model was reloaded after a member failed or the worker ended.
    pub reloads: u64,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardMemberStatus {
    pub peer: String,
    /// Whether its latest probe was answered.
    pub up: bool,
    /// Blocks it holds in the loaded model, e.g. `10..20`.
    pub layers: Option<String>,
    /// Round trip of its latest probe.
    pub rtt_ms: Option<f64>,
    pub memory_available: Option<u64>,
    /// The devices it serves (its GPUs, or else its CPU).
    #[serde(default)]
    pub devices: Vec<String>,
    /// RPC traffic through its tunnel since start.
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub round_trips: u64,
    /// Bytes of weights sent to it during the latest load, and of weights it took from its
    /// cache instead (its own copy of the model, or an earlier load).
    #[serde(default)]
    pub weights_sent: u64,
    #[serde(default)]
    pub weights_cached: u64,
    /// How the head found where it is the last time it was not connected to it: `heartbeat`,
    /// `dht record` (its node record in the DHT) or `nowhere`.
    #[serde(default)]
    pub found_by: Option<String>,
}

struct Member {
    peer: PeerId,
    traffic: Arc<Traffic>,
    probe: Mutex<Probe>,
}

#[derive(Default, Clone)]
struct Probe {
    info: Option<ShardInfo>,
    /// How it was found the last time it had to be looked up.
    found: Option<Found>,
    rtt: Option<Duration>,
    failures: u32,
}

#[derive(Default)]
struct State {
    phase: &'static str,
    /// Block ranges of the loaded model: the head's, then each member's by index.
    head_layers: Option<Range<u32>>,
    member_layers: Vec<(usize, Range<u32>)>,
    reloads: u64,
    last_error: Option<String>,
}

/// A split model's head: an [`Engine`] for the provider, and the task that keeps it loaded.
pub struct ShardHead {
    cfg: ShardHeadConfig,
    members: Vec<Member>,
    state: Mutex<State>,
    current: RwLock<Option<Arc<WorkerEngine>>>,
    /// Set while the jobs in flight finish before a planned reload: no new ones are taken.
    draining: AtomicBool,
}

impl ShardHead {
    pub fn new(cfg: ShardHeadConfig) -> Arc<ShardHead> {
        let members = cfg
            .members
            .iter()
            .map(|&peer| Member { peer, traffic: Arc::default(), probe: Mutex::new(Probe::default()) })
            .collect();
        Arc::new(ShardHead {
            cfg,
            members,
            state: Mutex::new(State { phase: "finding members", ..State::default() }),
            current: RwLock::new(None),
            draining: AtomicBool::new(false),
        })
    }

    /// The engine the provider serves.
    pub fn engine(self: &Arc<Self>) -> Arc<dyn Engine> {
        Arc::new(ShardEngine(Arc::clone(self)))
    }

    fn set_phase(&self, phase: &'static str) {
        if let Ok(mut s) = self.state.lock() {
            if s.phase != phase {
                info!(model = %self.cfg.id.name, state = phase, "split model");
            }
            s.phase = phase;
        }
    }

    fn set_error(&self, error: String) {
        warn!(model = %self.cfg.id.name, %error, "split model");
        if let Ok(mut s) = self.state.lock() {
            s.last_error = Some(error);
        }
    }

    fn worker(&self) -> Option<Arc<WorkerEngine>> {
        self.current.read().ok().and_then(|c| c.clone()).filter(|w| w.alive())
    }

    /// The worker, when it takes new jobs (loaded, and not draining before a reload).
    fn serving_worker(&self) -> Option<Arc<WorkerEngine>> {
        self.worker().filter(|_| !self.draining.load(Ordering::Relaxed))
    }

    pub fn status(&self) -> ShardHeadStatus {
        let s = self
            .state
            .lock()
            .map(|s| (s.phase, s.head_layers.clone(), s.member_layers.clone(), s.reloads, s.last_error.clone()));
        let (phase, head, layers, reloads, last_error) = s.unwrap_or(("unknown", None, Vec::new(), 0, None));
        let members = self
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let p = m.probe.lock().map(|p| p.clone()).unwrap_or_default();
                let range = layers.iter().find(|(j, _)| *j == i).map(|(_, r)| format!("{}..{}", r.start, r.end));
                ShardMemberStatus {
                    peer: m.peer.to_string(),
                    up: p.info.is_some() && p.failures == 0,
                    layers: range,
                    rtt_ms: p.rtt.map(|d| d.as_secs_f64() * 1000.0),
                    memory_available: p.info.as_ref().map(|i| i.memory_available),
                    devices: p.info.as_ref().map(|i| i.devices.clone()).unwrap_or_default(),
                    bytes_sent: m.traffic.sent.load(Ordering::Relaxed),
                    bytes_received: m.traffic.received.load(Ordering::Relaxed),
                    round_trips: m.traffic.round_trips.load(Ordering::Relaxed),
                    weights_sent: m.traffic.weights_sent.load(Ordering::Relaxed),
                    weights_cached: m.traffic.weights_cached.load(Ordering::Relaxed),
                    found_by: p.found.map(|f| f.as_str().to_string()),
                }
            })
            .collect();
        ShardHeadStatus {
            model: self.cfg.id.name.clone(),
            state: phase.to_string(),
            head_layers: head.map(|r| format!("{}..{} + output", r.start, r.end)),
            members,
            reloads,
            last_error,
        }
    }

    /// Keeps the model loaded over the members that answer, for as long as the node runs.
    pub(crate) async fn run(self: Arc<Self>, node: Node) {
        let began = Instant::now();
        let all: Vec<usize> = (0..self.members.len()).collect();
        loop {
            self.probe_all(&node, &all).await;
            let up: Vec<bool> = (0..self.members.len()).map(|i| self.is_up(i)).collect();
            let settled = began.elapsed() >= STARTUP_GRACE;
            let Some(chosen) = choose(&up, settled, |present| self.fits(present)) else {
                self.set_phase("waiting for members");
                tokio::time::sleep(RETRY_EVERY).await;
                continue;
            };
            let plan = match self.plan(&chosen) {
                Ok(p) => p,
                Err(e) => {
                    self.set_error(e);
                    self.set_phase("waiting for members");
                    tokio::time::sleep(RETRY_EVERY).await;
                    continue;
                }
            };
            self.prepare_weights(&node, &chosen, &plan).await;
            self.set_phase("loading");
            let mut tunnels = Vec::new();
            let mut endpoints = Vec::new();
            for &i in &chosen {
                match self.open_tunnel(&node, i).await {
                    Ok((endpoint, task)) => {
                        endpoints.push(endpoint);
                        tunnels.push(AbortOnDrop(task));
                    }
                    Err(e) => self.set_error(e),
                }
            }
            if endpoints.len() != chosen.len() {
                tokio::time::sleep(RETRY_EVERY).await;
                continue;
            }
            let spec = WorkerSpec {
                path: self.cfg.path.clone(),
                name: self.cfg.id.name.clone(),
                sha256: self.cfg.id.sha256_hex(),
                threads: self.cfg.threads,
                context_size: self.cfg.context_size,
                slots: self.cfg.slots,
                split: SplitTarget { endpoints, counts: plan.counts.clone() },
            };
            let began = Instant::now();
            // While the worker loads, the members' tunnels offer each weight by hash first.
            for &i in &chosen {
                self.members[i].traffic.begin_load();
            }
            let started =
                WorkerEngine::start(&self.cfg.worker_program, &spec, self.cfg.id.clone(), self.cfg.load_timeout).await;
            for &i in &chosen {
                self.members[i].traffic.end_load();
            }
            let worker = match started {
                Ok(w) => Arc::new(w),
                Err(e) => {
                    self.set_error(format!("loading over {} members failed: {e}", chosen.len()));
                    tokio::time::sleep(RETRY_EVERY).await;
                    continue;
                }
            };
            let ranges = plan.ranges();
            if let Ok(mut s) = self.state.lock() {
                s.head_layers = Some(ranges[0].clone());
                s.member_layers = chosen.iter().copied().zip(ranges[1..].iter().cloned()).collect();
            }
            let weights = |f: fn(&Traffic) -> &std::sync::atomic::AtomicU64| -> u64 {
                chosen.iter().map(|&i| f(&self.members[i].traffic).load(Ordering::Relaxed)).sum()
            };
            info!(model = %self.cfg.id.name, members = chosen.len(), counts = ?plan.counts,
                secs = began.elapsed().as_secs_f64(), weights_sent = weights(|t| &t.weights_sent),
                weights_cached = weights(|t| &t.weights_cached), "split model loaded");
            if let Ok(mut c) = self.current.write() {
                *c = Some(Arc::clone(&worker));
            }
            self.set_phase("serving");
            let why = self.watch(&node, &worker, &chosen).await;
            worker.stop();
            if let Ok(mut c) = self.current.write() {
                *c = None;
            }
            self.draining.store(false, Ordering::Relaxed);
            drop(tunnels);
            if let Ok(mut s) = self.state.lock() {
                s.reloads += 1;
                s.head_layers = None;
                s.member_layers.clear();
            }
            self.set_error(why);
            self.set_phase("reloading");
        }
    }

    /// Serves until the worker ends, a chosen member stops answering, or a member left out
    /// of this load has answered [`BACK_AFTER`] probes in a row (then the jobs in flight
    /// finish first); says why.
    async fn watch(&self, node: &Node, worker: &WorkerEngine, chosen: &[usize]) -> String {
        let mut answering = vec![0u32; self.members.len()];
        loop {
            tokio::select! {
                why = worker.ended() => return why,
                () = tokio::time::sleep(PROBE_EVERY) => {
                    // All members, so that status shows the missing ones coming back.
                    self.probe_all(node, &(0..self.members.len()).collect::<Vec<_>>()).await;
                    if let Some(&i) = chosen.iter().find(|&&i| self.stalled(i)) {
                        return format!("member {} stopped answering", self.members[i].peer);
                    }
                    for (i, streak) in answering.iter_mut().enumerate() {
                        *streak = if self.is_up(i) { streak.saturating_add(1) } else { 0 };
                    }
                    if let Some(i) = returned(chosen, &answering) {
                        info!(model = %self.cfg.id.name, member = %self.members[i].peer,
                            "a member is back: reloading over it once the jobs in flight are done");
                        self.drain(worker).await;
                        return format!("member {} is back", self.members[i].peer);
                    }
                }
            }
        }
    }

    /// Takes no new jobs and waits (up to [`DRAIN_LIMIT`]) for those in flight to finish.
    async fn drain(&self, worker: &WorkerEngine) {
        self.draining.store(true, Ordering::Relaxed);
        self.set_phase("draining");
        let deadline = Instant::now() + DRAIN_LIMIT;
        while worker.alive() && worker.in_flight() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Member `i`'s free memory as its latest answered probe said (0 if none).
    fn member_free(&self, i: usize) -> u64 {
        self.members[i].probe.lock().ok().and_then(|p| p.info.as_ref().map(|i| i.memory_available)).unwrap_or(0)
    }

    fn is_up(&self, i: usize) -> bool {
        self.members[i].probe.lock().is_ok_and(|p| p.info.is_some() && p.failures == 0)
    }

    fn stalled(&self, i: usize) -> bool {
        self.members[i].probe.lock().is_ok_and(|p| p.failures >= STALLED_AFTER)
    }

    /// Whether the model fits in the head and the members `chosen`, by their free memory.
    fn fits(&self, chosen: &[usize]) -> bool {
        let head = quiver_engine::host::available_memory().unwrap_or(0);
        let members: Vec<u64> = chosen.iter().map(|&i| self.member_free(i)).collect();
        fits(self.cfg.file_bytes, head, &members)
    }

    /// The layer plan over the head and the members `chosen`.
    fn plan(&self, chosen: &[usize]) -> Result<LayerPlan, String> {
        let weights: Vec<f64> = match &self.cfg.weights {
            Some(w) => std::iter::once(w[0]).chain(chosen.iter().map(|&i| w[i + 1])).collect(),
            None => {
                let head = quiver_engine::host::available_memory().unwrap_or(0) as f64;
                std::iter::once(head).chain(chosen.iter().map(|&i| self.member_free(i) as f64)).collect()
            }
        };
        let plan = LayerPlan::by_weights(self.cfg.blocks, &weights).map_err(|e| e.to_string())?;
        // Each stage must hold its share.
        let per_block = self.cfg.file_bytes as f64 / f64::from(self.cfg.blocks.max(1));
        for (k, &i) in chosen.iter().enumerate() {
            let share = per_block * f64::from(plan.counts[k + 1]) * (1.0 + MEMORY_MARGIN);
            let free = self.member_free(i);
            if free > 0 && share > free as f64 {
                return Err(format!("member {} has {free} bytes free for a share of {share:.0}", self.members[i].peer));
            }
        }
        Ok(plan)
    }

    /// Tells the members `chosen` which blocks of the model they will hold; those with their own
    /// copy of the model fill their weight cache from it, and the head waits (up to
    /// [`PREPARE_LIMIT`]) until they have, so that those weights are not sent.
    async fn prepare_weights(&self, node: &Node, chosen: &[usize], plan: &LayerPlan) {
        let ranges = plan.ranges();
        let deadline = Instant::now() + PREPARE_LIMIT;
        loop {
            let asks = chosen.iter().enumerate().map(|(k, &i)| {
                let hello = ShardHello {
                    kind: shard_hello::Kind::Info as i32,
                    model_sha256: self.cfg.id.sha256.to_vec(),
                    model_name: self.cfg.id.name.clone(),
                    first_block: ranges[k + 1].start,
                    end_block: ranges[k + 1].end,
                };
                async move { probe(node, self.members[i].peer, hello, &mut None).await }
            });
            let answers = futures::future::join_all(asks).await;
            let filling =
                answers.iter().filter(|a| matches!(a, Ok((info, _)) if info.has_model && !info.cache_ready)).count();
            if filling == 0 || Instant::now() >= deadline {
                // A member whose cache holds its blocks from its own copy is offered every weight
                // by hash, the smallest too: none of its weights is sent.
                let mut ready = 0;
                for (answer, &i) in answers.iter().zip(chosen) {
                    let own_copy = matches!(answer, Ok((info, _)) if info.cache_ready);
                    self.members[i].traffic.offer_all(own_copy);
                    ready += usize::from(own_copy);
                }
                if ready > 0 {
                    info!(model = %self.cfg.id.name, members = ready, "members load their blocks from their own copy of the model");
                }
                return;
            }
            self.set_phase("preparing weights");
            tokio::time::sleep(RETRY_EVERY).await;
        }
    }

    /// Probes the members `which` at once (each: its info and the round trip).
    async fn probe_all(&self, node: &Node, which: &[usize]) {
        let probes = which.iter().map(|&i| async move {
            let mut found = None;
            let result = probe(node, self.members[i].peer, info_hello(), &mut found).await;
            (i, result, found)
        });
        for (i, result, found) in futures::future::join_all(probes).await {
            let Ok(mut p) = self.members[i].probe.lock() else { continue };
            if found.is_some() {
                p.found = found;
            }
            match result {
                Ok((info, rtt)) => {
                    p.info = Some(info);
                    p.rtt = Some(rtt);
                    p.failures = 0;
                }
                Err(e) => {
                    debug!(peer = %self.members[i].peer, error = %e, "shard member probe failed");
                    p.failures = p.failures.saturating_add(1);
                    if p.info.is_none() || p.failures >= STALLED_AFTER {
                        p.rtt = None;
                    }
                }
            }
        }
    }

    /// A local endpoint whose every connection is carried to member `i`'s RPC server.
    async fn open_tunnel(&self, node: &Node, i: usize) -> Result<(String, JoinHandle<()>), String> {
        let listener = TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
        let endpoint = listener.local_addr().map_err(|e| e.to_string())?.to_string();
        let peer = self.members[i].peer;
        let traffic = Arc::clone(&self.members[i].traffic);
        let control = node.net().streams();
        let delay = tunnel::test_delay();
        let task = tokio::spawn(async move {
            let mut pipes: Vec<AbortOnDrop> = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                pipes.retain(|p| !p.0.is_finished());
                let mut control = control.clone();
                let traffic = Arc::clone(&traffic);
                pipes.push(AbortOnDrop(tokio::spawn(async move {
                    let opened = tokio::time::timeout(
                        PROBE_TIMEOUT,
                        control.open_stream(peer, StreamProtocol::new(SHARD_PROTOCOL)),
                    )
                    .await;
                    let mut stream = match opened {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => return warn!(%peer, error = %e, "cannot open a shard tunnel"),
                        Err(_) => return warn!(%peer, "opening a shard tunnel timed out"),
                    };
                    if write_frame(
                        &mut stream,
                        &ShardHello { kind: shard_hello::Kind::Rpc as i32, ..ShardHello::default() },
                    )
                    .await
                    .is_err()
                    {
                        return;
                    }
                    if let Err(e) = tunnel::head(tcp, stream, &traffic, delay).await {
                        debug!(%peer, error = %e, "shard tunnel ended");
                    }
                })));
            }
        });
        Ok((endpoint, task))
    }
}

/// The members to load over, given which answer (`up`): all of them when all answer; once the
/// start-up grace is over (`settled`), those that answer if the model `fits` in them and the
/// head; otherwise `None`, to wait for the missing.
fn choose(up: &[bool], settled: bool, fits: impl Fn(&[usize]) -> bool) -> Option<Vec<usize>> {
    let present: Vec<usize> = (0..up.len()).filter(|&i| up[i]).collect();
    if present.is_empty() {
        return None;
    }
    (present.len() == up.len() || (settled && fits(&present))).then_some(present)
}

/// A member left out of the loaded model (`chosen`) that has answered [`BACK_AFTER`] probes in
/// a row (`answering`, by member), to be taken back.
fn returned(chosen: &[usize], answering: &[u32]) -> Option<usize> {
    (0..answering.len()).find(|i| !chosen.contains(i) && answering[*i] >= BACK_AFTER)
}

/// Whether a model file of `file_bytes` fits in the free memory of the head and `members`,
/// with [`MEMORY_MARGIN`] for the KV cache and compute buffers.
fn fits(file_bytes: u64, head_free: u64, members_free: &[u64]) -> bool {
    let need = file_bytes as f64 * (1.0 + MEMORY_MARGIN);
    let have = head_free as f64 + members_free.iter().map(|&m| m as f64).sum::<f64>();
    have >= need
}

/// A task aborted when this is dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The head seen as an engine: the loaded worker when there is one.
struct ShardEngine(Arc<ShardHead>);

impl Engine for ShardEngine {
    fn model(&self) -> &ModelId {
        &self.0.cfg.id
    }
    fn build_id(&self) -> String {
        quiver_engine::split::build_id()
    }
    fn threads(&self) -> u32 {
        // Resolved when configured, as the worker resolves it: the same before and after loads.
        self.0.cfg.threads
    }
    fn context_size(&self) -> u32 {
        self.0.worker().map_or(self.0.cfg.context_size, |w| w.context_size())
    }
    fn capacity(&self) -> usize {
        self.0.worker().map_or(self.0.cfg.slots.max(1) as usize, |w| w.capacity())
    }
    fn device(&self) -> DeviceInfo {
        self.0.worker().map_or_else(|| DeviceInfo::cpu(self.0.cfg.blocks + 1), |w| w.device())
    }
    fn ready(&self) -> bool {
        self.0.serving_worker().is_some()
    }
    fn generate(&self, request: GenerateRequest) -> Result<Generation, EngineError> {
        match self.0.serving_worker() {
            Some(w) => w.generate(request),
            None => {
                Err(EngineError::Busy("the split model is not loaded now (a member is missing or it reloads)".into()))
            }
        }
    }
}

#[cfg(test)]
#[path = "../tests/shard_head.rs"]
mod tests;
