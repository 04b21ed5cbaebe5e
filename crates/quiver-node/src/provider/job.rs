//! One inference job on a provider: admission (a slot, a place in the queue, or busy), the
//! engine's stream written as frames, and the signed receipt.

use super::*;

impl Provider {
    pub(super) async fn run(
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
        // A split model whose member is missing, or that reloads: busy, so the client goes
        // elsewhere at once.
        if !engine.ready() {
            return self.refuse_busy(stream).await;
        }
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
        // Tokens reported in the chunks sent: what the receipt signs, since the client checks
        // the two against each other.
        let mut streamed = 0u32;
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
                    streamed = streamed.saturating_add(tokens);
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
                Some(Ok(GenEvent::Done { finish_reason, mut usage })) => {
                    if usage.completion_tokens != streamed {
                        warn!(
                            engine = usage.completion_tokens,
                            streamed, "the engine's token count differs from its chunks'; signing the chunks'"
                        );
                        usage.completion_tokens = streamed;
                    }
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
}
