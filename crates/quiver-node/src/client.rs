//! The client role: find providers for a model, send the request to one, stream the answer,
//! verify the provider's receipt, and fail over to another provider when one fails.
//!
//! The seed's flow comes first: the job is announced on gossip (`quiver/1/infer/<model>`, no
//! prompt), providers with a free slot claim it over `/quiver/claim/1`, and the prompt goes only
//! to the first valid claimant over `/quiver/infer/1`. Without a claim in time, the providers
//! known from DHT provider records and heartbeats are asked directly.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::AsyncWriteExt;
use quiver_engine::{FinishReason, Input, SamplingParams, Usage};
use quiver_net::{Multiaddr, NetError, PeerId, StreamProtocol};
use quiver_proto::FrameError;
use quiver_proto::infer::{
    CLAIM_PROTOCOL, INFER_PROTOCOL, JOB_ID_LEN, MAX_CLAIM_BYTES, MAX_RESPONSE_BYTES, infer_topic, output_hash,
};
use quiver_proto::{
    Claim, ClaimAck, InferRequest, InferResponse, JobAnnouncement, Receipt, infer_response::Kind, read_frame,
    write_frame,
};
use quiver_reputation::{JobStats, MIN_TOKENS_FOR_SPEED, Offence};
use rand::RngCore;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info};

use crate::cache::ResultCache;
use crate::discovery::{hex, now_ms};
use crate::dispatch::with_unseen;
use crate::node::Node;
use crate::wire;

/// A request as the client role takes it.
#[derive(Debug, Clone)]
pub struct InferenceRequest {
    /// User-facing model name, e.g. `smollm2-135m`.
    pub model: String,
    /// Only accept providers serving the model file with this sha256.
    pub model_sha256: Option<[u8; 32]>,
    pub input: Input,
    pub params: SamplingParams,
    /// Announce the job on gossip and wait `claim_window` for claims before asking directly.
    pub broadcast: bool,
    pub claim_window: Duration,
    /// Providers tried at most (the first one included).
    pub max_attempts: usize,
    /// Answer an identical earlier greedy request from the cache.
    pub use_cache: bool,
    /// Re-run a greedy request on a second provider with the same engine build and thread count
    /// and compare the outputs; on a mismatch a third decides and the loser is penalised.
    pub verify: bool,
}

impl InferenceRequest {
    /// A chat request with one user message (the model's chat template is applied).
    pub fn chat(model: &str, prompt: &str, max_tokens: u32) -> Self {
        Self::new(
            model,
            Input::Chat(vec![quiver_engine::ChatMessage { role: "user".into(), content: prompt.into() }]),
            max_tokens,
        )
    }

    /// A raw completion request (the prompt is continued as is).
    pub fn completion(model: &str, prompt: &str, max_tokens: u32) -> Self {
        Self::new(model, Input::Prompt(prompt.into()), max_tokens)
    }

    fn new(model: &str, input: Input, max_tokens: u32) -> Self {
        InferenceRequest {
            model: model.into(),
            model_sha256: None,
            input,
            params: SamplingParams { max_tokens, ..SamplingParams::default() },
            broadcast: true,
            claim_window: Duration::from_secs(2),
            max_attempts: 4,
            use_cache: true,
            verify: false,
        }
    }
}

/// How the serving provider was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Route {
    /// It claimed the job announced on gossip.
    Claim,
    /// It was asked directly (DHT provider record or heartbeat).
    Direct,
}

/// The verified receipt of a result, in a printable form.
#[derive(Debug, Clone, Serialize)]
pub struct ReceiptInfo {
    pub request_id: String,
    pub provider: String,
    pub model_sha256: String,
    pub prompt_hash: String,
    pub output_hash: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub engine_build: String,
    pub threads: u32,
    pub finish_reason: String,
    pub timestamp_ms: u64,
    /// The signed receipt as sent (protobuf `SignedRecord`), hex.
    pub signed: String,
    /// Always true: a result is only returned when its receipt verified.
    pub verified: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct InferenceResult {
    pub text: String,
    pub usage: Usage,
    pub finish_reason: FinishReason,
    pub provider: PeerId,
    pub route: Route,
    /// Providers tried, this one included.
    pub attempts: u32,
    pub receipt: ReceiptInfo,
    pub timing: Timing,
    /// Answered from this node's cache (the receipt is the original provider's).
    pub cached: bool,
    /// Providers whose own run of the same greedy request gave the same output hash (empty
    /// when the request was not verified).
    pub verified_by: Vec<PeerId>,
}

/// Timings measured by the client, from the moment the request was made.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Timing {
    /// Until the first token arrived.
    pub ttft_ms: f64,
    /// Until the verified result.
    pub total_ms: f64,
    /// Completion tokens per second after the first token.
    pub tokens_per_sec: f64,
}

impl Timing {
    /// Timing of `tokens` tokens, the first after `ttft`, all after `total`.
    pub fn measure(ttft: Duration, total: Duration, tokens: u32) -> Timing {
        let decode = total.saturating_sub(ttft).as_secs_f64();
        let tokens_per_sec = if tokens > 1 && decode > 0.0 { f64::from(tokens - 1) / decode } else { 0.0 };
        Timing { ttft_ms: ttft.as_secs_f64() * 1000.0, total_ms: total.as_secs_f64() * 1000.0, tokens_per_sec }
    }
}

#[derive(Debug)]
pub enum StreamEvent {
    /// New text, in order, never repeated across failovers.
    Token(String),
    Done(Box<InferenceResult>),
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum InferError {
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("no provider found for model {model}")]
    NoProvider { model: String },
    #[error("all providers failed for model {model}: {}", failures.join("; "))]
    AllProvidersFailed { model: String, failures: Vec<String> },
    #[error("the provider refused the request ({code}): {message}")]
    Rejected { code: String, message: String },
    #[error("a retry produced different text than was already delivered")]
    Diverged,
    #[error("network: {0}")]
    Net(String),
    #[error("verification failed: other providers of the same engine build produced different text than {provider}")]
    VerificationFailed { provider: String },
}

impl From<NetError> for InferError {
    fn from(e: NetError) -> Self {
        InferError::Net(e.to_string())
    }
}

/// Tokens of a running request; dropping it cancels the request.
pub struct InferenceStream {
    rx: mpsc::Receiver<Result<StreamEvent, InferError>>,
}

impl InferenceStream {
    pub async fn next(&mut self) -> Option<Result<StreamEvent, InferError>> {
        self.rx.recv().await
    }

    /// Waits for the end and returns the whole result.
    pub async fn collect(mut self) -> Result<InferenceResult, InferError> {
        while let Some(ev) = self.next().await {
            if let StreamEvent::Done(r) = ev? {
                return Ok(*r);
            }
        }
        Err(InferError::Net("the request task ended without a result".into()))
    }
}

type ClaimSender = mpsc::Sender<(PeerId, Claim, oneshot::Sender<bool>)>;

/// Jobs waiting for claims.
#[derive(Default)]
pub(crate) struct ClaimBoard {
    jobs: Mutex<HashMap<Vec<u8>, ClaimSender>>,
}

const MAX_PENDING_JOBS: usize = 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Wait for the provider's first answer: an honest provider answers at once (Accepted, Queued
/// or Busy), so silence this long is a fault.
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a refusal is looked for on a stream whose request could not be sent.
const REFUSAL_WAIT: Duration = Duration::from_secs(2);
/// Streams opened again, per attempt, after one was dropped unanswered (see `send_request`).
const MAX_REOPENS: u32 = 3;

/// A random pause before the `n`th reopening, growing with `n`, so a dropped burst does not
/// arrive as a burst again.
fn reopen_pause(n: u32) -> Duration {
    Duration::from_millis((20 + rand::random::<u64>() % 81) * u64::from(n.min(MAX_REOPENS)))
}

/// Why a request could not be sent.
enum Opening {
    /// An outcome to count against the provider (or a refusal, which counts for nothing).
    Failed(AttemptError),
    /// The stream was closed before the request went through, with no word from the provider.
    Dropped(String),
}
/// Longest silence while queued (a queued job hears `Queued` every 5 s).
const QUEUED_SILENCE_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest wait in a provider's queue before trying another.
const MAX_QUEUE_WAIT: Duration = Duration::from_secs(300);
/// Wait for the first token once the job is accepted (prompt processing of a long prompt on a
/// CPU takes a while; hedging covers a provider slower than its usual).
const FIRST_TOKEN_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest silence mid-stream before the provider counts as stalled.
const STALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Slowest stream accepted once the first token has arrived: token k after the first must come
/// within `PROGRESS_SLACK + k / MIN_TOKENS_PER_SEC`, so a provider cannot hold a client with a
/// trickle of tokens (slow-loris).
const MIN_TOKENS_PER_SEC: f64 = 0.5;
const PROGRESS_SLACK: Duration = Duration::from_secs(10);
/// A heartbeat's tokens/s more than this many times the speed measured on its jobs is a lie.
const SPEED_LIE_FACTOR: f64 = 5.0;
/// A heartbeat this recent (seconds) still describes the provider's load.
const FRESH_HEARTBEAT_SECS: f64 = 3.0;
/// Jobs measured before a speed claim is judged.
const SPEED_LIE_MIN_JOBS: u64 = 3;
/// Longest wait for connections to known providers before announcing a job.
const ANNOUNCE_CONNECT_WAIT: Duration = Duration::from_millis(1500);
const DHT_TIMEOUT: Duration = Duration::from_secs(5);
const DHT_TIMEOUT_WHEN_KNOWN: Duration = Duration::from_secs(1);
/// Longest wait for the swarm's peer list (round-trip times) when ranking.
const PEERS_WAIT: Duration = Duration::from_millis(500);
/// Earliest hedge, however fast a provider usually is: a second job costs real work.
const MIN_HEDGE_DELAY: Duration = Duration::from_millis(500);
/// How long claims are gathered after the first one arrives, and how many at most.
const CLAIM_GATHER: Duration = Duration::from_millis(150);
const MAX_CLAIMS_CONSIDERED: usize = 4;
/// Costs this close (relative) count as equal in the power-of-two pick.
const COST_TOLERANCE: f64 = 0.25;
/// Speed assumed for a provider that has not told or shown its own.
const DEFAULT_TOKENS_PER_SEC: f64 = 50.0;
/// Round-trip time assumed for a provider this node is not connected to (no Ping yet).
const UNKNOWN_RTT: Duration = Duration::from_millis(50);
/// Round trips before the first token reaches the client: the request out and the first frame
/// back. A dial to a provider not connected yet is not counted: it would outweigh the whole
/// job for short requests, and every provider is dialed once anyway.
const REQUEST_ROUND_TRIPS: f64 = 1.0;

/// Expected seconds until a job of `max_tokens` is done at a provider: its queue (and a wait for
/// a slot when none is free) times the job's length at the provider's speed, slowed by its CPU
/// load, plus the round trips to reach it. `load` is (free slots, queue depth, CPU load,
/// advertised tokens/s); without it (a DHT record only, no fresh heartbeat) the provider may be
/// gone and counts as busy. `measured` is this node's own measurement of its speed, which wins
/// over the advertised one. `rtt` is the Ping round trip of a connected provider, `None` when not
/// connected (then [`UNKNOWN_RTT`]).
fn expected_completion(
    load: Option<(u32, u32, f32, f32)>,
    measured: Option<f64>,
    rtt: Option<Duration>,
    max_tokens: u32,
) -> f64 {
    let (free, queue, cpu, advertised) = load.unwrap_or((0, 1, 0.0, 0.0));
    let speed = [measured.unwrap_or(0.0), f64::from(advertised)]
        .into_iter()
        .find(|s| s.is_finite() && *s > 0.0)
        .unwrap_or(DEFAULT_TOKENS_PER_SEC);
    let job = f64::from(max_tokens.max(1)) / speed;
    let waiting = f64::from(queue) + if free == 0 { 1.0 } else { 0.0 };
    let cpu = if cpu.is_finite() { f64::from(cpu.clamp(0.0, 4.0)) } else { 0.0 };
    let network = rtt.unwrap_or(UNKNOWN_RTT).as_secs_f64() * REQUEST_ROUND_TRIPS;
    (waiting + 1.0) * job * (1.0 + cpu * 0.25) + network
}

impl ClaimBoard {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, ClaimSender>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What the caller has been given so far, across attempts.
struct Delivery<'a> {
    tx: &'a mpsc::Sender<Result<StreamEvent, InferError>>,
    /// Text delivered so far.
    text: String,
    /// The model file of the first provider that answered: failovers must serve the same one.
    model_sha256: Option<Vec<u8>>,
    /// When the request was made, and how long until its first token.
    started: Instant,
    first_token: Option<Duration>,
}

#[derive(Debug, Clone)]
struct Candidate {
    peer: PeerId,
    addrs: Vec<Multiaddr>,
    route: Route,
    /// From its heartbeat: free slots, queue depth, CPU load, measured tokens/s.
    load: Option<(u32, u32, f32, f32)>,
    /// When `load` was observed (its heartbeat or claim arrived): our attempts started since
    /// are not in it (see `dispatch.rs`).
    load_seen: Option<Instant>,
    /// The model file it advertised for this model (heartbeat or a DHT record by hash): it must
    /// serve that one.
    advertised_sha256: Option<Vec<u8>>,
}

/// Where a candidate stands in the ranking, before cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Established,
    Newcomer,
    /// Negative score: it failed this client lately.
    Failing,
}

/// What re-running a result on other providers showed.
enum Verdict {
    /// These providers produced the same output.
    Agreed(Vec<PeerId>),
    /// Nobody comparable confirmed or refuted it.
    Unconfirmed,
    /// Two others agreed on another output: theirs (first one's result, confirmed by the second).
    Outvoted(Box<InferenceResult>),
}

/// How an attempt (possibly hedged) ended, and which provider it ended with.
struct Outcome {
    candidate: Candidate,
    started: Instant,
    result: Result<InferenceResult, AttemptError>,
}

enum AttemptError {
    /// Try the next provider; the offence goes into its reputation.
    Retry(Offence, String),
    /// Stop: the request itself is at fault, or text already delivered cannot be repaired.
    Fatal(InferError),
    /// The caller dropped the stream.
    Gone,
}

impl Node {
    /// Sends a chat request with one user message to the network and waits for the whole,
    /// verified answer.
    ///
    /// ```no_run
    /// # async fn run(node: quiver_node::Node) -> Result<(), quiver_node::InferError> {
    /// let result = node.send_inference_request("smollm2-135m", "Hello, world!", 100).await?;
    /// println!("{} ({} tokens from {})", result.text, result.usage.completion_tokens, result.provider);
    /// # Ok(()) }
    /// ```
    pub async fn send_inference_request(
        &self,
        model: &str,
        prompt: &str,
        max_tokens: u32,
    ) -> Result<InferenceResult, InferError> {
        self.infer(InferenceRequest::chat(model, prompt, max_tokens)).await
    }

    /// Sends a request and waits for the whole, verified answer.
    pub async fn infer(&self, request: InferenceRequest) -> Result<InferenceResult, InferError> {
        self.infer_stream(request)?.collect().await
    }

    /// Sends a request and streams the answer as it is generated.
    pub fn infer_stream(&self, request: InferenceRequest) -> Result<InferenceStream, InferError> {
        let wire_request = InferRequest {
            request_id: random_id(),
            model: request.model.clone(),
            model_sha256: request.model_sha256.map(|s| s.to_vec()).unwrap_or_default(),
            input: Some(wire::input_to_wire(&request.input)),
            params: Some(wire::params_to_wire(&request.params)),
        };
        wire_request.validate().map_err(|e| InferError::Invalid(e.to_string()))?;
        let (tx, rx) = mpsc::channel(64);
        let node = self.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let outcome = node.run_request(&request, wire_request, &tx).await;
            let label = match &outcome {
                Ok(()) => "ok",
                Err(InferError::NoProvider { .. }) => "no_provider",
                Err(InferError::AllProvidersFailed { .. }) => "all_failed",
                Err(_) => "error",
            };
            node.metrics().requests.get_or_create(&crate::metrics::RequestLabel { outcome: label }).inc();
            if let Err(e) = outcome {
                node.metrics().client_failed(&request.model, label, started.elapsed());
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(InferenceStream { rx })
    }

    async fn run_request(
        &self,
        request: &InferenceRequest,
        wire_request: InferRequest,
        tx: &mpsc::Sender<Result<StreamEvent, InferError>>,
    ) -> Result<(), InferError> {
        let started = Instant::now();
        let cache_key = if request.use_cache { ResultCache::key(&wire_request) } else { None };
        if let Some(mut hit) = cache_key.as_ref().and_then(|k| self.result_cache().get(k)) {
            hit.cached = true;
            hit.attempts = 0;
            hit.timing = Timing::measure(started.elapsed(), started.elapsed(), hit.usage.completion_tokens);
            self.metrics().client_done(&request.model, &hit);
            let _ = tx.send(Ok(StreamEvent::Token(hit.text.clone()))).await;
            let _ = tx.send(Ok(StreamEvent::Done(Box::new(hit)))).await;
            return Ok(());
        }
        let mut queue: VecDeque<Candidate> = VecDeque::new();
        let known = self.provider_candidates(request).await;
        if request.broadcast
            && let Some(claimant) = self.broadcast_and_wait_for_claim(request, &known).await
        {
            queue.push_back(claimant);
        }
        for c in known {
            if !queue.iter().any(|q| q.peer == c.peer) {
                queue.push_back(c);
            }
        }
        if queue.is_empty() {
            return Err(InferError::NoProvider { model: request.model.clone() });
        }
        // A request the caller asked to verify is held back until verified: the caller only
        // gets text another provider reproduced, or the majority's when the first is outvoted.
        let held = request.verify.then(|| {
            let (hold, mut drain) = mpsc::channel(64);
            tokio::spawn(async move { while drain.recv().await.is_some() {} });
            hold
        });
        let mut delivery = Delivery {
            tx: held.as_ref().unwrap_or(tx),
            text: String::new(),
            model_sha256: None,
            started,
            first_token: None,
        };
        let mut failures = Vec::new();
        let mut tried = HashSet::new();
        while let Some(candidate) = queue.pop_front() {
            if tried.len() >= request.max_attempts.max(1) {
                break;
            }
            if !tried.insert(candidate.peer) {
                continue;
            }
            self.with_reputation(|r, now| r.note_routed(candidate.peer, now));
            // Hedging: when the first token is later than this provider's own p95, a second
            // provider starts on the same request and the first to stream wins.
            let hedge = if delivery.text.is_empty() && tried.len() < request.max_attempts {
                // The hedge goes to the next candidate in good standing: never to a peer that
                // failed lately, nor to a newcomer beyond its share when an established provider
                // is the one being hedged.
                self.hedge_delay(candidate.peer).and_then(|d| {
                    let backup = self.with_reputation(|r, now| {
                        queue
                            .iter()
                            .find(|c| {
                                !tried.contains(&c.peer)
                                    && r.score(c.peer, now) > 0.0
                                    && (!r.is_newcomer(c.peer)
                                        || r.is_newcomer(candidate.peer)
                                        || r.newcomer_quota_available(now))
                            })
                            .cloned()
                    });
                    backup.map(|c| (c, d))
                })
            } else {
                None
            };
            let attempts = tried.len() as u32;
            let Outcome { candidate, started: attempt_started, result } = match hedge {
                Some((backup, delay)) => {
                    self.attempt_hedged(candidate, backup, delay, &wire_request, &mut delivery, &mut tried, attempts)
                        .await
                }
                None => {
                    let attempt_started = Instant::now();
                    let result = self.attempt(&candidate, &wire_request, &mut delivery, attempts).await;
                    Outcome { candidate, started: attempt_started, result }
                }
            };
            match result {
                Ok(mut result) => {
                    result.timing = Timing::measure(
                        delivery.first_token.unwrap_or_default(),
                        started.elapsed(),
                        result.usage.completion_tokens,
                    );
                    info!(provider = %result.provider, route = ?result.route, tokens = result.usage.completion_tokens, "request served");
                    let measured = result.timing.tokens_per_sec;
                    let stats = JobStats {
                        latency: attempt_started.elapsed(),
                        ttft: delivery.first_token.map(|t| t.saturating_sub(attempt_started.duration_since(started))),
                        tokens: u64::from(result.usage.completion_tokens),
                        // Short answers say little about speed.
                        tokens_per_sec: (u64::from(result.usage.completion_tokens) >= MIN_TOKENS_FOR_SPEED
                            && measured > 0.0)
                            .then_some(measured),
                    };
                    self.with_reputation(|r, now| r.record_success(result.provider, stats, now));
                    self.check_speed_claim(result.provider).await;
                    let greedy = request.params.temperature == 0.0;
                    if greedy && (request.verify || rand::random::<f64>() < self.verify_rate()) {
                        let others: Vec<Candidate> = queue.drain(..).filter(|c| !tried.contains(&c.peer)).collect();
                        match self.cross_check(&result, others, &wire_request).await {
                            Verdict::Agreed(by) => result.verified_by = by,
                            Verdict::Unconfirmed => {}
                            Verdict::Outvoted(majority) if held.is_some() => {
                                let timing = result.timing;
                                result = *majority;
                                result.attempts = attempts + 1;
                                result.timing = timing;
                            }
                            Verdict::Outvoted(_) => {
                                // Sampled verification of text the caller already has.
                                return Err(InferError::VerificationFailed { provider: result.provider.to_string() });
                            }
                        }
                    }
                    if held.is_some() && tx.send(Ok(StreamEvent::Token(result.text.clone()))).await.is_err() {
                        return Ok(());
                    }
                    if let Some(key) = cache_key {
                        self.result_cache().put(key, result.clone());
                    }
                    self.metrics().client_done(&request.model, &result);
                    let _ = tx.send(Ok(StreamEvent::Done(Box::new(result)))).await;
                    return Ok(());
                }
                Err(AttemptError::Retry(offence, reason)) => {
                    self.attempt_failed(&candidate, offence, &reason).await;
                    failures.push(format!("{}: {reason}", candidate.peer));
                }
                Err(AttemptError::Fatal(e)) => return Err(e),
                Err(AttemptError::Gone) => return Ok(()),
            }
        }
        Err(InferError::AllProvidersFailed { model: request.model.clone(), failures })
    }

    /// Records a failed attempt in the provider's reputation.
    async fn attempt_failed(&self, candidate: &Candidate, offence: Offence, reason: &str) {
        debug!(provider = %candidate.peer, %reason, "provider failed; trying the next");
        self.record_offence(candidate.peer, offence, true).await;
        if candidate.route == Route::Claim && offence != Offence::Busy {
            // It claimed the job and then did not serve it.
            self.record_offence(candidate.peer, Offence::ClaimNotServed, false).await;
        }
    }

    /// When to start a second provider if `peer` has not streamed its first token: its own
    /// p95 time to first token, once known.
    fn hedge_delay(&self, peer: PeerId) -> Option<Duration> {
        let p95 = self.with_reputation(|r, now| r.snapshot(peer, now).and_then(|v| v.ttft_p95_ms))?;
        Some(Duration::from_secs_f64(p95 / 1000.0).clamp(MIN_HEDGE_DELAY, FIRST_FRAME_TIMEOUT))
    }

    /// Runs `primary`, and `backup` too if no token came from `primary` within `delay`. The
    /// first to stream a token wins. A losing backup is cancelled at once; a losing primary runs
    /// on unheard until its first token (then it is cancelled: late, not at fault) or until the
    /// backup has served the whole request (then it is penalised as timed out). One that fails
    /// before streaming leaves the field to the other.
    #[allow(clippy::too_many_arguments)]
    async fn attempt_hedged(
        &self,
        primary: Candidate,
        backup: Candidate,
        delay: Duration,
        request: &InferRequest,
        delivery: &mut Delivery<'_>,
        tried: &mut HashSet<PeerId>,
        attempts: u32,
    ) -> Outcome {
        #[derive(Clone, Copy, PartialEq, Eq)]
        enum Side {
            Primary,
            Backup,
        }
        let (tx_a, mut rx_a) = mpsc::channel(64);
        let (tx_b, mut rx_b) = mpsc::channel(64);
        let (started, sha) = (delivery.started, delivery.model_sha256.clone());
        // Each side streams into its own channel; only the leader's tokens reach the caller.
        let run = |candidate: &Candidate, tx, attempts| {
            let candidate = candidate.clone();
            let sha = sha.clone();
            async move {
                let mut d = Delivery { tx, text: String::new(), model_sha256: sha, started, first_token: None };
                let result = self.attempt(&candidate, request, &mut d, attempts).await;
                (result, d.model_sha256)
            }
        };
        let a_started = Instant::now();
        let mut b_started = a_started;
        let mut fa = Some(Box::pin(run(&primary, &tx_a, attempts)));
        let mut fb = None;
        let hedge_timer = tokio::time::sleep(delay);
        tokio::pin!(hedge_timer);
        let mut hedged = false;
        let mut leader: Option<Side> = None;
        let gone = |candidate: Candidate, started| Outcome { candidate, started, result: Err(AttemptError::Gone) };
        loop {
            if fa.is_none() && fb.is_none() {
                return gone(primary, a_started);
            }
            tokio::select! {
                Some(ev) = rx_a.recv(), if leader != Some(Side::Backup) || fa.is_some() => {
                    if leader == Some(Side::Backup) {
                        // Outrun, but it did stream: late, not at fault. Its text goes nowhere.
                        fa = None;
                        continue;
                    }
                    leader = Some(Side::Primary);
                    fb = None;
                    if !forward(delivery, ev).await {
                        return gone(primary, a_started);
                    }
                }
                Some(ev) = rx_b.recv(), if leader != Some(Side::Primary) => {
                    if leader.is_none() {
                        debug!(late = %primary.peer, hedge = %backup.peer, "the hedge streamed first");
                    }
                    leader = Some(Side::Backup);
                    if !forward(delivery, ev).await {
                        return gone(backup, b_started);
                    }
                }
                () = &mut hedge_timer, if !hedged && leader.is_none() => {
                    hedged = true;
                    if tried.insert(backup.peer) {
                        info!(slow = %primary.peer, hedge = %backup.peer, ?delay, "first token late; hedging");
                        self.with_reputation(|r, now| r.note_routed(backup.peer, now));
                        b_started = Instant::now();
                        fb = Some(Box::pin(run(&backup, &tx_b, attempts + 1)));
                    }
                }
                Some((result, model)) = futures::future::OptionFuture::from(fa.as_mut()), if fa.is_some() => {
                    fa = None;
                    while let Ok(ev) = rx_a.try_recv() {
                        leader = Some(Side::Primary);
                        if !forward(delivery, ev).await {
                            return gone(primary, a_started);
                        }
                    }
                    match result {
                        // Outrun by the hedge: only a real failure counts against it.
                        result if leader == Some(Side::Backup) => {
                            if let Err(AttemptError::Retry(offence, reason)) = result {
                                self.attempt_failed(&primary, offence, &reason).await;
                            }
                        }
                        Err(AttemptError::Retry(offence, reason)) if leader.is_none() && fb.is_some() => {
                            self.attempt_failed(&primary, offence, &reason).await;
                        }
                        result => {
                            delivery.model_sha256 = delivery.model_sha256.take().or(model);
                            return Outcome { candidate: primary, started: a_started, result };
                        }
                    }
                }
                Some((result, model)) = futures::future::OptionFuture::from(fb.as_mut()), if fb.is_some() => {
                    fb = None;
                    while let Ok(ev) = rx_b.try_recv() {
                        leader = Some(Side::Backup);
                        if !forward(delivery, ev).await {
                            return gone(backup, b_started);
                        }
                    }
                    match result {
                        Err(AttemptError::Retry(offence, reason)) if leader.is_none() && fa.is_some() => {
                            self.attempt_failed(&backup, offence, &reason).await;
                        }
                        result => {
                            if leader == Some(Side::Backup) && fa.is_some() {
                                // A whole job elsewhere and still no first token: a fault.
                                info!(late = %primary.peer, "no first token while the hedge served the whole request");
                                self.record_offence(primary.peer, Offence::Timeout, false).await;
                            }
                            delivery.model_sha256 = delivery.model_sha256.take().or(model);
                            return Outcome { candidate: backup, started: b_started, result };
                        }
                    }
                }
            }
        }
    }

    /// Penalises a provider whose heartbeats claim far more speed than its jobs show: the claim
    /// would draw traffic it cannot serve.
    async fn check_speed_claim(&self, peer: PeerId) {
        let Some(claimed) = self.known_node(&peer).map(|n| f64::from(n.tokens_per_sec)) else { return };
        let measured = self.with_reputation(|r, now| {
            r.snapshot(peer, now).filter(|v| v.successes >= SPEED_LIE_MIN_JOBS).and_then(|v| v.tokens_per_sec)
        });
        if let Some(measured) = measured
            && claimed > SPEED_LIE_FACTOR * measured + 1.0
        {
            info!(%peer, claimed, measured, "heartbeat claims a speed its jobs do not show");
            self.record_offence(peer, Offence::HeartbeatLie, false).await;
        }
    }

    /// Providers of the model known from heartbeats and from DHT provider records, best first.
    async fn provider_candidates(&self, request: &InferenceRequest) -> Vec<Candidate> {
        let me = self.peer_id();
        let sha = request.model_sha256.map(|s| hex(&s));
        let nodes: Vec<_> = self
            .known_nodes()
            .into_iter()
            .filter(|n| n.peer_id != me)
            .filter(|n| n.models.iter().any(|m| m.name == request.model && sha.as_ref().is_none_or(|s| *s == m.sha256)))
            .collect();
        let mut out: Vec<Candidate> = nodes
            .into_iter()
            .map(|n| Candidate {
                advertised_sha256: advertised_sha(&n, &request.model),
                load_seen: Some(n.heard_at()),
                peer: n.peer_id,
                addrs: n.listen_addrs,
                route: Route::Direct,
                load: Some((n.free_slots, n.queue_depth, n.cpu_load, n.tokens_per_sec)),
            })
            .collect();
        let key = match &request.model_sha256 {
            Some(s) => wire::model_sha_key(s),
            None => wire::model_name_key(&request.model),
        };
        // With providers already known from heartbeats the DHT only adds to them: a lookup held
        // up by departed peers must not delay the request long.
        let dht_wait = if out.is_empty() { DHT_TIMEOUT } else { DHT_TIMEOUT_WHEN_KNOWN };
        if let Ok(Ok(found)) = tokio::time::timeout(dht_wait, self.net().get_providers(key)).await {
            for (peer, addrs) in found {
                if peer != me && !out.iter().any(|c| c.peer == peer) {
                    let advertised_sha256 = request.model_sha256.map(|s| s.to_vec());
                    out.push(Candidate {
                        peer,
                        addrs,
                        route: Route::Direct,
                        load: None,
                        load_seen: None,
                        advertised_sha256,
                    });
                }
            }
        }
        self.rank(out, request.params.max_tokens).await
    }

    /// Announces the job on gossip and returns the first provider that claims it in time.
    async fn broadcast_and_wait_for_claim(&self, request: &InferenceRequest, known: &[Candidate]) -> Option<Candidate> {
        // Gossip reaches providers through peers subscribed to the model's topic: connect to
        // the providers we know of so the announcement has a first hop.
        let connects = known
            .iter()
            .take(8)
            .map(|c| tokio::time::timeout(CONNECT_TIMEOUT, self.net().connect(c.peer, c.addrs.clone())));
        // Bounded: a dead provider in the list must not hold the announcement back.
        let _ = tokio::time::timeout(ANNOUNCE_CONNECT_WAIT, futures::future::join_all(connects)).await;

        let job_id = random_id();
        let (claims_tx, mut claims_rx) = mpsc::channel(16);
        {
            let mut jobs = self.claim_board().lock();
            if jobs.len() >= MAX_PENDING_JOBS {
                return None;
            }
            jobs.insert(job_id.clone(), claims_tx);
        }
        let announcement = JobAnnouncement {
            job_id: job_id.clone(),
            model: request.model.clone(),
            max_tokens: request.params.max_tokens,
            deadline_ms: now_ms() + request.claim_window.as_millis() as u64,
            client_addrs: self.dialable_addrs().iter().map(|a| a.to_vec()).collect(),
        };
        let topic = infer_topic(&request.model);
        let data = prost::Message::encode_to_vec(&announcement);
        let claimed = tokio::time::timeout(request.claim_window, async {
            // Subscriptions of freshly connected peers arrive within moments; retry briefly.
            for _ in 0..10 {
                match self.net().publish(topic.clone(), data.clone()).await {
                    Ok(()) => break,
                    Err(e) => {
                        debug!(error = %e, "job announcement not published yet");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            // Newcomers' claims count only while they are within their capped share of this
            // client's jobs, unless no established provider is known: earning trust takes
            // served work, not fast claiming.
            let established_known = self.with_reputation(|r, _| known.iter().any(|c| !r.is_newcomer(c.peer)));
            let acceptable = |peer: PeerId, claim: &Claim| {
                // A peer with a negative score (it failed us lately) does not get jobs by
                // claiming fast; it stays reachable as a last resort among the known providers.
                self.with_reputation(|r, now| {
                    r.is_banned(peer, now).is_none()
                        && r.score(peer, now) > 0.0
                        && (!r.is_newcomer(peer) || !established_known || r.newcomer_quota_available(now))
                }) && request.model_sha256.is_none_or(|s| s[..] == claim.model_sha256[..])
            };
            let mut claims = Vec::new();
            while let Some((peer, claim, ack)) = claims_rx.recv().await {
                if acceptable(peer, &claim) {
                    claims.push((peer, claim, ack, Instant::now()));
                    break;
                }
                let _ = ack.send(false);
            }
            // The first claim opens a short gathering window: claims carry each provider's
            // current load, so the choice among them is load-aware instead of a race.
            let _ = tokio::time::timeout(CLAIM_GATHER, async {
                while claims.len() < MAX_CLAIMS_CONSIDERED {
                    let Some((peer, claim, ack)) = claims_rx.recv().await else { break };
                    if acceptable(peer, &claim) {
                        claims.push((peer, claim, ack, Instant::now()));
                    } else {
                        let _ = ack.send(false);
                    }
                }
            })
            .await;
            claims
        })
        .await
        .unwrap_or_default();
        self.claim_board().lock().remove(&job_id);
        let candidates: Vec<Candidate> = claimed
            .iter()
            .map(|(peer, claim, _, arrived)| {
                let known = known.iter().find(|c| c.peer == *peer);
                Candidate {
                    peer: *peer,
                    addrs: known.map(|c| c.addrs.clone()).unwrap_or_default(),
                    route: Route::Claim,
                    load: Some((claim.free_slots, claim.queue_depth, 0.0, claim.tokens_per_sec)),
                    load_seen: Some(*arrived),
                    // What it claimed with, unless it advertised something else before.
                    advertised_sha256: Some(
                        known.and_then(|c| c.advertised_sha256.clone()).unwrap_or_else(|| claim.model_sha256.clone()),
                    ),
                }
            })
            .collect();
        let chosen = self.rank(candidates, request.params.max_tokens).await.into_iter().next();
        for (peer, _, ack, _) in claimed {
            let _ = ack.send(chosen.as_ref().is_some_and(|c| c.peer == peer));
        }
        if let Some(c) = &chosen {
            debug!(peer = %c.peer, "job claimed");
        }
        chosen
    }

    /// Serves `/quiver/claim/1`: hands each valid claim to the job waiting for it.
    pub(crate) async fn accept_claims(self) {
        let mut control = self.net().streams();
        let Ok(mut incoming) = control.accept(StreamProtocol::new(CLAIM_PROTOCOL)) else {
            return;
        };
        let open = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
        let limiter = quiver_net::PeerLimiter::new(5, 20);
        while let Some((peer, mut stream)) = futures::StreamExt::next(&mut incoming).await {
            if !limiter.allow(&peer) {
                continue;
            }
            let Ok(permit) = open.clone().try_acquire_owned() else { continue };
            let node = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let read =
                    tokio::time::timeout(Duration::from_secs(5), read_frame::<_, Claim>(&mut stream, MAX_CLAIM_BYTES))
                        .await;
                let Ok(Ok(claim)) = read else { return };
                if claim.validate().is_err() {
                    debug!(%peer, "invalid claim");
                    return;
                }
                let waiting = node.claim_board().lock().get(&claim.job_id).cloned();
                let chosen = match waiting {
                    Some(tx) => {
                        let (ack_tx, ack_rx) = oneshot::channel();
                        if tx.try_send((peer, claim, ack_tx)).is_ok() {
                            tokio::time::timeout(Duration::from_secs(5), ack_rx)
                                .await
                                .ok()
                                .and_then(Result::ok)
                                .unwrap_or(false)
                        } else {
                            false
                        }
                    }
                    None => false,
                };
                let _ = write_frame(&mut stream, &ClaimAck { chosen }).await;
                let _ = stream.close().await;
            });
        }
    }

    /// Opens an inference stream to `peer` and sends `request`. A stream dropped unanswered is
    /// opened again after a short random pause, `MAX_REOPENS` times at most per attempt
    /// (`reopens` counts them): libp2p-stream hands a provider one new inbound stream at a time
    /// and drops any that arrives while the previous one waits to be taken, so a burst of
    /// requests from one client loses some of them on arrival, through no fault of the provider.
    async fn send_request(
        &self,
        peer: PeerId,
        request: &InferRequest,
        reopens: &mut u32,
    ) -> Result<quiver_net::Stream, AttemptError> {
        loop {
            if *reopens > 0 {
                tokio::time::sleep(reopen_pause(*reopens)).await;
            }
            match self.open_request(peer, request).await {
                Ok(stream) => return Ok(stream),
                Err(Opening::Dropped(why)) if *reopens < MAX_REOPENS => {
                    debug!(%peer, %why, "inference stream dropped unanswered; opening another");
                    *reopens += 1;
                }
                Err(Opening::Dropped(why)) => return Err(AttemptError::Retry(Offence::Stall, why)),
                Err(Opening::Failed(e)) => return Err(e),
            }
        }
    }

    /// One try of [`Self::send_request`].
    async fn open_request(&self, peer: PeerId, request: &InferRequest) -> Result<quiver_net::Stream, Opening> {
        let retry = |offence: Offence, what: String| Opening::Failed(AttemptError::Retry(offence, what));
        let opened = tokio::time::timeout(
            OPEN_TIMEOUT,
            self.net().streams().open_stream(peer, StreamProtocol::new(INFER_PROTOCOL)),
        )
        .await;
        let mut stream = match opened {
            Ok(Ok(s)) => s,
            // It does not speak the protocol it was chosen for.
            Ok(Err(e @ quiver_net::OpenStreamError::UnsupportedProtocol(_))) => {
                return Err(retry(Offence::ProtocolViolation, format!("cannot open stream: {e}")));
            }
            // The connection broke (or was closed) while the stream was negotiated.
            Ok(Err(e)) => return Err(retry(Offence::Stall, format!("cannot open stream: {e}"))),
            Err(_) => return Err(retry(Offence::Timeout, "opening the stream timed out".into())),
        };
        if let Err(e) = write_frame(&mut stream, request).await {
            // A provider over its limits refuses before reading the request and closes the
            // stream; over QUIC that fails this write. Its refusal is load, not a stall: read it.
            let refusal =
                tokio::time::timeout(REFUSAL_WAIT, read_frame::<_, InferResponse>(&mut stream, MAX_RESPONSE_BYTES))
                    .await;
            return Err(match refusal.ok().and_then(Result::ok).and_then(|f| f.kind) {
                Some(Kind::Error(refused)) if refused.code == "rate_limited" => {
                    retry(Offence::Busy, "rate limited".into())
                }
                Some(Kind::Busy(_)) => retry(Offence::Busy, "busy".into()),
                _ => Opening::Dropped(format!("sending the request: {e}")),
            });
        }
        Ok(stream)
    }

    async fn attempt(
        &self,
        candidate: &Candidate,
        request: &InferRequest,
        delivery: &mut Delivery<'_>,
        attempts: u32,
    ) -> Result<InferenceResult, AttemptError> {
        let peer = candidate.peer;
        // Booked before the first await: a request of the same burst ranked next sees it.
        let _in_flight = self.dispatched().start(peer);
        let retry = |offence: Offence, what: &str| AttemptError::Retry(offence, what.to_owned());
        match tokio::time::timeout(CONNECT_TIMEOUT, self.net().connect(peer, candidate.addrs.clone())).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(AttemptError::Retry(Offence::Timeout, format!("unreachable: {e}"))),
            Err(_) => return Err(retry(Offence::Timeout, "connect timed out")),
        }
        let mut reopens = 0;
        let mut stream = self.send_request(peer, request, &mut reopens).await?;

        let mut accepted = None;
        let mut queued_since: Option<Instant> = None;
        let mut first_chunk_at: Option<Instant> = None;
        let mut text = String::new();
        let mut tokens: u32 = 0;
        loop {
            let wait = match (&accepted, queued_since, first_chunk_at) {
                (None, None, _) => FIRST_FRAME_TIMEOUT,
                (None, Some(since), _) => QUEUED_SILENCE_TIMEOUT.min(MAX_QUEUE_WAIT.saturating_sub(since.elapsed())),
                (Some(_), _, None) => FIRST_TOKEN_TIMEOUT,
                (Some(_), _, Some(first)) => progress_wait(first, tokens),
            };
            let frame =
                match tokio::time::timeout(wait, read_frame::<_, InferResponse>(&mut stream, MAX_RESPONSE_BYTES)).await
                {
                    Ok(Ok(f)) => f,
                    Ok(Err(FrameError::Closed | FrameError::Io(_)))
                        if accepted.is_none() && queued_since.is_none() && reopens < MAX_REOPENS =>
                    {
                        // Closed before a word: dropped on arrival, most likely (see `send_request`).
                        reopens += 1;
                        stream = self.send_request(peer, request, &mut reopens).await?;
                        continue;
                    }
                    Ok(Err(e)) => {
                        let offence = match e {
                            FrameError::TooLarge { .. } | FrameError::BadLength | FrameError::Decode(_) => {
                                Offence::GarbageFrame
                            }
                            FrameError::Closed | FrameError::Io(_) => Offence::Stall,
                        };
                        return Err(AttemptError::Retry(offence, format!("stream failed after {tokens} tokens: {e}")));
                    }
                    Err(_) => {
                        return Err(match (&accepted, queued_since) {
                            (None, None) => retry(Offence::Timeout, "no answer"),
                            // Queued too long is load, not a fault; a silent queue is a stall.
                            (None, Some(since)) if since.elapsed() >= MAX_QUEUE_WAIT => {
                                retry(Offence::Busy, "queued too long")
                            }
                            _ => AttemptError::Retry(
                                Offence::Stall,
                                format!("stalled or too slow after {tokens} tokens"),
                            ),
                        });
                    }
                };
            match frame.kind {
                Some(Kind::Accepted(a)) if accepted.is_none() => {
                    if a.model_sha256.len() != 32
                        || request.model_sha256.as_slice() != a.model_sha256.as_slice()
                            && !request.model_sha256.is_empty()
                        || candidate.advertised_sha256.as_ref().is_some_and(|s| *s != a.model_sha256)
                    {
                        return Err(retry(Offence::WrongModel, "serves another model file than it advertised"));
                    }
                    match &delivery.model_sha256 {
                        // Not an offence: it serves a model of that name, just not the one whose
                        // text the caller already has.
                        Some(first) if *first != a.model_sha256 => {
                            return Err(retry(Offence::Busy, "serves another file than the first provider"));
                        }
                        Some(_) => {}
                        None => delivery.model_sha256 = Some(a.model_sha256.clone()),
                    }
                    accepted = Some(a);
                }
                Some(Kind::Queued(_)) if accepted.is_none() => {
                    queued_since.get_or_insert_with(Instant::now);
                }
                Some(Kind::Busy(_)) => {
                    // Busy means every slot and the whole queue are taken: a heartbeat from
                    // moments ago that showed several free slots and an empty queue was a lie.
                    let lied = self.known_node(&peer).is_some_and(|n| {
                        n.last_seen_secs < FRESH_HEARTBEAT_SECS && n.free_slots >= 2 && n.queue_depth == 0
                    });
                    if lied {
                        info!(%peer, "busy right after a heartbeat showing free slots");
                        self.record_offence(peer, Offence::HeartbeatLie, false).await;
                    }
                    return Err(retry(Offence::Busy, "busy"));
                }
                Some(Kind::Error(e)) => {
                    return Err(match e.code.as_str() {
                        "invalid_request" | "context_overflow" => {
                            AttemptError::Fatal(InferError::Rejected { code: e.code, message: e.message })
                        }
                        "rate_limited" => AttemptError::Retry(Offence::Busy, "rate limited".into()),
                        "unknown_model" => {
                            AttemptError::Retry(Offence::WrongModel, format!("{}: {}", e.code, e.message))
                        }
                        _ => AttemptError::Retry(Offence::Timeout, format!("{}: {}", e.code, e.message)),
                    });
                }
                Some(Kind::Chunk(c)) if accepted.is_some() => {
                    first_chunk_at.get_or_insert_with(Instant::now);
                    text.push_str(&c.text);
                    tokens = tokens.saturating_add(c.tokens);
                    // A failover replays what the caller already has: it must match, byte for
                    // byte; only what goes beyond it is delivered.
                    if text.len() <= delivery.text.len() {
                        if !delivery.text.starts_with(&text) {
                            return Err(AttemptError::Fatal(InferError::Diverged));
                        }
                    } else if let Some(new) = text.strip_prefix(delivery.text.as_str()) {
                        let new = new.to_owned();
                        let started = delivery.started;
                        delivery.first_token.get_or_insert_with(|| started.elapsed());
                        delivery.text.push_str(&new);
                        if delivery.tx.send(Ok(StreamEvent::Token(new))).await.is_err() {
                            return Err(AttemptError::Gone);
                        }
                    } else {
                        return Err(AttemptError::Fatal(InferError::Diverged));
                    }
                }
                Some(Kind::Receipt(signed)) if accepted.is_some() => {
                    let accepted = accepted.unwrap_or_default();
                    let signed_hex = hex(&prost::Message::encode_to_vec(&signed));
                    let receipt = Receipt::verify(signed, &peer)
                        .map_err(|e| AttemptError::Retry(Offence::BadSignature, format!("bad receipt: {e}")))?;
                    check_receipt(&receipt, request, &accepted, &text, tokens).map_err(|e| {
                        AttemptError::Retry(Offence::FailedVerification, format!("receipt does not match: {e}"))
                    })?;
                    if text.len() < delivery.text.len() {
                        return Err(AttemptError::Fatal(InferError::Diverged));
                    }
                    let _ = stream.close().await;
                    let finish_reason =
                        if receipt.finish_reason == "length" { FinishReason::Length } else { FinishReason::Stop };
                    return Ok(InferenceResult {
                        text,
                        usage: Usage {
                            prompt_tokens: receipt.prompt_tokens,
                            completion_tokens: receipt.completion_tokens,
                        },
                        finish_reason,
                        provider: peer,
                        route: candidate.route,
                        attempts,
                        receipt: ReceiptInfo {
                            request_id: hex(&receipt.request_id),
                            provider: peer.to_string(),
                            model_sha256: hex(&receipt.model_sha256),
                            prompt_hash: hex(&receipt.prompt_hash),
                            output_hash: hex(&receipt.output_hash),
                            prompt_tokens: receipt.prompt_tokens,
                            completion_tokens: receipt.completion_tokens,
                            engine_build: receipt.engine_build,
                            threads: receipt.threads,
                            finish_reason: receipt.finish_reason,
                            timestamp_ms: receipt.timestamp_ms,
                            signed: signed_hex,
                            verified: true,
                        },
                        timing: Timing::default(),
                        cached: false,
                        verified_by: Vec::new(),
                    });
                }
                _ => return Err(retry(Offence::ProtocolViolation, "sent frames out of order")),
            }
        }
    }

    /// Runs the request again on other providers with the same engine build and thread count and
    /// compares output hashes. On a mismatch a third comparable provider decides and the
    /// outvoted one is penalised. Providers of another build are skipped: their output may
    /// differ honestly.
    async fn cross_check(&self, original: &InferenceResult, others: Vec<Candidate>, request: &InferRequest) -> Verdict {
        let comparable = |r: &InferenceResult| {
            r.receipt.engine_build == original.receipt.engine_build && r.receipt.threads == original.receipt.threads
        };
        // Re-runs are silent: their tokens go nowhere.
        let (sink, mut drain) = mpsc::channel(64);
        tokio::spawn(async move { while drain.recv().await.is_some() {} });
        let mut dissent: Option<InferenceResult> = None;
        // Only peers in standing may vote: a peer whose score is negative (caught lately) is no
        // judge, and a re-run is a job it must not get.
        let voters: Vec<Candidate> = self.with_reputation(|r, now| {
            others.into_iter().filter(|c| r.is_banned(c.peer, now).is_none() && r.score(c.peer, now) >= 0.0).collect()
        });
        for candidate in voters.into_iter().take(4) {
            let mut delivery = Delivery {
                tx: &sink,
                text: String::new(),
                model_sha256: None,
                started: Instant::now(),
                first_token: None,
            };
            let mut fresh = request.clone();
            fresh.request_id = random_id();
            let attempt_started = Instant::now();
            let other = match self.attempt(&candidate, &fresh, &mut delivery, 1).await {
                Ok(r) if comparable(&r) => r,
                Ok(_) => continue,
                Err(AttemptError::Retry(offence, _)) => {
                    self.record_offence(candidate.peer, offence, true).await;
                    continue;
                }
                Err(_) => continue,
            };
            let stats = JobStats {
                latency: attempt_started.elapsed(),
                ttft: delivery.first_token.map(|t| t.saturating_sub(attempt_started.duration_since(delivery.started))),
                tokens: u64::from(other.usage.completion_tokens),
                tokens_per_sec: None,
            };
            self.with_reputation(|r, now| r.record_success(other.provider, stats, now));
            let hash = &other.receipt.output_hash;
            match dissent.take() {
                None if *hash == original.receipt.output_hash => return Verdict::Agreed(vec![other.provider]),
                None => dissent = Some(other),
                Some(loser) if *hash == original.receipt.output_hash => {
                    // The original and this one against the dissenter.
                    info!(provider = %loser.provider, "outvoted in verification");
                    self.record_offence(loser.provider, Offence::FailedVerification, true).await;
                    return Verdict::Agreed(vec![other.provider]);
                }
                Some(mut first) if *hash == first.receipt.output_hash => {
                    // Two others agree against the original.
                    info!(provider = %original.provider, "outvoted in verification");
                    self.record_offence(original.provider, Offence::FailedVerification, true).await;
                    first.verified_by = vec![other.provider];
                    return Verdict::Outvoted(Box::new(first));
                }
                // All three differ: nobody is confirmed; stop spending work on it.
                Some(_) => return Verdict::Unconfirmed,
            }
        }
        Verdict::Unconfirmed
    }

    /// Orders candidates for a job of `max_tokens`: banned peers out; the others by expected
    /// completion time (queue, free slots, CPU load, measured speed, round-trip time; the load as
    /// last observed plus our own jobs sent there since) divided by a weight from their
    /// reputation; the first pick is the better of two drawn from the best three (power of two
    /// choices, so equal providers share the load); newcomers go last once they have had their
    /// capped share of this client's jobs.
    async fn rank(&self, candidates: Vec<Candidate>, max_tokens: u32) -> Vec<Candidate> {
        // Round trips measured by Ping, for the providers this node is connected to.
        let rtts: HashMap<PeerId, Duration> = match tokio::time::timeout(PEERS_WAIT, self.net().peers()).await {
            Ok(Ok(peers)) => peers
                .into_iter()
                .filter_map(|p| Some((p.peer_id, Duration::try_from_secs_f64(p.rtt_ms? / 1000.0).ok()?)))
                .collect(),
            _ => HashMap::new(),
        };
        let dispatched = self.dispatched();
        let (mut scored, quota) = self.with_reputation(|r, now| {
            let scored: Vec<(Candidate, f64, Class)> = candidates
                .into_iter()
                .filter(|c| r.is_banned(c.peer, now).is_none())
                .map(|c| {
                    let view = r.snapshot(c.peer, now);
                    let score = view.as_ref().map_or_else(|| r.score(c.peer, now), |v| v.score);
                    let measured = view.as_ref().and_then(|v| v.tokens_per_sec);
                    // Our own jobs sent there since its load was observed take its free slots.
                    let load = with_unseen(c.load, dispatched.unseen(c.peer, c.load_seen));
                    let expected = expected_completion(load, measured, rtts.get(&c.peer).copied(), max_tokens);
                    let class = if score < 0.0 {
                        Class::Failing
                    } else if r.is_newcomer(c.peer) {
                        Class::Newcomer
                    } else {
                        Class::Established
                    };
                    // Good standing (score ≥ 0.6) weighs fully, so established providers compete
                    // on speed and load alone; lower scores make a provider look slower. Not a
                    // newcomer's low prior: the share cap governs its traffic, and weighed by it
                    // (cost ×1.3) a newcomer lost every pairing with an established provider, so
                    // one that arrived after two others were established never got a job.
                    let weight = if class == Class::Newcomer { 1.0 } else { ((score + 1.0) / 1.6).clamp(0.05, 1.0) };
                    (c, expected / weight, class)
                })
                .collect();
            (scored, r.newcomer_quota_available(now))
        });
        scored.sort_by(|a, b| a.1.total_cmp(&b.1));
        // Newcomers beyond their share wait behind established providers; peers that failed
        // lately (negative score) come last, as fallbacks only.
        let capped = !quota && scored.iter().any(|s| s.2 == Class::Established);
        scored.sort_by_key(|s| match s.2 {
            Class::Established => 0,
            Class::Newcomer if capped => 1,
            Class::Newcomer => 0,
            Class::Failing => 2,
        });
        // The random pick stays among the leading class, so it can undo neither the newcomer
        // cap nor the demotion of failing peers.
        let lead = scored.first().map(|s| s.2);
        let leading = scored
            .iter()
            .take_while(|s| Some(s.2) == lead || (!capped && s.2 != Class::Failing && lead != Some(Class::Failing)))
            .count();
        let best = leading.min(3);
        if best >= 2 {
            let mut rng = rand::thread_rng();
            let a = rand::Rng::gen_range(&mut rng, 0..best);
            let b = (a + rand::Rng::gen_range(&mut rng, 1..best)) % best;
            // The cheaper of the two, unless they are within the tolerance of each other: then
            // either, so equal providers share the load despite noise in their measurements.
            let (ca, cb) = (scored[a].1, scored[b].1);
            let pick = if ca.max(cb) <= ca.min(cb) * (1.0 + COST_TOLERANCE) {
                if rand::Rng::gen_bool(&mut rng, 0.5) { a } else { b }
            } else if ca < cb {
                a
            } else {
                b
            };
            scored.swap(0, pick);
        }
        scored.into_iter().map(|s| s.0).collect()
    }

    pub(crate) fn dialable_addrs(&self) -> Vec<Multiaddr> {
        // Relayed addresses first: a client behind a NAT is dialed back through its relay.
        self.own_addrs(8)
    }
}

/// Passes one event of the leading attempt of a hedge on to the caller; false when the caller
/// is gone.
async fn forward(delivery: &mut Delivery<'_>, event: Result<StreamEvent, InferError>) -> bool {
    if let Ok(StreamEvent::Token(t)) = &event {
        let started = delivery.started;
        delivery.first_token.get_or_insert_with(|| started.elapsed());
        delivery.text.push_str(t);
    }
    delivery.tx.send(event).await.is_ok()
}

/// How long to wait for the next frame of a stream whose first token came at `first`, after
/// `tokens` tokens: up to the stall timeout, and no later than the slowest acceptable pace.
fn progress_wait(first: Instant, tokens: u32) -> Duration {
    let due = first + PROGRESS_SLACK + Duration::from_secs_f64(f64::from(tokens) / MIN_TOKENS_PER_SEC);
    due.saturating_duration_since(Instant::now()).min(STALL_TIMEOUT)
}

/// The sha256 of `model` that a node advertised in its heartbeat, when it is a valid hex hash.
fn advertised_sha(node: &crate::KnownNode, model: &str) -> Option<Vec<u8>> {
    let hex = &node.models.iter().find(|m| m.name == model)?.sha256;
    (hex.len() == 64)
        .then(|| (0..32).map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()).collect::<Option<Vec<u8>>>())
        .flatten()
}

/// What a receipt must say for the result to be accepted.
fn check_receipt(
    receipt: &Receipt,
    request: &InferRequest,
    accepted: &quiver_proto::Accepted,
    text: &str,
    tokens: u32,
) -> Result<(), &'static str> {
    if receipt.request_id != request.request_id {
        return Err("request id");
    }
    if receipt.model_sha256 != accepted.model_sha256 {
        return Err("model hash");
    }
    let prompt_hash = request.input.as_ref().map(|i| i.hash().to_vec()).unwrap_or_default();
    if receipt.prompt_hash != prompt_hash {
        return Err("prompt hash");
    }
    if receipt.output_hash != output_hash(text) {
        return Err("output hash");
    }
    if receipt.completion_tokens != tokens {
        return Err("token count");
    }
    if receipt.params != request.params {
        return Err("sampling parameters");
    }
    if receipt.engine_build != accepted.engine_build || receipt.threads != accepted.threads {
        return Err("engine build");
    }
    Ok(())
}

fn random_id() -> Vec<u8> {
    let mut id = vec![0u8; JOB_ID_LEN];
    rand::thread_rng().fill_bytes(&mut id);
    id
}

#[cfg(test)]
#[path = "tests/client.rs"]
mod tests;
