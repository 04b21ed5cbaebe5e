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
use quiver_engine::{FinishReason, Input, SamplingParams, Tools, Usage};
use quiver_net::{Multiaddr, NetError, PeerId, StreamProtocol};
use quiver_proto::FrameError;
use quiver_proto::infer::{
    CLAIM_PROTOCOL, INFER_PROTOCOL, JOB_ID_LEN, MAX_CLAIM_BYTES, MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES, infer_topic,
    output_hash,
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
use crate::dispatch::{Load, with_unseen};
use crate::node::Node;
use crate::wire;

pub use types::{
    InferError, InferenceRequest, InferenceResult, InferenceStream, ReceiptInfo, Route, StreamEvent, Timing,
};

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
    /// From its heartbeat or claim.
    load: Option<Load>,
    /// When `load` was observed (its heartbeat or claim arrived): our attempts started since
    /// are not in it (see `dispatch.rs`).
    load_seen: Option<Instant>,
    /// The model file it advertised for this model (heartbeat or a DHT record by hash): it must
    /// serve that one.
    advertised_sha256: Option<Vec<u8>>,
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
    /// The provider says the request is at fault (invalid, too long). Another provider is asked
    /// before the caller is told: a refusal must not be a free way to fail a request.
    Refused(InferError),
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
    pub fn infer_stream(&self, mut request: InferenceRequest) -> Result<InferenceStream, InferError> {
        if request.verify && request.params.temperature != 0.0 && request.params.seed == 0 {
            // Verified sampling runs the same seed on both providers: one the client draws.
            // In 1..u32::MAX: llama.cpp reads u32::MAX as "a random seed of its own".
            request.params.seed = u64::from(rand::random::<u32>() % (u32::MAX - 1)) + 1;
        }
        let wire_request = InferRequest {
            request_id: random_id(),
            model: request.model.clone(),
            model_sha256: request.model_sha256.map(|s| s.to_vec()).unwrap_or_default(),
            input: Some(wire::input_to_wire(&request.input, &request.tools)),
            params: Some(wire::params_to_wire(&request.params)),
            embed: None,
        };
        wire_request.validate().map_err(|e| InferError::Invalid(e.to_string()))?;
        // A request the provider would refuse for its size is refused here, before any provider
        // is charged for not answering it.
        let size = prost::Message::encoded_len(&wire_request);
        if size > MAX_REQUEST_BYTES {
            return Err(InferError::Invalid(format!(
                "the request is {size} bytes encoded; providers accept at most {MAX_REQUEST_BYTES}"
            )));
        }
        let (tx, rx) = mpsc::channel(64);
        let node = self.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let outcome = node.run_request(&request, wire_request, &tx).await;
            let label = match &outcome {
                Ok(()) => "ok",
                Err(InferError::NoProvider { .. }) => "no_provider",
                Err(InferError::AllProvidersFailed { .. }) => "all_failed",
                Err(InferError::Unverified { .. }) => "unverified",
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
        // A request to verify is answered from the cache only by an entry that was verified.
        let hit = cache_key
            .as_ref()
            .and_then(|k| self.result_cache().get(k))
            .filter(|hit| !request.verify || !hit.verified_by.is_empty());
        if let Some(mut hit) = hit {
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
        let decided = !request.always_announce && self.heartbeats_decide(&known, request.params.max_tokens);
        if request.broadcast
            && !decided
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
        // The first provider that said the request is at fault, and what it said.
        let mut refused: Option<(PeerId, InferError)> = None;
        let mut looked_again = false;
        loop {
            let Some(candidate) = queue.pop_front() else {
                // Every provider known at the start failed. The network may have changed since
                // (one left, another joined): look once more for providers not tried yet.
                if looked_again || failures.is_empty() || tried.len() >= request.max_attempts.max(1) {
                    break;
                }
                looked_again = true;
                let fresh: Vec<Candidate> =
                    self.provider_candidates(request).await.into_iter().filter(|c| !tried.contains(&c.peer)).collect();
                debug!(found = fresh.len(), "looked again for providers not tried yet");
                if fresh.is_empty() {
                    break;
                }
                queue.extend(fresh);
                continue;
            };
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
                    // Another provider served what an earlier one called invalid: that was a lie
                    // (a context too small for the prompt is not: contexts differ honestly).
                    if let Some((peer, InferError::Rejected { code, .. })) = &refused
                        && code != "context_overflow"
                    {
                        info!(%peer, %code, "refused a request another provider served");
                        self.record_offence(*peer, Offence::ProtocolViolation, true).await;
                    }
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
                    // Its job counts as served once nobody refuted it: a liar outvoted, or one
                    // whose answer could not be checked when checking was asked, earns nothing.
                    let mut served = Some(result.provider);
                    // Reproducible: greedy, or sampled with a seed both providers run.
                    let reproducible = request.params.temperature == 0.0 || request.params.seed != 0;
                    if request.verify || (reproducible && rand::random::<f64>() < self.verify_rate()) {
                        let others: Vec<Candidate> = queue.drain(..).filter(|c| !tried.contains(&c.peer)).collect();
                        match self.cross_check(request, &result, others, &tried, &wire_request).await {
                            Verdict::Agreed(by) => result.verified_by = by,
                            Verdict::Unconfirmed(reason) if request.verify => {
                                return Err(InferError::Unverified { model: request.model.clone(), reason });
                            }
                            Verdict::Unconfirmed(_) => {}
                            Verdict::Outvoted(majority) | Verdict::Replaced(majority) if held.is_some() => {
                                served = None;
                                let timing = result.timing;
                                result = *majority;
                                result.attempts = attempts + 1;
                                result.timing = timing;
                            }
                            // Text the caller already has that nobody could compare: unrefuted.
                            Verdict::Replaced(_) => {}
                            Verdict::Outvoted(_) => {
                                // Sampled verification of text the caller already has.
                                return Err(InferError::VerificationFailed { provider: result.provider.to_string() });
                            }
                        }
                    }
                    if let Some(provider) = served {
                        self.with_reputation(|r, now| r.record_success(provider, stats, now));
                        self.check_speed_claim(provider).await;
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
                Err(AttemptError::Refused(e)) => {
                    // A second provider saying so settles it: the request is at fault.
                    if refused.is_some() {
                        return Err(e);
                    }
                    debug!(provider = %candidate.peer, error = %e, "request refused; asking one more provider");
                    refused = Some((candidate.peer, e));
                }
                Err(AttemptError::Fatal(e)) => return Err(e),
                Err(AttemptError::Gone) => return Ok(()),
            }
        }
        match refused {
            // Nobody else could be asked: the refusal stands, unproven either way.
            Some((_, e)) => Err(e),
            None => Err(InferError::AllProvidersFailed { model: request.model.clone(), failures }),
        }
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
}

fn random_id() -> Vec<u8> {
    let mut id = vec![0u8; JOB_ID_LEN];
    rand::thread_rng().fill_bytes(&mut id);
    id
}

mod attempt;
mod embed;
mod types;
pub use embed::{EmbeddingRequest, EmbeddingResult};
use verify::Verdict;
mod hedge;
mod route;
mod verify;

#[cfg(test)]
#[path = "../tests/client.rs"]
mod tests;
