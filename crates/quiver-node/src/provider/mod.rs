//! The provider role: serves local engines to the network.
//!
//! Admission is bounded twice: `max_concurrent` jobs run, `queue` more wait; a provider with
//! both full answers `Busy` at once, unless the request's client holds fewer jobs here than the
//! heaviest one, whose newest queued job then gives up its place (`admission.rs`). Requests
//! arrive on `/quiver/infer/1`; job announcements on `quiver/1/infer/<model>` are claimed over
//! `/quiver/claim/1` when a slot is free.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use futures::{AsyncWriteExt, StreamExt};
use quiver_engine::{Engine, EngineError, GenEvent, GenerateRequest};
use quiver_net::{Multiaddr, NetClient, PeerId, StreamProtocol};
use quiver_proto::infer::{
    CLAIM_PROTOCOL, INFER_PROTOCOL, MAX_ANNOUNCEMENT_BYTES, MAX_CLAIM_BYTES, MAX_REQUEST_BYTES, output_hash,
};
use quiver_proto::{
    self as proto, Accepted, Busy, Claim, ClaimAck, InferError, InferRequest, InferResponse, JobAnnouncement,
    ModelInfo, Receipt, TokenChunk, infer_response::Kind, read_frame, write_frame,
};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::admission::{Admission, Queued, StreamBook, Ticket};
use crate::discovery::now_ms;
use crate::metrics::JobOutcome::{Cancelled, Served};
use crate::metrics::NodeMetrics;
use crate::throughput::BusyMeter;
use crate::wire;
use quiver_net::PeerLimiter;

/// How the provider role is set up.
#[derive(Clone)]
pub struct ProviderConfig {
    /// One engine per model served.
    pub engines: Vec<Arc<dyn Engine>>,
    /// Jobs run at once.
    pub max_concurrent: usize,
    /// Jobs waiting for a slot; beyond this a request gets `Busy`.
    pub queue: usize,
    /// Inference requests one peer may send per second, sustained and in a burst; beyond that
    /// they are refused as rate limited.
    pub requests_per_sec: u32,
    pub request_burst: u32,
    /// The head of a split model, whose engine is among `engines`; the node keeps it loaded.
    pub shard_head: Option<Arc<crate::shard::ShardHead>>,
}

impl ProviderConfig {
    /// Serves `engines` with the given admission bounds and the default per-peer rate limit.
    pub fn new(engines: Vec<Arc<dyn Engine>>, max_concurrent: usize, queue: usize) -> Self {
        ProviderConfig {
            engines,
            max_concurrent,
            queue,
            requests_per_sec: REQUESTS_PER_SEC,
            request_burst: REQUEST_BURST,
            shard_head: None,
        }
    }
}

impl std::fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("models", &self.engines.iter().map(|e| e.model().name.clone()).collect::<Vec<_>>())
            .field("max_concurrent", &self.max_concurrent)
            .field("queue", &self.queue)
            .finish()
    }
}

/// Most inference streams being read or served at once (beyond admission, which bounds jobs).
const MAX_OPEN_STREAMS: usize = 64;
/// Streams one peer may hold open beyond the provider's slots and queue places (which a lone
/// client, a gateway, may fill): the rest are refused as busy.
const EXTRA_STREAMS_PER_PEER: usize = 4;
/// Refusals being written at once; beyond this a stream is dropped unanswered.
const MAX_REFUSALS: usize = 64;
/// Time a client has to send its request after opening the stream.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait in the queue before the job is refused.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(300);
const CLAIM_TIMEOUT: Duration = Duration::from_secs(5);
/// A queued job's client hears `Queued` this often, so silence means a fault.
pub(crate) const QUEUED_NOTICE_EVERY: Duration = Duration::from_secs(5);

pub(crate) struct Provider {
    engines: Vec<Arc<dyn Engine>>,
    slots: Arc<Semaphore>,
    max_concurrent: usize,
    /// Who holds the queue's places (and how many jobs each client has here).
    admission: Admission,
    open_streams: Arc<Semaphore>,
    /// Open streams per peer, bounded.
    streams: Arc<StreamBook>,
    /// Refusals being written (busy, rate limited), bounded.
    refusals: Arc<Semaphore>,
    /// Clients' offences seen here (a stream opened and never written, an unreadable request),
    /// for the node to record in its reputation.
    offences: Option<tokio::sync::mpsc::Sender<(PeerId, quiver_reputation::Offence)>>,
    /// Measured generation speed (EWMA), tokens/s × 100.
    speed_centi: AtomicU32,
    /// Measured tokens/s of all jobs together.
    busy: BusyMeter,
    keypair: quiver_net::Keypair,
    net: NetClient,
    metrics: NodeMetrics,
    /// Inference requests per client peer.
    requests: PeerLimiter,
    requests_per_sec: u32,
    /// Job announcements acted on per client.
    announcements: PeerLimiter,
    /// Deliberate misbehaviour (tests only), and the jobs seen so far.
    #[cfg(feature = "adversary")]
    adversary: Option<crate::adversary::Adversary>,
    #[cfg(feature = "adversary")]
    jobs_seen: AtomicU32,
}

/// Sustained inference requests per second one peer may send, and its burst (defaults). A
/// client may be a gateway in front of many users, so this is set above what a CPU provider
/// serves (a short SmolLM2 job takes ~0.2 s per slot); admission bounds the work itself, and
/// the rate only keeps a flood of requests from costing more than its refusals.
pub const REQUESTS_PER_SEC: u32 = 10;
pub const REQUEST_BURST: u32 = 40;

impl Provider {
    pub(crate) fn new(cfg: ProviderConfig, keypair: quiver_net::Keypair, net: NetClient, metrics: NodeMetrics) -> Self {
        let max_concurrent = cfg.max_concurrent.max(1);
        Provider {
            engines: cfg.engines,
            slots: Arc::new(Semaphore::new(max_concurrent)),
            max_concurrent,
            admission: Admission::new(cfg.queue),
            open_streams: Arc::new(Semaphore::new(MAX_OPEN_STREAMS)),
            streams: StreamBook::new(max_concurrent + cfg.queue + EXTRA_STREAMS_PER_PEER),
            refusals: Arc::new(Semaphore::new(MAX_REFUSALS)),
            offences: None,
            speed_centi: AtomicU32::new(0),
            busy: BusyMeter::new(Instant::now()),
            keypair,
            net,
            metrics,
            requests: PeerLimiter::new(cfg.requests_per_sec, cfg.request_burst),
            requests_per_sec: cfg.requests_per_sec,
            announcements: PeerLimiter::new(5, 20),
            #[cfg(feature = "adversary")]
            adversary: None,
            #[cfg(feature = "adversary")]
            jobs_seen: AtomicU32::new(0),
        }
    }

    /// Where clients' offences seen by this provider go (the node records them).
    pub(crate) fn with_offences(
        mut self,
        offences: tokio::sync::mpsc::Sender<(PeerId, quiver_reputation::Offence)>,
    ) -> Self {
        self.offences = Some(offences);
        self
    }

    fn charge(&self, peer: PeerId, offence: quiver_reputation::Offence) {
        if let Some(tx) = &self.offences {
            // Bounded: when the node is behind, the offence is lost, not queued without end.
            let _ = tx.try_send((peer, offence));
        }
    }

    /// Answers `stream` with `refusal` and closes it, in a task of its own (bounded: beyond
    /// `MAX_REFUSALS` being written, the stream is dropped unanswered).
    fn refuse(&self, mut stream: quiver_net::Stream, refusal: InferResponse) {
        let Ok(permit) = self.refusals.clone().try_acquire_owned() else { return };
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(2), write_frame(&mut stream, &refusal)).await;
            let _ = stream.close().await;
            drop(permit);
        });
    }

    fn busy(&self) -> InferResponse {
        self.metrics.job(crate::metrics::JobOutcome::Busy);
        InferResponse { kind: Some(Kind::Busy(Busy { queue_depth: self.queue_depth(), retry_after_ms: 1000 })) }
    }

    #[cfg(feature = "adversary")]
    pub(crate) fn with_adversary(mut self, adversary: Option<crate::adversary::Adversary>) -> Self {
        self.adversary = adversary;
        self
    }

    /// The misbehaviour in force for the job being started, if any (tests only).
    #[cfg(feature = "adversary")]
    fn misbehaviour(&self) -> Option<crate::adversary::Misbehaviour> {
        let a = self.adversary?;
        (self.jobs_seen.fetch_add(1, Ordering::Relaxed) >= a.honest_jobs).then_some(a.mode)
    }

    /// The misbehaviour configured, whether or not its honest start is over (tests only).
    #[cfg(feature = "adversary")]
    pub(crate) fn adversary_mode(&self) -> Option<crate::adversary::Misbehaviour> {
        self.adversary.map(|a| a.mode)
    }

    pub(crate) fn models(&self) -> Vec<ModelInfo> {
        self.engines
            .iter()
            .map(|e| {
                let d = e.device();
                ModelInfo {
                    name: e.model().name.clone(),
                    sha256: e.model().sha256.to_vec(),
                    embeds: e.embeds(),
                    engine_build: e.build_id(),
                    threads: e.threads(),
                    device: d.device,
                    gpu_layers: d.gpu_layers,
                    layers: d.layers,
                    device_memory_total: d.memory_total,
                    device_memory_free: d.memory_free,
                }
            })
            .collect()
    }

    /// Slots free now; none while no engine takes work (a split model reloading).
    pub(crate) fn free_slots(&self) -> u32 {
        if !self.engines.iter().any(|e| e.ready()) {
            return 0;
        }
        self.slots.available_permits() as u32
    }

    pub(crate) fn queue_depth(&self) -> u32 {
        self.admission.queued() as u32
    }

    pub(crate) fn tokens_per_sec(&self) -> f32 {
        self.speed_centi.load(Ordering::Relaxed) as f32 / 100.0
    }

    /// Tokens per second of busy time with all jobs together (0 = not measured yet).
    pub(crate) fn batch_tokens_per_sec(&self) -> f32 {
        self.busy.tokens_per_sec()
    }

    pub(crate) fn max_concurrent(&self) -> usize {
        self.max_concurrent
    }

    /// Announces every model in the DHT (by name and by file hash) and subscribes to their job
    /// announcements.
    pub(crate) async fn announce(&self) -> Result<(), quiver_net::NetError> {
        for e in &self.engines {
            let m = e.model();
            self.net.start_providing(wire::model_name_key(&m.name)).await?;
            self.net.start_providing(wire::model_sha_key(&m.sha256)).await?;
            self.net.subscribe(quiver_proto::infer::infer_topic(&m.name)).await?;
            info!(model = %m.name, sha256 = %m.sha256_hex(), build = %e.build_id(), "serving model");
        }
        Ok(())
    }

    /// Publishes the provider records again, e.g. once the node has DHT peers: records put
    /// before joining reach nobody until the next periodic republication.
    pub(crate) async fn republish(&self) -> Result<(), quiver_net::NetError> {
        for e in &self.engines {
            let m = e.model();
            self.net.start_providing(wire::model_name_key(&m.name)).await?;
            self.net.start_providing(wire::model_sha_key(&m.sha256)).await?;
        }
        Ok(())
    }

    fn engine_for(&self, name: &str, sha256: &[u8]) -> Option<&Arc<dyn Engine>> {
        self.engines.iter().find(|e| e.model().name == name && (sha256.is_empty() || e.model().sha256[..] == *sha256))
    }

    /// Accepts inference streams until the node stops.
    pub(crate) async fn serve(self: Arc<Self>) {
        let mut control = self.net.streams();
        let mut incoming = match control.accept(StreamProtocol::new(INFER_PROTOCOL)) {
            Ok(i) => i,
            Err(e) => {
                warn!(error = %e, "cannot accept inference streams");
                return;
            }
        };
        while let Some((peer, stream)) = incoming.next().await {
            if !self.requests.allow(&peer) {
                // Over its rate: refused at once, without reading the request or touching the
                // engine, so one flooding peer cannot slow the others.
                self.metrics.job(crate::metrics::JobOutcome::RateLimited);
                let message = format!("at most {} requests per second", self.requests_per_sec);
                self.refuse(stream, error_reply("rate_limited", message));
                continue;
            }
            // A peer over its share of stream places, or every place taken: busy, said, not a
            // stream dropped unanswered (which a client must count as a stall).
            let Some(open) = self.streams.open(peer) else {
                debug!(%peer, "too many open inference streams from one peer; refusing");
                self.refuse(stream, self.busy());
                continue;
            };
            let Ok(permit) = self.open_streams.clone().try_acquire_owned() else {
                debug!(%peer, "too many open inference streams; refusing");
                self.refuse(stream, self.busy());
                continue;
            };
            let this = self.clone();
            tokio::spawn(async move {
                this.handle_stream(peer, stream).await;
                drop((open, permit));
            });
        }
    }

    async fn handle_stream(&self, peer: PeerId, mut stream: quiver_net::Stream) {
        let request =
            match tokio::time::timeout(REQUEST_TIMEOUT, read_frame::<_, InferRequest>(&mut stream, MAX_REQUEST_BYTES))
                .await
            {
                Ok(Ok(r)) => r,
                Ok(Err(e @ quiver_proto::FrameError::TooLarge { .. })) => {
                    // Said, so the client knows it was the request, not this provider.
                    debug!(%peer, error = %e, "inference request too large");
                    self.metrics.job(crate::metrics::JobOutcome::Invalid);
                    let message = format!("requests are limited to {MAX_REQUEST_BYTES} bytes");
                    self.refuse(stream, error_reply("request_too_large", message));
                    return;
                }
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "unreadable inference request");
                    if !matches!(e, quiver_proto::FrameError::Closed | quiver_proto::FrameError::Io(_)) {
                        self.charge(peer, quiver_reputation::Offence::GarbageFrame);
                    }
                    return;
                }
                Err(_) => {
                    // It held one of this provider's stream places and never wrote: its fault,
                    // not that of the clients it kept waiting.
                    debug!(%peer, "no inference request within the timeout");
                    self.charge(peer, quiver_reputation::Offence::Timeout);
                    return;
                }
            };
        if let Err(e) = self.run(peer, request, &mut stream).await {
            debug!(%peer, error = %e, "inference stream ended early");
        }
        let _ = stream.close().await;
    }
}

/// An `Error` answer with `code` and `message`.
mod claims;
mod embed;
mod job;

fn error_reply(code: &str, message: String) -> InferResponse {
    InferResponse { kind: Some(Kind::Error(InferError { code: code.into(), message })) }
}

fn error_code(e: &EngineError) -> &'static str {
    match e {
        EngineError::ContextOverflow { .. } => "context_overflow",
        EngineError::InvalidRequest(_) => "invalid_request",
        _ => "engine",
    }
}
