//! Models on this machine: the catalogue (`catalogue.rs`), fetching its files (`fetch.rs`),
//! model references (`reference.rs`), Hugging Face repositories (`hf/`), Ollama's store
//! (`ollama.rs`), finding model files locally (here) and reading GGUF metadata (`gguf.rs`).

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

mod catalogue;
mod fetch;
mod gguf;
pub mod hf;
pub mod ollama;
mod reference;

pub use catalogue::{CatalogueEntry, DEFAULT_MODEL, Source, catalogue, find};
pub use fetch::{FetchProgress, fetch};
pub use gguf::{GgufLayout, GgufTensor, gguf_general_name, gguf_layout, gguf_tensors};
pub use reference::{HF_DEFAULT_REVISION, HfRef, HfTarget, ModelRef, OLLAMA_DEFAULT_TAG, OllamaRef};

/// Block size for hashing and copying.
const BLOCK: usize = 1 << 20;

/// Lowercase hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// Parses 64 hexadecimal digits (either case).
pub fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

/// Why a model could not be found, fetched or read.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("model {name} is not fetched yet: run `quiver model fetch {name}`")]
    NotFetched { name: String },
    #[error("unknown model {name:?} (known: {})", known.join(", "))]
    Unknown { name: String, known: Vec<String> },
    #[error("checksum mismatch for {}: expected sha256 {expected}, got {actual}", path.display())]
    Checksum { path: PathBuf, expected: String, actual: String },
    #[error("size mismatch: expected {expected} bytes, got {actual}")]
    Size { expected: u64, actual: u64 },
    #[error("{from}: {reason}")]
    Source { from: String, reason: String },
    #[error("every source failed: {}", .0.join("; "))]
    AllSourcesFailed(Vec<String>),
    #[error("not a usable GGUF file: {0}")]
    Gguf(String),
    #[error("bad model reference {reference:?}: {reason}")]
    BadReference { reference: String, reason: String },
    #[error("{url}: {reason}")]
    Hub { url: String, reason: String },
    #[error("{repo} has no GGUF file for quantisation {quant} (it has: {})", available.join(", "))]
    NoSuchQuant { repo: String, quant: String, available: Vec<String> },
    #[error("{repo} has several GGUF models{}: name one with hf:{repo}:QUANT or hf:{repo}/FILE.gguf (candidates: {})", quant.as_ref().map(|q| format!(" for {q}")).unwrap_or_default(), candidates.join(", "))]
    AmbiguousQuant { repo: String, quant: Option<String>, candidates: Vec<String> },
    #[error("no Ollama store: set OLLAMA_MODELS (or HOME, for ~/.ollama/models)")]
    NoOllamaStore,
    #[error("Ollama has no model {model}: {} does not exist (pull it with `ollama pull {}`)", path.display(), model.trim_start_matches("ollama:"))]
    OllamaNotPulled { model: String, path: PathBuf },
    #[error("Ollama manifest {}: {reason}", path.display())]
    OllamaManifest { path: PathBuf, reason: String },
    #[error("Ollama blob {}: {reason}", path.display())]
    OllamaBlob { path: PathBuf, reason: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ModelError + '_ {
    move |source| ModelError::Io { path: path.to_path_buf(), source }
}

/// The sha256 of a file, read in 1 MiB blocks; `progress(done, total)` after each block.
pub fn sha256_file(path: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<[u8; 32], ModelError> {
    let mut file = File::open(path).map_err(io_err(path))?;
    let total = file.metadata().map_err(io_err(path))?.len();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; BLOCK];
    let mut done = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(path)(e)),
        };
        hasher.update(&buf[..n]);
        done += n as u64;
        progress(done, total);
    }
    Ok(hasher.finalize().into())
}

/// A model file on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalModel {
    /// The name the model is served under.
    pub name: String,
    /// The GGUF file (for a split GGUF, its first part).
    pub path: PathBuf,
    /// The catalogue entry when the model was named by its catalogue name.
    pub entry: Option<CatalogueEntry>,
    /// The file's sha256 when already known (catalogue, Hugging Face, Ollama's digest); else
    /// the engine hashes the file when it loads it.
    pub sha256: Option<[u8; 32]>,
    /// Where the model comes from, for people: e.g. `ollama:smollm2:latest`.
    pub details: Option<String>,
}

impl LocalModel {
    fn from_path(path: &Path) -> LocalModel {
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        LocalModel { name, path: path.to_path_buf(), entry: None, sha256: None, details: None }
    }

    fn from_entry(entry: CatalogueEntry, path: PathBuf) -> LocalModel {
        LocalModel { name: entry.name.clone(), path, sha256: Some(entry.sha256), details: None, entry: Some(entry) }
    }
}

/// Finds a model on this machine from a reference ([`ModelRef`]): a catalogue name (in
/// `models_dir`), a file path, an `hf:` reference already fetched into `models_dir`, or an
/// `ollama:` reference in Ollama's store ([`ollama::default_store`]). Nothing is downloaded:
/// a catalogue or `hf:` model not fetched yet is [`ModelError::NotFetched`].
pub fn resolve_local(reference: &str, models_dir: &Path) -> Result<LocalModel, ModelError> {
    match ModelRef::parse(reference)? {
        ModelRef::Path(path) => {
            let meta = std::fs::metadata(&path).map_err(io_err(&path))?;
            if !meta.is_file() {
                return Err(io_err(&path)(io::Error::other("not a file")));
            }
            Ok(LocalModel::from_path(&path))
        }
        ModelRef::Catalogue(name) => match find(&name) {
            Some(entry) => {
                let path = models_dir.join(&entry.file_name);
                if path.is_file() {
                    Ok(LocalModel::from_entry(entry, path))
                } else {
                    Err(ModelError::NotFetched { name: entry.name })
                }
            }
            None => Err(ModelError::Unknown { name, known: catalogue().into_iter().map(|e| e.name).collect() }),
        },
        ModelRef::Hf(r) => hf::find_local(&r, models_dir)?.ok_or(ModelError::NotFetched { name: r.to_string() }),
        ModelRef::Ollama(r) => ollama::resolve(&r, &ollama::default_store().ok_or(ModelError::NoOllamaStore)?),
    }
}

/// The models in `models_dir`: catalogue entries that are present, then other `*.gguf` files,
/// then files fetched from Hugging Face (by name).
pub fn list_local(models_dir: &Path) -> Vec<LocalModel> {
    const MAX_SCANNED: usize = 10_000;
    let catalogue = catalogue();
    let mut found: Vec<LocalModel> = catalogue
        .iter()
        .filter_map(|e| {
            let path = models_dir.join(&e.file_name);
            path.is_file().then(|| LocalModel::from_entry(e.clone(), path))
        })
        .collect();
    let mut others: Vec<LocalModel> = match std::fs::read_dir(models_dir) {
        Ok(dir) => dir
            .take(MAX_SCANNED)
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "gguf") && p.is_file())
            .filter(|p| {
                let file_name = p.file_name().map(|f| f.to_string_lossy());
                !catalogue.iter().any(|e| file_name.as_deref() == Some(e.file_name.as_str()))
            })
            .map(|path| LocalModel::from_path(&path))
            .collect(),
        Err(_) => Vec::new(),
    };
    others.sort_by(|a, b| a.name.cmp(&b.name));
    found.extend(others);
    found.extend(hf::list_local(models_dir));
    found
}

#[cfg(test)]
#[path = "../tests/models.rs"]
mod tests;
