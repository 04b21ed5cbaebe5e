//! Embeddings through the network: the texts go to a provider of the model on the inference
//! protocol (`InferRequest.embed`); it answers with one `Embedding` frame per text and a signed
//! receipt binding the texts and the vectors. The frames are checked as they come (order, count,
//! size, finite values, one dimension for all) and the receipt against them; a provider that
//! fails either is charged as for a text answer, and the next one is asked.

use quiver_proto::infer::{MAX_EMBED_INPUTS, embedding_values, embeddings_hash};
use quiver_proto::{EmbedInput, Embedding};

use super::*;

/// Longest wait for a provider's embeddings once it accepted the request.
const EMBED_WAIT: Duration = Duration::from_secs(120);

/// A request for embeddings of `inputs` with `model`.
#[derive(Debug, Clone)]
pub struct EmbeddingRequest {
    pub model: String,
    pub inputs: Vec<String>,
    /// Providers tried at most.
    pub max_attempts: usize,
}

impl EmbeddingRequest {
    pub fn new(model: &str, inputs: Vec<String>) -> Self {
        EmbeddingRequest { model: model.to_owned(), inputs, max_attempts: 4 }
    }
}

/// Embeddings and who computed them.
#[derive(Debug, Clone)]
pub struct EmbeddingResult {
    /// One L2-normalised vector per input, in input order.
    pub vectors: Vec<Vec<f32>>,
    pub prompt_tokens: u32,
    pub provider: PeerId,
    /// Providers tried, this one included.
    pub attempts: u32,
}

impl Node {
    /// Embeddings of `request.inputs`, from the first provider of the model that delivers them
    /// with a receipt that matches.
    pub async fn embed(&self, request: EmbeddingRequest) -> Result<EmbeddingResult, InferError> {
        if request.inputs.len() > MAX_EMBED_INPUTS {
            return Err(InferError::Invalid(format!("at most {MAX_EMBED_INPUTS} texts per request")));
        }
        let texts = EmbedInput { inputs: request.inputs.clone() };
        let wire = InferRequest {
            request_id: random_id(),
            model: request.model.clone(),
            model_sha256: Vec::new(),
            input: None,
            params: None,
            embed: Some(texts),
        };
        wire.validate().map_err(|e| InferError::Invalid(e.to_string()))?;
        if prost::Message::encoded_len(&wire) > MAX_REQUEST_BYTES {
            return Err(InferError::Invalid(format!("the texts are larger than {MAX_REQUEST_BYTES} bytes")));
        }
        let probe = InferenceRequest::completion(&request.model, "", 1);
        // Providers whose heartbeat says they cannot embed with the model are left out; those
        // known only from the DHT are asked (one that cannot says so, at no cost to it).
        let candidates: Vec<Candidate> = self
            .provider_candidates(&probe)
            .await
            .into_iter()
            .filter(|c| {
                self.known_node(&c.peer).is_none_or(|n| n.models.iter().any(|m| m.name == request.model && m.embeds))
            })
            .collect();
        if candidates.is_empty() {
            return Err(InferError::NoProvider { model: request.model.clone() });
        }
        let mut failures = Vec::new();
        let mut refused: Option<InferError> = None;
        for (n, candidate) in candidates.iter().take(request.max_attempts.max(1)).enumerate() {
            self.with_reputation(|r, now| r.note_routed(candidate.peer, now));
            let started = Instant::now();
            match self.embed_attempt(candidate, &wire, request.inputs.len()).await {
                Ok((vectors, prompt_tokens)) => {
                    let stats = JobStats { latency: started.elapsed(), ttft: None, tokens: 0, tokens_per_sec: None };
                    self.with_reputation(|r, now| r.record_success(candidate.peer, stats, now));
                    return Ok(EmbeddingResult {
                        vectors,
                        prompt_tokens,
                        provider: candidate.peer,
                        attempts: n as u32 + 1,
                    });
                }
                Err(AttemptError::Retry(offence, reason)) => {
                    self.attempt_failed(candidate, offence, &reason).await;
                    failures.push(format!("{}: {reason}", candidate.peer));
                }
                Err(AttemptError::Refused(e)) => match refused {
                    // A second provider saying so settles it: the request is at fault.
                    Some(_) => return Err(e),
                    None => refused = Some(e),
                },
                Err(AttemptError::Fatal(e)) => return Err(e),
                Err(AttemptError::Gone) => return Err(InferError::Net("the request was dropped".into())),
            }
        }
        Err(refused.unwrap_or(InferError::AllProvidersFailed { model: request.model, failures }))
    }

    /// One provider's embeddings, checked frame by frame and against its receipt.
    async fn embed_attempt(
        &self,
        candidate: &Candidate,
        request: &InferRequest,
        count: usize,
    ) -> Result<(Vec<Vec<f32>>, u32), AttemptError> {
        let peer = candidate.peer;
        let _in_flight = self.dispatched().start(peer);
        let retry = |offence: Offence, what: &str| AttemptError::Retry(offence, what.to_owned());
        self.connect_to(candidate).await?;
        let mut reopens = 0;
        let mut stream = self.send_request(peer, request, &mut reopens).await?;
        let mut accepted: Option<quiver_proto::Accepted> = None;
        let mut queued_since: Option<Instant> = None;
        let mut vectors: Vec<Vec<f32>> = Vec::with_capacity(count);
        loop {
            let wait = match (&accepted, queued_since) {
                (None, None) => FIRST_FRAME_TIMEOUT,
                (None, Some(since)) => QUEUED_SILENCE_TIMEOUT.min(MAX_QUEUE_WAIT.saturating_sub(since.elapsed())),
                (Some(_), _) => EMBED_WAIT,
            };
            let frame =
                match tokio::time::timeout(wait, read_frame::<_, InferResponse>(&mut stream, MAX_RESPONSE_BYTES)).await
                {
                    Ok(Ok(f)) => f,
                    Ok(Err(FrameError::Closed | FrameError::Io(_))) if accepted.is_some() => {
                        return Err(retry(Offence::Reneged, "closed before the receipt"));
                    }
                    Ok(Err(e @ (FrameError::Closed | FrameError::Io(_)))) => {
                        return Err(AttemptError::Retry(Offence::Stall, format!("stream failed: {e}")));
                    }
                    Ok(Err(e)) => return Err(AttemptError::Retry(Offence::GarbageFrame, e.to_string())),
                    Err(_) if accepted.is_none() && queued_since.is_some() => {
                        return Err(retry(Offence::Busy, "queued too long"));
                    }
                    Err(_) => return Err(retry(Offence::Timeout, "no answer in time")),
                };
            match frame.kind {
                Some(Kind::Accepted(a)) if accepted.is_none() => {
                    if a.model_sha256.len() != 32
                        || candidate.advertised_sha256.as_ref().is_some_and(|s| *s != a.model_sha256)
                    {
                        return Err(retry(Offence::WrongModel, "serves another model file than it advertised"));
                    }
                    accepted = Some(a);
                }
                Some(Kind::Queued(_)) if accepted.is_none() => {
                    queued_since.get_or_insert_with(Instant::now);
                }
                Some(Kind::Busy(_)) if accepted.is_none() => return Err(retry(Offence::Busy, "busy")),
                Some(Kind::Error(e)) if accepted.is_none() => {
                    return Err(match e.code.as_str() {
                        "invalid_request" | "context_overflow" | "request_too_large" => {
                            AttemptError::Refused(InferError::Rejected { code: e.code, message: e.message })
                        }
                        // Load, or a provider of the model that cannot embed with it: no fault.
                        "rate_limited" | "unsupported" => AttemptError::Retry(Offence::Busy, e.message),
                        "unknown_model" => AttemptError::Retry(Offence::WrongModel, e.message),
                        _ => AttemptError::Retry(Offence::Timeout, format!("{}: {}", e.code, e.message)),
                    });
                }
                Some(Kind::Error(e)) => {
                    return Err(AttemptError::Retry(
                        Offence::Reneged,
                        format!("failed after accepting: {}", e.message),
                    ));
                }
                Some(Kind::Embedding(Embedding { index, values })) if accepted.is_some() => {
                    let values = embedding_values(&values)
                        .filter(|v| vectors.first().is_none_or(|first| first.len() == v.len()))
                        .ok_or_else(|| retry(Offence::ProtocolViolation, "an embedding of bad size or values"))?;
                    if index as usize != vectors.len() || vectors.len() >= count {
                        return Err(retry(Offence::ProtocolViolation, "embeddings out of order or too many"));
                    }
                    vectors.push(values);
                }
                Some(Kind::Receipt(signed)) if accepted.is_some() => {
                    let accepted = accepted.unwrap_or_default();
                    let receipt = Receipt::verify(signed, &peer)
                        .map_err(|e| AttemptError::Retry(Offence::BadSignature, format!("bad receipt: {e}")))?;
                    let texts = request.embed.as_ref().map(EmbedInput::hash).unwrap_or_default();
                    let matches = receipt.request_id == request.request_id
                        && receipt.model_sha256 == accepted.model_sha256
                        && receipt.prompt_hash == texts
                        && receipt.output_hash == embeddings_hash(&vectors)
                        && receipt.completion_tokens == 0
                        && receipt.params.is_none()
                        && vectors.len() == count;
                    if !matches {
                        return Err(retry(Offence::FailedVerification, "the receipt does not match the embeddings"));
                    }
                    let _ = stream.close().await;
                    return Ok((vectors, receipt.prompt_tokens));
                }
                _ => return Err(retry(Offence::ProtocolViolation, "sent frames out of order")),
            }
        }
    }
}
