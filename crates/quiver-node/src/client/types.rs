//! What the client role takes and gives: requests, results with their verified receipts and
//! timings, stream events and errors.

use super::*;

/// A request as the client role takes it.
#[derive(Debug, Clone)]
pub struct InferenceRequest {
    /// User-facing model name, e.g. `smollm2-135m`.
    pub model: String,
    /// Only accept providers serving the model file with this sha256.
    pub model_sha256: Option<[u8; 32]>,
    pub input: Input,
    pub params: SamplingParams,
    /// Tools the model may call (chat only); the provider renders them with its model's template
    /// and, for a forced call, constrains the output with a grammar.
    pub tools: Tools,
    /// Announce the job on gossip and wait `claim_window` for claims before asking directly,
    /// unless fresh heartbeats already decide (an established provider whose heartbeat of the
    /// last few seconds shows free slots to spare, and no known provider cheaper): then it is
    /// asked directly, sparing every provider of the model the announcement.
    pub broadcast: bool,
    /// Announce even when heartbeats already decide (to exercise the claim route).
    pub always_announce: bool,
    pub claim_window: Duration,
    /// Providers tried at most (the first one included).
    pub max_attempts: usize,
    /// Answer an identical earlier greedy request from the cache.
    pub use_cache: bool,
    /// Return only an answer that a second, independent provider reproduced (same model file,
    /// engine build and thread count; see `verify.rs` for who may vote and how votes count). A
    /// sampled request is verified by running it with the same seed on both: when its seed is 0
    /// the client draws one. When no provider can confirm, the request fails with
    /// [`InferError::Unverified`] and nothing reaches the caller.
    pub verify: bool,
}

impl InferenceRequest {
    /// A chat request with one user message (the model's chat template is applied).
    pub fn chat(model: &str, prompt: &str, max_tokens: u32) -> Self {
        Self::new(model, Input::Chat(vec![quiver_engine::ChatMessage::new("user", prompt)]), max_tokens)
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
            tools: Tools::default(),
            broadcast: true,
            always_announce: false,
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
    /// Prompt tokens the provider says came from its prompt cache.
    pub cached_tokens: u32,
    pub engine_build: String,
    pub threads: u32,
    pub finish_reason: String,
    pub timestamp_ms: u64,
    /// sha256 of the log probabilities streamed, hex (empty when none were asked).
    pub logprobs_hash: String,
    /// The signed receipt as sent (protobuf `SignedRecord`), hex.
    pub signed: String,
    /// Always true: a result is only returned when its receipt verified.
    pub verified: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct InferenceResult {
    pub text: String,
    /// Each generated token's log probability, when the request asked for them (bound by the
    /// receipt, not compared by verification).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub logprobs: Vec<quiver_engine::TokenLogprob>,
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
    #[error("could not verify the answer for model {model}: {reason}")]
    Unverified { model: String, reason: String },
}

impl From<NetError> for InferError {
    fn from(e: NetError) -> Self {
        InferError::Net(e.to_string())
    }
}

/// Tokens of a running request; dropping it cancels the request.
pub struct InferenceStream {
    pub(super) rx: mpsc::Receiver<Result<StreamEvent, InferError>>,
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
