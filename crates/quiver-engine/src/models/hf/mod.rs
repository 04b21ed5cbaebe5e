//! GGUF files from Hugging Face model repositories (`hf:` references).
//!
//! The hub is `HF_ENDPOINT` (default <https://huggingface.co>); `HF_TOKEN`, when set, is sent as
//! a bearer token to the hub (never to the CDN it redirects to, which is another origin). A
//! quantisation is picked from the repository's file listing
//! (`/api/models/OWNER/REPO/tree/REVISION?recursive=true`, which gives each LFS file's sha256
//! and size). A file is downloaded from `/OWNER/REPO/resolve/REVISION/FILE`: the hub answers
//! with a redirect and the file's sha256 and size in `X-Linked-Etag` and `X-Linked-Size`.
//!
//! Files land in `<models>/hf/OWNER/REPO/FILE`, each downloaded into a `.FILE.<sha256>.part`
//! beside it, resumed with HTTP Range after a cut connection (a few tries at once, else at the
//! next fetch: a `.part` is kept only while the hub states the same sha256), checked (size and
//! sha256) and renamed into place; a file whose sha256 is wrong is removed, `.part` included. A
//! split GGUF (`NAME-00001-of-0000N.gguf`) is fetched whole and loaded by its first part. Beside
//! the first file a hidden `.FILE.quiver.json` records the reference, revision and sha256, so a
//! provider finds the model again without the network. The model is served under the file's
//! name, lowercased, without `.gguf` and the split suffix
//! (`SmolLM2-135M-Instruct-Q4_K_M.gguf` → `smollm2-135m-instruct-q4_k_m`); its identity is the
//! sha256 of that (first) file, as for a GGUF loaded by path.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use reqwest::{Client, Url};
use serde::{Deserialize, Serialize};
use tracing::info;

use super::{FetchProgress, HfRef, HfTarget, LocalModel, ModelError, hex, io_err, parse_hex32};
use http::{again, client, download, hub_err, list_page};

mod http;

/// The public hub.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// Largest page of a file listing, and most pages.
const MAX_LISTING_PAGE: usize = 16 << 20;
const MAX_LISTING_PAGES: usize = 100;
/// Longest model name on the network.
const MAX_NAME: usize = 128;
/// Suffix of the record kept beside a fetched file.
const RECORD_SUFFIX: &str = ".quiver.json";
/// Most records scanned in a models directory, and how deep below `hf/OWNER/REPO`.
const MAX_RECORDS: usize = 10_000;
const MAX_DEPTH: usize = 4;

/// Where the hub is and how to authenticate to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hub {
    /// Base URL, e.g. `https://huggingface.co`.
    pub endpoint: String,
    /// Sent as `Authorization: Bearer` to the hub.
    pub token: Option<String>,
}

impl Hub {
    /// `HF_ENDPOINT` (default the public hub) and `HF_TOKEN`.
    pub fn from_env() -> Hub {
        let var = |k: &str| std::env::var(k).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        Hub { endpoint: var("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.into()), token: var("HF_TOKEN") }
    }

    fn url(&self, path: &str) -> Result<Url, ModelError> {
        let s = format!("{}/{path}", self.endpoint.trim_end_matches('/'));
        Url::parse(&s).map_err(|e| ModelError::Hub { url: s, reason: format!("bad hub endpoint: {e}") })
    }

    fn resolve_url(&self, r: &HfRef, file: &str) -> Result<Url, ModelError> {
        self.url(&format!("{}/{}/resolve/{}/{}", r.owner, r.repo, encode(&r.revision, false), encode(file, true)))
    }

    /// The request, with the token when `url` is on the hub.
    fn get(&self, client: &Client, url: &Url) -> reqwest::RequestBuilder {
        let request = client.get(url.clone());
        let on_hub = self.url("").is_ok_and(|hub| hub.origin() == url.origin());
        match &self.token {
            Some(token) if on_hub => request.bearer_auth(token),
            _ => request,
        }
    }
}

/// Percent-encodes a path segment (or, with `keep_slash`, a path).
fn encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A file of a repository as the hub lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubFile {
    pub path: String,
    pub size: Option<u64>,
    pub sha256: Option<[u8; 32]>,
}

#[derive(Deserialize)]
struct TreeEntry {
    #[serde(rename = "type")]
    kind: String,
    path: String,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    lfs: Option<Lfs>,
}

#[derive(Deserialize)]
struct Lfs {
    oid: String,
    size: u64,
}

/// The record kept beside a fetched file.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    reference: String,
    revision: String,
    /// The file's path in the repository (for a split GGUF, its first part).
    file: String,
    sha256: String,
    size: u64,
    /// Every part of a split GGUF, the first included; empty for a single file.
    #[serde(default)]
    parts: Vec<String>,
}

/// `<models_dir>/hf/OWNER/REPO`.
pub fn repo_dir(models_dir: &Path, r: &HfRef) -> PathBuf {
    models_dir.join("hf").join(&r.owner).join(&r.repo)
}

/// `(prefix, index, count)` of a split GGUF's part: `PREFIX-00002-of-00005.gguf`.
fn split_part(path: &str) -> Option<(&str, u32, u32)> {
    let stem = path.strip_suffix(".gguf").or_else(|| path.strip_suffix(".GGUF"))?;
    let (rest, count) = stem.rsplit_once("-of-")?;
    let (prefix, index) = rest.rsplit_once('-')?;
    let number = |s: &str| (s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse::<u32>().ok())?;
    let (index, count) = (number(index)?, number(count)?);
    (1..=count).contains(&index).then_some((prefix, index, count))
}

/// Every part of the split GGUF `path` belongs to, in order; `[path]` for a single file.
pub fn all_parts(path: &str) -> Vec<String> {
    match split_part(path) {
        Some((prefix, _, count)) => {
            let ext = &path[path.len() - ".gguf".len()..];
            (1..=count).map(|i| format!("{prefix}-{i:05}-of-{count:05}{ext}")).collect()
        }
        None => vec![path.to_string()],
    }
}

/// The file name without `.gguf` and the split suffix.
fn model_stem(path: &str) -> &str {
    let base = path.rsplit('/').next().unwrap_or(path);
    if let Some((prefix, _, _)) = split_part(base) {
        return prefix;
    }
    let cut = base.len().saturating_sub(".gguf".len());
    match (base.get(..cut), base.get(cut..)) {
        (Some(stem), Some(ext)) if ext.eq_ignore_ascii_case(".gguf") => stem,
        _ => base,
    }
}

/// The name a fetched file is served under: its name lowercased, without `.gguf` and the split
/// suffix, with characters a network model name cannot hold replaced by `-`.
pub fn model_name(path: &str) -> String {
    let name: String = model_stem(path)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c.to_ascii_lowercase() } else { '-' })
        .take(MAX_NAME)
        .collect();
    if name.is_empty() { "model".into() } else { name }
}

/// Whether the GGUF at `path` is of quantisation `quant`: the name holds it (case-insensitively)
/// between separators (`-`, `.`, `/` or an end), so `Q4_K` does not match `Q4_K_M`.
pub fn quant_matches(path: &str, quant: &str) -> bool {
    let lower_path = path.to_ascii_lowercase();
    let dir = lower_path.rsplit_once('/').map_or("", |(d, _)| d);
    let name = format!("{dir}/{}", model_stem(path).to_ascii_lowercase());
    let quant = quant.to_ascii_lowercase();
    let sep = |c: Option<char>| c.is_none_or(|c| matches!(c, '-' | '.' | '/'));
    !quant.is_empty()
        && name
            .match_indices(&quant)
            .any(|(i, q)| sep(name[..i].chars().last()) && sep(name[i + q.len()..].chars().next()))
}

/// The files of the model for `quant` (`None`: the only model) among a repository's files: one
/// file, or every part of a split GGUF. Vision projectors (`mmproj*`) are not models.
pub fn pick(files: &[HubFile], quant: Option<&str>, repo: &str) -> Result<Vec<HubFile>, ModelError> {
    let mut models: BTreeMap<String, Vec<HubFile>> = BTreeMap::new();
    for f in files {
        let base = f.path.rsplit('/').next().unwrap_or(&f.path).to_ascii_lowercase();
        if base.ends_with(".gguf") && !base.starts_with("mmproj") {
            let first = all_parts(&f.path).swap_remove(0);
            models.entry(first).or_default().push(f.clone());
        }
    }
    let mut candidates: Vec<(String, Vec<HubFile>)> = models
        .iter()
        .filter(|(k, _)| quant.is_none_or(|q| quant_matches(k, q)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    match candidates.len() {
        1 => {
            let (first, mut parts) = candidates.swap_remove(0);
            parts.sort_by(|a, b| a.path.cmp(&b.path));
            let expected = all_parts(&first);
            if parts.iter().map(|p| &p.path).ne(expected.iter()) {
                return Err(ModelError::Hub {
                    url: repo.to_string(),
                    reason: format!("{first} is split into {} files, the listing has {}", expected.len(), parts.len()),
                });
            }
            Ok(parts)
        }
        0 => Err(ModelError::NoSuchQuant {
            repo: repo.to_string(),
            quant: quant.unwrap_or("(any)").to_string(),
            available: models.into_keys().collect(),
        }),
        _ => Err(ModelError::AmbiguousQuant {
            repo: repo.to_string(),
            quant: quant.map(str::to_string),
            candidates: candidates.into_iter().map(|(k, _)| k).collect(),
        }),
    }
}

/// The files of the repository at the reference's revision.
pub async fn list_files(r: &HfRef, hub: &Hub) -> Result<Vec<HubFile>, ModelError> {
    let client = client()?;
    let mut url = Some(hub.url(&format!(
        "api/models/{}/{}/tree/{}?recursive=true",
        r.owner,
        r.repo,
        encode(&r.revision, false)
    ))?);
    let mut files = Vec::new();
    for _ in 0..MAX_LISTING_PAGES {
        let Some(page) = url.take() else { return Ok(files) };
        let mut attempt = 1;
        let (body, next) = loop {
            match list_page(&client, hub, &page).await {
                Ok(answer) => break answer,
                Err(failure) => again(failure, &mut attempt, "file listing").await?,
            }
        };
        let entries: Vec<TreeEntry> =
            serde_json::from_slice(&body).map_err(|e| hub_err(&page, format!("not a file listing: {e}")))?;
        files.extend(entries.into_iter().filter(|e| e.kind == "file").map(|e| HubFile {
            path: e.path,
            size: e.lfs.as_ref().map(|l| l.size).or(e.size),
            sha256: e.lfs.as_ref().and_then(|l| parse_hex32(&l.oid)),
        }));
        url = next;
    }
    Err(ModelError::Hub {
        url: r.repo_id(),
        reason: format!("the file listing has more than {MAX_LISTING_PAGES} pages"),
    })
}

/// Fetches the model `r` names into `models_dir` (see the module's documentation); returns it
/// as a provider loads it. Files already there with the right sha256 are not downloaded again.
pub async fn fetch(
    r: &HfRef,
    models_dir: &Path,
    hub: &Hub,
    progress: &mut (dyn FnMut(FetchProgress) + Send),
) -> Result<LocalModel, ModelError> {
    let files: Vec<HubFile> = match &r.target {
        HfTarget::File(file) => {
            all_parts(file).into_iter().map(|path| HubFile { path, size: None, sha256: None }).collect()
        }
        HfTarget::Quant(quant) => pick(&list_files(r, hub).await?, quant.as_deref(), &r.repo_id())?,
    };
    let dir = repo_dir(models_dir, r);
    let result = fetch_files(r, &files, &dir, hub, progress).await;
    if result.is_err() {
        // Leave no empty directories behind either.
        let sub = files.first().and_then(|f| f.path.rsplit_once('/')).map(|(sub, _)| sub);
        let mut d = sub.map_or(dir.clone(), |sub| dir.join(sub));
        while d.starts_with(models_dir) && d != models_dir && std::fs::remove_dir(&d).is_ok() {
            d.pop();
        }
    }
    result
}

async fn fetch_files(
    r: &HfRef,
    files: &[HubFile],
    dir: &Path,
    hub: &Hub,
    progress: &mut (dyn FnMut(FetchProgress) + Send),
) -> Result<LocalModel, ModelError> {
    let client = client()?;
    let mut first = None;
    for file in files {
        let dest = dir.join(&file.path);
        let resolve = hub.resolve_url(r, &file.path)?;
        progress(FetchProgress::Source(resolve.to_string()));
        info!(model = %r, file = %file.path, "fetching from the hub");
        let mut attempt = 1;
        let (sha256, size) = loop {
            match download(&client, hub, &resolve, file, &dest, &mut *progress).await {
                Ok(done) => break done,
                Err(failure) => again(failure, &mut attempt, &file.path).await?,
            }
        };
        first.get_or_insert((dest, sha256, size));
    }
    let (path, sha256, size) = first.ok_or_else(|| ModelError::Hub { url: r.repo_id(), reason: "no files".into() })?;
    let file = &files[0].path;
    let record = Record {
        reference: r.to_string(),
        revision: r.revision.clone(),
        file: file.clone(),
        sha256: hex(&sha256),
        size,
        parts: if files.len() > 1 { files.iter().map(|f| f.path.clone()).collect() } else { Vec::new() },
    };
    let record_path = record_path(&path);
    let json =
        serde_json::to_vec_pretty(&record).map_err(|e| ModelError::Hub { url: r.repo_id(), reason: e.to_string() })?;
    tokio::fs::write(&record_path, json).await.map_err(io_err(&record_path))?;
    progress(FetchProgress::Done(path.clone()));
    Ok(local_model(r, &record, path))
}

fn local_model(r: &HfRef, record: &Record, path: PathBuf) -> LocalModel {
    let details = HfRef { target: HfTarget::File(record.file.clone()), revision: record.revision.clone(), ..r.clone() };
    LocalModel {
        name: model_name(&record.file),
        path,
        entry: None,
        sha256: parse_hex32(&record.sha256),
        details: Some(details.to_string()),
    }
}

/// `.FILE.quiver.json` beside `path`.
fn record_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}{RECORD_SUFFIX}"))
}

/// The records under `dir` (depth-limited, bounded), with the file each describes.
fn records(dir: &Path, depth: usize, out: &mut Vec<(PathBuf, Record)>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        if out.len() >= MAX_RECORDS {
            return;
        }
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if path.is_dir() && depth > 0 && !name.starts_with('.') {
            records(&path, depth - 1, out);
        } else if let Some(file) = name.strip_prefix('.').and_then(|n| n.strip_suffix(RECORD_SUFFIX)) {
            let record = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<Record>(&b).ok());
            let model = path.with_file_name(file);
            if let Some(record) = record
                && complete(&model, &record)
            {
                out.push((model, record));
            }
        }
    }
}

/// Whether the recorded file (and every other part) is there, the first at its size.
fn complete(model: &Path, record: &Record) -> bool {
    let dir = model.parent().unwrap_or(model);
    std::fs::metadata(model).is_ok_and(|m| m.is_file() && m.len() == record.size)
        && record.parts.iter().all(|p| dir.join(p.rsplit('/').next().unwrap_or(p)).is_file())
}

/// The model `r` names if it was fetched into `models_dir` at the same revision (no network).
pub fn find_local(r: &HfRef, models_dir: &Path) -> Result<Option<LocalModel>, ModelError> {
    let mut found = Vec::new();
    records(&repo_dir(models_dir, r), MAX_DEPTH, &mut found);
    found.retain(|(_, record)| {
        record.revision == r.revision
            && match &r.target {
                HfTarget::File(file) => all_parts(file).first() == Some(&record.file),
                HfTarget::Quant(quant) => quant.as_deref().is_none_or(|q| quant_matches(&record.file, q)),
            }
    });
    match found.len() {
        0 => Ok(None),
        1 => {
            let (path, record) = found.swap_remove(0);
            Ok(Some(local_model(r, &record, path)))
        }
        _ => Err(ModelError::AmbiguousQuant {
            repo: r.repo_id(),
            quant: match &r.target {
                HfTarget::Quant(q) => q.clone(),
                HfTarget::File(_) => None,
            },
            candidates: found.into_iter().map(|(_, record)| record.file).collect(),
        }),
    }
}

/// Every model fetched from the hub into `models_dir`, sorted by name.
pub fn list_local(models_dir: &Path) -> Vec<LocalModel> {
    let mut found = Vec::new();
    records(&models_dir.join("hf"), MAX_DEPTH + 2, &mut found);
    let mut models: Vec<LocalModel> = found
        .into_iter()
        .filter_map(|(path, record)| match super::ModelRef::parse(&record.reference) {
            Ok(super::ModelRef::Hf(r)) => Some(local_model(&r, &record, path)),
            _ => None,
        })
        .collect();
    models.sort_by(|a, b| a.name.cmp(&b.name));
    models
}

#[cfg(test)]
#[path = "../../tests/hf.rs"]
mod tests;
