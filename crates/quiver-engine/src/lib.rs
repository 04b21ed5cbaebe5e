//! QUIVer's inference engines and models.
//!
//! An [`Engine`] serves one model: it generates text from a prompt or chat messages as a stream
//! of token chunks, can be cancelled (drop the [`Generation`]), and reports its build and
//! capacity. Backends: [`llama`] (llama.cpp on the CPU, GGUF files) and [`openai`] (any
//! OpenAI-compatible HTTP server: Ollama, llama.cpp server, vLLM). [`models`] holds the model
//! catalogue, fetching, and model identity (sha256 of the file plus the GGUF name).
//!
//! This crate knows nothing of networking.

pub mod chat;
pub mod host;
pub mod llama;
pub mod models;
pub mod openai;
pub mod split;
mod stream;

use std::fmt;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

pub use chat::{ResponseFormat, Tool, ToolCall, ToolChoice, Tools};
pub use llama::gpu::{DeviceInfo, GpuLayers};
pub use stream::{StopFilter, Utf8Assembler};

/// One chat message; the engine applies the model's chat template.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    /// Tools an assistant message called (its `content` may then be empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// The call a `tool` message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    /// A message of `role` with text `content`, no tool calls.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
            ..Default::default()
        }
    }
}

/// What to generate from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Input {
    /// Raw text continued as is (no template).
    Prompt(String),
    /// Chat messages, formatted with the model's chat template, ending with the assistant's turn.
    Chat(Vec<ChatMessage>),
}

/// Sampling parameters. `temperature == 0.0` is greedy decoding (deterministic for a given
/// engine build and thread count).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    pub max_tokens: u32,
    pub temperature: f32,
    pub top_p: f32,
    /// Sample among the `top_k` most likely tokens only (0 = all); ignored when greedy.
    pub top_k: u32,
    pub seed: u64,
    /// Generation ends before the first occurrence of any of these; they are not emitted.
    pub stop: Vec<String>,
    /// Constrains the output to JSON (any object, or one a schema describes).
    pub response_format: ResponseFormat,
    /// Lowers the odds of tokens already generated, once each (OpenAI's `presence_penalty`, -2..=2).
    pub presence_penalty: f32,
    /// Lowers the odds of tokens already generated, by how often (`frequency_penalty`, -2..=2).
    pub frequency_penalty: f32,
    /// Added to the logits of these token ids (OpenAI's `logit_bias`, -100..=100 each).
    pub logit_bias: Vec<(u32, f32)>,
    /// Report each generated token's log probability and those of the `n` most likely tokens
    /// in its place (OpenAI's `logprobs` and `top_logprobs`); `None`: no log probabilities.
    pub logprobs: Option<u32>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            max_tokens: 128,
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            seed: 0,
            stop: Vec::new(),
            response_format: ResponseFormat::Text,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            logprobs: None,
        }
    }
}

impl SamplingParams {
    /// Most stop strings accepted.
    pub const MAX_STOPS: usize = 16;
    /// Longest stop string accepted, in bytes.
    pub const MAX_STOP_BYTES: usize = 1024;
    /// Most token ids with a logit bias.
    pub const MAX_LOGIT_BIAS: usize = 1024;
    /// Most alternatives reported per token (OpenAI's limit of `top_logprobs`).
    pub const MAX_TOP_LOGPROBS: u32 = 20;

    /// Refuses values no engine can honour: `max_tokens == 0`, a negative or non-finite
    /// temperature, `top_p` outside (0, 1], too many or too long stop strings.
    pub fn validate(&self) -> Result<(), EngineError> {
        let bad = |m: String| Err(EngineError::InvalidRequest(m));
        if self.max_tokens == 0 {
            return bad("max_tokens must be at least 1".into());
        }
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return bad(format!("temperature {} is not a finite number >= 0", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p {} is not in (0, 1]", self.top_p));
        }
        if self.stop.len() > Self::MAX_STOPS {
            return bad(format!("{} stop strings (most: {})", self.stop.len(), Self::MAX_STOPS));
        }
        if self.stop.iter().any(|s| s.len() > Self::MAX_STOP_BYTES) {
            return bad(format!("a stop string is longer than {} bytes", Self::MAX_STOP_BYTES));
        }
        for (name, v) in [("presence_penalty", self.presence_penalty), ("frequency_penalty", self.frequency_penalty)] {
            if !v.is_finite() || !(-2.0..=2.0).contains(&v) {
                return bad(format!("{name} {v} is not in -2..=2"));
            }
        }
        if self.top_k > 100_000 {
            return bad(format!("top_k {} is above 100000", self.top_k));
        }
        if self.logprobs.is_some_and(|n| n > Self::MAX_TOP_LOGPROBS) {
            return bad(format!("top_logprobs is at most {}", Self::MAX_TOP_LOGPROBS));
        }
        if self.logit_bias.len() > Self::MAX_LOGIT_BIAS {
            return bad(format!("{} logit biases (most: {})", self.logit_bias.len(), Self::MAX_LOGIT_BIAS));
        }
        if self.logit_bias.iter().any(|&(_, b)| !b.is_finite() || !(-100.0..=100.0).contains(&b)) {
            return bad("a logit bias is not in -100..=100".into());
        }
        self.response_format.validate()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    pub input: Input,
    pub params: SamplingParams,
    /// Tools the model may call (chat only).
    pub tools: Tools,
}

impl GenerateRequest {
    /// A request with no tools.
    pub fn new(input: Input, params: SamplingParams) -> Self {
        GenerateRequest { input, params, tools: Tools::default() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model ended its turn or a stop string was met.
    Stop,
    /// `max_tokens` (or the context size) was reached.
    Length,
    /// The model called tools (set where its output is read as tool calls, not by engines).
    ToolCalls,
}

impl fmt::Display for FinishReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// Prompt tokens whose KV came from the engine's prompt cache (included in `prompt_tokens`).
    #[serde(default)]
    pub cached_tokens: u32,
}

/// What a running generation yields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum GenEvent {
    /// Text of `tokens` newly generated tokens (valid UTF-8; may be empty while a multi-byte
    /// character is incomplete or a possible stop string is held back).
    Token { text: String, tokens: u32 },
    /// The log probability of the token whose text comes in the next `Token` event (only when
    /// the request asked for them).
    Logprob(TokenLogprob),
    /// The last event of a successful generation.
    Done { finish_reason: FinishReason, usage: Usage },
}

/// A generated token's log probability, and the most likely tokens in its place.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TokenLogprob {
    /// The token's bytes (a piece of UTF-8 that may split a character).
    pub token: Vec<u8>,
    pub logprob: f32,
    /// The most likely tokens at this place, most likely first.
    pub top: Vec<(Vec<u8>, f32)>,
}

/// A running generation. Dropping it cancels the work.
pub struct Generation {
    rx: mpsc::Receiver<Result<GenEvent, EngineError>>,
}

impl Generation {
    /// Channel capacity between an engine and its consumer.
    pub const CHANNEL: usize = 64;

    /// A generation fed by `rx`; the producer stops when it finds the channel closed.
    pub fn new(rx: mpsc::Receiver<Result<GenEvent, EngineError>>) -> Self {
        Generation { rx }
    }

    /// The next event; `None` after `Done` or an error.
    pub async fn next(&mut self) -> Option<Result<GenEvent, EngineError>> {
        self.rx.recv().await
    }
}

/// The identity of a model on the network: the sha256 of its file and its GGUF name; `name`
/// is the short user-facing name (e.g. `smollm2-135m`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ModelId {
    pub name: String,
    pub gguf_name: String,
    pub sha256: [u8; 32],
}

impl ModelId {
    pub fn sha256_hex(&self) -> String {
        models::hex(&self.sha256)
    }
}

/// An engine serving one model.
pub trait Engine: Send + Sync + 'static {
    fn model(&self) -> &ModelId;
    /// Identifies what produced an output, e.g. `llama.cpp/llama-cpp-2=0.1.160`; outputs of greedy
    /// requests are comparable between engines with the same build id and thread count.
    fn build_id(&self) -> String;
    /// CPU threads used per generation (0 when unknown, e.g. a remote server).
    fn threads(&self) -> u32;
    /// Largest prompt plus completion in tokens (0 when unknown).
    fn context_size(&self) -> u32;
    /// Generations this engine runs at once without them slowing each other much: for
    /// llama.cpp the cores divided by the threads of one generation; for a remote server a
    /// conservative guess. Providers use it as their default concurrency.
    fn capacity(&self) -> usize;
    /// Where the model runs: `cpu` with no layers offloaded unless the engine says otherwise.
    fn device(&self) -> DeviceInfo {
        DeviceInfo::cpu(0)
    }
    /// Whether it takes work now: a split model's engine does not while it (re)loads or while
    /// a member is missing. Providers neither claim nor accept jobs for an engine that is not.
    fn ready(&self) -> bool {
        true
    }
    /// Starts generating. Errors found before any token (e.g. prompt longer than the context)
    /// are returned here or as the first event.
    fn generate(&self, request: GenerateRequest) -> Result<Generation, EngineError>;
    /// Whether [`Engine::embed`] computes embeddings.
    fn embeds(&self) -> bool {
        false
    }
    /// Embeddings of `inputs` (L2-normalised, one per input, in order).
    fn embed(&self, inputs: Vec<String>) -> BoxFuture<'static, Result<Embeddings, EngineError>> {
        drop(inputs);
        Box::pin(async { Err(EngineError::InvalidRequest("this engine does not compute embeddings".into())) })
    }
}

/// Embeddings of a request's texts.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    /// One vector per input, in input order, each of length one (L2).
    pub vectors: Vec<Vec<f32>>,
    /// Tokens read, over all inputs.
    pub prompt_tokens: u32,
}

/// Scales `v` to length one (a zero vector stays zero).
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| f64::from(*x) * f64::from(*x)).sum::<f64>().sqrt();
    if norm > 0.0 {
        for x in v.iter_mut() {
            *x = (f64::from(*x) / norm) as f32;
        }
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Serialize, Deserialize)]
pub enum EngineError {
    #[error("the prompt has {prompt_tokens} tokens but the context holds {context}")]
    ContextOverflow { prompt_tokens: u32, context: u32 },
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("cannot load model {path}: {reason}")]
    Load { path: String, reason: String },
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("backend server unavailable at {url}: {reason}")]
    Unavailable { url: String, reason: String },
    #[error("backend server answered {status}: {message}")]
    BackendStatus { status: u16, message: String },
    #[error("backend server sent something unexpected: {0}")]
    BackendProtocol(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("the engine is busy: {0}")]
    Busy(String),
}

/// An error and its sources, joined with ": " (reqwest and io errors hide the useful part in
/// their sources).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}
