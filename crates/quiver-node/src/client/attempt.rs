//! One attempt: the stream to one provider, its frames, and the receipt that ends it.

use super::*;

/// A random pause before the `n`th reopening, growing with `n`, so a dropped burst does not
/// arrive as a burst again.
pub(super) fn reopen_pause(n: u32) -> Duration {
    Duration::from_millis((20 + rand::random::<u64>() % 81) * u64::from(n.min(MAX_REOPENS)))
}

/// Why a request could not be sent.
pub(super) enum Opening {
    /// An outcome to count against the provider (or a refusal, which counts for nothing).
    Failed(AttemptError),
    /// The stream was closed before the request went through, with no word from the provider.
    Dropped(String),
}

impl Node {
    /// Opens an inference stream to `peer` and sends `request`. A stream dropped unanswered is
    /// opened again after a short random pause, `MAX_REOPENS` times at most per attempt
    /// (`reopens` counts them): libp2p-stream hands a provider one new inbound stream at a time
    /// and drops any that arrives while the previous one waits to be taken, so a burst of
    /// requests from one client loses some of them on arrival, through no fault of the provider.
    pub(super) async fn send_request(
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
    pub(super) async fn open_request(
        &self,
        peer: PeerId,
        request: &InferRequest,
    ) -> Result<quiver_net::Stream, Opening> {
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

    /// A connection to `candidate`, or the attempt's failure.
    pub(super) async fn connect_to(&self, candidate: &Candidate) -> Result<(), AttemptError> {
        match tokio::time::timeout(CONNECT_TIMEOUT, self.net().connect(candidate.peer, candidate.addrs.clone())).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(AttemptError::Retry(Offence::Timeout, format!("unreachable: {e}"))),
            Err(_) => Err(AttemptError::Retry(Offence::Timeout, "connect timed out".into())),
        }
    }

    pub(super) async fn attempt(
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
        self.connect_to(candidate).await?;
        let params =
            request.params.as_ref().ok_or_else(|| AttemptError::Fatal(InferError::Invalid("no parameters".into())))?;
        let mut reopens = 0;
        let mut stream = self.send_request(peer, request, &mut reopens).await?;

        let mut accepted = None;
        let mut queued_since: Option<Instant> = None;
        let mut first_chunk_at: Option<Instant> = None;
        let mut text = String::new();
        let mut tokens: u32 = 0;
        let mut logprobs: Vec<quiver_proto::TokenLogprob> = Vec::new();
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
                            // Text, then no receipt: a job promised and not delivered.
                            FrameError::Closed | FrameError::Io(_) if first_chunk_at.is_some() => Offence::Reneged,
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
                // After `Accepted` the job was promised: a refusal now is a broken promise, not
                // load, and so is any error once text was streamed.
                Some(Kind::Busy(_)) if accepted.is_some() => {
                    return Err(retry(Offence::Reneged, "refused with busy after accepting"));
                }
                Some(Kind::Error(e)) if first_chunk_at.is_some() || accepted.is_some() && e.code == "rate_limited" => {
                    return Err(AttemptError::Retry(
                        Offence::Reneged,
                        format!("refused after accepting ({}): {}", e.code, e.message),
                    ));
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
                        // The request's fault, if the next provider says so too (see `run_request`).
                        "invalid_request" | "context_overflow" | "request_too_large" => {
                            AttemptError::Refused(InferError::Rejected { code: e.code, message: e.message })
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
                    if let Err(what) = check_counts(&text, tokens, params) {
                        return Err(retry(Offence::ProtocolViolation, what));
                    }
                    // Log probabilities only when asked, each bounded, no more than max_tokens.
                    let unasked = !params.logprobs && !c.logprobs.is_empty();
                    let over = logprobs.len() + c.logprobs.len() > params.max_tokens as usize;
                    if unasked || over || c.logprobs.iter().any(|lp| lp.validate(params.top_logprobs).is_err()) {
                        return Err(retry(Offence::ProtocolViolation, "log probabilities not asked for or malformed"));
                    }
                    logprobs.extend(c.logprobs);
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
                    check_receipt(&receipt, request, &accepted, &text, tokens, &logprobs).map_err(|e| {
                        AttemptError::Retry(Offence::FailedVerification, format!("receipt does not match: {e}"))
                    })?;
                    if text.len() < delivery.text.len() {
                        return Err(AttemptError::Fatal(InferError::Diverged));
                    }
                    let _ = stream.close().await;
                    self.note_signed_class(
                        peer,
                        crate::builds::Signed {
                            model_sha256: receipt.model_sha256.clone(),
                            engine_build: receipt.engine_build.clone(),
                            threads: receipt.threads,
                            at_ms: receipt.timestamp_ms,
                        },
                    );
                    let finish_reason =
                        if receipt.finish_reason == "length" { FinishReason::Length } else { FinishReason::Stop };
                    return Ok(InferenceResult {
                        text,
                        logprobs: logprobs.into_iter().map(wire::logprob_from_wire).collect(),
                        usage: Usage {
                            prompt_tokens: receipt.prompt_tokens,
                            completion_tokens: receipt.completion_tokens,
                            cached_tokens: receipt.cached_tokens.min(receipt.prompt_tokens),
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
                            cached_tokens: receipt.cached_tokens.min(receipt.prompt_tokens),
                            logprobs_hash: hex(&receipt.logprobs_hash),
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
}

/// How long to wait for the next frame of a stream whose first token came at `first`, after
/// `tokens` tokens: up to the stall timeout, and no later than the slowest acceptable pace.
pub(super) fn progress_wait(first: Instant, tokens: u32) -> Duration {
    let due = first + PROGRESS_SLACK + Duration::from_secs_f64(f64::from(tokens) / MIN_TOKENS_PER_SEC);
    due.saturating_duration_since(Instant::now()).min(STALL_TIMEOUT)
}

/// What a receipt must say for the result to be accepted.
pub(super) fn check_receipt(
    receipt: &Receipt,
    request: &InferRequest,
    accepted: &quiver_proto::Accepted,
    text: &str,
    tokens: u32,
    logprobs: &[quiver_proto::TokenLogprob],
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
    let asked = request.params.as_ref().is_some_and(|p| p.logprobs);
    let bound = if asked { quiver_proto::infer::logprobs_hash(logprobs).to_vec() } else { Vec::new() };
    if receipt.logprobs_hash != bound {
        return Err("log probabilities");
    }
    Ok(())
}

/// Tokens a provider may count beyond the bytes it streamed: tokens that render as nothing, and
/// those of a stop string, which is not sent.
const TOKEN_SLACK: u32 = 64;
/// Most bytes one token may stand for (the longest pieces of real vocabularies are far shorter).
const MAX_TOKEN_BYTES: usize = 256;

/// Whether the token count and text a provider has streamed so far are possible for the
/// request: at most `max_tokens` tokens, no more tokens than bytes (with a slack for tokens that
/// render as nothing and stop strings, which are counted and not sent), and no more bytes than
/// `max_tokens` tokens can stand for. A provider's tokenizer may differ from ours, so the count is
/// bounded, not recomputed.
pub(super) fn check_counts(text: &str, tokens: u32, params: &quiver_proto::SamplingParams) -> Result<(), &'static str> {
    if tokens > params.max_tokens {
        return Err("claimed more tokens than max_tokens");
    }
    let stops: usize = params.stop.iter().map(String::len).sum();
    let slack = TOKEN_SLACK.saturating_add(u32::try_from(stops).unwrap_or(u32::MAX));
    if u64::from(tokens) > text.len() as u64 + u64::from(slack) {
        return Err("claimed more tokens than the bytes it sent");
    }
    if text.len() > (params.max_tokens as usize).saturating_mul(MAX_TOKEN_BYTES) {
        return Err("sent more text than max_tokens tokens can hold");
    }
    Ok(())
}
