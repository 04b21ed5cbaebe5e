//! Models Ollama has already pulled, read in place from its store.
//!
//! The store (`OLLAMA_MODELS`, default `~/.ollama/models`) holds manifests at
//! `manifests/registry.ollama.ai/<namespace>/<name>/<tag>` (namespace `library` for Ollama's
//! own models): JSON with `layers[]`, each `{mediaType, digest: "sha256:<hex>", size}`. The
//! layer of media type `application/vnd.ollama.image.model` is the GGUF, stored as
//! `blobs/sha256-<hex>`.
//!
//! Ollama names blobs by their sha256 and checks them when it pulls, so the digest is taken as
//! the model's identity without hashing the file again (as for catalogue models, whose sha256
//! is known); what is checked at every start is the blob's size and its GGUF header.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{LocalModel, ModelError, OllamaRef, gguf_general_name, io_err, parse_hex32};

/// The registry whose manifests are read.
const REGISTRY: &str = "registry.ollama.ai";
/// Media type of the model layer.
const MODEL_LAYER: &str = "application/vnd.ollama.image.model";
/// Largest manifest read (they are a few hundred bytes).
const MAX_MANIFEST: u64 = 1 << 20;
/// Most manifests listed.
const MAX_LISTED: usize = 10_000;

#[derive(Deserialize)]
struct Manifest {
    layers: Vec<Layer>,
}

#[derive(Deserialize)]
struct Layer {
    #[serde(rename = "mediaType")]
    media_type: String,
    digest: String,
    size: u64,
}

/// Ollama's store: `$OLLAMA_MODELS`, else `$HOME/.ollama/models`.
pub fn default_store() -> Option<PathBuf> {
    match std::env::var_os("OLLAMA_MODELS") {
        Some(dir) if !dir.is_empty() => Some(PathBuf::from(dir)),
        _ => std::env::var_os("HOME").filter(|h| !h.is_empty()).map(|h| Path::new(&h).join(".ollama/models")),
    }
}

/// Where the manifest of `model` lives in `store`.
pub fn manifest_path(model: &OllamaRef, store: &Path) -> PathBuf {
    store.join("manifests").join(REGISTRY).join(&model.namespace).join(&model.name).join(&model.tag)
}

/// The GGUF blob of `model` in `store`, checked (manifest, size, GGUF header) but not hashed.
pub fn resolve(model: &OllamaRef, store: &Path) -> Result<LocalModel, ModelError> {
    let path = manifest_path(model, store);
    let bad = |reason: String| ModelError::OllamaManifest { path: path.clone(), reason };
    let meta = match std::fs::metadata(&path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ModelError::OllamaNotPulled { model: model.to_string(), path });
        }
        Err(e) => return Err(io_err(&path)(e)),
    };
    if !meta.is_file() {
        return Err(bad("not a file".into()));
    }
    if meta.len() > MAX_MANIFEST {
        return Err(bad(format!("{} bytes, more than a manifest has", meta.len())));
    }
    let bytes = std::fs::read(&path).map_err(io_err(&path))?;
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| bad(format!("not a manifest: {e}")))?;
    let layer = manifest
        .layers
        .iter()
        .find(|l| l.media_type == MODEL_LAYER)
        .ok_or_else(|| bad(format!("no model layer ({MODEL_LAYER})")))?;
    let sha256 = layer
        .digest
        .strip_prefix("sha256:")
        .and_then(parse_hex32)
        .ok_or_else(|| bad(format!("bad digest {:?}", layer.digest)))?;
    let blob = store.join("blobs").join(format!("sha256-{}", super::hex(&sha256)));
    let blob_err = |reason: String| ModelError::OllamaBlob { path: blob.clone(), reason };
    let size = match std::fs::metadata(&blob) {
        Ok(meta) if meta.is_file() => meta.len(),
        Ok(_) => return Err(blob_err("not a file".into())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(blob_err(format!("missing: the store is incomplete (ollama pull {})", model_arg(model))));
        }
        Err(e) => return Err(io_err(&blob)(e)),
    };
    if size != layer.size {
        return Err(blob_err(format!("{size} bytes, the manifest says {}", layer.size)));
    }
    gguf_general_name(&blob).map_err(|e| blob_err(format!("the model layer is not a usable GGUF: {e}")))?;
    Ok(LocalModel {
        name: model.network_name(),
        path: blob,
        entry: None,
        sha256: Some(sha256),
        details: Some(model.to_string()),
    })
}

/// `NAME:TAG` as `ollama pull` takes it.
fn model_arg(model: &OllamaRef) -> String {
    model.to_string().trim_start_matches("ollama:").to_string()
}

/// A model in Ollama's store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OllamaModel {
    pub reference: OllamaRef,
    /// The model checked as [`resolve`] checks it, or why it cannot be served.
    pub model: Result<LocalModel, String>,
}

/// The models in Ollama's `store` (empty when there is none), sorted by reference.
pub fn list(store: &Path) -> Vec<OllamaModel> {
    let root = store.join("manifests").join(REGISTRY);
    let mut found = Vec::new();
    for namespace in read_names(&root) {
        for name in read_names(&root.join(&namespace)) {
            for tag in read_names(&root.join(&namespace).join(&name)) {
                if found.len() >= MAX_LISTED {
                    break;
                }
                let reference = OllamaRef { namespace: namespace.clone(), name: name.clone(), tag };
                let model = resolve(&reference, store).map_err(|e| e.to_string());
                found.push(OllamaModel { reference, model });
            }
        }
    }
    found.sort_by_key(|m| m.reference.to_string());
    found
}

/// The entries of `dir` whose names are valid in a reference (nothing when it is unreadable).
fn read_names(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries
        .take(MAX_LISTED)
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.') && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)))
        .collect()
}
