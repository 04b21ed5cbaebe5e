//! The hub's HTTP: bounded requests and tries, the file listing's pages, following the resolve
//! route's redirects, and one try at downloading a file into its `.part`.

use std::path::Path;
use std::time::Duration;

use reqwest::{Client, Response, StatusCode, Url, header};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tracing::{info, warn};

use super::super::fetch::{DOWNLOAD_CONNECT_TIMEOUT, DOWNLOAD_IDLE_TIMEOUT, hasher_of};
use super::{Hub, HubFile, MAX_LISTING_PAGE};
use crate::error_chain;
use crate::models::{FetchProgress, ModelError, hex, io_err, parse_hex32};

/// Tries of one file's download in one fetch (each resuming where the last stopped).
const ATTEMPTS: u32 = 5;
/// Pause before the second try; the next ones wait one more of it each.
const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// Redirects followed on the hub before the download.
const MAX_REDIRECTS: usize = 5;

pub(super) fn client() -> Result<Client, ModelError> {
    Client::builder()
        .connect_timeout(DOWNLOAD_CONNECT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("quiver/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ModelError::Hub { url: String::new(), reason: error_chain(&e) })
}

/// Why one try failed: worth another try (a cut connection, a busy server), or not.
pub(super) enum Failure {
    Retry(ModelError),
    Fatal(ModelError),
}

pub(super) fn hub_err(url: &Url, reason: String) -> ModelError {
    ModelError::Hub { url: url.to_string(), reason }
}

/// Sends with a bound on the wait for the answer's head.
async fn send(request: reqwest::RequestBuilder, url: &Url) -> Result<Response, Failure> {
    match tokio::time::timeout(DOWNLOAD_IDLE_TIMEOUT, request.send()).await {
        Err(_) => Err(Failure::Retry(hub_err(url, "timed out waiting for an answer".into()))),
        Ok(Err(e)) => Err(Failure::Retry(hub_err(url, error_chain(&e)))),
        Ok(Ok(response)) => Ok(response),
    }
}

/// A failure for an answer that is neither a success nor a redirect.
fn status_failure(url: &Url, status: StatusCode) -> Failure {
    let err = |reason: String| hub_err(url, reason);
    match status.as_u16() {
        401 | 403 => Failure::Fatal(err(format!(
            "access refused (HTTP {status}): the repository is gated or private; set HF_TOKEN to a token that may read it"
        ))),
        404 => Failure::Fatal(err(format!("not found (HTTP {status}): no such repository, revision or file"))),
        429 | 500..=599 => Failure::Retry(err(format!("HTTP status {status}"))),
        _ => Failure::Fatal(err(format!("HTTP status {status}"))),
    }
}

/// After a failed try: pauses and returns `Ok` when another try is worth it (at most
/// [`ATTEMPTS`] in all), else the error.
pub(super) async fn again(failure: Failure, attempt: &mut u32, what: &str) -> Result<(), ModelError> {
    match failure {
        Failure::Retry(e) if *attempt < ATTEMPTS => {
            warn!(what, attempt = *attempt, error = %e, "trying again");
            tokio::time::sleep(RETRY_PAUSE * *attempt).await;
            *attempt += 1;
            Ok(())
        }
        Failure::Retry(e) | Failure::Fatal(e) => Err(e),
    }
}

/// Reads an answer's body, at most `limit` bytes.
async fn read_bounded(mut response: Response, url: &Url, limit: usize) -> Result<Vec<u8>, Failure> {
    let mut body = Vec::new();
    loop {
        let chunk = tokio::time::timeout(DOWNLOAD_IDLE_TIMEOUT, response.chunk())
            .await
            .map_err(|_| Failure::Retry(hub_err(url, "stalled".into())))?
            .map_err(|e| Failure::Retry(hub_err(url, error_chain(&e))))?;
        let Some(chunk) = chunk else { return Ok(body) };
        if body.len() + chunk.len() > limit {
            return Err(Failure::Fatal(hub_err(url, format!("answer larger than {limit} bytes"))));
        }
        body.extend_from_slice(&chunk);
    }
}

/// One page of a listing, and the URL of the next.
pub(super) async fn list_page(client: &Client, hub: &Hub, page: &Url) -> Result<(Vec<u8>, Option<Url>), Failure> {
    let response = send(hub.get(client, page), page).await?;
    if !response.status().is_success() {
        return Err(status_failure(page, response.status()));
    }
    let next = next_link(&response, page);
    Ok((read_bounded(response, page, MAX_LISTING_PAGE).await?, next))
}

/// The `rel="next"` URL of a `Link` header (how the hub pages listings).
fn next_link(response: &Response, base: &Url) -> Option<Url> {
    let link = response.headers().get(header::LINK)?.to_str().ok()?;
    link.split(',').find_map(|part| {
        let (target, params) = part.trim().split_once(';')?;
        params.contains("rel=\"next\"").then(|| base.join(target.trim().strip_prefix('<')?.strip_suffix('>')?).ok())?
    })
}

/// What the hub says of a file before its bytes: where they are and their size and sha256.
struct Located {
    url: Url,
    sha256: Option<[u8; 32]>,
    size: Option<u64>,
    /// The answer itself, when the hub served the file without a redirect.
    body: Option<Response>,
}

fn linked(response: &Response) -> (Option<[u8; 32]>, Option<u64>) {
    let text = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let sha = text("x-linked-etag").map(|e| e.trim_start_matches("W/").trim_matches('"')).and_then(parse_hex32);
    (sha, text("x-linked-size").and_then(|s| s.parse().ok()))
}

/// Follows the hub's redirects to the file's bytes.
async fn locate(client: &Client, hub: &Hub, resolve: &Url) -> Result<Located, Failure> {
    let mut url = resolve.clone();
    for _ in 0..MAX_REDIRECTS {
        let response = send(hub.get(client, &url), &url).await?;
        let (sha256, size) = linked(&response);
        let status = response.status();
        if status.is_success() {
            let size = size.or(response.content_length());
            return Ok(Located { url, sha256, size, body: Some(response) });
        }
        if !status.is_redirection() {
            return Err(status_failure(&url, status));
        }
        let location = response.headers().get(header::LOCATION).and_then(|v| v.to_str().ok());
        let next = location
            .and_then(|l| url.join(l).ok())
            .ok_or_else(|| Failure::Fatal(hub_err(&url, format!("HTTP {status} without a usable Location"))))?;
        if sha256.is_some() {
            return Ok(Located { url: next, sha256, size, body: None });
        }
        url = next;
    }
    Err(Failure::Fatal(hub_err(resolve, format!("more than {MAX_REDIRECTS} redirects"))))
}

/// One try at one file: locate it, resume or start its `.part`, stream, check, rename.
pub(super) async fn download(
    client: &Client,
    hub: &Hub,
    resolve: &Url,
    file: &HubFile,
    dest: &Path,
    progress: &mut (dyn FnMut(FetchProgress) + Send),
) -> Result<([u8; 32], u64), Failure> {
    let located = locate(client, hub, resolve).await?;
    let fatal = |reason: String| Failure::Fatal(hub_err(resolve, reason));
    let sha256 = match (file.sha256, located.sha256) {
        (Some(a), Some(b)) if a != b => {
            return Err(fatal(format!("the listing says sha256 {}, the file's answer {}", hex(&a), hex(&b))));
        }
        (a, b) => a.or(b).ok_or_else(|| fatal("the hub states no sha256 for it (X-Linked-Etag)".into()))?,
    };
    let size = file.size.or(located.size).ok_or_else(|| fatal("the hub states no size for it".into()))?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e| Failure::Fatal(io_err(&path)(e))
    };
    let dir = dest.parent().unwrap_or(dest);
    tokio::fs::create_dir_all(dir).await.map_err(io(dir))?;
    if tokio::fs::metadata(dest).await.is_ok_and(|m| m.is_file() && m.len() == size) {
        let hasher = hasher_of(dest, size, progress).await.map_err(Failure::Fatal)?;
        if <[u8; 32]>::from(hasher.finalize()) == sha256 {
            return Ok((sha256, size));
        }
        warn!(path = %dest.display(), "the file has the wrong sha256; fetching it again");
    }
    let file_name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let part = dir.join(format!(".{file_name}.{}.part", hex(&sha256)));
    remove_stale_parts(dir, &file_name, &part);
    let mut have = tokio::fs::metadata(&part).await.map_or(0, |m| m.len());
    if have > size {
        tokio::fs::remove_file(&part).await.map_err(io(&part))?;
        have = 0;
    }
    let mut hasher =
        if have > 0 { hasher_of(&part, have, progress).await.map_err(Failure::Fatal)? } else { Sha256::new() };
    if have < size {
        let response = match located.body {
            Some(body) if have == 0 => body,
            _ => {
                let request = hub.get(client, &located.url);
                let request = if have > 0 { request.header(header::RANGE, format!("bytes={have}-")) } else { request };
                send(request, &located.url).await?
            }
        };
        let status = response.status();
        if status == StatusCode::RANGE_NOT_SATISFIABLE {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(Failure::Retry(hub_err(&located.url, "the server refused the range; starting over".into())));
        }
        if !status.is_success() {
            return Err(status_failure(&located.url, status));
        }
        let resumed = status == StatusCode::PARTIAL_CONTENT;
        if resumed {
            let range = response.headers().get(header::CONTENT_RANGE).and_then(|v| v.to_str().ok()).unwrap_or("");
            if !range.starts_with(&format!("bytes {have}-")) {
                let _ = tokio::fs::remove_file(&part).await;
                return Err(Failure::Retry(hub_err(&located.url, format!("answered range {range:?}; starting over"))));
            }
        } else if have > 0 {
            info!(path = %dest.display(), "the server sent the whole file; starting over");
            have = 0;
            hasher = Sha256::new();
        }
        let mut out = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(resumed)
            .truncate(!resumed)
            .open(&part)
            .await
            .map_err(io(&part))?;
        have = stream(response, &located.url, &mut out, &part, have, size, &mut hasher, progress).await?;
        if have < size {
            return Err(Failure::Retry(hub_err(
                &located.url,
                format!("the answer ended after {have} of {size} bytes"),
            )));
        }
    }
    let actual: [u8; 32] = hasher.finalize().into();
    if actual != sha256 {
        let _ = tokio::fs::remove_file(&part).await;
        return Err(Failure::Fatal(ModelError::Checksum {
            path: dest.to_path_buf(),
            expected: hex(&sha256),
            actual: hex(&actual),
        }));
    }
    tokio::fs::rename(&part, dest).await.map_err(io(dest))?;
    Ok((sha256, size))
}

/// Appends the body to `out` (the `.part`, which holds `have` bytes), at most `size` in all.
#[allow(clippy::too_many_arguments)]
async fn stream(
    mut response: Response,
    url: &Url,
    out: &mut tokio::fs::File,
    part: &Path,
    mut have: u64,
    size: u64,
    hasher: &mut Sha256,
    progress: &mut (dyn FnMut(FetchProgress) + Send),
) -> Result<u64, Failure> {
    progress(FetchProgress::Downloading { done: have, total: Some(size) });
    let written = loop {
        let chunk = match tokio::time::timeout(DOWNLOAD_IDLE_TIMEOUT, response.chunk()).await {
            Err(_) => break Err(Failure::Retry(hub_err(url, "download stalled".into()))),
            Ok(Err(e)) => break Err(Failure::Retry(hub_err(url, error_chain(&e)))),
            Ok(Ok(None)) => break Ok(have),
            Ok(Ok(Some(chunk))) => chunk,
        };
        if have + chunk.len() as u64 > size {
            let _ = tokio::fs::remove_file(part).await;
            break Err(Failure::Fatal(ModelError::Size { expected: size, actual: have + chunk.len() as u64 }));
        }
        if let Err(e) = out.write_all(&chunk).await {
            break Err(Failure::Fatal(io_err(part)(e)));
        }
        hasher.update(&chunk);
        have += chunk.len() as u64;
        progress(FetchProgress::Downloading { done: have, total: Some(size) });
    };
    // What was written stays for the next try, complete or not.
    out.sync_all().await.map_err(|e| Failure::Fatal(io_err(part)(e)))?;
    written
}

/// Removes `.FILE.*.part` files other than `keep` (downloads of another version of the file).
fn remove_stale_parts(dir: &Path, file_name: &str, keep: &Path) {
    let prefix = format!(".{file_name}.");
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.starts_with(&prefix) && name.ends_with(".part") && path != keep {
            info!(path = %path.display(), "removing a partial download of another version");
            let _ = std::fs::remove_file(&path);
        }
    }
}
