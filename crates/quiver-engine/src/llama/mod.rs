//! The llama.cpp engine: GGUF models on the CPU through `llama-cpp-2`.
//!
//! The model is loaded once, with one llama.cpp context holding up to `slots` sequences in a
//! unified KV cache, made at load time. One scheduler thread ([`scheduler`]) owns that context
//! and decodes all running generations together, one batch per step (continuous batching): the
//! next chunk of every prompt being read and one token for every sequence that is generating.
//! Each slot keeps the KV of its last prompt and answer, and a new request goes to the free slot
//! sharing the longest token prefix with it (prompt cache).
//!
//! llama.cpp's own logs go to `tracing` with target `llama-cpp-2` (model loading logs a lot at
//! info level; filter it with e.g. `llama-cpp-2=warn`).

mod scheduler;

use std::borrow::Cow;
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, mpsc as std_mpsc};

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::{LogOptions, send_logs_to_tracing};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::{Engine, EngineError, GenerateRequest, Generation, Input, ModelId, models};

/// The `llama-cpp-2` version this crate pins; part of [`Engine::build_id`].
const LLAMA_CPP_2_VERSION: &str = "0.1.160";
/// Largest prompt text (after the chat template) accepted, in bytes.
const MAX_INPUT_BYTES: usize = 4 << 20;
/// Most chat messages accepted in one request.
const MAX_MESSAGES: usize = 4096;
/// Largest decode batch (tokens of all sequences in one step).
const MAX_BATCH: u32 = 512;
/// Stack of the scheduler thread.
const THREAD_STACK: usize = 8 << 20;
/// Sequences decoded together when the configuration does not say (llama.cpp's server uses 4).
pub const DEFAULT_SLOTS: u32 = 4;
/// Most slots one engine runs.
pub const MAX_SLOTS: u32 = 64;
/// Requests waiting for a slot inside the engine, beyond which `generate` refuses as busy.
const MAX_WAITING: usize = 256;

/// Settings of a [`LlamaEngine`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlamaConfig {
    /// CPU threads of the engine (all its sequences are decoded together); 0 = all cores.
    pub threads: u32,
    /// Context size in tokens (prompt plus completion) of one request; 0 = the model's training
    /// context. Capped at the model's training context.
    pub context_size: u32,
    /// Sequences decoded together (the KV cache holds `slots × context_size` cells); 0 =
    /// [`DEFAULT_SLOTS`]. Capped at [`MAX_SLOTS`].
    pub slots: u32,
}

impl Default for LlamaConfig {
    fn default() -> Self {
        LlamaConfig { threads: 0, context_size: 2048, slots: 0 }
    }
}

/// The process-wide llama.cpp backend (it can be initialised only once).
fn backend() -> Result<&'static LlamaBackend, EngineError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            send_logs_to_tracing(LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| EngineError::Load { path: String::new(), reason: format!("cannot initialise llama.cpp: {e}") })
}

/// A GGUF model served by llama.cpp on the CPU.
pub struct LlamaEngine {
    inner: Arc<Inner>,
    /// To the scheduler thread; dropping the engine ends it once its generations are done.
    jobs: std_mpsc::SyncSender<scheduler::Job>,
}

struct Inner {
    model: LlamaModel,
    template: Option<LlamaChatTemplate>,
    id: ModelId,
    threads: u32,
    context_size: u32,
    slots: u32,
    /// Generations accepted and not yet ended (waiting or running).
    running: AtomicUsize,
    /// Completion tokens sampled, by every generation so far.
    sampled: AtomicU64,
    /// Prompt tokens taken from the prompt cache instead of being decoded, over all requests.
    cached: AtomicU64,
    /// Prompt tokens decoded, over all requests.
    prompt_decoded: AtomicU64,
}

/// Counts a generation in [`Inner::running`] from its acceptance until its job is dropped
/// (finished, failed or cancelled).
struct Running(Arc<Inner>);

impl Running {
    fn new(inner: &Arc<Inner>) -> Running {
        inner.running.fetch_add(1, Ordering::SeqCst);
        Running(Arc::clone(inner))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

impl fmt::Debug for LlamaEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LlamaEngine")
            .field("model", &self.inner.id)
            .field("threads", &self.inner.threads)
            .field("context_size", &self.inner.context_size)
            .field("slots", &self.inner.slots)
            .finish_non_exhaustive()
    }
}

impl LlamaEngine {
    /// Loads the GGUF file at `path` (blocking). `name` is the user-facing model name;
    /// `sha256` is the file's hash if already known (else it is computed).
    pub fn load(
        path: &Path,
        name: &str,
        sha256: Option<[u8; 32]>,
        config: LlamaConfig,
    ) -> Result<LlamaEngine, EngineError> {
        let load_err = |reason: String| EngineError::Load { path: path.display().to_string(), reason };
        let meta = std::fs::metadata(path).map_err(|e| load_err(e.to_string()))?;
        if !meta.is_file() {
            return Err(load_err("not a file".into()));
        }
        // Checks the header before llama.cpp sees the file.
        let gguf_name = models::gguf_general_name(path).map_err(|e| load_err(e.to_string()))?;
        let sha256 = match sha256 {
            Some(sha256) => sha256,
            None => models::sha256_file(path, &mut |_, _| {}).map_err(|e| load_err(e.to_string()))?,
        };
        let backend = backend()?;
        let model = LlamaModel::load_from_file(backend, path, &LlamaModelParams::default())
            .map_err(|e| load_err(format!("llama.cpp cannot load it: {e}")))?;
        let gguf_name = gguf_name
            .filter(|n| !n.trim().is_empty())
            .or_else(|| path.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_else(|| name.to_string());
        let template = match model.chat_template(None) {
            Ok(t) => Some(t),
            Err(e) => {
                warn!(model = name, error = %e, "the model has no usable chat template");
                None
            }
        };
        let threads = match config.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            n => n,
        }
        .min(256);
        let trained = model.n_ctx_train();
        let context_size = match (config.context_size, trained) {
            (0, t) => t,
            (c, 0) => c,
            (c, t) => c.min(t),
        };
        if context_size < 8 {
            return Err(load_err(format!("context size {context_size} is too small")));
        }
        let slots = match config.slots {
            0 => DEFAULT_SLOTS,
            n => n.min(MAX_SLOTS),
        };
        let id = ModelId { name: name.to_string(), gguf_name, sha256 };
        let inner = Arc::new(Inner {
            model,
            template,
            id,
            threads,
            context_size,
            slots,
            running: AtomicUsize::new(0),
            sampled: AtomicU64::new(0),
            cached: AtomicU64::new(0),
            prompt_decoded: AtomicU64::new(0),
        });
        let jobs = scheduler::start(&inner).map_err(load_err)?;
        info!(model = name, gguf_name = %inner.id.gguf_name, sha256 = %inner.id.sha256_hex(), threads,
            context_size, slots, "model loaded");
        Ok(LlamaEngine { inner, jobs })
    }

    /// Generations accepted and not yet ended: a dropped [`Generation`] leaves this count once
    /// the scheduler has seen the cancellation (within one decoding step).
    pub fn running_generations(&self) -> usize {
        self.inner.running.load(Ordering::SeqCst)
    }

    /// Sequences decoded together.
    pub fn slots(&self) -> u32 {
        self.inner.slots
    }

    /// Prompt tokens served from the prompt cache so far, and prompt tokens decoded.
    pub fn prompt_tokens_cached_and_decoded(&self) -> (u64, u64) {
        (self.inner.cached.load(Ordering::Relaxed), self.inner.prompt_decoded.load(Ordering::Relaxed))
    }

    /// Completion tokens sampled so far by all generations of this engine (sent or not).
    pub fn tokens_sampled(&self) -> u64 {
        self.inner.sampled.load(Ordering::SeqCst)
    }
}

impl Engine for LlamaEngine {
    fn model(&self) -> &ModelId {
        &self.inner.id
    }

    fn build_id(&self) -> String {
        format!("llama.cpp/llama-cpp-2={LLAMA_CPP_2_VERSION}")
    }

    fn threads(&self) -> u32 {
        self.inner.threads
    }

    fn context_size(&self) -> u32 {
        self.inner.context_size
    }

    fn capacity(&self) -> usize {
        self.inner.slots as usize
    }

    fn generate(&self, request: GenerateRequest) -> Result<Generation, EngineError> {
        request.params.validate()?;
        let tokens = self.inner.tokenize(&request.input)?;
        let context = self.inner.context_size;
        let prompt_tokens = u32::try_from(tokens.len()).unwrap_or(u32::MAX);
        if prompt_tokens == 0 {
            return Err(EngineError::InvalidRequest("the prompt is empty".into()));
        }
        if prompt_tokens >= context {
            return Err(EngineError::ContextOverflow { prompt_tokens, context });
        }
        let max_new = request.params.max_tokens.min(context - prompt_tokens);
        let (tx, rx) = mpsc::channel(Generation::CHANNEL);
        let job = scheduler::Job::new(tokens, request.params, max_new, tx, Running::new(&self.inner));
        self.jobs.try_send(job).map_err(|e| match e {
            std_mpsc::TrySendError::Full(_) => {
                EngineError::Busy(format!("{MAX_WAITING} requests already wait for this engine"))
            }
            std_mpsc::TrySendError::Disconnected(_) => {
                EngineError::Inference("the engine's scheduler has stopped".into())
            }
        })?;
        Ok(Generation::new(rx))
    }
}

impl Inner {
    /// The prompt's tokens: the chat template applied to messages, or the raw prompt (with BOS
    /// if the vocabulary wants one).
    fn tokenize(&self, input: &Input) -> Result<Vec<LlamaToken>, EngineError> {
        let too_long =
            |n: usize| EngineError::InvalidRequest(format!("the input has {n} bytes (most: {MAX_INPUT_BYTES})"));
        let text = match input {
            Input::Prompt(prompt) => Cow::Borrowed(prompt.as_str()),
            Input::Chat(messages) => {
                if messages.is_empty() {
                    return Err(EngineError::InvalidRequest("no messages".into()));
                }
                if messages.len() > MAX_MESSAGES {
                    return Err(EngineError::InvalidRequest(format!(
                        "{} messages (most: {MAX_MESSAGES})",
                        messages.len()
                    )));
                }
                let bytes: usize = messages.iter().map(|m| m.role.len() + m.content.len()).sum();
                if bytes > MAX_INPUT_BYTES {
                    return Err(too_long(bytes));
                }
                let template = self
                    .template
                    .as_ref()
                    .ok_or_else(|| EngineError::InvalidRequest("the model has no chat template".into()))?;
                let messages = messages
                    .iter()
                    .map(|m| LlamaChatMessage::new(m.role.clone(), m.content.clone()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| EngineError::InvalidRequest("a message contains a NUL".into()))?;
                let text = self
                    .model
                    .apply_chat_template(template, &messages, true)
                    .map_err(|e| EngineError::InvalidRequest(format!("cannot apply the chat template: {e}")))?;
                Cow::Owned(text)
            }
        };
        if text.len() > MAX_INPUT_BYTES {
            return Err(too_long(text.len()));
        }
        Ok(self.model.vocab().tokenize(text.as_bytes(), true, true))
    }
}
