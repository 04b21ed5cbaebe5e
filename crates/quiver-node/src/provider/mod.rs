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
            .map(|e| ModelInfo { name: e.model().name.clone(), sha256: e.model().sha256.to_vec(), embeds: e.embeds() })
            .collect()
    }

    pub(crate) fn free_slots(&self) -> u32 {
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

    async fn run(
        &self,
        peer: PeerId,
        request: InferRequest,
        stream: &mut quiver_net::Stream,
    ) -> Result<(), quiver_proto::FrameError> {
        let reply = |kind| InferResponse { kind: Some(kind) };
        if let Err(e) = request.validate() {
            self.metrics.job(crate::metrics::JobOutcome::Invalid);
            return write_frame(stream, &error_reply("invalid_request", e.to_string())).await;
        }
        let Some(engine) = self.engine_for(&request.model, &request.model_sha256).cloned() else {
            self.metrics.job(crate::metrics::JobOutcome::Invalid);
            return write_frame(
                stream,
                &error_reply("unknown_model", format!("this provider does not serve {}", request.model)),
            )
            .await;
        };
        // Admission: a free slot, else a place in the queue (perhaps one taken from the client
        // with the most jobs here), else Busy.
        let (_ticket, permit) = match self.slots.clone().try_acquire_owned() {
            Ok(p) => (self.admission.running(peer), p),
            Err(_) => match self.admission.enqueue(peer) {
                Queued::Refused => return self.refuse_busy(stream).await,
                Queued::Place(mut ticket, evicted) => match self.wait_in_queue(stream, &ticket, evicted).await? {
                    Some(p) if ticket.start() => (ticket, p),
                    _ => return self.refuse_busy(stream).await,
                },
            },
        };
        #[cfg(feature = "adversary")]
        let misbehaviour = self.misbehaviour();
        #[cfg(feature = "adversary")]
        {
            use crate::adversary::Misbehaviour;
            match misbehaviour {
                // The caller closes the stream: not a word of an answer.
                Some(Misbehaviour::CloseUnanswered) => return Ok(()),
                Some(Misbehaviour::ClaimNeverServe) => {
                    // Holds the stream open and says nothing.
                    tokio::time::sleep(QUEUE_TIMEOUT).await;
                    return Ok(());
                }
                Some(Misbehaviour::GarbageFrames) => {
                    // A length prefix, then bytes no protobuf decoder accepts.
                    let mut junk = vec![64u8];
                    junk.extend([0xffu8; 64]);
                    stream.write_all(&junk).await?;
                    return Ok(stream.flush().await?);
                }
                _ => {}
            }
        }
        #[allow(unused_mut)]
        let mut model = engine.model().clone();
        #[cfg(feature = "adversary")]
        if misbehaviour == Some(crate::adversary::Misbehaviour::WrongModel) {
            use sha2::Digest;
            model.sha256 = sha2::Sha256::digest(b"a cheaper model than the one advertised").into();
        }
        if let Some(texts) = request.embed.clone() {
            return self.embed(peer, &request, texts, &engine, &model, stream).await;
        }
        let input = request.input.clone().unwrap_or_default();
        let prompt_hash = input.hash();
        let params = request.params.clone().unwrap_or_default();
        #[allow(unused_mut)]
        let mut build = engine.build_id();
        #[cfg(feature = "adversary")]
        if misbehaviour == Some(crate::adversary::Misbehaviour::UniqueBuild) {
            build = format!("{build}+{}", self.net.peer_id());
        }
        let accepted =
            Accepted { model_sha256: model.sha256.to_vec(), engine_build: build.clone(), threads: engine.threads() };
        write_frame(stream, &reply(Kind::Accepted(accepted))).await?;

        let started = Instant::now();
        let _running = self.busy.running();
        let (input, tools) = wire::input_from_wire(input);
        let mut generation =
            match engine.generate(GenerateRequest { input, params: wire::params_from_wire(params.clone()), tools }) {
                Ok(g) => g,
                Err(e) => {
                    self.metrics.job(crate::metrics::JobOutcome::Failed);
                    return write_frame(stream, &error_reply(error_code(&e), e.to_string())).await;
                }
            };
        let mut text = String::new();
        let mut first_token: Option<Duration> = None;
        let mut chunks = 0usize;
        // Log probabilities waiting for their token's chunk, and all of them (for the receipt).
        let mut pending: Vec<quiver_proto::TokenLogprob> = Vec::new();
        let mut logprobs: Vec<quiver_proto::TokenLogprob> = Vec::new();
        loop {
            match generation.next().await {
                Some(Ok(GenEvent::Logprob(lp))) => pending.push(wire::logprob_to_wire(lp)),
                Some(Ok(GenEvent::Token { text: t, tokens })) => {
                    first_token.get_or_insert_with(|| started.elapsed());
                    #[cfg(feature = "adversary")]
                    let t = {
                        use crate::adversary::{self, Misbehaviour};
                        match misbehaviour {
                            Some(Misbehaviour::WrongOutput | Misbehaviour::UniqueBuild) => adversary::falsify(&t),
                            Some(Misbehaviour::RefuseAfterStreaming) if chunks >= adversary::DROP_AFTER_CHUNKS => {
                                let refusal = error_reply("invalid_request", "changed its mind".into());
                                return write_frame(stream, &refusal).await;
                            }
                            Some(Misbehaviour::SlowLoris) => {
                                tokio::time::sleep(adversary::SLOW_LORIS_PAUSE).await;
                                t
                            }
                            Some(Misbehaviour::DropMidStream) if chunks >= adversary::DROP_AFTER_CHUNKS => {
                                return Ok(());
                            }
                            _ => t,
                        }
                    };
                    chunks += 1;
                    text.push_str(&t);
                    self.metrics.tokens_generated.inc_by(u64::from(tokens));
                    self.busy.tokens(Instant::now(), tokens);
                    // A write error means the client went away: dropping `generation` stops it.
                    #[cfg(feature = "adversary")]
                    let tokens = if misbehaviour == Some(crate::adversary::Misbehaviour::InflatedTokens) {
                        crate::adversary::INFLATED_TOKENS
                    } else {
                        tokens
                    };
                    let chunk_logprobs = std::mem::take(&mut pending);
                    logprobs.extend(chunk_logprobs.iter().cloned());
                    let chunk = TokenChunk { text: t, tokens, logprobs: chunk_logprobs, ..Default::default() };
                    write_frame(stream, &reply(Kind::Chunk(chunk))).await.inspect_err(|_| {
                        self.metrics.provider_job(&model.name, peer, Cancelled, first_token, started.elapsed(), 0)
                    })?;
                }
                Some(Ok(GenEvent::Done { finish_reason, usage })) => {
                    let elapsed = started.elapsed();
                    self.record_speed(usage.completion_tokens, elapsed.saturating_sub(first_token.unwrap_or_default()));
                    self.metrics.provider_job(&model.name, peer, Served, first_token, elapsed, usage.completion_tokens);
                    self.metrics.provider_prompt(&usage);
                    let receipt = Receipt {
                        request_id: request.request_id.clone(),
                        provider: self.net.peer_id().to_bytes(),
                        model_sha256: model.sha256.to_vec(),
                        prompt_hash: prompt_hash.to_vec(),
                        output_hash: output_hash(&text).to_vec(),
                        prompt_tokens: usage.prompt_tokens,
                        completion_tokens: usage.completion_tokens,
                        params: Some(params),
                        engine_build: build.clone(),
                        threads: engine.threads(),
                        finish_reason: finish_reason.to_string(),
                        timestamp_ms: now_ms(),
                        cached_tokens: usage.cached_tokens,
                        logprobs_hash: if request.params.as_ref().is_some_and(|p| p.logprobs) {
                            quiver_proto::infer::logprobs_hash(&logprobs).to_vec()
                        } else {
                            Vec::new()
                        },
                    };
                    debug!(%peer, tokens = usage.completion_tokens, chunks, ?elapsed, "job served");
                    drop(permit);
                    #[cfg(feature = "adversary")]
                    let receipt = if misbehaviour == Some(crate::adversary::Misbehaviour::ReceiptMismatch) {
                        Receipt { completion_tokens: receipt.completion_tokens + 1, ..receipt }
                    } else {
                        receipt
                    };
                    #[cfg(feature = "adversary")]
                    if misbehaviour == Some(crate::adversary::Misbehaviour::BadSignature) {
                        let forger = quiver_net::Keypair::generate_ed25519();
                        return write_frame(stream, &reply(Kind::Receipt(receipt.sign(&forger)))).await;
                    }
                    return write_frame(stream, &reply(Kind::Receipt(receipt.sign(&self.keypair)))).await;
                }
                Some(Err(e)) => {
                    self.metrics.job(crate::metrics::JobOutcome::Failed);
                    return write_frame(stream, &error_reply(error_code(&e), e.to_string())).await;
                }
                None => {
                    self.metrics.job(crate::metrics::JobOutcome::Failed);
                    return write_frame(stream, &error_reply("engine", "generation ended without a result".into()))
                        .await;
                }
            }
        }
    }

    /// Waits for a slot, telling the client at once and then every few seconds that its job is
    /// queued. `None` when the wait ends without a slot: too long, or its place was given to
    /// another client's job (`evicted`).
    async fn wait_in_queue(
        &self,
        stream: &mut quiver_net::Stream,
        ticket: &Ticket,
        mut evicted: tokio::sync::oneshot::Receiver<()>,
    ) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, quiver_proto::FrameError> {
        let deadline = tokio::time::Instant::now() + QUEUE_TIMEOUT;
        // One acquire future for the whole wait: dropping it would lose the place in line.
        let acquire = self.slots.clone().acquire_owned();
        tokio::pin!(acquire);
        loop {
            let position = u32::try_from(ticket.position()).unwrap_or(u32::MAX);
            let queued = InferResponse { kind: Some(Kind::Queued(proto::Queued { position })) };
            write_frame(stream, &queued).await?;
            let notice = (tokio::time::Instant::now() + QUEUED_NOTICE_EVERY).min(deadline);
            tokio::select! {
                biased;
                // Evicted (or the book is gone): the place is someone else's now.
                _ = &mut evicted => return Ok(None),
                acquired = tokio::time::timeout_at(notice, &mut acquire) => match acquired {
                    Ok(Ok(p)) => return Ok(Some(p)),
                    Ok(Err(_)) => return Ok(None),
                    Err(_) if tokio::time::Instant::now() >= deadline => return Ok(None),
                    Err(_) => {}
                },
            }
        }
    }

    /// Answers `Busy` (and counts it): the provider has no room for this job.
    async fn refuse_busy(&self, stream: &mut quiver_net::Stream) -> Result<(), quiver_proto::FrameError> {
        write_frame(stream, &self.busy()).await
    }

    fn record_speed(&self, tokens: u32, decode_time: Duration) {
        if tokens < 2 || decode_time.is_zero() {
            return;
        }
        let speed = f64::from(tokens) / decode_time.as_secs_f64();
        let old = f64::from(self.speed_centi.load(Ordering::Relaxed)) / 100.0;
        let new = if old == 0.0 { speed } else { 0.7 * old + 0.3 * speed };
        self.speed_centi.store((new * 100.0).min(f64::from(u32::MAX)) as u32, Ordering::Relaxed);
    }

    /// Handles a job announcement from gossip: returns whether it was well-formed, and claims
    /// the job in the background when a slot is free.
    pub(crate) fn on_announcement(
        self: &Arc<Self>,
        topic: &str,
        data: &[u8],
        author: Option<PeerId>,
    ) -> Result<(), quiver_proto::ProtoError> {
        quiver_proto::check_len(data, MAX_ANNOUNCEMENT_BYTES)?;
        let job: JobAnnouncement = prost::Message::decode(data)?;
        job.validate()?;
        if topic != quiver_proto::infer::infer_topic(&job.model) {
            return Err(quiver_proto::ProtoError::Invalid { field: "model", reason: "not the topic's model" });
        }
        let (Some(client), Some(engine)) = (author, self.engine_for(&job.model, &[]).cloned()) else {
            return Ok(());
        };
        if !self.announcements.allow(&client) {
            return Ok(());
        }
        #[cfg(feature = "adversary")]
        let greedy = self.adversary_mode() == Some(crate::adversary::Misbehaviour::ClaimNeverServe);
        #[cfg(not(feature = "adversary"))]
        let greedy = false;
        if job.deadline_ms < now_ms() || (self.free_slots() == 0 && !greedy) {
            return Ok(());
        }
        let addrs: Vec<Multiaddr> =
            job.client_addrs.iter().filter_map(|a| Multiaddr::try_from(a.clone()).ok()).collect();
        let this = self.clone();
        tokio::spawn(async move {
            #[allow(unused_mut)]
            let mut claim = Claim {
                job_id: job.job_id,
                model_sha256: engine.model().sha256.to_vec(),
                free_slots: this.free_slots(),
                queue_depth: this.queue_depth(),
                tokens_per_sec: this.tokens_per_sec(),
                batch_tokens_per_sec: this.batch_tokens_per_sec(),
            };
            #[cfg(feature = "adversary")]
            if this.adversary.is_some_and(|a| a.lies_in_heartbeats()) {
                claim.free_slots = claim.free_slots.max(8);
                claim.queue_depth = 0;
                claim.tokens_per_sec = crate::adversary::LIED_TOKENS_PER_SEC;
                claim.batch_tokens_per_sec = crate::adversary::LIED_TOKENS_PER_SEC;
            }
            match tokio::time::timeout(CLAIM_TIMEOUT, this.send_claim(client, addrs, claim)).await {
                Ok(Ok(chosen)) => debug!(%client, chosen, "claim answered"),
                Ok(Err(e)) => debug!(%client, error = %e, "claim not delivered"),
                Err(_) => debug!(%client, "claim timed out"),
            }
        });
        Ok(())
    }

    async fn send_claim(&self, client: PeerId, addrs: Vec<Multiaddr>, claim: Claim) -> Result<bool, String> {
        self.net.connect(client, addrs).await.map_err(|e| e.to_string())?;
        let mut control = self.net.streams();
        let mut stream =
            control.open_stream(client, StreamProtocol::new(CLAIM_PROTOCOL)).await.map_err(|e| e.to_string())?;
        write_frame(&mut stream, &claim).await.map_err(|e| e.to_string())?;
        let ack: ClaimAck = read_frame(&mut stream, MAX_CLAIM_BYTES).await.map_err(|e| e.to_string())?;
        let _ = stream.close().await;
        Ok(ack.chosen)
    }
}

/// An `Error` answer with `code` and `message`.
mod embed;

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
