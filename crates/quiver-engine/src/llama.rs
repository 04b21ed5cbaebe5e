//! The llama.cpp engine: GGUF models on the CPU through `llama-cpp-2`.
//!
//! The model is loaded once and shared; every generation gets its own context (KV cache) and
//! runs on its own thread, so generations may run in parallel.
//!
//! llama.cpp's own logs go to `tracing` with target `llama-cpp-2` (model loading logs a lot at
//! info level; filter it with e.g. `llama-cpp-2=warn`).

use std::borrow::Cow;
use std::fmt;
use std::num::NonZeroU32;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::{LogOptions, send_logs_to_tracing};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::{
    Engine, EngineError, FinishReason, GenEvent, GenerateRequest, Generation, Input, ModelId, SamplingParams,
    StopFilter, Usage, Utf8Assembler, models,
};

/// The `llama-cpp-2` version this crate pins; part of [`Engine::build_id`].
const LLAMA_CPP_2_VERSION: &str = "0.1.160";
/// Largest prompt text (after the chat template) accepted, in bytes.
const MAX_INPUT_BYTES: usize = 4 << 20;
/// Most chat messages accepted in one request.
const MAX_MESSAGES: usize = 4096;
/// Largest decode batch.
const MAX_BATCH: u32 = 512;
/// Stack of a generation thread.
const THREAD_STACK: usize = 8 << 20;

/// Settings of a [`LlamaEngine`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlamaConfig {
    /// CPU threads per generation; 0 = all cores.
    pub threads: u32,
    /// Context size in tokens (prompt plus completion); 0 = the model's training context.
    /// Capped at the model's training context.
    pub context_size: u32,
}

impl Default for LlamaConfig {
    fn default() -> Self {
        LlamaConfig { threads: 0, context_size: 2048 }
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
}

struct Inner {
    model: LlamaModel,
    template: Option<LlamaChatTemplate>,
    id: ModelId,
    threads: u32,
    context_size: u32,
    batch: u32,
    /// Creating contexts from one model in parallel is unsound in llama.cpp.
    new_context: Mutex<()>,
    /// Generation threads not yet finished.
    running: AtomicUsize,
    /// Completion tokens sampled, by every generation so far.
    sampled: AtomicU64,
}

/// Counts a generation thread in [`Inner::running`] from before its spawn until it ends (or its
/// spawn fails and the closure holding it is dropped).
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
        let id = ModelId { name: name.to_string(), gguf_name, sha256 };
        info!(model = name, gguf_name = %id.gguf_name, sha256 = %id.sha256_hex(), threads,
            context_size, "model loaded");
        Ok(LlamaEngine {
            inner: Arc::new(Inner {
                model,
                template,
                id,
                threads,
                context_size,
                batch: context_size.min(MAX_BATCH),
                new_context: Mutex::new(()),
                running: AtomicUsize::new(0),
                sampled: AtomicU64::new(0),
            }),
        })
    }

    /// Generation threads still running: a dropped [`Generation`] leaves this count once its
    /// thread has seen the cancellation.
    pub fn running_generations(&self) -> usize {
        self.inner.running.load(Ordering::SeqCst)
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
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        (cores / (self.inner.threads.max(1) as usize)).max(1)
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
        let running = Running::new(&self.inner);
        let job = Job { tokens, params: request.params, max_new };
        std::thread::Builder::new()
            .name("quiver-llama".into())
            .stack_size(THREAD_STACK)
            .spawn(move || running.0.run(job, tx))
            .map_err(|e| EngineError::Inference(format!("cannot start a thread: {e}")))?;
        Ok(Generation::new(rx))
    }
}

/// One generation's work.
struct Job {
    tokens: Vec<LlamaToken>,
    params: SamplingParams,
    /// Completion tokens allowed (`max_tokens` clamped to the room left in the context).
    max_new: u32,
}

type Events = mpsc::Sender<Result<GenEvent, EngineError>>;

/// Why a generation ended early.
enum Halt {
    /// The consumer dropped the [`Generation`].
    Cancelled,
    Failed(EngineError),
}

/// Maps a llama.cpp error to [`Halt::Failed`].
fn failed<E: fmt::Display>(what: &'static str) -> impl FnOnce(E) -> Halt {
    move |e| Halt::Failed(EngineError::Inference(format!("{what}: {e}")))
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

    /// Runs a generation on the current thread, reporting to `tx`.
    fn run(&self, job: Job, tx: Events) {
        let outcome = catch_unwind(AssertUnwindSafe(|| self.generate(&job, &tx)));
        let error = match outcome {
            Ok(Ok(())) | Ok(Err(Halt::Cancelled)) => return,
            Ok(Err(Halt::Failed(e))) => e,
            Err(_) => EngineError::Inference("llama.cpp generation panicked".into()),
        };
        warn!(error = %error, "generation failed");
        let _ = tx.blocking_send(Err(error));
    }

    fn generate(&self, job: &Job, tx: &Events) -> Result<(), Halt> {
        let send = |event: GenEvent| tx.blocking_send(Ok(event)).map_err(|_| Halt::Cancelled);
        let cancelled = || if tx.is_closed() { Err(Halt::Cancelled) } else { Ok(()) };

        let threads = i32::try_from(self.threads).unwrap_or(1);
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(self.context_size))
            .with_n_batch(self.batch)
            .with_n_ubatch(self.batch)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        let backend = backend().map_err(Halt::Failed)?;
        let mut ctx = {
            let _serialised = self.new_context.lock().unwrap_or_else(PoisonError::into_inner);
            self.model.new_context(backend, params).map_err(failed("cannot create a context"))?
        };
        let prompt_len = job.tokens.len();
        let needed = prompt_len as u64 + u64::from(job.max_new);
        if u64::from(ctx.n_ctx()) < needed {
            return Err(Halt::Failed(EngineError::Inference(format!(
                "llama.cpp made a context of {} tokens, {needed} needed",
                ctx.n_ctx()
            ))));
        }

        // The prompt, in batches; logits only for its last token.
        let mut batch = LlamaBatch::new(self.batch as usize, 1);
        let mut pos: i32 = 0;
        for chunk in job.tokens.chunks(self.batch as usize) {
            cancelled()?;
            batch.clear();
            for &token in chunk {
                let last = pos as usize + 1 == prompt_len;
                batch.add(token, pos, &[0], last).map_err(failed("batch"))?;
                pos += 1;
            }
            ctx.decode(&mut batch).map_err(failed("decoding the prompt failed"))?;
        }
        debug!(prompt_tokens = prompt_len, "prompt decoded");

        let p = &job.params;
        let mut sampler = if p.temperature <= 0.0 {
            LlamaSampler::greedy()
        } else {
            // llama.cpp takes u32::MAX as "pick a random seed".
            let seed = (p.seed as u32).min(u32::MAX - 1);
            LlamaSampler::chain_simple([
                LlamaSampler::top_p(p.top_p, 1),
                LlamaSampler::temp(p.temperature),
                LlamaSampler::dist(seed),
            ])
        };
        let vocab = self.model.vocab();
        let mut utf8 = Utf8Assembler::new();
        let mut stop = StopFilter::new(p.stop.clone());
        let mut logits_at = batch.n_tokens() - 1;
        let mut completion = 0u32;
        let finish_reason = loop {
            let token = sampler.sample(&ctx, logits_at);
            self.sampled.fetch_add(1, Ordering::Relaxed);
            if vocab.is_eog(token) {
                // Release what was held back, as a last event for no new token.
                let (mut text, stopped) = stop.push(&utf8.finish());
                if !stopped {
                    text.push_str(&stop.finish());
                }
                if !text.is_empty() {
                    send(GenEvent::Token { text, tokens: 0 })?;
                }
                break FinishReason::Stop;
            }
            completion += 1;
            let last = completion >= job.max_new;
            let mut piece = utf8.push(&vocab.token_to_piece(token, false, None));
            if last {
                piece.push_str(&utf8.finish());
            }
            let (mut text, stopped) = stop.push(&piece);
            if last && !stopped {
                text.push_str(&stop.finish());
            }
            send(GenEvent::Token { text, tokens: 1 })?;
            if stopped {
                break FinishReason::Stop;
            }
            if last {
                break FinishReason::Length;
            }
            batch.clear();
            batch.add(token, pos, &[0], true).map_err(failed("batch"))?;
            pos += 1;
            ctx.decode(&mut batch).map_err(failed("decoding failed"))?;
            logits_at = 0;
        };
        let usage =
            Usage { prompt_tokens: u32::try_from(prompt_len).unwrap_or(u32::MAX), completion_tokens: completion };
        debug!(%finish_reason, completion_tokens = completion, "generation done");
        send(GenEvent::Done { finish_reason, usage })
    }
}
