//! The llama.cpp engine: GGUF models through `llama-cpp-2`, on the CPU, with layers offloaded
//! to a GPU when the build has a GPU backend (features `cuda`, `vulkan`, `metal`; see [`gpu`]).
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

mod embed;
pub mod gpu;
mod scheduler;

use std::borrow::Cow;
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, mpsc as std_mpsc};

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::{LogOptions, send_logs_to_tracing};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::chat::grammar::{self, Constraint};
use crate::chat::template::ChatTemplate;
use crate::chat::tools::{self, ToolFormat};
use crate::split::SplitTarget;
use crate::{
    ChatMessage, DeviceInfo, Embeddings, Engine, EngineError, GenerateRequest, Generation, Input, ModelId, Tools, host,
    models,
};
use futures::future::BoxFuture;
use gpu::GpuLayers;

/// The `llama-cpp-2` version this crate pins; part of [`Engine::build_id`].
pub(crate) const LLAMA_CPP_2_VERSION: &str = "0.1.160";
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
    /// CPU threads of the engine (all its sequences are decoded together); 0 = the physical
    /// cores ([`host::default_threads`]).
    pub threads: u32,
    /// Context size in tokens (prompt plus completion) of one request; 0 = the model's training
    /// context. Capped at the model's training context.
    pub context_size: u32,
    /// Sequences decoded together (the KV cache holds `slots × context_size` cells); 0 =
    /// [`DEFAULT_SLOTS`]. Capped at [`MAX_SLOTS`].
    pub slots: u32,
    /// Layers offloaded to the GPU with the most free memory, if the build has one.
    pub gpu_layers: GpuLayers,
    /// The model's layers split over this CPU and RPC servers (see [`crate::split`]); used in
    /// an engine worker process only, since ggml's RPC client aborts on a lost server.
    pub split: Option<SplitTarget>,
}

impl Default for LlamaConfig {
    fn default() -> Self {
        LlamaConfig { threads: 0, context_size: 2048, slots: 0, gpu_layers: GpuLayers::Auto, split: None }
    }
}

/// The process-wide llama.cpp backend (it can be initialised only once).
pub(crate) fn backend() -> Result<&'static LlamaBackend, EngineError> {
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
    /// To the embedding thread, started at the first embedding request.
    embedder: OnceLock<Result<std_mpsc::SyncSender<embed::EmbedJob>, String>>,
}

struct Inner {
    model: LlamaModel,
    /// The GGUF's own Jinja template, when it has one that parses.
    jinja: Option<ChatTemplate>,
    /// llama.cpp's built-in template for the model (used when there is no Jinja one).
    template: Option<LlamaChatTemplate>,
    id: ModelId,
    threads: u32,
    context_size: u32,
    slots: u32,
    /// Where the layers run.
    device: DeviceInfo,
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
        let slots = match config.slots {
            0 => DEFAULT_SLOTS,
            n => n.min(MAX_SLOTS),
        };
        let (model, device) = match &config.split {
            Some(target) => split_placement(path, target).map_err(|e| load_err(e.to_string()))?,
            None => {
                let (params, device) = placement(path, &config, slots)?;
                let model = LlamaModel::load_from_file(backend, path, &params)
                    .map_err(|e| load_err(format!("llama.cpp cannot load it: {e}")))?;
                (model, device)
            }
        };
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
        let jinja = jinja_template(&model, name);
        let threads = match config.threads {
            0 => host::default_threads(),
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
        let inner = Arc::new(Inner {
            model,
            jinja,
            template,
            id,
            threads,
            context_size,
            slots,
            device,
            running: AtomicUsize::new(0),
            sampled: AtomicU64::new(0),
            cached: AtomicU64::new(0),
            prompt_decoded: AtomicU64::new(0),
        });
        let jobs = scheduler::start(&inner).map_err(load_err)?;
        info!(model = name, gguf_name = %inner.id.gguf_name, sha256 = %inner.id.sha256_hex(), threads,
            context_size, slots, device = %inner.device.device, gpu_layers = inner.device.gpu_layers,
            layers = inner.device.layers, "model loaded");
        Ok(LlamaEngine { inner, jobs, embedder: OnceLock::new() })
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

    /// The token ids of `text` as the model reads it (no BOS), e.g. for `logit_bias`.
    pub fn tokenize_text(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        if text.len() > MAX_INPUT_BYTES {
            return Err(EngineError::InvalidRequest(format!("the text has {} bytes", text.len())));
        }
        let tokens = self.inner.model.vocab().tokenize(text.as_bytes(), false, false);
        Ok(tokens.into_iter().filter_map(|t| u32::try_from(t.0).ok()).collect())
    }

    /// The text of token ids; an id outside the vocabulary is an invalid request.
    pub fn detokenize(&self, tokens: &[u32]) -> Result<String, EngineError> {
        let vocab = self.inner.model.vocab();
        let mut text = crate::Utf8Assembler::new();
        let mut out = String::new();
        for &t in tokens {
            let token = i32::try_from(t)
                .ok()
                .filter(|&t| t < vocab.n_tokens())
                .ok_or_else(|| EngineError::InvalidRequest(format!("token {t} is not in the vocabulary")))?;
            out.push_str(&text.push(&vocab.token_to_piece(LlamaToken(token), false, None)));
        }
        out.push_str(&text.finish());
        Ok(out)
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
        // Offloaded layers compute on another device, whose numbers differ from the CPU's: only
        // engines placed alike are compared when outputs are verified.
        let d = &self.inner.device;
        if d.device.starts_with("rpc") {
            return crate::split::build_id();
        }
        match d.gpu_layers {
            0 => format!("llama.cpp/llama-cpp-2={LLAMA_CPP_2_VERSION}"),
            n => format!("llama.cpp/llama-cpp-2={LLAMA_CPP_2_VERSION}+{}:{n}/{}", d.device, d.layers),
        }
    }

    fn device(&self) -> DeviceInfo {
        self.inner.device.clone()
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
        request.tools.validate()?;
        if request.tools.active() && !matches!(request.input, Input::Chat(_)) {
            return Err(EngineError::InvalidRequest("tools need chat messages, not a prompt".into()));
        }
        let tokens = self.inner.tokenize(&request.input, &request.tools)?;
        let constraint = grammar::constraint(&request.params, &request.tools, self.inner.tool_format())?;
        if let Some(c) = &constraint {
            // Built here too so that a grammar llama.cpp refuses is a refusal before any work.
            sampler_for(&self.inner.model, c)?;
        }
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
        let job = scheduler::Job::new(tokens, request.params, constraint, max_new, tx, Running::new(&self.inner));
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

    fn embeds(&self) -> bool {
        true
    }

    fn embed(&self, inputs: Vec<String>) -> BoxFuture<'static, Result<Embeddings, EngineError>> {
        let queued = self.queue_embedding(inputs);
        Box::pin(async move {
            queued?.await.map_err(|_| EngineError::Inference("the embedding thread has stopped".into()))?
        })
    }
}

impl LlamaEngine {
    /// Tokenizes `inputs` and hands them to the embedding thread (started now if need be).
    fn queue_embedding(
        &self,
        inputs: Vec<String>,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<Embeddings, EngineError>>, EngineError> {
        if inputs.is_empty() {
            return Err(EngineError::InvalidRequest("nothing to embed".into()));
        }
        let vocab = self.inner.model.vocab();
        let context = self.inner.context_size;
        let mut tokens = Vec::with_capacity(inputs.len());
        for (i, text) in inputs.iter().enumerate() {
            if text.len() > MAX_INPUT_BYTES {
                return Err(EngineError::InvalidRequest(format!("input {i} has {} bytes", text.len())));
            }
            let t = vocab.tokenize(text.as_bytes(), true, false);
            let n = u32::try_from(t.len()).unwrap_or(u32::MAX);
            if t.is_empty() {
                return Err(EngineError::InvalidRequest(format!("input {i} is empty")));
            }
            if n > context {
                return Err(EngineError::ContextOverflow { prompt_tokens: n, context });
            }
            tokens.push(t);
        }
        let embedder = self
            .embedder
            .get_or_init(|| embed::start(&self.inner))
            .as_ref()
            .map_err(|e| EngineError::Inference(e.clone()))?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        embedder.try_send(embed::EmbedJob { inputs: tokens, reply }).map_err(|e| match e {
            std_mpsc::TrySendError::Full(_) => {
                EngineError::Busy(format!("{} embedding requests already wait", embed::MAX_WAITING))
            }
            std_mpsc::TrySendError::Disconnected(_) => {
                EngineError::Inference("the embedding thread has stopped".into())
            }
        })?;
        Ok(answer)
    }
}

/// Where the model's layers go: the model parameters for llama.cpp and what they mean. Without a
/// GPU device (a CPU-only build, or no device found) everything stays on the CPU; with one, the
/// layers [`gpu::layers_to_offload`] gives go to it, the KV cache of `slots × context_size` cells
/// counted (a model whose header cannot be read for `auto` stays on the CPU).
/// Loads the model split as `target` says: connects to each member's RPC server, then loads
/// with the head's blocks on this CPU and each member's on its devices.
fn split_placement(path: &Path, target: &SplitTarget) -> Result<(LlamaModel, DeviceInfo), crate::split::SplitError> {
    use crate::split::{LayerPlan, SplitError, load, rpc};
    let plan = LayerPlan { counts: target.counts.clone() };
    if target.endpoints.len() + 1 != plan.counts.len() {
        return Err(SplitError::Plan(format!("{} endpoints for {} stages", target.endpoints.len(), plan.counts.len())));
    }
    // Every device each member serves (its GPUs, or its CPU); a member's blocks are dealt over
    // its devices by their free memory.
    let mut devices = Vec::with_capacity(target.endpoints.len());
    let mut free = Vec::with_capacity(target.endpoints.len());
    for endpoint in &target.endpoints {
        let found = rpc::add_server(endpoint)?;
        free.push(rpc::free_memory(&found));
        devices.extend(found);
    }
    let model = load::load(path, &devices, &plan.over_devices(&free))?;
    let blocks = plan.blocks();
    let info = DeviceInfo {
        device: format!("rpc×{}", target.endpoints.len()),
        memory_total: 0,
        memory_free: 0,
        gpu_layers: blocks - plan.counts[0],
        layers: blocks + 1,
    };
    Ok((model, info))
}

fn placement(path: &Path, config: &LlamaConfig, slots: u32) -> Result<(LlamaModelParams, DeviceInfo), EngineError> {
    let layout = match models::gguf_layout(path) {
        Ok(l) => Some(l),
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot read the model's layer sizes");
            None
        }
    };
    let layers = layout.as_ref().map_or(0, models::GgufLayout::offloadable_layers);
    let cpu = || -> Result<(LlamaModelParams, DeviceInfo), EngineError> {
        // No device at all, so that no work goes to a GPU either.
        let params = LlamaModelParams::default()
            .with_n_gpu_layers(0)
            .with_devices(&[])
            .map_err(|e| EngineError::Load { path: path.display().to_string(), reason: e.to_string() })?;
        Ok((params, DeviceInfo::cpu(layers)))
    };
    let device = gpu::best_gpu();
    let Some(device) = device else {
        if matches!(config.gpu_layers, GpuLayers::Count(n) if n > 0) {
            warn!(gpu_layers = %config.gpu_layers, "no GPU device in this build (features cuda, vulkan, metal): all layers on the CPU");
        }
        return cpu();
    };
    let kv_cells = u64::from(slots).saturating_mul(u64::from(config.context_size.max(1)));
    let n = match (&layout, config.gpu_layers) {
        (_, GpuLayers::Count(n)) => n.min(if layers == 0 { n } else { layers }),
        (Some(l), GpuLayers::Auto) => {
            gpu::layers_to_offload(GpuLayers::Auto, Some(&device), l, kv_cells, u64::from(MAX_BATCH))
        }
        (None, GpuLayers::Auto) => 0,
    };
    info!(device = %device.label(), free = device.memory_free, total = device.memory_total, gpu_layers = n, layers,
        want = %config.gpu_layers, "GPU device");
    if n == 0 {
        return cpu();
    }
    let params = LlamaModelParams::default()
        .with_n_gpu_layers(n)
        .with_devices(&[device.index])
        .map_err(|e| EngineError::Load { path: path.display().to_string(), reason: e.to_string() })?;
    let info = DeviceInfo {
        device: device.label(),
        memory_total: device.memory_total,
        memory_free: device.memory_free,
        gpu_layers: n,
        layers,
    };
    Ok((params, info))
}

/// The GGUF's `tokenizer.chat_template` parsed as Jinja, or `None` (logged) when it has none or
/// it does not parse.
fn jinja_template(model: &LlamaModel, name: &str) -> Option<ChatTemplate> {
    let source = model.meta_val_str("tokenizer.chat_template").ok()?;
    let vocab = model.vocab();
    let text = |token: LlamaToken| {
        (token.0 >= 0 && token.0 < vocab.n_tokens())
            .then(|| vocab.text(token).map(|t| t.to_string_lossy().into_owned()))
            .flatten()
            .unwrap_or_default()
    };
    match ChatTemplate::new(&source, &text(vocab.bos()), &text(vocab.eos())) {
        Ok(t) => Some(t),
        Err(e) => {
            warn!(model = name, error = %e, "the model's Jinja chat template cannot be used; llama.cpp's built-in one is");
            None
        }
    }
}

/// The grammar sampler of a constraint (lazy when it has triggers).
pub(crate) fn sampler_for(model: &LlamaModel, c: &Constraint) -> Result<LlamaSampler, EngineError> {
    let made = if c.triggers.is_empty() {
        LlamaSampler::grammar(model, &c.grammar, &c.root)
    } else {
        LlamaSampler::grammar_lazy(model, &c.grammar, &c.root, &c.triggers, &[])
    };
    made.map_err(|e| EngineError::InvalidRequest(format!("llama.cpp refuses the grammar: {e}")))
}

impl Inner {
    /// How the model calls tools.
    fn tool_format(&self) -> ToolFormat {
        self.jinja.as_ref().map_or(ToolFormat::Generic, ChatTemplate::tool_format)
    }

    /// The prompt's tokens: the chat template applied to messages, or the raw prompt (with BOS
    /// if the vocabulary wants one).
    fn tokenize(&self, input: &Input, tools: &Tools) -> Result<Vec<LlamaToken>, EngineError> {
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
                let bytes: usize = messages
                    .iter()
                    .map(|m| {
                        m.role.len()
                            + m.content.len()
                            + m.tool_calls.iter().map(|c| c.name.len() + c.arguments.len() + c.id.len()).sum::<usize>()
                    })
                    .sum();
                if bytes > MAX_INPUT_BYTES {
                    return Err(too_long(bytes));
                }
                if messages.iter().any(|m| m.role.contains('\0') || m.content.contains('\0')) {
                    return Err(EngineError::InvalidRequest("a message contains a NUL".into()));
                }
                Cow::Owned(match &self.jinja {
                    Some(jinja) => self.strip_bos(
                        jinja
                            .render(messages, tools)
                            .map_err(|e| EngineError::InvalidRequest(format!("cannot apply the chat template: {e}")))?,
                    ),
                    None => self.builtin_template(messages, tools)?,
                })
            }
        };
        if text.len() > MAX_INPUT_BYTES {
            return Err(too_long(text.len()));
        }
        Ok(self.model.vocab().tokenize(text.as_bytes(), true, true))
    }

    /// Without the BOS text a template wrote first when tokenizing adds BOS anyway (as llama.cpp
    /// does), so the prompt does not start with two.
    fn strip_bos(&self, text: String) -> String {
        let vocab = self.model.vocab();
        let bos = vocab.bos();
        if !vocab.should_add_bos() || bos.0 < 0 || bos.0 >= vocab.n_tokens() {
            return text;
        }
        match vocab.text(bos).map(|t| t.to_string_lossy().into_owned()) {
            Some(b) if !b.is_empty() && text.starts_with(&b) => text[b.len()..].to_owned(),
            _ => text,
        }
    }

    /// llama.cpp's built-in template; tools are shown in a system message, calls and results as
    /// text.
    fn builtin_template(&self, messages: &[ChatMessage], tools: &Tools) -> Result<String, EngineError> {
        let template = self
            .template
            .as_ref()
            .ok_or_else(|| EngineError::InvalidRequest("the model has no chat template".into()))?;
        let mut plain: Vec<(String, String)> = Vec::with_capacity(messages.len() + 1);
        if tools.active() {
            plain.push(("system".into(), tools::system_prompt(tools, ToolFormat::Generic)));
        }
        for m in messages {
            let mut content = m.content.clone();
            if !m.tool_calls.is_empty() {
                let calls = tools::calls_as_text(&m.tool_calls, ToolFormat::Generic);
                content = if content.is_empty() { calls } else { format!("{content}\n{calls}") };
            }
            if m.role == "tool" {
                content = format!("<tool_response>\n{content}\n</tool_response>");
            }
            plain.push((m.role.clone(), content));
        }
        let messages = plain
            .into_iter()
            .map(|(role, content)| LlamaChatMessage::new(role, content))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| EngineError::InvalidRequest("a message contains a NUL".into()))?;
        self.model
            .apply_chat_template(template, &messages, true)
            .map_err(|e| EngineError::InvalidRequest(format!("cannot apply the chat template: {e}")))
    }
}
