//! `quiver-provider` / `quiver provider`: a node that serves models.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use quiver_engine::llama::{LlamaConfig, LlamaEngine};
use quiver_engine::models::{self, ModelError};
use quiver_engine::openai::{OpenAiConfig, OpenAiEngine};
use quiver_engine::{Engine, GpuLayers, ModelId, host};
use quiver_node::ProviderConfig;
use quiver_node::config::LayersSetting;
use sha2::{Digest, Sha256};

use crate::model_cmd;
use crate::node_cmd::NodeArgs;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Backend {
    /// llama.cpp in this process, on the CPU (GGUF files).
    #[default]
    Llama,
    /// An OpenAI-compatible server (Ollama, llama.cpp server, vLLM, ...).
    Openai,
}

/// What a provider serves and how much work it takes.
#[derive(Debug, Clone, Args)]
pub struct ProviderArgs {
    /// Model to serve: a catalogue name or hf:OWNER/REPO:QUANT, hf:OWNER/REPO/FILE.gguf[@REV]
    /// (fetched if missing), ollama:NAME[:TAG] (read in place from Ollama's store), or a GGUF
    /// file path. Repeatable. [default: smollm2-135m]
    #[arg(long, value_name = "NAME|REF|PATH", env = "QUIVER_MODEL", value_delimiter = ',')]
    pub model: Vec<String>,
    /// Engine serving the models.
    #[arg(long, value_enum, default_value_t = Backend::Llama, env = "QUIVER_BACKEND")]
    pub backend: Backend,
    /// Base URL of the OpenAI-compatible server, e.g. http://127.0.0.1:11434/v1 (Ollama).
    #[arg(long, value_name = "URL", env = "QUIVER_BACKEND_URL")]
    pub backend_url: Option<String>,
    /// Model name on that server (the network name is --model, or this one if --model is not
    /// given).
    #[arg(long, value_name = "NAME", env = "QUIVER_BACKEND_MODEL")]
    pub backend_model: Option<String>,
    /// Bearer key for the backend server.
    #[arg(long, value_name = "KEY", env = "QUIVER_BACKEND_API_KEY", hide_env_values = true)]
    pub backend_api_key: Option<String>,
    /// CPU threads of the engine, shared by the requests it decodes together (llama backend).
    /// [default: the physical cores (hyperthreads not counted), no more than the CPUs this
    /// process may use]
    #[arg(long, env = "QUIVER_THREADS")]
    pub threads: Option<u32>,
    /// Context size in tokens of each slot (llama backend). [default: 2048 when the KV cache of
    /// all slots fits in half the memory available beside the model, else halved down to 512
    /// with 1 slot]
    #[arg(long, env = "QUIVER_CONTEXT_SIZE")]
    pub context_size: Option<u32>,
    /// Jobs run at once; with the llama backend, the sequences decoded together in one batch
    /// (each gets --context-size tokens of KV cache). [default for llama.cpp: 4, or as many (at
    /// least 1) as fit in half the memory available beside the model]
    #[arg(long, env = "QUIVER_MAX_CONCURRENT")]
    pub max_concurrent: Option<usize>,
    /// Layers offloaded to the GPU (llama backend, a build with feature cuda, vulkan or metal):
    /// a number (0 = CPU only; more than the model has = all), or "auto": as many as fit in the
    /// free memory of the GPU with the most, beside the KV cache of all slots. Without a GPU
    /// device everything runs on the CPU. [default: auto]
    #[arg(long, value_name = "N|auto", env = "QUIVER_GPU_LAYERS", value_parser = parse_gpu_layers)]
    pub gpu_layers: Option<GpuLayers>,
    /// Jobs waiting for a slot; beyond this, requests are refused as busy.
    #[arg(long, default_value_t = 8, env = "QUIVER_QUEUE")]
    pub queue: usize,
    /// Inference requests one peer may send per second, sustained; beyond it they are refused
    /// as rate limited.
    #[arg(long, value_name = "N", default_value_t = quiver_node::REQUESTS_PER_SEC, env = "QUIVER_PEER_REQUESTS_PER_SEC")]
    pub peer_requests_per_sec: u32,
    /// Inference requests one peer may send at once, beyond its sustained rate.
    #[arg(long, value_name = "N", default_value_t = quiver_node::REQUEST_BURST, env = "QUIVER_PEER_REQUEST_BURST")]
    pub peer_request_burst: u32,
    /// Split the model over this machine and a member of its group (repeatable): a node run
    /// with `--shard-host --shard-allow <this node's PeerId>`, found through the DHT. The
    /// layers are dealt in proportion to free memory (or --shard-split); the split model is
    /// then served like any other. One --model only.
    #[arg(long, value_name = "PEERID", env = "QUIVER_SHARD_PEERS", value_delimiter = ',')]
    pub shard_peer: Vec<quiver_net::PeerId>,
    /// Weights of the split's stages, this machine first, then each --shard-peer in order,
    /// e.g. 1,2,2 (a weight of 0 keeps no layer here). [default: free memory]
    #[arg(long, value_name = "W,W,...", env = "QUIVER_SHARD_SPLIT", value_delimiter = ',')]
    pub shard_split: Vec<f64>,
    /// Where models are kept. [default: <data-dir>/models]
    #[arg(long, value_name = "DIR", env = "QUIVER_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    /// Do not download a missing catalogue or Hugging Face model.
    #[arg(long)]
    pub no_fetch: bool,
}

/// A `--gpu-layers` value (clap makes a bad one a usage error, exit 2).
pub(crate) fn parse_gpu_layers(s: &str) -> Result<GpuLayers, String> {
    s.parse::<GpuLayers>().map_err(|e| e.to_string())
}

/// `gpu_layers` of the config file.
pub(crate) fn gpu_layers_from_file(setting: &LayersSetting) -> Result<GpuLayers, String> {
    match setting {
        LayersSetting::Count(n) => Ok(GpuLayers::Count(u32::try_from(*n).unwrap_or(u32::MAX))),
        LayersSetting::Word(w) => parse_gpu_layers(w),
    }
}

/// `quiver-provider [start] [FLAGS]`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ProviderCli {
    #[command(subcommand)]
    pub command: Option<ProviderCommand>,
    #[command(flatten)]
    pub node: NodeArgs,
    #[command(flatten)]
    pub provider: ProviderArgs,
}

#[derive(Debug, Subcommand)]
pub enum ProviderCommand {
    /// Serve the models (the same as giving no subcommand).
    #[command(after_help = crate::help::PROVIDER_BIN)]
    Start {
        #[command(flatten)]
        node: NodeArgs,
        #[command(flatten)]
        provider: ProviderArgs,
    },
}

impl ProviderCli {
    pub async fn run(self) -> anyhow::Result<()> {
        let (node, provider) = match self.command {
            Some(ProviderCommand::Start { node, provider }) => (node, provider),
            None => (self.node, self.provider),
        };
        crate::node_cmd::run_with(node, Some(provider)).await
    }
}

/// Resolves a model reference to a local file, fetching a catalogue or `hf:` model when allowed.
pub async fn local_model(name: &str, models_dir: &Path, fetch: bool) -> anyhow::Result<models::LocalModel> {
    match models::resolve_local(name, models_dir) {
        Ok(m) => Ok(m),
        Err(ModelError::NotFetched { .. }) if fetch => {
            model_cmd::fetch(name, &[], models_dir).await?;
            Ok(models::resolve_local(name, models_dir)?)
        }
        Err(e) => Err(e.into()),
    }
}

/// Loads a llama.cpp engine for `model`, showing what it does.
pub async fn load_llama(model: models::LocalModel, config: LlamaConfig) -> anyhow::Result<LlamaEngine> {
    let started = Instant::now();
    // A spinner with the time so far while llama.cpp loads (drawn only on a terminal).
    let from = match &model.details {
        Some(details) => format!("{details}, {}", model.path.display()),
        None => model.path.display().to_string(),
    };
    let spinner = ProgressBar::new_spinner().with_message(format!("loading {} from {from}", model.name));
    spinner.set_style(
        ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    if spinner.is_hidden() {
        eprintln!("loading {} from {from} ...", model.name);
    }
    spinner.enable_steady_tick(Duration::from_millis(100));
    let known_sha = model.sha256;
    let name = model.name.clone();
    let path = model.path.clone();
    let loaded = tokio::task::spawn_blocking(move || LlamaEngine::load(&path, &name, known_sha, config)).await;
    spinner.finish_and_clear();
    let engine = loaded.context("model loading task")??;
    let device = engine.device();
    let placed = match device.gpu_layers {
        0 => "on the CPU".to_owned(),
        n => format!("{n} of {} layers on {}", device.layers, device.device),
    };
    eprintln!(
        "loaded {} ({}, sha256 {}) in {:.1} s, {} threads, {} tokens × {} slots, {placed}",
        engine.model().name,
        engine.model().gguf_name,
        engine.model().sha256_hex(),
        started.elapsed().as_secs_f64(),
        engine.threads(),
        engine.context_size(),
        engine.slots()
    );
    Ok(engine)
}

/// Builds the engines the flags ask for; `file_gpu_layers` is the config file's `gpu_layers`
/// (the flag and `QUIVER_GPU_LAYERS` win over it).
pub async fn build(
    p: &ProviderArgs,
    data_dir: &Path,
    file_gpu_layers: Option<GpuLayers>,
) -> anyhow::Result<ProviderConfig> {
    let models_dir = model_cmd::models_dir(p.models_dir.as_deref(), Some(data_dir));
    let mut engines: Vec<Arc<dyn Engine>> = Vec::new();
    if !p.shard_peer.is_empty() {
        return build_shard_head(p, &models_dir).await;
    }
    match p.backend {
        Backend::Llama => {
            let names = if p.model.is_empty() { vec![models::DEFAULT_MODEL.to_owned()] } else { p.model.clone() };
            let gpu_layers = p.gpu_layers.or(file_gpu_layers).unwrap_or_default();
            // Memory taken by the models loaded before this one (weights and KV cache).
            let available = host::available_memory();
            let mut committed = 0u64;
            for name in names {
                let model = local_model(&name, &models_dir, !p.no_fetch).await?;
                let layout = models::gguf_layout(&model.path).unwrap_or_default();
                let (context_size, slots) = host::memory_defaults(
                    available.map(|a| a.saturating_sub(committed)),
                    layout.file_bytes,
                    layout.kv_per_token(),
                    p.context_size,
                    p.max_concurrent.map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
                );
                let kv = layout.kv_per_token().saturating_mul(u64::from(context_size) * u64::from(slots));
                committed = committed.saturating_add(layout.file_bytes).saturating_add(kv);
                let config =
                    LlamaConfig { threads: p.threads.unwrap_or(0), context_size, slots, gpu_layers, split: None };
                engines.push(Arc::new(load_llama(model, config).await?));
            }
        }
        Backend::Openai => {
            let Some(url) = p.backend_url.clone() else { bail!("--backend openai needs --backend-url") };
            let backend_model = match (&p.backend_model, p.model.first()) {
                (Some(m), _) => m.clone(),
                (None, Some(m)) => m.clone(),
                (None, None) => bail!("--backend openai needs --backend-model (the model name on that server)"),
            };
            let name = p.model.first().cloned().unwrap_or_else(|| backend_model.clone());
            quiver_proto::infer::validate_model_name(&name).with_context(|| format!("model name {name:?}"))?;
            // No file to hash: the identity of a served remote model is the hash of its name on
            // the server, so providers of the same remote model agree.
            let sha256: [u8; 32] = Sha256::digest(format!("openai-compatible:{backend_model}")).into();
            let id = ModelId { name, gguf_name: backend_model.clone(), sha256 };
            let config = OpenAiConfig {
                base_url: url,
                model: backend_model,
                api_key: p.backend_api_key.clone(),
                ..OpenAiConfig::default()
            };
            engines.push(Arc::new(OpenAiEngine::new(config, id)?));
        }
    }
    let capacity = engines.iter().map(|e| e.capacity()).min().unwrap_or(1);
    Ok(ProviderConfig {
        requests_per_sec: p.peer_requests_per_sec.max(1),
        request_burst: p.peer_request_burst.max(1),
        ..ProviderConfig::new(engines, p.max_concurrent.unwrap_or(capacity).max(1), p.queue)
    })
}

/// The head of a split model: `--model M --shard-peer PEERID...`. The model is loaded later, by
/// the node, once its members answer (see `quiver_node::shard`).
async fn build_shard_head(p: &ProviderArgs, models_dir: &Path) -> anyhow::Result<ProviderConfig> {
    if p.backend != Backend::Llama {
        bail!("--shard-peer needs the llama backend");
    }
    if p.model.len() > 1 {
        bail!("--shard-peer splits one model: give one --model");
    }
    if !quiver_engine::split::rpc::available() {
        bail!("this build has no ggml RPC backend (built without GGML_RPC=ON?)");
    }
    let weights = match p.shard_split.len() {
        0 => None,
        n if n == p.shard_peer.len() + 1 => Some(p.shard_split.clone()),
        n => bail!(
            "--shard-split has {n} weights; it needs {} (this machine, then each --shard-peer)",
            p.shard_peer.len() + 1
        ),
    };
    let name = p.model.first().cloned().unwrap_or_else(|| models::DEFAULT_MODEL.to_owned());
    let model = local_model(&name, models_dir, !p.no_fetch).await?;
    let sha256 = match model.sha256 {
        Some(s) => s,
        None => {
            let path = model.path.clone();
            tokio::task::spawn_blocking(move || models::sha256_file(&path, &mut |_, _| {})).await??
        }
    };
    let gguf_name = models::gguf_general_name(&model.path)?.unwrap_or_else(|| model.name.clone());
    let layout = models::gguf_layout(&model.path)?;
    let blocks = layout.offloadable_layers().saturating_sub(1);
    if blocks == 0 {
        bail!("cannot read the layers of {}", model.path.display());
    }
    let (context_size, slots) = host::memory_defaults(
        host::available_memory(),
        layout.file_bytes,
        layout.kv_per_token(),
        p.context_size,
        p.max_concurrent.map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
    );
    let worker_program = std::env::current_exe().context("cannot find this program to run its engine worker")?;
    let head = quiver_node::shard::ShardHead::new(quiver_node::shard::ShardHeadConfig {
        path: model.path.clone(),
        id: ModelId { name: model.name.clone(), gguf_name, sha256 },
        blocks,
        file_bytes: layout.file_bytes,
        members: p.shard_peer.clone(),
        weights,
        // Resolved here (the worker resolves 0 the same way), so heartbeats name the same
        // threads before and after each load.
        threads: p.threads.filter(|&t| t > 0).unwrap_or_else(host::default_threads).min(256),
        context_size,
        slots,
        worker_program,
        load_timeout: Duration::from_secs(1800),
    });
    eprintln!(
        "{} will be split over this machine and {} members; loading once they answer",
        model.name,
        p.shard_peer.len()
    );
    let engines = vec![head.engine()];
    Ok(ProviderConfig {
        requests_per_sec: p.peer_requests_per_sec.max(1),
        request_burst: p.peer_request_burst.max(1),
        shard_head: Some(head),
        ..ProviderConfig::new(engines, p.max_concurrent.unwrap_or(slots as usize).max(1), p.queue)
    })
}
